"""GroupCommit on its own, on a real event loop: order, batching under load, at most
``max_pipelines`` batches at once, failures fanned out to every caller, cancellation.

``execute`` here is a small in-memory store whose round trips the tests hold open
(asyncio.Event gates) or slow down, so what is in flight at any moment is observable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from idemsend import ConfigError
from idemsend.ledger import GroupCommit, LedgerUnavailableError
from idemsend.ledger._group import isolate

pytestmark = pytest.mark.anyio


class Store:
    """``execute`` for the tests: doubles each number; records batches and concurrency."""

    def __init__(self, *, delay: float = 0.0, gated: bool = False) -> None:
        self.delay = delay
        self.gated = gated
        self.gates: list[asyncio.Event] = []
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.fail_with: BaseException | None = None

    async def execute(self, ops: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(ops))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gated:
                gate = asyncio.Event()
                self.gates.append(gate)
                await gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail_with is not None:
                raise self.fail_with
            return [op * 2 if op >= 0 else ValueError(f"negative {op}") for op in ops]
        finally:
            self.running -= 1

    async def open_gate(self, i: int) -> None:
        """Let batch ``i`` answer, and give the loop a few turns to move on."""
        while len(self.gates) <= i:
            await asyncio.sleep(0)
        self.gates[i].set()
        for _ in range(5):
            await asyncio.sleep(0)


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_every_caller_gets_its_own_result_in_order() -> None:
    store = Store()
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    results = await asyncio.gather(*(group.call(i) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    assert [op for batch in store.batches for op in batch] == list(range(50))  # sent in the order queued


async def test_calls_in_one_loop_turn_share_one_batch_and_on_batch_sees_it() -> None:
    store, sizes = Store(), []
    group: GroupCommit[int, int] = GroupCommit(store.execute, on_batch=sizes.append)
    futures = [group.submit(i) for i in range(100)]  # one turn: nothing has gone out yet
    assert group.pending == 100 and group.in_flight == 0 and store.batches == []
    assert await asyncio.gather(*futures) == [i * 2 for i in range(100)]
    assert store.batches == [list(range(100))] and sizes == [100]


async def test_at_low_load_each_call_goes_out_on_the_next_turn() -> None:
    store = Store()
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    for i in range(5):
        assert await group.call(i) == i * 2
    assert store.batches == [[0], [1], [2], [3], [4]]


async def test_at_most_max_pipelines_in_flight_and_the_next_batch_carries_what_queued() -> None:
    store = Store(gated=True)
    group: GroupCommit[int, int] = GroupCommit(store.execute, max_pipelines=2, max_batch=10)
    first = group.submit(0)
    await turns()
    second = group.submit(1)
    await turns()
    assert store.batches == [[0], [1]] and group.in_flight == 2
    queued = [group.submit(i) for i in range(2, 30)]
    await turns()
    assert len(store.batches) == 2 and group.pending == 28  # no third batch while two are out
    await store.open_gate(0)
    assert await first == 0
    assert store.batches[2] == list(range(2, 12))  # the next batch: what queued, up to max_batch
    assert group.in_flight == 2
    await store.open_gate(1)
    await store.open_gate(2)
    await store.open_gate(3)
    await store.open_gate(4)
    assert await second == 2
    assert await asyncio.gather(*queued) == [i * 2 for i in range(2, 30)]
    assert [len(b) for b in store.batches] == [1, 1, 10, 10, 8]
    assert store.most_running == 2


async def test_under_load_batches_grow_and_round_trips_shrink() -> None:
    store = Store(delay=0.01)
    group: GroupCommit[int, int] = GroupCommit(store.execute, max_batch=64, max_pipelines=2)

    async def caller(n: int) -> list[int]:
        return [await group.call(n * 100 + i) for i in range(10)]  # each caller: 10 calls in a row

    results = await asyncio.gather(*(caller(n) for n in range(200)))
    assert results == [[(n * 100 + i) * 2 for i in range(10)] for n in range(200)]
    assert sum(len(b) for b in store.batches) == 2000
    assert len(store.batches) < 2000 / 20  # far fewer round trips than calls
    assert max(len(b) for b in store.batches) == 64  # full batches under load, never over
    assert store.most_running == 2


async def test_more_than_max_batch_queued_uses_every_pipeline() -> None:
    store = Store(gated=True)
    group: GroupCommit[int, int] = GroupCommit(store.execute, max_batch=10, max_pipelines=3)
    futures = [group.submit(i) for i in range(25)]
    await turns()
    assert store.batches == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    for i in range(3):
        await store.open_gate(i)
    assert await asyncio.gather(*futures) == [i * 2 for i in range(25)]


async def test_a_failed_batch_fails_every_caller_and_the_next_batch_works() -> None:
    store = Store()
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    store.fail_with = ConnectionError("store down")
    results = await asyncio.gather(*(group.call(i) for i in range(10)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) and str(r) == "store down" for r in results), results
    store.fail_with = None
    assert await group.call(21) == 42
    await group.drain()
    assert group.in_flight == 0 and group.pending == 0


async def test_an_operation_that_failed_alone_fails_only_its_caller() -> None:
    store = Store()
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    results = await asyncio.gather(group.call(1), group.call(-1), group.call(3), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and "negative -1" in str(results[1])
    assert len(store.batches) == 1


async def test_error_maps_what_callers_receive_with_the_original_as_cause() -> None:
    store = Store()

    def unavailable(exc: BaseException) -> BaseException:
        return LedgerUnavailableError(f"{type(exc).__name__}: {exc}")

    group: GroupCommit[int, int] = GroupCommit(store.execute, error=unavailable)
    results = await asyncio.gather(group.call(1), group.call(-2), return_exceptions=True)
    assert results[0] == 2
    assert isinstance(results[1], LedgerUnavailableError) and isinstance(results[1].__cause__, ValueError)
    store.fail_with = OSError("reset")
    errors = await asyncio.gather(group.call(1), group.call(2), return_exceptions=True)
    assert all(isinstance(e, LedgerUnavailableError) and "OSError: reset" in str(e) for e in errors)
    assert errors[0] is not errors[1]  # one error per caller


async def test_a_wrong_number_of_results_fails_the_batch_instead_of_hanging() -> None:
    async def short(ops: Sequence[int]) -> list[int | BaseException]:
        return [1]

    group: GroupCommit[int, int] = GroupCommit(short)
    results = await asyncio.wait_for(asyncio.gather(group.call(1), group.call(2), return_exceptions=True), 5)
    assert all(isinstance(r, RuntimeError) and "1 results for 2 operations" in str(r) for r in results)


async def test_cancelling_a_batch_fails_its_callers_and_never_leaves_them_waiting() -> None:
    store = Store(gated=True)
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    callers = [asyncio.ensure_future(group.call(i)) for i in range(5)]
    await turns()
    [batch] = [t for t in asyncio.all_tasks() if t.get_name() == "idemsend-group-commit"]
    batch.cancel()  # e.g. the event loop is shutting down under it
    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 5)
    # a caller is told its batch was interrupted; it is not cancelled itself
    assert all(isinstance(r, RuntimeError) and "interrupted (CancelledError)" in str(r) for r in results)
    assert not any(c.cancelled() for c in callers)
    store.gated = False
    assert await group.call(4) == 8  # the group goes on


async def test_an_execute_that_raises_cancelled_error_fails_its_callers_as_mapped() -> None:
    async def cancelled(ops: Sequence[int]) -> list[int | BaseException]:
        raise asyncio.CancelledError  # an inner await cancelled under the batch

    group: GroupCommit[int, int] = GroupCommit(cancelled, error=lambda exc: LedgerUnavailableError(repr(exc)))
    results = await asyncio.wait_for(asyncio.gather(group.call(1), group.call(2), return_exceptions=True), 5)
    assert all(isinstance(r, LedgerUnavailableError) and "CancelledError" in str(r) for r in results)


async def test_a_cancelled_caller_does_not_disturb_the_others_and_its_operation_still_runs() -> None:
    store = Store(gated=True)
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    leaving = asyncio.ensure_future(group.call(1))
    staying = asyncio.ensure_future(group.call(2))
    await turns()
    leaving.cancel()
    await turns()
    await store.open_gate(0)
    assert await staying == 4 and leaving.cancelled()
    assert store.batches == [[1, 2]]
    # cancelled before its batch went out: still sent (a settlement must still be recorded)
    store.gated = False
    gone = asyncio.ensure_future(group.call(5))
    await asyncio.sleep(0)
    gone.cancel()
    assert await group.call(6) == 12
    assert store.batches[-1] == [5, 6]


async def test_drain_waits_for_queued_and_running_batches() -> None:
    store = Store(delay=0.05)
    group: GroupCommit[int, int] = GroupCommit(store.execute)
    futures = [group.submit(i) for i in range(3)]
    await group.drain()  # nothing had gone out yet: drain waits for it too
    assert all(f.done() for f in futures) and group.pending == 0 and group.in_flight == 0
    store.fail_with = ConnectionError("down")
    failing = group.submit(9)
    await group.drain()  # failures are the callers' to see, not drain's
    assert isinstance(failing.exception(), ConnectionError)


async def test_a_failing_on_batch_callback_is_logged_and_the_batch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def broken(size: int) -> None:
        raise RuntimeError("telemetry is down")

    group: GroupCommit[int, int] = GroupCommit(Store().execute, on_batch=broken)
    with caplog.at_level(logging.ERROR, logger="idemsend.ledger"):
        assert await group.call(2) == 4
    assert any("on_batch" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_sizes_are_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        GroupCommit(Store().execute, max_batch=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pipelines"):
        GroupCommit(Store().execute, max_pipelines=bad)  # type: ignore[arg-type]


# -- isolate: a batch that fails as a whole, split until the culprit stands alone -------------


class BadData(Exception):
    """What an atomic statement raises for one operation's data."""


class Atomic:
    """An all-or-nothing batch: doubles each number, or raises for the whole batch when it
    holds a negative one (``BadData``) or when the store is down."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.down = False

    async def run(self, ops: Sequence[int]) -> list[int]:
        self.runs.append(list(ops))
        if self.down:
            raise LedgerUnavailableError("the store is down")
        bad = [op for op in ops if op < 0]
        if bad:
            raise BadData(f"cannot store {bad}")
        return [op * 2 for op in ops]


def is_bad_data(exc: Exception) -> bool:
    return isinstance(exc, BadData)


@pytest.mark.parametrize("bad", [[], [0], [63], [17], [5, 40], list(range(0, 64, 9))])
async def test_isolate_gives_the_error_to_the_bad_operations_alone(bad: list[int]) -> None:
    ops = [-1 - i if i in bad else i for i in range(64)]
    atomic = Atomic()
    results = await isolate(atomic.run, ops, is_bad_data)
    assert [i for i, r in enumerate(results) if isinstance(r, BadData)] == bad
    assert [r for i, r in enumerate(results) if i not in bad] == [2 * i for i in range(64) if i not in bad]
    assert all(str(results[i]) == f"cannot store [{ops[i]}]" for i in bad)  # each its own error
    assert len(atomic.runs) <= 1 + 2 * len(bad) * 6  # halving 64: six levels, two runs a level per bad one


async def test_isolate_does_not_split_a_store_failure() -> None:
    atomic = Atomic()
    atomic.down = True
    results = await isolate(atomic.run, [1, -2, 3], is_bad_data)
    assert len(atomic.runs) == 1 and len({id(r) for r in results}) == 1
    assert isinstance(results[0], LedgerUnavailableError)


async def test_isolate_fails_only_the_part_that_met_a_store_failure() -> None:
    """The store goes down while the halves run: the half that ran before keeps its
    results; the rest get the store's error."""
    atomic = Atomic()
    real = atomic.run

    async def run(ops: Sequence[int]) -> list[int]:
        if len(atomic.runs) == 2:  # the whole batch, then the first half: the store goes down
            atomic.down = True
        return await real(ops)

    results = await isolate(run, [1, 2, -3, 4], is_bad_data)
    assert results[:2] == [2, 4]
    assert all(isinstance(r, LedgerUnavailableError) for r in results[2:])
