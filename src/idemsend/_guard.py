"""The ledger guard: claim the key, answer from the ledger when it can, keep the lease
while the HTTP part runs, and settle the outcome.

The decisions (what a claim's answer means, how an outcome settles the record) are pure
functions in ``_decide.py``; this module is the I/O around them.

* **claim loop**: a done record answers at once (``from_ledger``); a fatal one raises its
  recorded error; another worker's live lease is waited on like an IN_FLIGHT, within the
  in-flight budget.
* **stale rule**: an unknown outcome older than the provider window minus the margin, by
  the ledger's own clock (``Claimed.age``), is not resent (``StaleReplayError``).
* **frozen body**: a resumed claim sends the first attempt's bytes (drift is logged).
* **leases**: one renewer task per engine keeps every lease it holds.
* **settling**: done -> ``complete`` (id, status, and the response body when it was at most
  ``MAX_RECORDED_RESPONSE`` bytes); fatal for the key -> ``fail``; a setup error or an
  unknown outcome -> ``release`` (forgetting a fresh record whose tries ran nothing). A
  ledger that cannot be reached after the send does not undo the send: the lease runs out
  and the next attempt resumes it, and the provider replays it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar, assert_never

from ._attempts import Attempts, finite_delay
from ._config import InFlightWait, Provider
from ._decide import (
    MAX_RECORDED_RESPONSE,
    Answer,
    Complete,
    Fail,
    Refuse,
    Release,
    Send,
    SettleDecision,
    Stale,
    Wait,
    on_claim,
    settle,
)
from ._errors import ConfigError, RetryableError, StaleReplayError
from ._hooks import LedgerInfo, SendObserver, WaitInfo
from ._keys import Job
from ._log import fields, key_ref
from ._prepared import PreparedSend, TryHistory
from ._redact import Redactor
from ._result import SendResult
from .ledger._base import Claimed, Ledger, LedgerUnavailableError, SettleResult

__all__ = ["MAX_RECORDED_RESPONSE", "LedgerGuard", "log_drift"]

log = logging.getLogger("idemsend.engine")

T = TypeVar("T")


def log_drift(job_id: str, first: str, now: str, key: str | None = None) -> None:
    """Log a body that changed between attempts of one job, with both fingerprints."""
    log.warning(
        "idemsend: job %s body changed between attempts (first %s, now %s); the first body stands",
        job_id, first[:16], now[:16], extra=fields(key, job_id=job_id, code="BODY_DRIFT"),
    )


def _claim_kind(claim: object) -> str:
    return type(claim).__name__.lower()


class LeaseKeeper:
    """Renews every lease this engine holds that is older than a third of its length,
    checked six times a lease, in one batch; most sends finish long before, and then
    renewal costs nothing. One task per engine, not a timer per send."""

    def __init__(self, ledger: Ledger, lease: float, settle: Callable[[str, str, Awaitable[SettleResult]], Any]):
        self.ledger = ledger
        self.lease = lease
        self._settle = settle
        self._held: dict[str, tuple[str, float]] = {}  # key -> (token, last renewed, monotonic)
        self._task: asyncio.Task[None] | None = None

    def hold(self, key: str, token: str) -> None:
        """Keep ``key``'s lease (taken with ``token``) until ``drop``."""
        self._held[key] = (token, time.monotonic())
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def drop(self, key: str) -> None:
        """Stop renewing ``key``."""
        self._held.pop(key, None)

    async def _run(self) -> None:
        third = self.lease / 3
        while self._held:
            await asyncio.sleep(self.lease / 6)
            now = time.monotonic()
            due = [(key, token) for key, (token, since) in self._held.items() if now - since >= third]
            for key, token in due:
                self._held[key] = (token, now)
            if due:
                await asyncio.gather(*(
                    self._settle(key, "renew", self.ledger.renew(key=key, token=token, lease=self.lease))
                    for key, token in due
                ))

    def cancel(self) -> None:
        """Stop the renewer (the engine is closing)."""
        if self._task is not None:
            self._task.cancel()


class LedgerGuard:
    """Puts a ledger around the attempt loop of every send (see the module docstring)."""

    def __init__(
        self, ledger: Ledger, attempts: Attempts, *, lease: float, provider: Provider, in_flight: InFlightWait,
        redact: Redactor,
    ) -> None:
        self.ledger = ledger
        self.attempts = attempts
        self.lease = lease
        self.provider = provider
        self.in_flight = in_flight
        self._redact = redact
        self._started = False
        self.leases = LeaseKeeper(ledger, lease, self._settle)
        # Claim tokens: random per guard, a counter per claim (unique, and cheap per send).
        self._token_prefix = secrets.token_hex(8) + "-"
        self._token_seq = itertools.count(1)

    async def start(self) -> None:
        """Run the ledger's own start check (a RedisLedger refuses a Redis that evicts). A
        ledger that cannot be reached does not stop the engine: its sends fail closed
        (``RetryableError``, nothing sent) and the check runs again before the first one."""
        try:
            await self._start()
        except LedgerUnavailableError as exc:
            log.warning(
                "idemsend: the ledger could not be checked at start (%s); checked again before the first send",
                self._redact.text(str(exc)), extra=fields(code="unavailable", op="start"),
            )

    async def _start(self) -> None:
        await self.ledger.start()
        self._started = True

    async def aclose(self) -> None:
        """Stop renewing and close the ledger."""
        self.leases.cancel()
        await self.ledger.aclose()

    async def send(self, send: PreparedSend, observer: SendObserver | None) -> SendResult:
        """Claim ``send.key``, then answer from the ledger or run the attempt loop and settle.

        Until the claim answers, what an error says of earlier deliveries comes from the
        queue's attempt number; once it answers, the ledger knows better (a resumed record
        may have run)."""
        key, job = send.key, send.job
        earlier = send.earlier_may_have_run
        if not self._started:
            try:
                await self._call(key, "start", self._start(), observer, earlier=earlier)
            except ConfigError as exc:
                # The store is unfit (it evicts). Nothing is sent; the job is not failed for
                # good over a setting an operator can fix: it retries, and says why.
                log.error("idemsend: the ledger refuses to run: %s", exc,
                          extra=fields(key, job_id=job.id, outcome="retryable", code="ledger_config", op="start"))
                raise RetryableError(
                    f"the ledger's store is unfit, nothing was sent by this call for key {key!r}: {exc}",
                    key=key, reason="ledger_config", detail=str(exc), maybe_sent=earlier,
                ) from exc
        token = f"{self._token_prefix}{next(self._token_seq)}"
        budget = self.in_flight.budgeted()
        stale_after = self.provider.window - self.provider.stale_margin
        while True:
            claim = await self._call(key, "claim", self.ledger.claim(
                key=key, job_id=job.id, payload=send.payload, fingerprint=send.fingerprint, token=token,
                lease=self.lease,
            ), observer, earlier=earlier)
            decision = on_claim(claim, key=key, job_id=job.id, fingerprint=send.fingerprint, stale_after=stale_after)
            match decision:
                case Send():
                    break
                case Answer(done, drifted):
                    if drifted:
                        log_drift(job.id, done.fingerprint, send.fingerprint, key)
                    return _from_record(job, key, done.fingerprint or send.fingerprint, done.response)
                case Refuse(error):
                    raise error
                case Stale(stale):
                    await self._stale(key, token, stale, observer)
                case Wait(retry_after):
                    # Another worker holds the lease: wait like an IN_FLIGHT, within the budget.
                    delay = budget.next(hint=retry_after)
                    if delay is None:
                        raise RetryableError(
                            f"key {key!r} may have been sent: another worker is sending it",
                            retry_after=finite_delay(retry_after), key=key, reason="busy",
                            detail="another worker holds the key's lease", maybe_sent=True,
                        )
                    if observer is not None:
                        observer.on_wait(WaitInfo("busy", delay, "another worker holds the lease"))
                    await asyncio.sleep(delay)
                case _:  # pragma: no cover - the union is closed
                    assert_never(decision)

        if decision.drifted:
            log_drift(job.id, decision.fingerprint, send.fingerprint, key)
        fresh = decision.claim.fresh
        self.leases.hold(key, token)
        history = TryHistory(earlier=not fresh)
        try:
            result = await self.attempts.deliver(send.with_body(decision.payload, decision.fingerprint), observer,
                                                 history)
        except BaseException as exc:
            await self._apply(key, token, settle(exc, fresh=fresh, maybe_sent=history.maybe_sent, body_size=0),
                              observer)
            raise
        finally:
            self.leases.drop(key)
        await self._apply(
            key, token, settle(result, fresh=fresh, maybe_sent=history.maybe_sent, body_size=history.body_size),
            observer,
        )
        return result

    async def _apply(self, key: str, token: str, decision: SettleDecision, observer: SendObserver | None) -> None:
        """Write ``decision`` (from ``settle``) to the ledger."""
        ledger = self.ledger
        match decision:
            case Complete(record):
                await self._settle(key, "complete", ledger.complete(key=key, token=token, response=record), observer)
            case Fail(code, message):
                await self._settle(key, "fail", ledger.fail(key=key, token=token, code=code, message=message),
                                   observer)
            case Release(forget):
                await self._settle(key, "release", ledger.release(key=key, token=token, forget=forget), observer)
            case _:  # pragma: no cover - the union is closed
                assert_never(decision)

    async def _stale(self, key: str, token: str, claim: Claimed, observer: SendObserver | None) -> NoReturn:
        first = claim.first_sent_at
        detail = (
            f"first sent at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(first))}"
            f" ({claim.age / 3600:.1f} h ago) with an unknown outcome, and the provider has forgotten"
            " the key by now; resending could double-send, so it is not resent"
        )
        err = StaleReplayError(f"STALE_REPLAY: {detail} (key {key!r})", key=key, first_sent_at=first)
        err.detail = detail
        await self._call(key, "fail", self.ledger.fail(key=key, token=token, code=err.code, message=detail), observer)
        raise err

    async def _call(
        self, key: str, op: str, call: Awaitable[T], observer: SendObserver | None, *, earlier: bool = True
    ) -> T:
        """A ledger call before the send: an unreachable ledger means this call sends nothing
        (``earlier``: whether an earlier delivery may have, as far as the engine knows)."""
        try:
            result = await _timed(op, call, observer)
        except LedgerUnavailableError as exc:
            # No retry_after: the queue's own backoff spreads the retries over the outage.
            detail = self._redact.text(_unkeyed(str(exc), key))
            raise RetryableError(
                f"the ledger is unreachable, nothing was sent by this call for key {key!r}"
                f"{' (an earlier call or delivery may have sent it)' if earlier else ''}:"
                f" {self._redact.text(str(exc))}",
                key=key,
                reason="ledger",
                detail=detail,
                maybe_sent=earlier,
            ) from exc
        return result

    async def _settle(
        self, key: str, op: str, call: Awaitable[SettleResult], observer: SendObserver | None = None
    ) -> SettleResult | None:
        """Record an outcome after the HTTP part; None when the ledger is unreachable (the
        send's own result stands: see the module docstring)."""
        try:
            result = await _timed(op, call, observer)
        except LedgerUnavailableError as exc:
            log.warning(
                "idemsend: could not %s %s in the ledger: %s", op, key_ref(key),
                self._redact.text(_unkeyed(str(exc), key)), extra=fields(key, code="unavailable", op=op),
            )
            return None
        if result == "recreated":
            log.warning(
                "idemsend: %s was sent, but its ledger record had vanished (the store restarted without"
                " persistence, or evicted it); the completed send is recorded again",
                key_ref(key), extra=fields(key, code="recreated", op=op),
            )
        elif result == "missing":
            log.warning(
                "idemsend: could not %s %s: its ledger record had vanished (the store restarted without"
                " persistence, or evicted it)",
                op, key_ref(key), extra=fields(key, code="missing", op=op),
            )
        elif result == "superseded":
            log.warning(
                "idemsend: could not %s %s: the record is no longer this worker's (its lease ran out and"
                " another worker claimed it, or it was settled meanwhile)",
                op, key_ref(key), extra=fields(key, code="superseded", op=op),
            )
        return result


async def _timed(op: str, call: Awaitable[T], observer: SendObserver | None) -> T:
    """Await one ledger call, telling ``observer`` how long it took and what it answered
    (``claimed``, ``done``... for a claim; ``ok``, ``superseded``... for a settlement)."""
    started = time.monotonic() if observer is not None else 0.0
    try:
        result = await call
    except LedgerUnavailableError:
        if observer is not None:
            observer.on_ledger(LedgerInfo(op, time.monotonic() - started, "unavailable"))
        raise
    if observer is not None:
        answer = _claim_kind(result) if op == "claim" else str(result) if isinstance(result, str) else "ok"
        observer.on_ledger(LedgerInfo(op, time.monotonic() - started, answer))
    return result


def _from_record(job: Job, key: str, fp: str, record: Mapping[str, Any]) -> SendResult:
    return SendResult(
        key=key,
        id=record.get("id"),
        status=int(record.get("status", 200)),
        response=record.get("response"),
        replayed=True,
        attempts=0,
        fingerprint=fp,
        job_id=job.id,
        from_ledger=True,
    )


def _unkeyed(text: str, key: str) -> str:
    """``text`` (a store's error) with the raw key named by its ``key_ref`` instead."""
    return text.replace(key, key_ref(key)) if key else text
