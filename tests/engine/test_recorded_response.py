"""What a done record keeps of the provider's answer: the id and the status always, the
response body only when it was at most MAX_RECORDED_RESPONSE bytes as received (a replay
from the ledger then has the id and status, and the body when it was small)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from idemsend import Engine, Job, RawResponse, TransportRequest
from idemsend._guard import MAX_RECORDED_RESPONSE
from idemsend.ledger import Ledger, MemoryLedger, RedisLedger
from idemsend.testing import MockTransport

pytestmark = pytest.mark.anyio

URL = "https://api.example.com/api/v1/emails"
KEY = "welcome:{user_id}:{job_id}"


def answering(body: dict[str, Any]) -> MockTransport:
    def handler(request: TransportRequest) -> RawResponse:
        return RawResponse(200, {}, json.dumps(body, separators=(",", ":")).encode())

    return MockTransport(handler)


def body_of(size: int) -> dict[str, Any]:
    """A provider answer whose compact JSON is exactly ``size`` bytes."""
    base = {"id": "em_1", "pad": ""}
    pad = size - len(json.dumps(base, separators=(",", ":")))
    return {"id": "em_1", "pad": "x" * pad}


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest) -> Ledger:
    if request.param == "memory":
        return MemoryLedger()
    import uuid

    return RedisLedger.from_url(request.getfixturevalue("redis_url"), prefix=uuid.uuid4().hex)


@pytest.mark.parametrize("size", [MAX_RECORDED_RESPONSE, MAX_RECORDED_RESPONSE + 1, 4096])
async def test_a_replay_from_the_ledger_has_id_and_status_and_a_small_body(size: int, ledger: Ledger) -> None:
    answer = body_of(size)
    transport = answering(answer)
    async with Engine(URL, key=KEY, api_key="k-1", ledger=ledger, transport=transport) as engine:
        job = Job("job-1", {"user_id": "u1"})
        first = await engine.send(job, {"to": ["ada@example.com"]})
        assert first.response == answer  # the live result always has the whole body
        again = await engine.send(job, {"to": ["ada@example.com"]})
        record = await ledger.get("welcome:u1:job-1")  # before the engine closes its ledger
    assert len(transport.requests) == 1
    assert again.from_ledger and again.id == "em_1" and again.status == 200
    kept = size <= MAX_RECORDED_RESPONSE
    assert again.response == (answer if kept else None)
    assert record is not None and record.response is not None
    assert record.response == {"id": "em_1", "status": 200, "response": answer if kept else None}
