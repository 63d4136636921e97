"""A hook never changes a send's fate: one that raises anywhere (making its scope, entering
it, in an observer method, leaving it) is logged and skipped; the send goes on, the
provider runs it once, and the caller gets the send's own result or error."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from idemsend import Engine, Job, MismatchError, OutcomeInfo, SendInfo
from idemsend.ledger import MemoryLedger
from idemsend.testing import Faults, MockProvider

pytestmark = pytest.mark.anyio

KEY = "welcome:{user_id}:{job_id}"


class Recorder:
    """A well-behaved hook: what it heard."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.outcomes: list[OutcomeInfo] = []

    @contextlib.contextmanager
    def send_scope(self, info: SendInfo) -> Iterator[Any]:
        self.events.append("enter")
        try:
            yield self
        finally:
            self.events.append("exit")

    def on_try(self, info: Any) -> None:
        self.events.append(f"try {info.status}")

    def on_wait(self, info: Any) -> None:
        self.events.append("wait")

    def on_ledger(self, info: Any) -> None:
        self.events.append(f"ledger {info.op} {info.result}")

    def on_outcome(self, info: OutcomeInfo) -> None:
        self.outcomes.append(info)


class Broken:
    """A hook that raises at ``where``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def _maybe(self, here: str) -> None:
        if here == self.where:
            raise RuntimeError(f"exporter down ({here})")

    @contextlib.contextmanager
    def _scope(self) -> Iterator[Any]:
        self._maybe("enter")
        yield self
        self._maybe("exit")

    def send_scope(self, info: SendInfo) -> Any:
        self._maybe("send_scope")
        return self._scope()

    def on_try(self, info: Any) -> None:
        self._maybe("on_try")

    def on_wait(self, info: Any) -> None:
        self._maybe("on_wait")

    def on_ledger(self, info: Any) -> None:
        self._maybe("on_ledger")

    def on_outcome(self, info: Any) -> None:
        self._maybe("on_outcome")


WHERE = ["send_scope", "enter", "on_try", "on_wait", "on_ledger", "on_outcome", "exit"]


@pytest.mark.parametrize("where", WHERE)
async def test_a_hook_that_raises_never_changes_the_send(where: str, caplog: pytest.LogCaptureFixture) -> None:
    broken, recorder = Broken(where), Recorder()
    async with MockProvider(faults=Faults(retry_after=0.0)) as provider:
        provider.script("5xx", key="welcome:u1:j1")  # a retry, so on_wait is heard too
        ledger = MemoryLedger()
        async with Engine(provider.emails_url, key=KEY, api_key=provider.api_key, ledger=ledger,
                          hooks=[broken, recorder]) as engine:
            with caplog.at_level(logging.DEBUG, logger="idemsend.engine"):
                first = await engine.send(Job("j1", {"user_id": "u1"}), {"to": ["a@example.com"]})
                again = await engine.send(Job("j1", {"user_id": "u1"}), {"to": ["a@example.com"]})
        assert first.id is not None and not first.replayed and first.attempts == 2
        assert again.id == first.id and again.from_ledger
        assert provider.sends_for("welcome:u1:j1") == 1
    # the other hook heard everything, and the broken one was reported, once at WARNING
    assert recorder.events[0] == "enter" and "try 503" in recorder.events and "try 200" in recorder.events
    assert "wait" in recorder.events and "exit" in recorder.events and "ledger complete ok" in recorder.events
    assert [o.result is not None for o in recorder.outcomes] == [True, True]
    failures = [r for r in caplog.records if getattr(r, "idemsend_code", None) == "hook_failed"]
    label = {"enter": "send_scope", "exit": "send_scope exit"}.get(where, where)
    assert failures and all(f"raised in {label};" in r.getMessage() for r in failures)
    assert [r.levelno for r in failures].count(logging.WARNING) == 1


async def test_the_sends_own_error_reaches_the_caller_whatever_the_hook_does() -> None:
    """A hook whose scope raises on exit cannot replace (or swallow) the send's error."""

    class Swallower(Broken):
        @contextlib.contextmanager
        def _scope(self) -> Iterator[Any]:
            try:
                yield self
            except Exception:
                raise RuntimeError("hook replaced the error") from None

    async with MockProvider() as provider:
        async with Engine(provider.emails_url, key=KEY, api_key=provider.api_key,
                          hooks=[Swallower("never")]) as engine:
            await engine.send(Job("j1", {"user_id": "u1"}), {"to": ["a@example.com"]})
            with pytest.raises(MismatchError):  # the same key with another body: the provider refuses it
                await engine.send(Job("j1", {"user_id": "u1"}), {"to": ["b@example.com"]})
        assert provider.sends_for("welcome:u1:j1") == 1


async def test_a_cancelled_error_of_the_hooks_own_is_its_failure_not_the_sends() -> None:
    """A hook that trips over a cancelled future of its own raises CancelledError from
    on_try; the task is not being cancelled, so the send goes on and is recorded done."""
    import asyncio

    class Tripping(Recorder):
        def on_try(self, info: Any) -> None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            future.result()  # raises CancelledError

    async with MockProvider() as provider:
        ledger = MemoryLedger()
        async with Engine(provider.emails_url, key=KEY, api_key=provider.api_key, ledger=ledger,
                          hooks=[Tripping()]) as engine:
            result = await engine.send(Job("j1", {"user_id": "u1"}), {"to": ["a@example.com"]})
        assert result.id is not None and provider.sends_for("welcome:u1:j1") == 1
        record = await ledger.get("welcome:u1:j1")
        assert record is not None and record.state == "done"


async def test_cancelling_the_send_still_cancels_it_with_a_hook() -> None:
    """A real cancellation of the sending task passes through the hooks."""
    import asyncio

    recorder = Recorder()
    async with MockProvider() as provider:
        provider.delay("welcome:u1:j1", 2.0)
        async with Engine(provider.emails_url, key=KEY, api_key=provider.api_key, hooks=[recorder]) as engine:
            task = asyncio.create_task(engine.send(Job("j1", {"user_id": "u1"}), {"to": ["a@example.com"]}))
            while provider.stats.requests == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert recorder.events[0] == "enter" and recorder.events[-1] == "exit"
