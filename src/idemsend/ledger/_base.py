"""The Ledger protocol and the answers a claim (and a settlement) can get.

A ledger record moves ``in_flight(token, lease) -> done(response) | fatal(code)``.
Every transition is checked against the claim token, so a worker whose lease ran out
cannot overwrite a record that another worker now owns.

``release`` does not forget a record unless asked to (``forget=True``): it drops the
lease and keeps the frozen body and the first-sent time, because the send it guarded
may have reached the provider (an unknown outcome). The next claim resumes it with the
same key and the same bytes.

Times: ``first_sent_at``, ``lease_until`` and ``age`` come from the ledger's own clock
(Redis ``TIME``, ``MemoryLedger.clock``), never from the calling worker's, so a worker
whose clock is off cannot misjudge how old an unfinished send is. Points in time are
Unix seconds (floats); ``lease``, ``age``, ``retry_after`` and retention are seconds.

Every method takes keyword arguments only (``key`` of ``clear`` and ``get`` excepted);
the engine calls them so. ``idemsend.testing.ledger_contract.LedgerContract`` is the
test suite a ledger must pass (docs/ledgers.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .._errors import BackendError

if TYPE_CHECKING:
    from ._records import Recorded

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_PROVIDER_WINDOW",
    "DEFAULT_RETENTION",
    "UNSAFE_TO_CLEAR",
    "Busy",
    "ClaimResult",
    "Claimed",
    "Conflict",
    "Done",
    "Failed",
    "Ledger",
    "LedgerRecord",
    "LedgerUnavailableError",
    "RecordState",
    "SettleResult",
    "Unstable",
]

#: How long a ledger keeps a record by default (seconds): a week.
DEFAULT_RETENTION = 7 * 24 * 3600.0
#: Fatal codes ``clear`` refuses without ``force``: clearing them can let a job send twice
#: (a stale unknown outcome may have been sent; a mismatch means the key already ran).
UNSAFE_TO_CLEAR = frozenset({"STALE_REPLAY", "IDEMPOTENCY_MISMATCH"})
#: How long a claim holds its key by default (seconds) before another worker may take it.
DEFAULT_LEASE = 30.0
#: How long a provider keeps an idempotency key (Stripe, Resend...: 24 h).
DEFAULT_PROVIDER_WINDOW = 24 * 3600.0

#: What ``complete``, ``fail``, ``renew`` and ``release`` answer:
#:
#: * ``"ok"``: done; the record was in flight under this token.
#: * ``"recreated"`` (``complete`` only): there was no record (the store lost it), so the
#:   done record was written anew.
#: * ``"missing"``: there is no record at all: the store lost it (a restart without
#:   persistence, an eviction) or it outlived its retention. Nothing was written.
#: * ``"superseded"``: the record exists but is not in flight under this token: another
#:   worker claimed it after this token's lease ran out, or it is already done or fatal.
#:   Nothing was written.
SettleResult = Literal["ok", "recreated", "missing", "superseded"]


#: The state of a record: in flight (claimed, outcome not known yet), done, or fatal.
RecordState = Literal["in_flight", "done", "fatal"]


class LedgerUnavailableError(BackendError):
    """The ledger's store could not be reached, or answered with an error or with something
    malformed. The only exception a ledger raises for a store failure; the engine turns it
    into ``RetryableError`` before a send (nothing is sent) and logs it after one."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """This worker owns the send. ``payload`` is the frozen body to send (the first
    claim's bytes); ``fresh`` is false when an earlier, unfinished attempt is resumed.

    ``first_sent_at`` is when the first claim was made (Unix seconds, the ledger's
    clock); ``age`` is how long ago that was, measured on the ledger's own clock (Redis
    ``TIME``, ``MemoryLedger.clock``) and never below 0. Decide staleness with ``age``,
    not with this worker's ``time.time() - first_sent_at``: a worker whose clock is hours
    off would otherwise resend an unknown outcome after the provider forgot the key."""

    fresh: bool
    payload: bytes
    fingerprint: str
    first_sent_at: float
    age: float


@dataclass(frozen=True, slots=True)
class Done:
    """The send completed earlier; ``response`` is what ``complete`` recorded. The engine
    records ``{"id", "status", "response"}``: the provider's id and HTTP status always,
    and its (parsed) response body only when the body was at most 256 bytes as received
    (else ``None``; ``idemsend._guard.MAX_RECORDED_RESPONSE``), so that a week of records
    stays small whatever the provider answers. A replay answered from the ledger therefore has
    the id and the status, and the body when it was small.

    ``fingerprint`` is the fingerprint of the body that was actually sent (the frozen
    first body), which may differ from this claim's. It is ``""`` when unknown: a done
    record that ``complete`` had to write anew after the store lost the original."""

    response: Mapping[str, Any]
    fingerprint: str

    @property
    def recorded(self) -> Recorded:
        """``response`` typed (``idemsend.ledger.Recorded``): id, status, body."""
        from ._records import Recorded

        return Recorded.of(self.response)


@dataclass(frozen=True, slots=True)
class Failed:
    """The send ended fatally earlier (``fail``); ``code`` and ``message`` are what was recorded."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another worker holds a live lease; it runs out in ``retry_after`` seconds (the
    ledger's clock), when this claim may be tried again."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Unstable:
    """This job id was first recorded with another key, ``recorded_key``: the key template
    is not stable between retries. Nothing was claimed."""

    recorded_key: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """The key is recorded for another job with a different body (its fingerprint is
    ``recorded_fingerprint``). Nothing was claimed."""

    recorded_fingerprint: str


#: What ``claim`` answers: a closed union, one class per case.
ClaimResult = Claimed | Done | Failed | Busy | Unstable | Conflict


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A record as ``get`` (and ``idemsend inspect``) shows it.

    ``job_id`` and ``fingerprint`` are ``""`` for a done record that ``complete`` wrote
    anew ("recreated"). ``first_sent_at`` is Unix seconds on the ledger's clock.
    ``response`` is set when done (what ``complete`` recorded: for the engine, id, status
    and the response body when it was at most 256 bytes, see ``Done``); ``code`` and
    ``message`` when fatal; ``lease_until``
    (Unix seconds, the ledger's clock; at or before now when the lease was released or
    ran out) only while in flight."""

    key: str
    state: RecordState
    job_id: str
    fingerprint: str
    first_sent_at: float
    response: Mapping[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    lease_until: float | None = None


@runtime_checkable
class Ledger(Protocol):
    """Where completed and unfinished sends are recorded, shared by the workers.

    Rules for every method:

    * **Errors.** When the store cannot be reached, answers with an error, or answers
      something malformed, ``LedgerUnavailableError`` is raised, and no other exception
      escapes for a store failure. A call that raised may or may not have taken effect
      (the engine is built for that: a lease runs out, a record is resumed). Only
      ``start`` raises something else on purpose (``idemsend.ConfigError``).
    * **Keywords.** Arguments are passed by keyword (``clear`` and ``get`` take ``key``
      positionally too).
    * **Clock.** Every time is read from the ledger's own clock (the store's, for a
      shared store), never from the calling worker's: points in time are Unix seconds,
      durations (``lease``, ``age``, ``retry_after``) seconds.
    * **Atomicity.** Each call is one atomic step on one key's record (``claim`` also
      notes the job id's key); two workers racing on one key see one winner.
    * **Retention.** A record lives the ledger's retention after it was claimed,
      completed or failed; after that it is gone as if never written (``None``,
      ``"missing"``, a fresh claim).
    * **Tokens.** ``token`` is a non-empty string unique to one claim attempt.

    ``idemsend.testing.ledger_contract.LedgerContract`` checks all of this.
    """

    #: How long a record lives (seconds) after it was claimed, completed or failed (see
    #: "Retention" above). ``Engine`` refuses a ledger whose retention is shorter than the
    #: provider's window: past it the ledger would protect nothing.
    retention: float

    async def start(self) -> None:
        """Check once that the store is fit to be a ledger; ``Engine.start()`` calls it.

        Answers ``None``. A second call does nothing once a check has completed. Raises
        ``idemsend.ConfigError`` when the store would silently lose records (e.g. a Redis
        that evicts keys, unless the ledger was made with ``allow_eviction=True``), and
        logs a WARNING (logger ``idemsend.ledger``) for lesser risks (no persistence, or
        a server that could not be checked). Raises ``LedgerUnavailableError`` when the
        store cannot be reached; nothing has been checked then, and ``start`` may be
        called again. Callers call it before the others (the engine does, before its
        first claim); MemoryLedger and RedisLedger also work without it."""
        ...

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """Take the send of ``key`` for ``job_id``, holding it ``lease`` seconds under ``token``.

        ``payload`` is the body this attempt would send and ``fingerprint`` its hash.
        A ``job_id`` that ``validate_job_id`` refuses raises ``InvalidJobIdError`` before
        anything is written or batched (the same rule on every ledger).
        Answers, checked in this order:

        * ``Unstable(recorded_key)``: ``job_id`` was first recorded with another key;
          nothing is claimed (no record is left for ``key``). The job id's note is kept
          at least as long as that key's record and at most the retention (a ledger may
          drop it with the record, or keep it its own retention).
        * ``Claimed(fresh=True, ...)``: no record existed; one is made in flight under
          ``token`` with this ``payload`` frozen, ``first_sent_at`` now, ``age`` 0.
        * ``Conflict(recorded_fingerprint)``: the key is recorded for another job id with
          another body (a recorded fingerprint ``""`` never conflicts); nothing changes.
        * ``Done(response, fingerprint)``: the send completed earlier; do not send.
          ``fingerprint`` is the body actually sent (``""`` if unknown).
        * ``Failed(code, message)``: the send ended fatally earlier; do not send.
        * ``Busy(retry_after)``: another token holds a live lease, which runs out in
          ``retry_after`` seconds; nothing changes.
        * ``Claimed(fresh=False, ...)``: an unfinished attempt (its lease ran out or was
          released, or this same token claims again after its record changed) is resumed
          under ``token``: send the *frozen* ``payload`` (the first claim's, with its
          fingerprint), not this one; ``first_sent_at`` is the first claim's, ``age`` how long
          ago that was on the ledger's clock, never below 0. A claim the client sent again
          (its reply was lost) that finds the record it wrote itself, unchanged, may answer
          ``fresh=True`` as the first did (RedisLedger does).

        Store failures raise ``LedgerUnavailableError`` (only that)."""
        ...

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """Record that the send succeeded with ``response`` (a JSON-serialisable mapping;
        anything else raises ``TypeError`` before the store is asked). The ledger keeps it
        as given; the engine bounds what it passes (see ``Done``). The frozen body is not
        kept once the record is done.

        Answers ``"ok"`` (the record was in flight under ``token``; it is now done, its
        frozen body dropped), ``"recreated"`` (there was no record: the store lost it; a
        done record is written anyway, with this response, job id and fingerprint ``""``
        and ``first_sent_at`` now, because the send did happen and only a done record
        prevents a double send after the provider's window) or ``"superseded"`` (the
        record is in flight under another token, or already done or fatal; it is left
        untouched: every transition is checked against the claim token). Never
        ``"missing"``. Store failures raise ``LedgerUnavailableError`` (only that)."""
        ...

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """Record a fatal outcome (never retried; ``Failed(code, message)`` to every later claim).

        Answers ``"ok"`` (was in flight under ``token``; now fatal), ``"missing"`` (no
        record at all; nothing is written) or ``"superseded"`` (in flight under another
        token, or already done or fatal; left untouched). Store failures raise
        ``LedgerUnavailableError`` (only that)."""
        ...

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """Extend this token's lease to ``lease`` seconds from now (the ledger's clock).

        Answers ``"ok"``, ``"missing"`` (no record; nothing is written) or
        ``"superseded"`` (another token holds it, or it is done or fatal; untouched).
        Store failures raise ``LedgerUnavailableError`` (only that)."""
        ...

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """Give up this token's claim without an outcome.

        ``forget=False``: keep the record (frozen body, first-sent time, job id) and drop
        the lease, so the next claim resumes it at once (the send may have reached the
        provider). ``forget=True``: delete the record (and its job id's note); only for a
        fresh claim where nothing can have reached the provider (e.g. a 401, or a
        redirect on every try).

        Answers ``"ok"``, ``"missing"`` (no record; nothing is written) or
        ``"superseded"`` (another token holds it, or it is done or fatal; untouched).
        Store failures raise ``LedgerUnavailableError`` (only that)."""
        ...

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """Remove a **fatal** record on purpose, so its job can run again (an operator
        fixed the cause). Atomic: the state is checked and the record removed in one step.

        Answers ``True`` when a fatal record was removed, ``False`` when there was no
        record, it is done or in flight (never cleared: clearing a done record would allow
        a double send), or its code is one of ``UNSAFE_TO_CLEAR`` (``STALE_REPLAY``: the
        send may have run; ``IDEMPOTENCY_MISMATCH``: the key ran with another body) and
        ``force`` is false. Store failures raise ``LedgerUnavailableError`` (only that)."""
        ...

    async def get(self, key: str) -> LedgerRecord | None:
        """The record of ``key`` as a ``LedgerRecord``, or ``None`` when there is none (never
        written, forgotten, cleared, lost, or past its retention). Reads only.
        Store failures raise ``LedgerUnavailableError`` (only that)."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources (a client or pool the ledger made itself; one it
        was given stays open). Calls already made finish first. Calling it again does
        nothing; the ledger is not used after it."""
        ...
