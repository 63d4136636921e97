"""``Observer``: the no-op ``SendObserver`` a hook subclasses to hear only some events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from idemsend import Engine, Job, LedgerInfo, Observer, OutcomeInfo, SendInfo, SendObserver, TryInfo, WaitInfo
from idemsend.testing import MockProvider

pytestmark = pytest.mark.anyio


def test_every_event_is_a_no_op() -> None:
    observer = Observer()
    assert isinstance(observer, SendObserver)
    observer.on_try(TryInfo(number=1, status=200, duration=0.0, outcome="sent"))
    observer.on_wait(WaitInfo(kind="backoff", delay=0.1, reason="provider"))
    observer.on_ledger(LedgerInfo(op="claim", duration=0.0, result="claimed"))
    observer.on_outcome(OutcomeInfo(outcome="sent", tries=1))
    assert not hasattr(observer, "__dict__")  # slotted: a subclass can stay slotted too


class Outcomes(Observer):
    """Hears only the outcome; the other events fall through to Observer's no-ops."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    @contextlib.contextmanager
    def send_scope(self, info: SendInfo) -> Iterator[Outcomes]:
        yield self

    def on_outcome(self, info: OutcomeInfo) -> None:
        self.outcomes.append(info.outcome)


async def test_a_subclass_that_overrides_one_event_hears_it_through_a_send() -> None:
    hook = Outcomes()
    async with MockProvider() as provider, Engine(
        provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key, hooks=[hook]
    ) as engine:
        await engine.send(Job("job-1", {"user_id": "u1"}), {"to": ["ada@example.com"]})
        await engine.send(Job("job-1", {"user_id": "u1"}), {"to": ["ada@example.com"]})
    assert hook.outcomes == ["sent", "replayed"]
