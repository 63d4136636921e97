"""Hooks: where telemetry attaches, without the core importing any telemetry library.

A ``Hook`` is asked for a scope around every ``Engine.send`` call (a context manager, so
a tracing hook can make its span current and aiohttp's own client spans nest under it).
The scope is a ``SendObserver`` that the engine tells what happens inside the send: each
HTTP try, each wait, each ledger call, and the outcome. With no hook set the engine skips
all of it (one ``if`` per event).

```python
class PrintHook:
    @contextlib.contextmanager
    def send_scope(self, info):
        yield PrintObserver(info)       # has on_try, on_wait, on_ledger, on_outcome

Engine(url, key=..., hooks=[PrintHook()])
```

``idemsend.contrib.otel`` (extra ``[otel]``) is the OpenTelemetry hook. Hook methods must
not raise and must be quick: they run on the send path. Nothing the engine passes carries
a credential; ``SendInfo.key`` is the idempotency key itself (it may hold user ids: hash
it before exporting).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._errors import IdemsendError
    from ._result import SendResult

__all__ = [
    "Hook",
    "LedgerInfo",
    "OutcomeInfo",
    "SendInfo",
    "SendObserver",
    "TryInfo",
    "WaitInfo",
]


@dataclass(frozen=True, slots=True)
class SendInfo:
    """One ``send`` call, as it starts."""

    key: str
    job_id: str
    attempt: int | None  # the queue's delivery count, when the adapter knows it
    queue: str | None  # "arq", "rq", "qstash", ... (None: called directly)
    server_address: str  # the provider's host
    server_port: int | None
    url: str  # the endpoint, without credentials or query


@dataclass(frozen=True, slots=True)
class TryInfo:
    """One HTTP try: ``status`` 0 when there was no HTTP answer (a transport error)."""

    number: int
    status: int
    duration: float  # seconds
    outcome: Literal["sent", "in_flight", "retry", "fatal", "error"]
    reason: str | None = None  # the retry reason or the fatal code


@dataclass(frozen=True, slots=True)
class WaitInfo:
    """An in-process wait before the next try or claim."""

    kind: Literal["in_flight", "busy", "backoff"]
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """One ledger call: ``op`` is claim, complete, fail, renew, release or start;
    ``result`` is what it answered (claimed, done, fatal, busy, unstable, conflict, ok,
    recreated, missing, superseded) or ``"unavailable"``."""

    op: str
    duration: float
    result: str


@dataclass(frozen=True, slots=True)
class OutcomeInfo:
    """How the send ended: ``outcome`` is sent (this call caused the send), replayed (the
    provider or another coroutine had sent it), from_ledger, retryable or fatal."""

    outcome: Literal["sent", "replayed", "from_ledger", "retryable", "fatal"]
    tries: int
    status: int | None = None
    code: str | None = None  # FatalError.code, or RetryableError.reason
    result: SendResult | None = None
    error: IdemsendError | None = None


@runtime_checkable
class SendObserver(Protocol):
    """What a hook hears during one send."""

    def on_try(self, info: TryInfo) -> None:
        """After each HTTP try."""
        ...

    def on_wait(self, info: WaitInfo) -> None:
        """Before each in-process wait."""
        ...

    def on_ledger(self, info: LedgerInfo) -> None:
        """After each ledger call."""
        ...

    def on_outcome(self, info: OutcomeInfo) -> None:
        """Once, when the send ends (also when it raises)."""
        ...


@runtime_checkable
class Hook(Protocol):
    """Attach to every send: return a context manager yielding a ``SendObserver``."""

    def send_scope(self, info: SendInfo) -> AbstractContextManager[SendObserver]:
        """Entered when ``send`` starts, exited when it ends."""
        ...


class _Many:
    """Several observers heard as one."""

    __slots__ = ("observers",)

    def __init__(self, observers: Sequence[SendObserver]) -> None:
        self.observers = observers

    def on_try(self, info: TryInfo) -> None:
        for observer in self.observers:
            observer.on_try(info)

    def on_wait(self, info: WaitInfo) -> None:
        for observer in self.observers:
            observer.on_wait(info)

    def on_ledger(self, info: LedgerInfo) -> None:
        for observer in self.observers:
            observer.on_ledger(info)

    def on_outcome(self, info: OutcomeInfo) -> None:
        for observer in self.observers:
            observer.on_outcome(info)


@contextlib.contextmanager
def send_scope(hooks: Sequence[Hook], info: SendInfo) -> Iterator[SendObserver]:
    """Enter every hook's scope (in order) and yield one observer for all of them."""
    if len(hooks) == 1:
        with hooks[0].send_scope(info) as observer:
            yield observer
        return
    with ExitStack() as stack:
        yield _Many([stack.enter_context(hook.send_scope(info)) for hook in hooks])
