"""The small chaos run (CI size): every queue, duplicates, faults, SIGKILLs and a Redis restart."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.chaos import ChaosReport
from harness.queues import drivers

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.processes
def test_chaos_small_run_sends_each_job_exactly_once() -> None:
    queues = [name for name, cls in drivers().items() if cls.unavailable() is None]
    assert queues, "no queue can run in this environment"
    out = subprocess.run(
        [sys.executable, "-m", "harness.chaos", "--jobs", "200", "--seed", "11", "--quiet"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| |")}
    every = len(queues)
    assert rows["provider sends"] == ["200"] * every
    assert rows["double sends"] == ["0"] * every
    assert rows["lost jobs"] == ["0"] * every
    assert rows["verdict"] == ["OK"] * every
    assert all(int(n) >= 1 for n in rows["workers SIGKILLed"]) and rows["Redis restarts"] == ["1"] * every
    assert all(int(n) > 20 for n in rows["duplicates delivered"])
    assert "logs kept" not in out.stderr  # a passing run leaves no log folder behind


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.postgres
def test_chaos_small_run_with_a_postgres_ledger() -> None:
    """The same run with the workers' ledger in a throwaway PostgreSQL of the run's own: the
    queue's Redis restarts mid-run and the ledger's PostgreSQL is SIGKILLed and restarted
    (WAL recovery); each job is still sent exactly once."""
    import importlib.util

    from idemsend.testing._postgres_server import find_postgres_bindir

    if importlib.util.find_spec("asyncpg") is None:
        pytest.skip("asyncpg is not installed: pip install 'idemsend[postgres]' (nox -s postgres)")
    if drivers()["arq"].unavailable() is not None:
        pytest.skip("arq is not installed here (nox -s postgres installs it)")
    try:
        find_postgres_bindir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    out = subprocess.run(
        [sys.executable, "-m", "harness.chaos", "--queues", "arq", "--jobs", "200", "--seed", "12", "--quiet",
         "--ledger", "own-postgres"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| |")}
    assert rows["provider sends"] == ["200"] and rows["double sends"] == ["0"] and rows["lost jobs"] == ["0"]
    assert rows["verdict"] == ["OK"] and rows["Redis restarts"] == ["1"]
    assert rows["ledger PostgreSQL crashes (SIGKILL, restart)"] == ["1"]
    # the workers' ledger was PostgreSQL
    assert rows["done records in the ledger (PostgreSQL, SQLite, DynamoDB)"] == ["200"]


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.dynamodb
def test_chaos_small_run_with_a_dynamodb_ledger() -> None:
    """The same run with the workers' ledger in a DynamoDB table (moto's server, started
    here; the run makes the table, TTL on, and deletes it): each job sent exactly once."""
    import importlib.util
    import os
    import uuid

    for module in ("aiobotocore", "moto", "flask"):
        if importlib.util.find_spec(module) is None:
            pytest.skip("the DynamoDB ledger needs aiobotocore and moto[server] (nox -s dynamodb)")
    if drivers()["arq"].unavailable() is not None:
        pytest.skip("arq is not installed here (nox -s dynamodb installs it)")
    from harness.queues.sqs import CREDENTIALS, REGION, MotoServer

    env = {**os.environ, "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"], "AWS_DEFAULT_REGION": REGION}
    with MotoServer() as moto:
        ledger = f"dynamodb://chaos-{uuid.uuid4().hex[:10]}?region={REGION}&endpoint_url={moto.url}"
        out = subprocess.run(
            [sys.executable, "-m", "harness.chaos", "--queues", "arq", "--jobs", "200", "--seed", "13", "--quiet",
             "--ledger", ledger],
            capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
        )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| |")}
    assert rows["provider sends"] == ["200"] and rows["double sends"] == ["0"] and rows["lost jobs"] == ["0"]
    assert rows["verdict"] == ["OK"] and rows["Redis restarts"] == ["1"]
    # the workers' ledger was DynamoDB
    assert rows["done records in the ledger (PostgreSQL, SQLite, DynamoDB)"] == ["200"]


def test_chaos_refuses_an_unknown_queue() -> None:
    known = next(name for name, cls in drivers().items() if cls.unavailable() is None)
    out = subprocess.run(
        [sys.executable, "-m", "harness.chaos", "--queues", f"{known},nope", "--jobs", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 2 and "unknown queue(s) ['nope']" in out.stderr


def test_chaos_verdict_catches_violations() -> None:
    keys = {f"k{i}" for i in range(5)}
    clean = ChaosReport(queue="x", jobs=5, sent=5)
    clean.check(Counter(dict.fromkeys(keys, 1)), keys)
    assert clean.violations == []

    doubled = ChaosReport(queue="x", jobs=5, sent=5)
    doubled.check(Counter({**dict.fromkeys(keys, 1), "k0": 2}), keys)
    assert any("double" in v for v in doubled.violations)

    lost = ChaosReport(queue="x", jobs=5, sent=4, not_terminal=1)
    lost.check(Counter({k: 1 for k in keys if k != "k4"}), keys)
    assert any("never sent" in v for v in lost.violations) and any("not terminal" in v for v in lost.violations)

    fatal = ChaosReport(queue="x", jobs=5, sent=4, fatal={"IDEMPOTENCY_MISMATCH": 1})
    fatal.check(Counter({k: 1 for k in keys if k != "k4"}), keys)
    assert fatal.violations == []  # a fatal job with its reason is terminal, not lost

    # the totals balance (one send, one fatal) but the job called sent never went out and
    # the one called fatal did: only the per-key check sees it
    swapped = ChaosReport(queue="x", jobs=2, sent=1, fatal={"IDEMPOTENCY_MISMATCH": 1})
    swapped.check(Counter({"k1": 1}), {"k0", "k1"}, {"k0": "sent", "k1": "fatal"})
    assert swapped.violations and "reported sent but not sent exactly once" in swapped.violations[0]


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("shape", ["body", "standard-webhooks"])
def test_chaos_small_run_in_every_provider_shape(shape: str) -> None:
    """The same run against a body-key provider (the key in ``idempotency_key``, no header)
    and a signed Standard Webhooks receiver (every try signed afresh and verified, stale
    signatures refused): each job sent exactly once, and no signature ever refused."""
    if drivers()["arq"].unavailable() is not None:
        pytest.skip("arq is not installed here")
    out = subprocess.run(
        [sys.executable, "-m", "harness.chaos", "--queues", "arq", "--jobs", "150", "--seed", "13", "--quiet",
         "--provider", shape],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| |")}
    assert rows["provider shape"] == [shape]
    assert rows["provider sends"] == ["150"] and rows["double sends"] == ["0"] and rows["lost jobs"] == ["0"]
    assert rows["verdict"] == ["OK"] and "bad_signature" not in rows["faults injected"][0]
