"""``idemsend chaos``: exactly one send per job, per queue, under everything at once.

For each queue (arq, RQ, QStash) it runs the ``adapters/`` projects as real worker
processes against a Redis it starts itself (append-only, so a restart keeps what the
queue accepted) and an in-process MockProvider that injects 5xx, lost responses and
IN_FLIGHT collisions. It delivers N jobs plus duplicates, SIGKILLs workers during the
run (a supervisor restarts them, as systemd would), restarts Redis once, and waits for
every job to end. Then it counts at the provider: sends must equal N, with no double
send and no lost job, every job terminal and every fatal with its reason.

Run it from a checkout (it needs ``adapters/``): ``idemsend chaos --jobs 10000``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._demo import Progress
from .testing._mock import Faults, MockProvider
from .testing._redis_server import RedisServer, free_port

__all__ = ["ChaosReport", "find_adapters", "run_chaos", "spawn_worker", "worker_command"]

QUEUES = ("arq", "rq", "qstash")
SIGNING, NEXT_SIGNING = "sig_chaos_current_" + "c" * 24, "sig_chaos_next_" + "n" * 24


def find_adapters(explicit: str | None = None) -> Path:
    here = Path(__file__).resolve().parents[2] / "adapters"  # an editable install's checkout
    candidates = [Path(explicit)] if explicit else [Path.cwd() / "adapters", here]
    for path in candidates:
        if (path / "arq_worker" / "worker.py").exists():
            return path
    raise FileNotFoundError(
        "idemsend chaos runs the adapters/ projects of a checkout:"
        " run it from the repository root or pass --adapters DIR"
    )


@dataclass
class ChaosReport:
    queue: str
    jobs: int
    deliveries: int = 0
    duplicates: int = 0
    kills: int = 0
    redis_restarts: int = 0
    worker_restarts: int = 0
    provider_requests: int = 0
    provider_sends: int = 0
    double_sends: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    fatal: dict[str, int] = field(default_factory=dict)
    not_terminal: int = 0
    lost: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def check(self, sent_keys: Counter[str], expected_keys: set[str]) -> None:
        self.provider_sends = sum(sent_keys[k] for k in expected_keys)
        self.double_sends = sum(n - 1 for n in sent_keys.values() if n > 1)
        self.lost = sum(1 for k in expected_keys if sent_keys[k] == 0) - sum(self.fatal.values())
        if self.double_sends:
            self.violations.append(f"{self.double_sends} double sends")
        if self.lost > 0:
            self.violations.append(f"{self.lost} jobs never sent")
        if self.not_terminal:
            self.violations.append(f"{self.not_terminal} jobs not terminal")
        if self.provider_sends + sum(self.fatal.values()) != self.jobs:
            self.violations.append(f"provider sends {self.provider_sends} + fatal != jobs {self.jobs}")
        if any(not reason for reason in self.fatal):
            self.violations.append("a fatal job without a reason")


def table(reports: list[ChaosReport]) -> str:
    rows: list[tuple[str, Callable[[ChaosReport], object]]] = [
        ("jobs", lambda r: r.jobs), ("deliveries (with duplicates)", lambda r: r.deliveries),
        ("duplicates delivered", lambda r: r.duplicates), ("workers SIGKILLed", lambda r: r.kills),
        ("worker restarts (kills and crashes)", lambda r: r.worker_restarts),
        ("Redis restarts", lambda r: r.redis_restarts),
        ("faults injected", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items()))),
        ("provider requests", lambda r: r.provider_requests), ("provider sends", lambda r: r.provider_sends),
        ("double sends", lambda r: r.double_sends), ("jobs sent", lambda r: r.sent),
        ("fatal (reason: count)", lambda r: ", ".join(f"{k}: {v}" for k, v in r.fatal.items()) or "0"),
        ("lost jobs", lambda r: r.lost), ("not terminal", lambda r: r.not_terminal),
        ("seconds", lambda r: f"{r.seconds:.1f}"),
        ("verdict", lambda r: "OK" if not r.violations else "FAILED: " + "; ".join(r.violations)),
    ]
    lines = ["| | " + " | ".join(r.queue for r in reports) + " |", "|---|" + "---|" * len(reports)]
    lines += [f"| {name} | " + " | ".join(str(get(r)) for r in reports) + " |" for name, get in rows]
    return "\n".join(lines)


def worker_command(queue: str, adapters: Path, env: Mapping[str, str], port: int = 0) -> tuple[list[str], Path]:
    """The command that runs one worker of ``queue`` from the ``adapters/`` projects, as
    their README says (settings come from ``env``), and the folder to run it in."""
    if queue == "arq":
        return [sys.executable, "-m", "arq", "worker.WorkerSettings"], adapters / "arq_worker"
    if queue == "rq":
        return [
            sys.executable, "-m", "rq.cli", "worker", "--with-scheduler", "--worker-class",
            "rq.worker.SimpleWorker", "--url", env["REDIS_URL"], "--path", str(adapters / "rq_worker"),
            # RQ restarts its scheduler (which dies when Redis restarts) in its maintenance
            # pass, and an idle worker only gets there when its blocking dequeue times out
            # (worker TTL - 15 s, so 405 s by default): make both short.
            "--maintenance-interval", "5", "--worker-ttl", "25", "--logging_level", "WARNING", env["RQ_QUEUE"],
        ], adapters / "rq_worker"
    return [sys.executable, "app.py", "--port", str(port)], adapters / "qstash_webhook"


def spawn_worker(
    queue: str, adapters: Path, env: Mapping[str, str], log: Path, port: int = 0
) -> subprocess.Popen[bytes]:
    args, cwd = worker_command(queue, adapters, env, port)
    full_env = {**env, "PYTHONPATH": f"{cwd}{os.pathsep}{env.get('PYTHONPATH', '')}"}
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)


class Supervisor:
    """Keeps ``count`` worker processes running; restarts any that exit."""

    def __init__(self, queue: str, adapters: Path, env: dict[str, str], count: int, port: int = 0) -> None:
        self.queue, self.adapters, self.env, self.count, self.port = queue, adapters, env, count, port
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self.log = Path(f"/tmp/idemsend-chaos-{queue}-{os.getpid()}.log")
        self._task: asyncio.Task[None] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        return spawn_worker(self.queue, self.adapters, self.env, self.log, self.port)

    async def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        self._task = asyncio.ensure_future(self._watch())
        await asyncio.sleep(1.5)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    self.restarts += 1
                    self.procs[i] = self._spawn()

    def kill_one(self, rng: random.Random) -> None:
        proc = rng.choice(self.procs)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


class _Queue:
    """Delivers jobs into one queue and reads their terminal states."""

    def __init__(self, name: str, redis_url: str, queue_name: str, endpoint: str = "") -> None:
        self.name, self.redis_url, self.queue_name, self.endpoint = name, redis_url, queue_name, endpoint
        self.deliveries: list[asyncio.Future[Any]] = []
        self.qstash_terminal: dict[str, tuple[str, str]] = {}
        self._qstash_slots = asyncio.Semaphore(200)  # deliveries in flight at once, as QStash's parallelism
        self._redis: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.redis_url)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def deliver(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> None:
        if self.name == "arq":
            await self._retrying(self._arq_enqueue, job_id, data, body)
        elif self.name == "rq":
            await self._retrying(self._rq_enqueue, job_id, data, body)
        else:
            self.deliveries.append(asyncio.ensure_future(self._qstash_deliver(job_id, data, body)))

    async def _retrying(self, fn: Any, *args: Any) -> None:
        # a producer retries its enqueue while Redis restarts
        for _ in range(200):
            try:
                await fn(*args)
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"could not enqueue {args[0]} into {self.name}")

    async def _arq_enqueue(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> None:
        from arq.connections import ArqRedis

        pool = ArqRedis(connection_pool=self._redis.connection_pool)
        await pool.delete(f"arq:result:{job_id}", f"arq:retry:{job_id}")  # a redelivery after the first run
        await pool.enqueue_job("send_email", data, body, _job_id=job_id, _queue_name=self.queue_name)

    async def _rq_enqueue(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> None:
        def enqueue() -> None:
            from redis import Redis
            from rq import Queue, Retry

            with Redis.from_url(self.redis_url) as conn:
                Queue(self.queue_name, connection=conn).enqueue(
                    "jobs.send_email", data, body, job_id=job_id, retry=Retry(max=20, interval=1)
                )

        await asyncio.to_thread(enqueue)

    async def _qstash_deliver(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> None:
        from .testing._qstash import QStashDeliverer

        deliverer = QStashDeliverer(
            self.endpoint, signing_key=SIGNING, retries=40, backoff=lambda n: min(2.0, 0.2 * 2**n)
        )
        async with self._qstash_slots:
            d = await deliverer.deliver({"data": data, "body": body}, message_id=job_id)
        state = {"delivered": "sent", "failed": "fatal"}.get(d.state, "not terminal")
        reason = d.last.body["error"]["code"] if state == "fatal" and isinstance(d.last.body, dict) else ""
        previous = self.qstash_terminal.get(job_id)
        if previous is None or previous[0] != "sent":
            self.qstash_terminal[job_id] = (state, reason)

    async def terminal(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """job id -> (sent | fatal | not terminal, reason)."""
        if self.name == "qstash":
            await asyncio.gather(*self.deliveries)
            return {j: self.qstash_terminal.get(j, ("not terminal", "")) for j in job_ids}
        out: dict[str, tuple[str, str]] = {}
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            out.update(await (self._arq_states(chunk) if self.name == "arq" else self._rq_states(chunk)))
        return out

    async def _arq_states(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        from arq.jobs import deserialize_result

        raws = await self._redis.mget([f"arq:result:{j}" for j in job_ids])
        out = {}
        for job_id, raw in zip(job_ids, raws, strict=True):
            if raw is None:
                out[job_id] = ("not terminal", "")
                continue
            info = deserialize_result(raw)
            if info.success:
                out[job_id] = ("sent", "")
            else:
                out[job_id] = ("fatal", str(getattr(info.result, "code", "") or type(info.result).__name__))
        return out

    async def _rq_states(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        pipe = self._redis.pipeline(transaction=False)
        for j in job_ids:
            pipe.hget(f"rq:job:{j}", "status")
        statuses = await pipe.execute()
        out = {}
        for job_id, status in zip(job_ids, statuses, strict=True):
            s = (status or b"").decode()
            out[job_id] = ("sent", "") if s == "finished" else ("fatal", "rq failed") if s == "failed" else (
                "not terminal", s)
        return out

    async def sweep_abandoned(self) -> None:
        """RQ's own abandoned-job sweep, now instead of after the dead worker's heartbeat TTL."""
        if self.name != "rq":
            return

        def sweep() -> None:
            from redis import Redis
            from rq import Queue
            from rq.registry import StartedJobRegistry

            with Redis.from_url(self.redis_url) as conn:
                StartedJobRegistry(queue=Queue(self.queue_name, connection=conn)).cleanup(time.time() + 3600)

        with contextlib.suppress(Exception):  # Redis may be restarting; the next sweep catches up
            await asyncio.to_thread(sweep)


async def run_queue(
    queue: str, *, jobs: int, dup_rate: float, kills: int, seed: int | None, workers: int, adapters: Path,
    progress: bool = True, timeout: float = 900,
) -> ChaosReport:
    rng = random.Random(seed)
    report = ChaosReport(queue=queue, jobs=jobs)
    redis = RedisServer(appendonly=True).start()
    faults = Faults(rate_5xx=0.05, rate_lost=0.05, rate_in_flight=0.05, retry_after=0.2)
    # 20 ms a send keeps every queue busy long enough for the kills to land mid-send
    start = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    try:
        async with MockProvider(api_key="chaos", faults=faults, seed=seed, processing_delay=0.02) as provider:
            port = free_port()
            queue_url = redis.url.rsplit("/", 1)[0] + "/1"
            env = {
                **os.environ, "PYTHONUNBUFFERED": "1", "REDIS_URL": queue_url,
                "IDEMSEND_URL": provider.emails_url, "IDEMSEND_API_KEY": "chaos",
                "IDEMSEND_LEDGER_URL": redis.url, "IDEMSEND_LEDGER_PREFIX": f"chaos-{tag}",
                "IDEMSEND_RETRIES": "1", "IDEMSEND_LEASE": "3",
                "ARQ_QUEUE": f"chaos:{tag}", "ARQ_JOB_TIMEOUT": "5", "ARQ_MAX_TRIES": "30", "ARQ_RETRY_BASE": "0.2",
                "ARQ_MAX_JOBS": "20", "RQ_QUEUE": f"chaos-{tag}", "RQ_MAX_RETRIES": "20",
                "QSTASH_CURRENT_SIGNING_KEY": SIGNING, "QSTASH_NEXT_SIGNING_KEY": NEXT_SIGNING,
                "QSTASH_ENDPOINT_URL": f"http://127.0.0.1:{port}/qstash/welcome",
            }
            supervisor = Supervisor(queue, adapters, env, 1 if queue == "qstash" else workers, port)
            await supervisor.start()
            if queue == "qstash":
                await _wait_for_port(port)
            q = _Queue(queue, queue_url, env["ARQ_QUEUE"] if queue == "arq" else env["RQ_QUEUE"],
                       env["QSTASH_ENDPOINT_URL"])
            await q.open()
            job_ids = [f"{queue}-{tag}-{i:06d}" for i in range(jobs)]
            payload = {j: ({"user_id": f"user-{i}"}, {"to": [f"user-{i}@example.com"], "template": "welcome"})
                       for i, j in enumerate(job_ids)}
            duplicates = [j for j in job_ids if rng.random() < dup_rate]
            # each duplicate is delivered once more: right behind the first delivery (so the
            # two run at the same moment) or later in the run; arq refuses a job id that is
            # still queued, so its duplicates all come after the job ran
            behind = {j for j in duplicates if queue != "arq" and rng.random() < 0.5}
            late = [j for j in duplicates if j not in behind]
            bar = Progress(jobs, f"chaos {queue}", enabled=progress)
            events = _events(rng, kills)
            chaos: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def chaos_event(what: str) -> None:
                if what == "kill":
                    supervisor.kill_one(rng)
                    report.kills += 1
                    await asyncio.sleep(0.3)
                else:
                    redis.stop()  # SIGTERM: the append-only file has every write (fsync always)
                    await asyncio.sleep(1.0)
                    redis.start()
                    report.redis_restarts += 1
                await q.sweep_abandoned()

            async def fire_due(done: int) -> None:
                while events and done >= events[0][0] * jobs:
                    await chaos_event(events.pop(0)[1])
                if not events and not chaos.done():
                    chaos.set_result(None)

            for job_id in job_ids:  # first deliveries, and the duplicates that ride right behind
                await fire_due(len(q.qstash_terminal))
                await q.deliver(job_id, *payload[job_id])
                report.deliveries += 1
                if job_id in behind:
                    await q.deliver(job_id, *payload[job_id])
                    report.deliveries += 1
            # later duplicates: a redelivery after the job ran (arq: only these)
            deadline = time.monotonic() + timeout
            pending_late = set(late) if queue == "arq" else set()
            if queue != "arq":
                for job_id in late:
                    await q.deliver(job_id, *payload[job_id])
                    report.deliveries += 1
            states: dict[str, tuple[str, str]] = {}
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if queue == "qstash" and not all(d.done() for d in q.deliveries):
                    bar.advance(len(q.qstash_terminal) - bar.done)
                    await fire_due(len(q.qstash_terminal))
                    continue
                try:
                    states = await q.terminal(job_ids)
                except Exception:
                    continue  # Redis restarting
                done_now = {j for j, (s, _) in states.items() if s != "not terminal"}
                await fire_due(len(done_now))
                for job_id in sorted(pending_late & done_now):
                    await q.deliver(job_id, *payload[job_id])
                    report.deliveries += 1
                    pending_late.discard(job_id)
                bar.advance(len(done_now) - bar.done)
                if len(done_now) == jobs and not pending_late and chaos.done():
                    await asyncio.sleep(1.0)  # redeliveries still running finish now
                    states = await q.terminal(job_ids)
                    if all(s != "not terminal" for s, _ in states.values()):
                        break
            bar.close()
            await supervisor.stop()
            await q.close()
            report.duplicates = report.deliveries - jobs
            report.worker_restarts = supervisor.restarts
            report.provider_requests = provider.stats.requests
            report.faults = dict(provider.stats.faults)
            report.sent = sum(1 for s, _ in states.values() if s == "sent")
            report.fatal = dict(Counter(reason for s, reason in states.values() if s == "fatal"))
            report.not_terminal = jobs - report.sent - sum(report.fatal.values())
            expected = {f"welcome:{payload[j][0]['user_id']}:{j}" for j in job_ids}
            report.check(provider.sends_by_key, expected)
    finally:
        redis.cleanup()
    report.seconds = time.monotonic() - start
    return report


def _events(rng: random.Random, kills: int) -> list[tuple[float, str]]:
    """When to strike, as the share of jobs already terminal: SIGKILLs spread over the run
    (10% to 80%), and one Redis restart in the middle; never all at the start or end."""
    events = [(0.1 + 0.7 * (i + rng.random()) / max(kills, 1), "kill") for i in range(kills)]
    events.append((0.5, "redis"))
    return sorted(events)


async def run_chaos(
    queues: tuple[str, ...] = QUEUES, *, jobs: int = 10_000, dup_rate: float = 0.3, kills: int = 3,
    workers: int = 3, seed: int | None = None, adapters: str | None = None, progress: bool = True,
) -> list[ChaosReport]:
    where = find_adapters(adapters)
    return [
        await run_queue(q, jobs=jobs, dup_rate=dup_rate, kills=kills, seed=seed, workers=workers, adapters=where,
                        progress=progress)
        for q in queues
    ]
