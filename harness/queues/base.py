"""``QueueDriver``: what the conformance suite and the chaos run need from a queue.

A driver runs the queue's ``adapters/`` project as real worker processes, configured from
the environment exactly as the README shows, hands jobs to the queue the way a producer
does, and reads back each job's terminal state. Everything queue-specific lives in the
driver's own module (``harness/queues/<queue>.py``); callers speak only this interface:

=================================  ========================================================
``start(supervise=)`` / ``stop()``  spawn the workers (and open the producer side); with
                                    ``supervise`` a dead worker is restarted, as systemd would
``kill_all()`` / ``kill_one(rng)``  SIGKILL workers (the chaos and "worker killed" cases)
``deliver(job)``                    hand one job to the queue (a redelivery, if it ran before)
``states(job_ids)``                 each job's ``Terminal``, or None while it is not final
``wait(job_id)`` / ``run(job)``     poll one job to its end; deliver, then wait
``deliver_twice_at_once(job)``      two runs of one job at the same moment, the queue's way
``sweep_abandoned()``               the queue's own abandoned-job recovery, run now
``restart_broker()``                restart the queue's server, where the driver runs its own
``tail()``                          the end of the workers' logs
=================================  ========================================================

How hard the harness pushes is a ``Profile`` (queue-neutral knobs: tries, backoff, lease, …);
each driver maps it onto its queue's settings. Logs go to a ``RunDir``: one temp folder per
run, removed at the end unless the run failed (then its path is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from idemsend.testing import MockProvider

__all__ = [
    "ADAPTERS",
    "CHAOS",
    "CONFORMANCE",
    "KEY_TEMPLATE",
    "Profile",
    "QueueDriver",
    "QueueJob",
    "RunDir",
    "Terminal",
    "db_url",
    "poll",
    "retrying",
    "wait_for_arrival",
]

ROOT = Path(__file__).resolve().parents[2]
#: The runnable worker projects, one folder per queue.
ADAPTERS = ROOT / "adapters"
#: The key every harness job is sent under (``engine_from_env``'s default, set explicitly).
KEY_TEMPLATE = "welcome:{user_id}:{job_id}"

T = TypeVar("T")


@dataclass(frozen=True)
class QueueJob:
    """One job as a producer enqueues it: ``data`` fills the key template, ``body`` is sent."""

    id: str
    data: dict[str, Any]
    body: dict[str, Any]

    @property
    def key(self) -> str:
        """The idempotency key the workers send it under."""
        return KEY_TEMPLATE.format(job_id=self.id, **self.data)


@dataclass(frozen=True)
class Terminal:
    """Where a job ended: ``sent`` (``replayed``: answered from an earlier send), ``fatal``
    (``code``), or ``failed`` (its tries ran out on a retryable error; ``reason``)."""

    state: str
    code: str | None = None
    replayed: bool | None = None
    reason: str = ""

    def brief(self) -> str:
        if self.state == "sent":
            return "sent (replayed)" if self.replayed else "sent"
        return f"{self.state} {self.code or ''}".strip()


@dataclass(frozen=True)
class Profile:
    """How the harness runs every queue; each driver maps these onto its queue's settings."""

    name: str
    engine_retries: int  # the engine's quick in-process retries (IDEMSEND_RETRIES)
    lease: float  # seconds a claim holds a key (IDEMSEND_LEASE)
    max_tries: int  # tries a job gets from its queue
    retry_base: float  # the first delay of the queue's backoff between tries
    retry_cap: float  # the longest delay, where the harness sets the queue's schedule itself
    job_timeout: float  # the queue's limit on one run of a job, where it has one
    jobs_per_worker: int  # jobs one worker process runs at once, where that is a setting


#: The conformance suite: every retryable outcome goes back to the queue, quickly.
CONFORMANCE = Profile(
    "conformance", engine_retries=0, lease=2.0, max_tries=6, retry_base=0.2, retry_cap=5.0, job_timeout=4,
    # one job at a time per worker, so a lapsed lock lets the *other* worker take a job
    jobs_per_worker=1,
)
#: The chaos run: many jobs, generous tries, short waits.
CHAOS = Profile(
    "chaos", engine_retries=1, lease=3.0, max_tries=30, retry_base=0.2, retry_cap=2.0, job_timeout=5,
    jobs_per_worker=20,
)


def db_url(redis_url: str, db: int) -> str:
    """``redis_url`` with database ``db``."""
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


class RunDir:
    """One temp folder for every log file of a run; ``finish`` removes it unless the run
    failed, and a kept folder is named on stderr. ``with RunDir("outage") as logs:`` keeps
    it when the block raises."""

    def __init__(self, label: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"idemsend-{label}-"))

    def __repr__(self) -> str:
        return f"<RunDir {self.path}>"

    def file(self, name: str) -> Path:
        return self.path / name

    def finish(self, *, keep: bool) -> Path | None:
        """Remove the folder, or keep it (a failed run) and return its path."""
        if keep and self.path.exists():
            print(f"idemsend harness: logs kept in {self.path}", file=sys.stderr)
            return self.path
        shutil.rmtree(self.path, ignore_errors=True)
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(keep=exc is not None)


async def poll(check: Callable[[], Awaitable[T | None]], timeout: float, what: str, every: float = 0.05) -> T:
    """``await check()`` until it is not None; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer for {what} within {timeout}s")
        await asyncio.sleep(every)


async def retrying(fn: Callable[[], Awaitable[T]], what: str, tries: int = 200, pause: float = 0.1) -> T:
    """``await fn()``, again while it raises (a producer rides out a Redis restart)."""
    for _ in range(tries - 1):
        try:
            return await fn()
        except Exception:
            await asyncio.sleep(pause)
    try:
        return await fn()
    except Exception as exc:
        raise RuntimeError(f"could not {what}") from exc


async def wait_for_arrival(provider: MockProvider, key: str, count: int = 1, timeout: float = 30) -> None:
    """Until the provider has seen ``count`` requests for ``key``."""

    async def arrived() -> bool | None:
        return True if len(provider.arrivals.get(key, [])) >= count else None

    await poll(arrived, timeout, f"key {key!r} at the provider", every=0.01)


class QueueDriver:
    """Runs one queue's ``adapters/`` project as real workers; see the module docstring.

    Subclasses set the class attributes and implement ``worker_command``, ``deliver``,
    ``states`` and ``deliver_twice_at_once``; they add their settings to ``self.env`` in
    ``__init__`` and import their queue's library inside methods, so the registry can list
    a driver whose extra is not installed (``unavailable()`` says so).
    """

    #: the queue's name: ``--queues``, table columns, job ids
    name: ClassVar[str]
    #: the folder of its worker project under ``adapters/``
    project: ClassVar[str]
    #: modules it needs (``unavailable()`` checks them)
    requires: ClassVar[tuple[str, ...]] = ()
    #: where its column goes (then by name)
    order: ClassVar[int] = 100
    #: at most this many worker processes (None: any number)
    max_workers: ClassVar[int | None] = None
    #: whether the queue takes a job id again while an earlier delivery of it is pending
    duplicates_while_pending: ClassVar[bool] = True
    #: how long ``wait`` polls one job by default, seconds
    wait_timeout: ClassVar[float] = 60.0

    def __init__(
        self,
        provider: MockProvider,
        redis_url: str,
        *,
        profile: Profile,
        run_dir: RunDir,
        workers: int = 2,
        ledger_url: str | None = None,
        adapters: Path = ADAPTERS,
    ) -> None:
        self.provider = provider
        self.redis_url = redis_url
        self.profile = profile
        self.run_dir = run_dir
        self.adapters = adapters
        self.workers = min(workers, self.max_workers or workers)
        self.tag = uuid.uuid4().hex[:6]
        self.env: dict[str, str] = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "IDEMSEND_URL": provider.emails_url,
            "IDEMSEND_API_KEY": provider.api_key or "any",
            "IDEMSEND_KEY": KEY_TEMPLATE,
            "IDEMSEND_LEDGER_URL": ledger_url or db_url(redis_url, 0),
            "IDEMSEND_LEDGER_PREFIX": f"{profile.name}-{self.name}-{self.tag}",
            "IDEMSEND_RETRIES": str(profile.engine_retries),
            "IDEMSEND_LEASE": str(profile.lease),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.restarts = 0
        self._opened = False
        self._supervisor: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} workers={self.workers} logs={self.run_dir.path}>"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this driver cannot run here, or None."""
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        return f"{cls.name} needs {', '.join(missing)} (pip install -e '.[dev]')" if missing else None

    # -- what each queue's driver says ---------------------------------------------------

    def worker_command(self) -> list[str]:
        """The command that runs one worker, in ``adapters/<project>``."""
        raise NotImplementedError

    async def open(self) -> None:
        """Open the producer side (a connection to the queue)."""

    async def close(self) -> None:
        """Close what ``open`` opened."""

    async def ready(self) -> None:
        """Return once freshly spawned workers take jobs."""
        await asyncio.sleep(1.0)
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a {self.name} worker exited at start:\n{self.tail()}")

    async def deliver(self, job: QueueJob) -> bool:
        """Hand ``job`` to the queue (again, if it ran before); False if the queue refused it."""
        raise NotImplementedError

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        """Each job's terminal state, None while it is not final (its latest delivery is
        pending). May raise while the queue's store is down."""
        raise NotImplementedError

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        """Get two runs of ``job`` going at the same moment, in whatever way the queue
        allows, and return the terminal states it reports."""
        raise NotImplementedError

    async def restart_broker(self) -> bool:
        """Restart the queue's server, where the driver runs one of its own (the chaos run's
        broker restart); False (the default) when it does not."""
        return False

    async def sweep_abandoned(self) -> None:
        """Run the queue's recovery of jobs whose worker died, now (default: the queue
        needs none, or does it by itself)."""

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        cwd = self.adapters / self.project
        env = {**self.env, "PYTHONPATH": f"{cwd}{os.pathsep}{self.env.get('PYTHONPATH', '')}"}
        log = self.run_dir.file(f"{self.name}-{self.tag}-worker-{slot}.log")
        if log not in self.logs:
            self.logs.append(log)
        with log.open("ab") as out:
            return subprocess.Popen(self.worker_command(), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)

    async def start(self, *, supervise: bool = False) -> None:
        """Open the producer side, spawn the workers and wait until they are ready; with
        ``supervise``, restart any worker that exits until ``stop``."""
        if not (self.adapters / self.project).is_dir():
            raise FileNotFoundError(f"no {self.project} project in {self.adapters} (pass the adapters/ folder)")
        if not self._opened:
            await self.open()
            self._opened = True
        self.procs = [self._spawn(slot) for slot in range(self.workers)]
        try:
            await self.ready()
        except BaseException:
            await self.stop()  # no orphan workers when they never became ready
            raise
        if supervise and self._supervisor is None:
            self._supervisor = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for slot, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    self.restarts += 1
                    self.procs[slot] = self._spawn(slot)

    async def stop(self) -> None:
        """Stop the supervisor and the workers (SIGTERM, then SIGKILL after 15 s), then
        close the producer side."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self.procs = []
        if self._opened:
            self._opened = False
            await self.close()

    async def kill_all(self) -> None:
        """SIGKILL every worker and reap them (``start`` spawns new ones)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            await asyncio.to_thread(proc.wait)
        self.procs = []

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL one worker, chosen by ``rng`` (the supervisor restarts it)."""
        proc = rng.choice(self.procs)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)

    def tail(self, chars: int = 3000) -> str:
        """The end of each worker log, and where the logs are."""
        parts = [f"(logs in {self.run_dir.path})"]
        parts += [f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.exists()]
        return "\n".join(parts)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- jobs ------------------------------------------------------------------------------

    async def wait(self, job_id: str, timeout: float | None = None) -> Terminal:
        """Poll ``job_id`` until it is final."""

        async def check() -> Terminal | None:
            return (await self.states([job_id]))[job_id]

        return await poll(check, self.wait_timeout if timeout is None else timeout, f"job {job_id}")

    async def run(self, job: QueueJob) -> Terminal:
        """Deliver ``job`` and wait for its end."""
        if not await self.deliver(job):
            raise RuntimeError(f"{self.name} refused job {job.id}")
        return await self.wait(job.id)
