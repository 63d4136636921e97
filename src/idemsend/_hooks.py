"""Hooks: where telemetry attaches, without the core importing any telemetry library.

A ``Hook`` is asked for a scope around every ``Engine.send`` call (a context manager, so
a tracing hook can make its span current and aiohttp's own client spans nest under it).
The scope is a ``SendObserver`` that the engine tells what happens inside the send: each
HTTP try, each wait, each ledger call, and the outcome. With no hook set the engine skips
all of it (one ``if`` per event).

```python
class PrintObserver(Observer):          # Observer: every event a no-op, override what you need
    def on_outcome(self, info):
        print(info.outcome, info.tries)

class PrintHook:
    @contextlib.contextmanager
    def send_scope(self, info):
        yield PrintObserver()

Engine(url, key=..., hooks=[PrintHook()])
```

``idemsend.contrib.otel`` (extra ``[otel]``) is the OpenTelemetry hook. Hook methods should
be quick (they run on the send path) and should not raise: one that does is logged (WARNING,
once per hook) and skipped, and the send goes on. Nothing the engine passes carries
a credential; ``SendInfo.key`` is the idempotency key itself (it may hold user ids: hash
it before exporting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ._log import fields

if TYPE_CHECKING:
    from ._errors import IdemsendError
    from ._result import SendResult

__all__ = [
    "Hook",
    "LedgerInfo",
    "Observer",
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
    """One HTTP try, as it ended: a frozen entry of the send's try history (what hooks
    hear, what every error and result carries as ``tries``).

    ``status`` is 0 when there was no HTTP answer: ``error`` then names the transport
    error's kind (``connect``, ``timeout``, ``network``), or ``rate_limit`` when this
    engine's own rate limit kept the request from leaving. ``may_have_run``: the request
    may have reached the provider and run (False only when the answer or the error proves
    it did not: a refused connection, a 429, a 4xx refusal, a local rate limit).
    ``body_size``: the answer's body in bytes, as received. ``delay``: the wait chosen
    before the next try (None when this try was the last)."""

    number: int
    status: int
    duration: float  # seconds
    outcome: Literal["sent", "in_flight", "retry", "fatal", "error"]
    reason: str | None = None  # the retry reason or the fatal code
    may_have_run: bool = True
    body_size: int = 0
    delay: float | None = None
    error: str | None = None


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
    tries: int  # HTTP tries this call made
    status: int | None = None
    code: str | None = None  # FatalError.code, RetryableError.reason, or UNEXPECTED_REPLAY (replayed)
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


class Observer:
    """A ``SendObserver`` that hears every event and does nothing with it: subclass it and
    override only the events you need (the others stay no-ops, so an observer never lacks
    a method the engine calls)."""

    __slots__ = ()

    def on_try(self, info: TryInfo) -> None:
        """After each HTTP try: nothing."""

    def on_wait(self, info: WaitInfo) -> None:
        """Before each in-process wait: nothing."""

    def on_ledger(self, info: LedgerInfo) -> None:
        """After each ledger call: nothing."""

    def on_outcome(self, info: OutcomeInfo) -> None:
        """Once, when the send ends: nothing."""


@runtime_checkable
class Hook(Protocol):
    """Attach to every send: return a context manager yielding a ``SendObserver``."""

    def send_scope(self, info: SendInfo) -> AbstractContextManager[SendObserver]:
        """Entered when ``send`` starts, exited when it ends."""
        ...


log = logging.getLogger("idemsend.engine")
# Hooks whose failure was logged at WARNING already. Weakly held where a hook allows it;
# else held (by id, with the hook kept alive, so that a new hook can never inherit a dead
# one's id and with it its "already reported").
_reported_weak: weakref.WeakSet[object] = weakref.WeakSet()
_reported_held: dict[int, object] = {}


def _first_failure(hook: object) -> bool:
    """Whether this is ``hook``'s first failure (and remember that it failed)."""
    try:
        first = hook not in _reported_weak
        _reported_weak.add(hook)
    except TypeError:  # not weakly referenceable (__slots__ without __weakref__)
        first = id(hook) not in _reported_held
        _reported_held[id(hook)] = hook
    return first


def _hook_failed(hook: object, where: str) -> None:
    """A hook raised: the send goes on. WARNING (with the traceback) the first time per
    hook, DEBUG after that, so a broken exporter cannot flood the log."""
    first = _first_failure(hook)
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "idemsend: hook %r raised in %s; the send goes on without it (logged once per hook at WARNING)",
        hook, where, exc_info=True, extra=fields(code="hook_failed", op=where),
    )


def _hooks_own(exc: BaseException) -> bool:
    """Whether what a hook raised is its own failure (logged and skipped) rather than
    something to pass on: KeyboardInterrupt and SystemExit pass, and so does a
    CancelledError while this task is being cancelled; a CancelledError the hook caught
    from something of its own (a cancelled future) is the hook's failure."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return False
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return False
        return task is not None and task.cancelling() == 0
    return True


class _Guarded:
    """Every entered hook's observer heard as one; an observer that raises is logged and
    skipped, never passed on to the send."""

    __slots__ = ("entered",)

    def __init__(self, entered: Sequence[tuple[Hook, SendObserver]]) -> None:
        self.entered = entered

    def _tell(self, event: str, info: object) -> None:
        for hook, observer in self.entered:
            try:
                getattr(observer, event)(info)
            except BaseException as exc:
                if not _hooks_own(exc):
                    raise
                _hook_failed(hook, event)

    def on_try(self, info: TryInfo) -> None:
        self._tell("on_try", info)

    def on_wait(self, info: WaitInfo) -> None:
        self._tell("on_wait", info)

    def on_ledger(self, info: LedgerInfo) -> None:
        self._tell("on_ledger", info)

    def on_outcome(self, info: OutcomeInfo) -> None:
        self._tell("on_outcome", info)


@contextlib.contextmanager
def send_scope(hooks: Sequence[Hook], info: SendInfo) -> Iterator[SendObserver]:
    """Enter every hook's scope (in order) and yield one observer for all of them.

    A hook must not change a send's fate: one whose ``send_scope`` (entering or exiting it)
    or observer raises is logged and left out, the send goes on, and the send's own result
    or error is what the caller gets (a scope's ``__exit__`` cannot swallow it either)."""
    entered: list[tuple[Hook, AbstractContextManager[SendObserver]]] = []
    observers: list[tuple[Hook, SendObserver]] = []
    error: BaseException | None = None
    try:
        for hook in hooks:
            try:
                scope = hook.send_scope(info)
                observers.append((hook, scope.__enter__()))
            except BaseException as exc:
                if not _hooks_own(exc):
                    raise
                _hook_failed(hook, "send_scope")
                continue
            entered.append((hook, scope))
        yield _Guarded(observers)
    except BaseException as exc:
        error = exc
        raise
    finally:
        passing: BaseException | None = None  # a cancellation or interrupt met while leaving
        for hook, scope in reversed(entered):
            try:
                if error is None:
                    scope.__exit__(None, None, None)
                else:
                    scope.__exit__(type(error), error, error.__traceback__)
            except BaseException as exc:
                if not _hooks_own(exc):
                    passing = passing or exc
                    continue
                _hook_failed(hook, "send_scope exit")
        if passing is not None and error is None:
            raise passing
