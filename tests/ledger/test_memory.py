"""MemoryLedger on its own: it stays within max_records (what it evicts, what it never
evicts, what it costs), and its clock is the one it was given.

The state machine it shares with every ledger is tests/ledger/test_contract.py."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
import tracemalloc

import pytest

from idemsend import ConfigError
from idemsend._log import key_ref
from idemsend.ledger import Busy, Claimed, ClaimResult, Done, MemoryLedger, Unstable

pytestmark = pytest.mark.anyio

LOG = "idemsend.ledger"
BODY = json.dumps({"to": ["ada@example.com"], "subject": "Welcome", "html": "<p>" + "x" * 2000 + "</p>"}).encode()
FP = hashlib.sha256(BODY).hexdigest()
P1 = b'{"to":["a"]}'
F1 = hashlib.sha256(P1).hexdigest()


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def claim(ledger: MemoryLedger, key: str, job_id: str, token: str, lease: float = 30) -> ClaimResult:
    """Claim ``key`` with the test body."""
    return await ledger.claim(key=key, job_id=job_id, payload=BODY, fingerprint=FP, token=token, lease=lease)


async def send(ledger: MemoryLedger, i: int, *, lease: float = 30) -> None:
    """One completed send: claim, then complete."""
    claimed = await claim(ledger, f"k{i}", f"j{i}", f"t{i}", lease)
    assert isinstance(claimed, Claimed) and claimed.fresh
    assert await ledger.complete(key=f"k{i}", token=f"t{i}", response={"id": f"em_{i}"}) == "ok"


def ledger_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG and r.levelno == logging.WARNING]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_max_records_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_records"):
        MemoryLedger(max_records=bad)  # type: ignore[arg-type]


def test_retention_and_provider_window_are_validated() -> None:
    with pytest.raises(ConfigError, match="retention"):
        MemoryLedger(retention=0)
    with pytest.raises(ConfigError, match="provider_window"):
        MemoryLedger(provider_window=-1)


async def test_a_full_ledger_evicts_the_oldest_completed_records() -> None:
    clock = Clock()
    ledger = MemoryLedger(max_records=100, clock=clock, provider_window=60)
    for i in range(250):
        await send(ledger, i)
        clock.now += 1
    assert len(ledger) == 100 and ledger.evictions == 150
    assert [await ledger.get(f"k{i}") for i in range(150)] == [None] * 150
    for i in range(150, 250):
        assert await claim(ledger, f"k{i}", f"j{i}", "again", 30) == Done({"id": f"em_{i}"}, FP)
    assert len(ledger._jobs) <= 100  # the job-id map is bounded with the records


async def test_completed_records_go_before_in_flight_ones_and_live_leases_never(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    ledger = MemoryLedger(max_records=10, clock=clock)
    for i in range(3):  # sends under way, live leases
        assert isinstance(await claim(ledger, f"live{i}", f"jl{i}", f"tl{i}", 1000), Claimed)
    for i in range(3):  # abandoned sends: their leases run out (a worker died)
        assert isinstance(await claim(ledger, f"dead{i}", f"jd{i}", f"td{i}", 5), Claimed)
    clock.now += 10
    for i in range(30):
        await send(ledger, i)
    assert len(ledger) == 10
    # completed records went first: the newest four completed ones are what is left of them
    assert [i for i in range(30) if await ledger.get(f"k{i}") is not None] == [26, 27, 28, 29]
    assert [await ledger.get(f"live{i}") is not None for i in range(3)] == [True] * 3
    assert [await ledger.get(f"dead{i}") is not None for i in range(3)] == [True] * 3
    # new sends take the four completed records' places, then the abandoned ones', oldest first
    for i in range(5):
        assert isinstance(await claim(ledger, f"new{i}", f"jn{i}", f"tn{i}", 1000), Claimed)
    assert len(ledger) == 10 and [i for i in range(30) if await ledger.get(f"k{i}") is not None] == []
    assert [await ledger.get(f"dead{i}") is None for i in range(3)] == [True, False, False]
    with caplog.at_level(logging.WARNING, logger=LOG):
        for i in range(5, 7):
            assert isinstance(await claim(ledger, f"new{i}", f"jn{i}", f"tn{i}", 1000), Claimed)
    assert [await ledger.get(f"dead{i}") for i in range(3)] == [None] * 3
    # the first abandoned one warned; the rest wait a minute
    [warning] = [w for w in ledger_warnings(caplog) if "abandoned" in w]
    assert "evicted 1 abandoned in-flight record(s)" in warning and key_ref("dead0") in warning
    assert [await ledger.get(f"live{i}") is not None for i in range(3)] == [True] * 3
    # a released lease is abandoned at once (the send may be resumed, but not this record)
    assert await ledger.release(key="new0", token="tn0") == "ok"
    await claim(ledger, "new9", "jn9", "tn9", 1000)
    assert await ledger.get("new0") is None and await ledger.get("live0") is not None


async def test_live_leases_are_kept_past_the_bound_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    ledger = MemoryLedger(max_records=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOG):
        for i in range(6):
            assert isinstance(await claim(ledger, f"k{i}", f"j{i}", f"t{i}", 1000), Claimed)
    assert len(ledger) == 6 and ledger.evictions == 0
    [warning] = ledger_warnings(caplog)  # rate-limited: one a minute
    assert "max_records=3" in warning and "live lease" in warning and "never evicted" in warning
    for i in range(6):  # every send under way still holds its key
        assert isinstance(await claim(ledger, f"k{i}", f"j{i}", "intruder", 30), Busy)


async def test_evicting_done_records_inside_the_provider_window_warns_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    ledger = MemoryLedger(max_records=10, clock=clock, provider_window=3600)
    with caplog.at_level(logging.WARNING, logger=LOG):
        for i in range(30):
            await send(ledger, i)
        assert ledger.evictions == ledger.evictions_in_window == 20
        [first] = ledger_warnings(caplog)
        assert "max_records=10" in first and "evicted 1 done record(s)" in first and key_ref("k0") in first
        assert "k0" not in first.replace(key_ref("k0"), "")
        assert "protection past the provider window is lost" in first and "1h" in first
        clock.now += 61
        for i in range(30, 35):
            await send(ledger, i)
        second = ledger_warnings(caplog)[1]
        assert "evicted 20 done record(s)" in second  # the 19 since the first warning, and this one
        assert len(ledger_warnings(caplog)) == 2
        # records whose provider window has passed are evicted without a warning
        clock.now += 3600
        for i in range(35, 45):
            await send(ledger, i)
        assert len(ledger_warnings(caplog)) == 2
    assert ledger.evictions == 35 and ledger.evictions_in_window == 25


async def test_the_job_id_map_is_bounded_too() -> None:
    ledger = MemoryLedger(max_records=20)
    # a job's entry lives as long as its key's record: evicted with it
    for i in range(100):
        await send(ledger, i)
    assert len(ledger._jobs) == 20 and set(ledger._jobs) == {f"j{i}" for i in range(80, 100)}
    # many more jobs for one key (same body): each is noted, within the bound
    for i in range(100, 200):
        assert await claim(ledger, "k99", f"j{i}", f"t{i}", 30) == Done({"id": "em_99"}, FP)
    assert len(ledger._extra_jobs) == 20
    assert await claim(ledger, "elsewhere", "j199", "tx", 30) == Unstable("k99")
    # a job whose send is under way keeps its entry: its unstable key is still caught
    await claim(ledger, "busy-key", "busy-job", "tb", 1000)
    for i in range(200, 300):
        await send(ledger, i)
    assert len(ledger._jobs) == 20
    assert await claim(ledger, "other-key", "busy-job", "tx", 30) == Unstable("busy-key")
    # forgetting or clearing a record drops its job's entry with it
    await ledger.release(key="busy-key", token="tb", forget=True)
    assert isinstance(await claim(ledger, "other-key", "busy-job", "tx", 30), Claimed)


async def test_settled_records_keep_no_body() -> None:
    ledger = MemoryLedger()
    await send(ledger, 1)
    await claim(ledger, "f", "jf", "tf", 30)
    await ledger.fail(key="f", token="tf", code="INVALID", message="bad address")
    for key in ("k1", "f"):
        rec = ledger._settled[key]
        assert rec.payload == b"" and rec.token == ""
    assert isinstance(ledger._settled["k1"].response, bytes)  # compact JSON, not a dict tree


async def test_eviction_does_not_scan(caplog: pytest.LogCaptureFixture) -> None:
    """Past the bound with 22,000 live leases (never evicted), each further claim must not
    walk them: 100,000 more sends would take minutes if it did (about 1 s if not)."""
    ledger = MemoryLedger(max_records=1000)
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR, logger=LOG):
        for i in range(22_000):
            await claim(ledger, f"k{i}", f"j{i}", f"t{i}", 3600)
        for i in range(100_000):
            await send(ledger, 100_000 + i)
    elapsed = time.perf_counter() - started
    assert len(ledger) == 22_001 and elapsed < 10, elapsed


async def test_bytes_per_record() -> None:
    """What a completed record costs: tracemalloc over 10,000 claim+complete pairs, with a
    realistic key, job id, fingerprint and recorded response (engine shape). The number is
    in MemoryLedger's docstring and docs/ledgers.md; run with -s to see it."""
    ledger = MemoryLedger()
    n = 10_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            key, job = f"welcome:u{i:06d}:job-{i:06d}", f"job-{i:06d}"
            fp, token = hashlib.sha256(key.encode()).hexdigest(), f"{'ab' * 8}-{i}"
            await ledger.claim(key=key, job_id=job, payload=BODY, fingerprint=fp, token=token, lease=30)
            response = {"id": f"em_{i:08d}", "object": "email", "to": ["ada@example.com"]}
            record = {"id": f"em_{i:08d}", "status": 200, "response": response}
            await ledger.complete(key=key, token=token, response=record)
        gc.collect()
        per_record = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    print(f"\nMemoryLedger: {per_record:.0f} bytes per completed record ({n} records)")
    assert len(ledger) == n
    assert per_record < 900  # was 1,113 before the bound (the response kept as a dict tree)


# -- the clock: age is measured on the ledger's clock -----------------------------------------


async def test_memory_ledger_age_is_on_its_own_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    first = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
    assert isinstance(first, Claimed) and first.first_sent_at == 1_000_000.0 and first.age == 0
    await ledger.release(key="k", token="tok-a")
    now[0] += 7200
    real = time.time()
    for i, skew in enumerate((-10 * 3600, 0, 10 * 3600)):  # the worker's clock is hours off, either way
        monkeypatch.setattr(time, "time", lambda skew=skew: real + skew)
        again = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token=f"tok-{i}", lease=30)
        assert isinstance(again, Claimed) and not again.fresh
        assert again.first_sent_at == 1_000_000.0 and again.age == 7200
        assert await ledger.release(key="k", token=f"tok-{i}") == "ok"
    monkeypatch.undo()
    now[0] -= 9000  # a ledger clock that went backwards never gives a negative age
    behind = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-x", lease=30)
    assert isinstance(behind, Claimed) and behind.age == 0


async def test_leases_and_retention_are_on_its_own_clock() -> None:
    clock = Clock()
    ledger = MemoryLedger(clock=clock, retention=100)
    await claim(ledger, "k", "j", "tok-a", 10)
    clock.now += 9
    busy = await claim(ledger, "k", "j", "tok-b", 10)
    assert isinstance(busy, Busy) and busy.retry_after == 1
    clock.now += 2
    assert isinstance(await claim(ledger, "k", "j", "tok-b", 10), Claimed)
    assert await ledger.complete(key="k", token="tok-b", response={"id": "x"}) == "ok"
    clock.now += 99
    assert await ledger.get("k") is not None  # retention counts from the completion
    clock.now += 1
    assert await ledger.get("k") is None


async def test_evicting_a_stale_or_mismatch_record_warns(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MemoryLedger(max_records=2)
    for key, code in (("stale", "STALE_REPLAY"), ("other", "INVALID")):
        await ledger.claim(key=key, job_id=key, payload=b"{}", fingerprint="f" * 64, token="t", lease=30)
        await ledger.fail(key=key, token="t", code=code, message="m")
    with caplog.at_level(logging.WARNING, logger="idemsend.ledger"):
        for key in ("new-1", "new-2"):
            await ledger.claim(key=key, job_id=key, payload=b"{}", fingerprint="f" * 64, token="t", lease=30)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "STALE_REPLAY" in lines[0] and key_ref("stale") in lines[0], lines
