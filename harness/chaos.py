"""Exactly one send per job, per queue, under everything at once.

``python -m harness.chaos --jobs 10000`` (from the repository root). For each queue in the
registry (``harness.queues``; ``--queues`` picks some) it runs the queue's ``adapters/``
project as real worker processes against a Redis it starts itself (append-only, so a
restart keeps what the queue accepted) and an in-process MockProvider that injects 5xx,
lost responses and IN_FLIGHT collisions. It delivers N jobs plus duplicates, SIGKILLs
workers during the run (a supervisor restarts them, as systemd would), restarts Redis
once, and waits for every job to end. Then it counts at the provider: sends must equal N,
with no double send and no lost job, every job terminal and every fatal with its reason.

Worker logs go to one temp folder per run: removed when the run passes, kept and named
in the output when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from idemsend.cli import positive, rate
from idemsend.testing import Faults, MockProvider, PostgresServer, Progress, RedisServer

from ._shapes import SHAPES, shape
from .queues import CHAOS, QueueDriver, QueueJob, RunDir, Terminal, drivers
from .queues.base import ADAPTERS

#: ``--ledger own-postgres``: a throwaway PostgreSQL of the run's own as the ledger.
OWN_POSTGRES = "own-postgres"

__all__ = ["ChaosReport", "main", "run_chaos", "run_queue", "table"]


@dataclass
class ChaosReport:
    queue: str
    jobs: int
    provider: str = "header"
    deliveries: int = 0
    duplicates: int = 0
    kills: int = 0
    redis_restarts: int = 0
    ledger_restarts: int = 0
    broker_restarts: int = 0  # the queue's own server, where the driver runs one (restart_broker)
    ledger_done: int | None = None  # done records in a PostgreSQL, SQLite or DynamoDB ledger at the end (None: none)
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

    def check(
        self, sent_keys: Counter[str], expected_keys: set[str], ended: Mapping[str, str] | None = None
    ) -> None:
        """The verdict. ``ended``: each terminal job's key and state ("sent", or a fatal
        state), checked one by one: a job its queue called sent was sent exactly once, and
        a job its queue called fatal was not sent twice (the totals alone could pair a
        "sent" job that never went out with a "fatal" one that did)."""
        self.provider_sends = sum(sent_keys[k] for k in expected_keys)
        if ended is not None:
            wrong = sorted(k for k, state in ended.items() if state == "sent" and sent_keys[k] != 1)
            if wrong:
                self.violations.append(
                    f"{len(wrong)} jobs reported sent but not sent exactly once at the provider"
                    f" (e.g. {wrong[0]!r}: {sent_keys[wrong[0]]})"
                )
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
        ("provider shape", lambda r: r.provider),
        ("jobs", lambda r: r.jobs), ("deliveries (with duplicates)", lambda r: r.deliveries),
        ("duplicates delivered", lambda r: r.duplicates), ("workers SIGKILLed", lambda r: r.kills),
        ("worker restarts (kills and crashes)", lambda r: r.worker_restarts),
        ("Redis restarts", lambda r: r.redis_restarts),
        ("broker restarts (the driver's own server)", lambda r: r.broker_restarts),
        ("ledger PostgreSQL crashes (SIGKILL, restart)", lambda r: r.ledger_restarts),
        ("done records in the ledger (PostgreSQL, SQLite, DynamoDB)", lambda r: "—" if r.ledger_done is None
         else r.ledger_done),
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


def _events(rng: random.Random, kills: int) -> list[tuple[float, str]]:
    """When to strike, as the share of jobs already terminal: SIGKILLs spread over the run
    (10% to 80%), and one Redis restart in the middle; never all at the start or end."""
    events = [(0.1 + 0.7 * (i + rng.random()) / max(kills, 1), "kill") for i in range(kills)]
    events.append((0.5, "redis"))
    return sorted(events)


def _reason(terminal: Terminal) -> str:
    return terminal.code or ("retries exhausted" if terminal.state == "failed" else terminal.state)


class _Tally:
    """The jobs of a run and their latest terminal states, read at most every ``every`` seconds."""

    def __init__(self, driver: QueueDriver, jobs: list[QueueJob], every: float = 0.5) -> None:
        self.driver, self.jobs, self.every = driver, jobs, every
        self.job_ids = [job.id for job in jobs]
        self.states: dict[str, Terminal | None] = dict.fromkeys(self.job_ids)
        self._read_at = 0.0

    @property
    def done(self) -> set[str]:
        return {j for j, t in self.states.items() if t is not None}

    async def read(self, *, force: bool = False) -> bool:
        """Read the states again (when due, or ``force``); False while the queue's store is down."""
        if not force and time.monotonic() - self._read_at < self.every:
            return True
        self._read_at = time.monotonic()
        try:
            self.states = await self.driver.states(self.job_ids)
        except Exception:
            return False  # Redis restarting
        return True


async def run_queue(
    driver_class: type[QueueDriver], *, jobs: int, dup_rate: float, kills: int, seed: int | None, workers: int,
    adapters: Path, run_dir: RunDir, progress: bool = True, timeout: float = 900, ledger: str | None = None,
    provider: str = "header",
) -> ChaosReport:
    """One queue's run. ``ledger``: the workers' ledger URL (default: the run's own Redis,
    which is restarted mid-run); a ``postgresql://`` one gets tables of the run's own,
    made before the workers start and dropped after; ``own-postgres``: a throwaway
    PostgreSQL of the run's own, SIGKILLed and restarted mid-run as well."""
    rng = random.Random(seed)
    report = ChaosReport(queue=driver_class.name, jobs=jobs, provider=provider)
    pg: PostgresServer | None = None
    if ledger == OWN_POSTGRES:
        pg = PostgresServer().start()
        ledger = pg.dsn
    try:
        return await _run_queue(
            driver_class, report, rng, seed, jobs=jobs, dup_rate=dup_rate, kills=kills, workers=workers,
            adapters=adapters, run_dir=run_dir, progress=progress, timeout=timeout, ledger=ledger, pg=pg,
            provider=provider,
        )
    finally:
        if pg is not None:
            pg.cleanup()


async def _run_queue(
    driver_class: type[QueueDriver], report: ChaosReport, rng: random.Random, seed: int | None, *, jobs: int,
    dup_rate: float,
    kills: int, workers: int, adapters: Path, run_dir: RunDir, progress: bool, timeout: float, ledger: str | None,
    pg: PostgresServer | None, provider: str = "header",
) -> ChaosReport:
    the_shape = shape(provider)
    redis = RedisServer(appendonly=True).start()
    faults = Faults(rate_5xx=0.05, rate_lost=0.05, rate_in_flight=0.05, retry_after=0.2)
    start = time.monotonic()
    try:
        # 20 ms a send keeps every queue busy long enough for the kills to land mid-send
        async with MockProvider(
            api_key="chaos", faults=faults, seed=seed, processing_delay=0.02, **the_shape.mock
        ) as mock:
            driver = driver_class(
                mock, redis.url, profile=CHAOS, run_dir=run_dir, workers=workers, ledger_url=ledger or redis.url,
                adapters=adapters,
            )
            driver.env.update(the_shape.env)
            tables = await _own_tables(ledger, f"{CHAOS.name}-{driver.name}-{driver.tag}")
            try:
                await driver.start(supervise=True)
                try:
                    tally = await _drive(driver, redis, report, rng, jobs=jobs, dup_rate=dup_rate, kills=kills,
                                         progress=progress, timeout=timeout, pg=pg)
                finally:
                    await driver.stop()
                report.ledger_done = await tables.done_records()
            finally:
                await tables.drop()
            report.duplicates = report.deliveries - jobs
            report.worker_restarts = driver.restarts
            report.provider_requests = mock.stats.requests
            report.faults = dict(mock.stats.faults)
            ended = [t for t in tally.states.values() if t is not None]
            report.sent = sum(1 for t in ended if t.state == "sent")
            report.fatal = dict(Counter(_reason(t) for t in ended if t.state != "sent"))
            report.not_terminal = jobs - len(ended)
            key_of = {job.id: job.key for job in tally.jobs}
            report.check(
                mock.sends_by_key, set(key_of.values()),
                {key_of[job_id]: t.state for job_id, t in tally.states.items() if t is not None},
            )
    finally:
        redis.cleanup()
    report.seconds = time.monotonic() - start
    return report


class _Tables:
    """The Postgres tables a run made for its ledger (nothing for any other ledger)."""

    def __init__(self, url: str | None = None, table: str | None = None) -> None:
        self.url, self.table = url, table

    async def done_records(self) -> int | None:
        """How many done records the ledger's table holds (proof the workers used it)."""
        if self.url is None or self.table is None:
            return None
        if self.url.startswith("sqlite://"):
            return _sqlite_done(self.url, self.table)
        import asyncpg

        conn = await asyncpg.connect(self.url.split("?", 1)[0])
        try:
            count: int = await conn.fetchval(f"SELECT count(*) FROM \"{self.table}\" WHERE state = 'done'")
            return count
        finally:
            await conn.close()

    async def drop(self) -> None:
        if self.url is None or self.table is None or self.url.startswith("sqlite://"):
            return  # a SQLite file is the caller's: its tables stay, for a look afterwards
        import asyncpg

        conn = await asyncpg.connect(self.url.split("?", 1)[0])
        try:
            await conn.execute(f'DROP TABLE IF EXISTS "{self.table}", "{self.table}_jobs", "{self.table}_jti"')
        finally:
            await conn.close()


class _DynamoTable(_Tables):
    """The DynamoDB table a run's ``dynamodb://`` ledger uses: made before the workers start
    (with TTL on), its done records counted (the run's prefix), and deleted after."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, None)
        self.prefix = prefix

    async def done_records(self) -> int | None:
        from idemsend.ledger import DynamoDBLedger, ledger_from_url

        made = ledger_from_url(str(self.url), prefix=self.prefix)
        assert isinstance(made, DynamoDBLedger)
        try:
            db = await made.db.client()
            count = 0
            async for page in db.get_paginator("scan").paginate(
                TableName=made.table, FilterExpression="begins_with(pk, :p) AND st = :done",
                ExpressionAttributeValues={":p": {"S": f"{self.prefix}#r#"}, ":done": {"S": "done"}},
                Select="COUNT", ConsistentRead=True,
            ):
                count += int(page.get("Count", 0))
            return count
        finally:
            await made.aclose()

    async def drop(self) -> None:
        from idemsend.ledger import DynamoDBLedger, ledger_from_url

        made = ledger_from_url(str(self.url), prefix=self.prefix)
        assert isinstance(made, DynamoDBLedger)
        try:
            await (await made.db.client()).delete_table(TableName=made.table)
        finally:
            await made.aclose()


def _sqlite_done(url: str, table: str) -> int:
    import sqlite3

    from idemsend.ledger._url import sqlite_path

    con = sqlite3.connect(sqlite_path(url), timeout=30)
    try:
        count: int = con.execute(f"SELECT count(*) FROM \"{table}\" WHERE state = 'done'").fetchone()[0]
        return count
    finally:
        con.close()


async def _own_tables(ledger: str | None, prefix: str) -> _Tables:
    """Make the tables of the run's Postgres ledger (the workers' ``IDEMSEND_LEDGER_PREFIX``
    names them), or its DynamoDB table, before any worker starts: workers do not create
    tables. A SQLite ledger's workers make theirs; its done records are counted at the end all
    the same."""
    if ledger is not None and ledger.startswith("dynamodb://"):
        from idemsend.ledger import ledger_from_url

        made = ledger_from_url(ledger, prefix=prefix)
        try:
            await made.migrate()  # type: ignore[attr-defined]
        finally:
            await made.aclose()
        return _DynamoTable(ledger, prefix)
    if ledger is not None and ledger.startswith("sqlite://"):
        from idemsend.ledger import postgres_table_for_prefix

        return _Tables(ledger, postgres_table_for_prefix(prefix))
    if ledger is None or not ledger.startswith(("postgresql://", "postgres://")):
        return _Tables()
    from idemsend.adapters.qstash import PostgresReplayGuard
    from idemsend.ledger import ledger_from_url, postgres_table_for_prefix

    made = ledger_from_url(ledger, prefix=prefix)
    try:
        await made.migrate()  # type: ignore[attr-defined]
        # the QStash webhook's default replay guard lives beside the ledger (<table>_jti)
        await PostgresReplayGuard.for_ledger(made).migrate()
    finally:
        await made.aclose()
    return _Tables(ledger, postgres_table_for_prefix(prefix))


async def _drive(
    driver: QueueDriver, redis: RedisServer, report: ChaosReport, rng: random.Random, *, jobs: int,
    dup_rate: float, kills: int, progress: bool, timeout: float, pg: PostgresServer | None = None,
) -> _Tally:
    job_list = [
        QueueJob(f"{driver.name}-{driver.tag}-{i:06d}", {"user_id": f"user-{i}"},
                 {"to": [f"user-{i}@example.com"], "template": "welcome"})
        for i in range(jobs)
    ]
    tally = _Tally(driver, job_list)
    duplicates = [job for job in job_list if rng.random() < dup_rate]
    # each duplicate is delivered once more: right behind the first delivery (so the two
    # run at the same moment) or later in the run; a queue that refuses a job id still
    # pending gets all its duplicates after the job ran
    behind = {job.id for job in duplicates if driver.duplicates_while_pending and rng.random() < 0.5}
    late = [job for job in duplicates if job.id not in behind]
    bar = Progress(jobs, f"chaos {driver.name}", enabled=progress)
    events = _events(rng, kills)

    async def deliver(job: QueueJob) -> None:
        await driver.deliver(job)
        report.deliveries += 1

    async def fire_due() -> None:
        done = len(tally.done)
        while events and done >= events[0][0] * jobs:
            if events.pop(0)[1] == "kill":
                driver.kill_one(rng)
                report.kills += 1
                await asyncio.sleep(0.3)
            else:
                redis.stop()  # SIGTERM: the append-only file has every write (fsync always)
                await asyncio.sleep(1.0)
                redis.start()
                report.redis_restarts += 1
                if await driver.restart_broker():  # the queue's own server, where the driver runs one
                    report.broker_restarts += 1
                if pg is not None:  # the ledger's database crashes too: committed records survive (WAL)
                    pg.kill()
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(pg.start)
                    report.ledger_restarts += 1
            await driver.sweep_abandoned()

    for job in job_list:  # first deliveries, and the duplicates that ride right behind
        if await tally.read():
            await fire_due()
        await deliver(job)
        if job.id in behind:
            await deliver(job)
    pending_late = {job.id: job for job in late}
    if driver.duplicates_while_pending:  # later duplicates: now, while the run goes on
        for job in late:
            await deliver(job)
        pending_late = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if not await tally.read(force=True):
            continue
        done = tally.done
        await fire_due()
        for job_id in sorted(pending_late.keys() & done):  # a redelivery after the job ran
            await deliver(pending_late.pop(job_id))
        bar.advance(len(done) - bar.done)
        if len(done) == jobs and not pending_late and not events:
            await asyncio.sleep(1.0)  # redeliveries still running finish now
            if await tally.read(force=True) and len(tally.done) == jobs:
                break
    bar.close()
    return tally


async def run_chaos(
    queues: Sequence[str] | None = None, *, jobs: int = 10_000, dup_rate: float = 0.3, kills: int = 3,
    workers: int = 3, seed: int | None = None, adapters: Path = ADAPTERS, progress: bool = True,
    run_dir: RunDir | None = None, ledger: str | None = None, provider: str = "header", timeout: float = 900,
) -> list[ChaosReport]:
    """One report per queue (every registered queue by default), in order."""
    known = drivers()
    own_dir = run_dir is None
    logs = run_dir if run_dir is not None else RunDir("chaos")
    reports: list[ChaosReport] = []
    try:
        for name in queues if queues is not None else list(known):
            reports.append(await run_queue(
                known[name], jobs=jobs, dup_rate=dup_rate, kills=kills, seed=seed, workers=workers,
                adapters=adapters, run_dir=logs, progress=progress, ledger=ledger, provider=provider,
                timeout=timeout,
            ))
    except BaseException:
        if own_dir:
            logs.finish(keep=True)
        raise
    if own_dir:
        logs.finish(keep=any(r.violations for r in reports))
    return reports


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.chaos",
        description="exactly-once sends per queue under duplicates, faults, kills and a Redis restart",
    )
    parser.add_argument("--jobs", type=positive, default=10_000, help="jobs per queue")
    parser.add_argument(
        "--queues", default=None,
        help="comma-separated (default: every queue whose dependencies this environment has)",
    )
    parser.add_argument("--dup-rate", type=rate, default=0.3)
    parser.add_argument("--kills", type=int, default=3, help="workers SIGKILLed per queue during the run")
    parser.add_argument("--workers", type=positive, default=3, help="worker processes per queue (where it scales)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--adapters", type=Path, default=ADAPTERS, help="the adapters/ folder of a checkout")
    parser.add_argument(
        "--ledger", default=None, metavar="URL",
        help="the workers' ledger (default: the run's own Redis, restarted mid-run); e.g."
        " postgresql://postgres@127.0.0.1:5432/postgres gets tables of the run's own;"
        f" {OWN_POSTGRES}: a throwaway PostgreSQL, SIGKILLed and restarted mid-run"
        " (pip install 'idemsend[postgres]'); dynamodb://TABLE?region=...&endpoint_url=... gets that"
        " table made for the run (with TTL on) and deleted after (pip install 'idemsend[dynamodb]')",
    )
    parser.add_argument(
        "--provider", choices=SHAPES, default="header",
        help="the provider shape: the key in a header (default), in the JSON body (body), or a signed"
        " Standard Webhooks receiver (standard-webhooks)",
    )
    parser.add_argument(
        "--timeout", type=positive, default=900,
        help="seconds to wait for every job to end after the last delivery (a busy machine needs more)",
    )
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    known = drivers()
    if args.queues is None:
        queues = [name for name, cls in known.items() if cls.unavailable() is None]
    else:
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(known))
    if unknown:
        print(f"unknown queue(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    missing = [reason for q in queues if (reason := known[q].unavailable())]
    if missing:
        print("; ".join(missing), file=sys.stderr)
        return 2
    logs = RunDir("chaos")
    try:
        reports = asyncio.run(run_chaos(
            queues, jobs=args.jobs, dup_rate=args.dup_rate, kills=args.kills, workers=args.workers, seed=args.seed,
            adapters=args.adapters, progress=not args.quiet, run_dir=logs, ledger=args.ledger,
            provider=args.provider, timeout=args.timeout,
        ))
    except BaseException:
        logs.finish(keep=True)
        raise
    print(table(reports))
    failed = any(r.violations for r in reports)
    logs.finish(keep=failed)  # a kept folder is named on stderr
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
