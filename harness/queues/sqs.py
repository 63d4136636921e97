"""SQS: ``adapters/sqs_worker`` (``python worker.py``: the long-poll ``SQSConsumer``) against
moto in server mode, with real aiobotocore clients; jobs go in with ``SendMessage`` (the job
id in the ``idemsend-job-id`` attribute, as a producer that may send a job twice does) and
end as the outcome the worker writes for each message to its results store (Redis), since a
deleted SQS message leaves nothing behind. A job is final once every message delivered for
it has an outcome; its state is its latest message's (as arq and RQ keep one state per job
id, the latest run's). A SIGKILLed worker's messages come back when their visibility lapses.

moto runs in its own process on a free loopback port (``MotoServer``; ``python -m
harness.queues.sqs moto PORT``), which is moto's own threaded server with two changes: its
clock reads ``time.time()`` (moto's datetime-based one made every call cost O(queue length)
times 20 us), and ``DeleteMessage`` takes the queue's lock, as ``SendMessage`` does (moto
rebuilds the message list on a delete, and an unlocked rebuild can drop a message sent at the
same moment). Neither changes what SQS semantics moto emulates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from idemsend.testing import free_port

from .base import ROOT, QueueDriver, QueueJob, Terminal, db_url, retrying, wait_for_arrival

__all__ = ["REGION", "MotoServer", "SQSDriver"]

#: The region every harness client names (moto keeps one backend per account and region).
REGION = "us-east-1"
#: moto's credentials: any will do, but botocore wants some.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
#: The message attribute that carries the job id (``idemsend.adapters.sqs.JOB_ID_ATTRIBUTE``).
JOB_ID_ATTRIBUTE = "idemsend-job-id"
#: Messages delivered and not yet final before ``deliver`` waits: moto scans its whole
#: message list on every call, so a backlog of thousands slows every call down.
MAX_PENDING = 300


class MotoServer:
    """moto's SQS (and every other service) in server mode, in its own process on a free
    loopback port: ``with MotoServer() as moto: moto.url``."""

    def __init__(self, *, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<MotoServer {self.url} {'running' if self.proc and self.proc.poll() is None else 'stopped'}>"

    def start(self, timeout: float = 60.0) -> Self:
        """Spawn the server and return once it accepts connections."""
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.queues.sqs", "moto", str(self.port)], cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT,
            )
        finally:
            if self.log is not None:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto did not start on port {self.port} (log: {self.log})")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def sqs_client(endpoint_url: str, **config: Any) -> Any:
    """An aiobotocore SQS client context for moto at ``endpoint_url``."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    return get_session().create_client(
        "sqs", region_name=REGION, endpoint_url=endpoint_url,
        config=AioConfig(max_pool_connections=50, retries={"mode": "standard", "max_attempts": 3}, **config),
        **CREDENTIALS,
    )


class SQSDriver(QueueDriver):
    """The sqs column: moto started in ``open`` (one queue per driver, hiding a received
    message ``visibility`` seconds at a time), workers running ``adapters/sqs_worker``, job
    states read from the outcomes the workers write to Redis. See the module docstring."""

    name = "sqs"
    project = "sqs_worker"
    requires = ("aiobotocore", "boto3", "moto", "redis")
    order = 40
    # a killed worker's messages come back when their visibility lapses, then wait out the lease
    wait_timeout = 90.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moto = MotoServer(log=self.run_dir.file(f"sqs-{self.tag}-moto.log"))
        self.queue_name = f"{self.profile.name}-{self.tag}"
        # the lock a killed worker's messages wait out (the heartbeat renews it while they run)
        self.visibility = max(6, math.ceil(self.profile.job_timeout))
        self.results_url = db_url(self.redis_url, 5)
        self.results_prefix = f"idemsend-sqs:{self.profile.name}:{self.tag}:"
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
            self.env.pop(name, None)
        self.env.update({
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": REGION,
            "SQS_ENDPOINT_URL": self.moto.url,
            "SQS_CONCURRENCY": str(self.profile.jobs_per_worker),
            "SQS_MAX_ATTEMPTS": str(self.profile.max_tries),
            "SQS_RETRY_BASE": str(self.profile.retry_base),
            "SQS_SHUTDOWN_TIMEOUT": "5",
            # short long polls: a SIGKILLed worker's poll lives on in the server until it
            # times out, and takes (hides for the visibility timeout) what arrives meanwhile
            "SQS_WAIT_TIME": "2",
            "SQS_RESULTS_URL": self.results_url,
            "SQS_RESULTS_PREFIX": self.results_prefix,
        })
        self.queue_url = ""
        self.client: Any = None
        self.results: Any = None
        self._client_context: Any = None
        self.sent: dict[str, list[str]] = {}  # job id -> its messages' ids, in delivery order
        self.pending: dict[str, str] = {}  # message id -> job id, until the message has an outcome
        self.outcomes: dict[str, Terminal] = {}  # message id -> its outcome

    @classmethod
    def unavailable(cls) -> str | None:
        """Why SQS cannot run here (it has its own environment), or None."""
        import importlib.util

        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        return f"sqs needs {', '.join(missing)}: run it in its own environment (nox -s sqs)" if missing else None

    def worker_command(self) -> list[str]:
        return [sys.executable, "worker.py"]

    async def open(self) -> None:
        from redis.asyncio import Redis

        await asyncio.to_thread(self.moto.start)
        self._client_context = sqs_client(self.moto.url)
        self.client = await self._client_context.__aenter__()
        answer = await self.client.create_queue(
            QueueName=self.queue_name, Attributes={"VisibilityTimeout": str(self.visibility)}
        )
        self.queue_url = answer["QueueUrl"]
        self.env["SQS_QUEUE_URL"] = self.queue_url
        self.results = Redis.from_url(self.results_url)

    async def close(self) -> None:
        if self.results is not None:
            await self.results.aclose()
            self.results = None
        if self._client_context is not None:
            await self._client_context.__aexit__(None, None, None)
            self._client_context = self.client = None
        await asyncio.to_thread(self.moto.stop)

    async def ready(self) -> None:
        """Every worker has checked the queue and is polling (its log says so)."""
        deadline = time.monotonic() + 60
        while True:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"an sqs worker exited at start:\n{self.tail()}")
            text = "".join(p.read_text(errors="replace") for p in self.logs if p.exists())
            if all(f"sqs worker ready pid={p.pid} " in text for p in self.procs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sqs workers did not become ready:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def deliver(self, job: QueueJob) -> bool:
        await self._backpressure()
        body = json.dumps({"data": job.data, "body": job.body})

        async def send() -> str:
            answer = await self.client.send_message(
                QueueUrl=self.queue_url, MessageBody=body,
                MessageAttributes={JOB_ID_ATTRIBUTE: {"DataType": "String", "StringValue": job.id}},
            )
            return str(answer["MessageId"])

        message_id = await retrying(send, f"send {job.id} to SQS")
        self.sent.setdefault(job.id, []).append(message_id)
        self.pending[message_id] = job.id
        return True

    async def _backpressure(self) -> None:
        deadline = time.monotonic() + 300
        while len(self.pending) >= MAX_PENDING and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # Redis restarting: wait on
                await self._refresh()
            if len(self.pending) >= MAX_PENDING:
                await asyncio.sleep(0.1)

    async def _refresh(self) -> None:
        """Read the outcomes of the messages that had none. The first outcome read for a
        message is kept (a message whose worker died between writing it and the delete runs
        again, and is answered from the ledger)."""
        waiting = list(self.pending)
        for start in range(0, len(waiting), 500):
            chunk = waiting[start:start + 500]
            raws = await self.results.mget([self.results_prefix + m for m in chunk])
            for message_id, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    self.outcomes[message_id] = _terminal(json.loads(raw))
                    self.pending.pop(message_id, None)

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        await self._refresh()
        out: dict[str, Terminal | None] = {}
        for job_id in job_ids:
            messages = self.sent.get(job_id, [])
            if not messages or any(m in self.pending for m in messages):
                out[job_id] = None
            else:
                out[job_id] = self.outcomes[messages[-1]]
        return out

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        # two messages with one job id, sent together: two workers take one each
        self.provider.delay(job.key, 0.5)
        await asyncio.gather(self.deliver(job), self.deliver(job))
        await wait_for_arrival(self.provider, job.key)
        await self.wait(job.id)
        return [self.outcomes[m] for m in self.sent[job.id][-2:]]


def _terminal(record: dict[str, Any]) -> Terminal:
    state = record.get("state")
    if state == "sent":
        return Terminal("sent", replayed=bool(record.get("replayed")))
    if state == "failed":  # the tries ran out on a retryable error
        return Terminal("failed", reason=str(record.get("message", "")))
    return Terminal("fatal", code=str(record.get("code") or "SQS_FAILED"), reason=str(record.get("message", "")))


# -- moto's server, for MotoServer ----------------------------------------------------------


def _patch_moto() -> None:
    """moto's clock without its datetime round trip, and DeleteMessage under the queue's lock."""
    from moto.core import utils
    from moto.sqs import models

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else utils.unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else utils.unix_time_millis(dt)

    delete = models.Queue.delete_message

    def locked_delete(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            delete(self, receipt_handle)

    patches = ((models, "unix_time", unix_time), (models, "unix_time_millis", unix_time_millis),
               (models.Queue, "delete_message", locked_delete))
    for owner, name, value in patches:
        setattr(owner, name, value)


def _serve_moto(port: int) -> None:
    import importlib
    import logging
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

    make_server = importlib.import_module("werkzeug.serving").make_server  # moto[server]'s werkzeug

    _patch_moto()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server(
        "127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=True,
        request_handler=MotoRequestHandler,
    )
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"moto serving on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "moto":
        _serve_moto(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m harness.queues.sqs moto PORT")
