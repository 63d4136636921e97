"""Single-flight: concurrent sends of one key in one engine share one request.

The first send of a key runs; a send of the same key that arrives while it runs waits for
its result (``replayed=True``, its own job id) or its error. A joiner with another body
gets what a moment later would: with a ledger, the same job gets the frozen first body's
result (the drift is logged); otherwise (or for another job) the provider would answer
IDEMPOTENCY_MISMATCH, so it is a ``MismatchError`` at once. A joiner of a send that was
interrupted (cancelled) gets a ``RetryableError(reason="interrupted")`` that says it may
have been sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ._errors import IdemsendError, MismatchError, RetryableError
from ._guard import log_drift
from ._prepared import PreparedSend
from ._result import SendResult

__all__ = ["SingleFlight"]


class _Flight:
    """A send under way: what a concurrent send of the same key checks, and the future it
    waits on (made only when one joins: most sends have no joiner)."""

    __slots__ = ("fp", "future", "job_id")

    def __init__(self, fp: str, job_id: str) -> None:
        self.fp = fp
        self.job_id = job_id
        self.future: asyncio.Future[SendResult] | None = None


class SingleFlight:
    """The sends under way in one engine, by key (see the module docstring).
    ``drift_is_answered``: a ledger stands behind the engine, so the same job with a
    drifted body is answered with the first body's result instead of a mismatch."""

    __slots__ = ("_drift_is_answered", "_flights")

    def __init__(self, *, drift_is_answered: bool) -> None:
        self._drift_is_answered = drift_is_answered
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, send: PreparedSend, deliver: Callable[[], Awaitable[SendResult]]) -> SendResult:
        """``await deliver()`` for ``send``, unless a send of its key is under way: then its outcome."""
        key, job, fp = send.key, send.job, send.fingerprint
        flight = self._flights.get(key)
        if flight is not None:
            return await self._join(flight, send)
        flight = self._flights[key] = _Flight(fp, job.id)
        try:
            result = await deliver()
        except IdemsendError as exc:
            if flight.future is not None:
                flight.future.set_exception(exc)
            raise
        except BaseException as exc:
            if flight.future is not None:
                flight.future.set_exception(RetryableError(
                    f"the send of key {key!r} was interrupted ({type(exc).__name__}): it may have been sent",
                    key=key, reason="interrupted", detail=f"the send it joined ended with {type(exc).__name__}",
                    maybe_sent=True,
                ))
            raise
        else:
            if flight.future is not None:
                flight.future.set_result(result)
            return result
        finally:
            del self._flights[key]
            future = flight.future
            if future is not None and future.done() and not future.cancelled():
                future.exception()  # mark retrieved: joiners are optional

    async def _join(self, flight: _Flight, send: PreparedSend) -> SendResult:
        key, job, fp = send.key, send.job, send.fingerprint
        if flight.fp != fp:
            # Answer as a moment later would: with a ledger, the same job gets the frozen
            # first body's result (drift is logged); otherwise the provider would answer
            # IDEMPOTENCY_MISMATCH.
            if not self._drift_is_answered or flight.job_id != job.id:
                raise MismatchError(
                    f"key {key!r} is being sent right now with a different body"
                    f" (sending {flight.fp[:12]}, this {fp[:12]})",
                    key=key,
                )
            log_drift(job.id, flight.fp, fp, key)
        if flight.future is None:  # the first joiner: made only when someone joins
            flight.future = asyncio.get_running_loop().create_future()
        result = await asyncio.shield(flight.future)
        return replace(result, replayed=True, job_id=job.id)
