"""The ledger guard's decisions, as pure functions: what a claim's answer means for a send,
and how a send's outcome settles its record. No I/O and no clock: ``LedgerGuard`` applies
what they answer (``_guard.py``), and ``tests/unit/test_decide.py`` tries every row of both
tables without a ledger.

``on_claim`` (the claim table)::

    Claimed, fresh or not too old   -> Send(the record's frozen body; drift noted)
    Claimed, resumed and older than
      the provider window - margin  -> Stale (not resent: StaleReplayError)
    Done                            -> Answer (the recorded result; drift noted)
    Failed                          -> Refuse(the recorded fatal error)
    Unstable                        -> Refuse(UnstableKeyError)
    Conflict                        -> Refuse(MismatchError)
    Busy                            -> Wait (another worker holds the lease)

``settle`` (the outcome table)::

    a SendResult          -> Complete(id, status, the body if small enough)
    a FatalError          -> Fail(code, detail)      (the record keeps whether it may have run)
    a SetupError          -> Release(forget=fresh claim whose tries ran nothing)
    anything else raised  -> Release(forget=the same)  (an unknown outcome keeps its record)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

from ._errors import FatalError, IdemsendError, MismatchError, SetupError, UnstableKeyError, fatal_error
from ._result import SendResult
from .ledger._base import Busy, Claimed, ClaimResult, Conflict, Done, Failed, Unstable

__all__ = [
    "MAX_RECORDED_RESPONSE", "Answer", "ClaimDecision", "Complete", "Fail", "Refuse", "Release", "Send",
    "SettleDecision", "Stale", "Wait", "on_claim", "settle",
]

#: The largest provider response body (bytes, as received) a done record keeps. A record
#: is kept the ledger's retention (a week by default) for every send, so a provider that
#: answers with a whole object (a payment's: kilobytes) would multiply the ledger's size;
#: a bigger body is recorded as None. The id and the status, what a replay needs, are
#: always kept.
MAX_RECORDED_RESPONSE = 256


# -- what a claim's answer means ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Run the HTTP part with ``payload`` (the record's frozen body: on a resumed claim the
    first attempt's bytes, whatever this attempt brought). ``drifted``: this attempt's body
    differs from the one that stands (logged with both fingerprints)."""

    claim: Claimed
    payload: bytes
    fingerprint: str
    drifted: bool


@dataclass(frozen=True, slots=True)
class Stale:
    """A resumed claim whose unknown outcome is older than the provider remembers keys:
    resending could double-send, so it is failed (``StaleReplayError``), not sent."""

    claim: Claimed


@dataclass(frozen=True, slots=True)
class Answer:
    """The ledger holds the result: answer it (``from_ledger``) without any HTTP."""

    done: Done
    drifted: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    """The ledger's answer is an error for this send: raise ``error``."""

    error: IdemsendError


@dataclass(frozen=True, slots=True)
class Wait:
    """Another worker holds the key's lease: wait like an IN_FLIGHT (within the budget)."""

    retry_after: float


ClaimDecision = Send | Stale | Answer | Refuse | Wait


def on_claim(claim: ClaimResult, *, key: str, job_id: str, fingerprint: str, stale_after: float) -> ClaimDecision:
    """What ``claim`` (the ledger's answer to claiming ``key`` for ``job_id`` with a body of
    ``fingerprint``) means for the send. ``stale_after``: the provider window less the stale
    margin, in seconds, compared with the record's age by the ledger's own clock."""
    match claim:
        case Claimed():
            if not claim.fresh and claim.age > stale_after:
                return Stale(claim)
            return Send(claim, claim.payload, claim.fingerprint, drifted=claim.fingerprint != fingerprint)
        case Done():
            return Answer(claim, drifted=bool(claim.fingerprint) and claim.fingerprint != fingerprint)
        case Failed():
            return Refuse(fatal_error(claim.code, claim.message, key, recorded=True))
        case Unstable():
            return Refuse(UnstableKeyError(
                f"job {job_id!r} derived key {key!r} but its earlier attempt used {claim.recorded_key!r};"
                " the key template must not change between retries (no timestamps or attempt numbers)",
                key=key, recorded_key=claim.recorded_key,
            ))
        case Conflict():
            return Refuse(MismatchError(
                f"key {key!r} is recorded for another job with a different body"
                f" (recorded {claim.recorded_fingerprint[:12]}, this {fingerprint[:12]})",
                key=key,
            ))
        case Busy():
            return Wait(claim.retry_after)
        case _:  # pragma: no cover - the union is closed
            assert_never(claim)


# -- how an outcome settles the record ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Complete:
    """Record the send as done with ``record`` (id, status, and the body when small)."""

    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Fail:
    """Record the key's fatal answer: every later attempt gets the same error."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Release:
    """Drop the lease and keep the record (an unknown outcome: its frozen body and first-sent
    time), or ``forget`` it: a fresh claim whose tries provably ran nothing."""

    forget: bool


SettleDecision = Complete | Fail | Release


def settle(outcome: SendResult | BaseException, *, fresh: bool, maybe_sent: bool, body_size: int) -> SettleDecision:
    """How ``outcome`` (what the HTTP part returned or raised) settles the claim's record.
    ``fresh``: this call made the record; ``maybe_sent``: one of this call's tries may have
    run at the provider; ``body_size``: the answer's body in bytes, as received."""
    forget = fresh and not maybe_sent
    match outcome:
        case SendResult():
            body = outcome.response if body_size <= MAX_RECORDED_RESPONSE else None
            return Complete({"id": outcome.id, "status": outcome.status, "response": body})
        case SetupError():
            # The engine's setup is wrong, not the job: nothing is recorded against the key.
            return Release(forget=forget)
        case FatalError():
            # detail says whether the key may have run: the record keeps it, so a replay says the same
            return Fail(outcome.code, outcome.detail)
        case _:
            return Release(forget=forget)
