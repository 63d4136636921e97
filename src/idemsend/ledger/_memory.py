"""MemoryLedger: the embedded default, for one process."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .._keys import validate_job_id
from .._log import fields, key_ref
from ._base import (
    DEFAULT_PROVIDER_WINDOW,
    DEFAULT_RETENTION,
    UNSAFE_TO_CLEAR,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Failed,
    LedgerRecord,
    RecordState,
    SettleResult,
    Unstable,
)
from ._records import conflicts, done, encode_response, ledger_record

__all__ = ["MemoryLedger"]

log = logging.getLogger("idemsend.ledger")

DEFAULT_MAX_RECORDS = 100_000
#: At most one eviction (or over-the-bound) warning per this many seconds of the ledger's clock.
WARN_INTERVAL = 60.0


@dataclass(slots=True)
class _Record:
    job_id: str
    fingerprint: str
    payload: bytes  # the frozen body while in flight; b"" once done or fatal
    first_sent_at: float
    expires: float
    state: RecordState = "in_flight"
    token: str = ""
    lease_until: float = 0.0
    response: bytes = b""  # the recorded response as compact JSON (a dict costs ~5x more)
    code: str = ""
    message: str = ""


@dataclass(slots=True)
class _EvictionWarnings:
    """What evicting costs, counted and said: the WARNINGs a full ``MemoryLedger`` logs
    (each kind at most once per ``WARN_INTERVAL`` of the ledger's clock, with a count of
    those since the last one). The ledger's bound and provider window are passed at each
    call (they are its public, settable attributes)."""

    _unwarned_in_window: int = 0
    _last_evict_warning: float = -math.inf
    _last_over_warning: float = -math.inf
    _unwarned_abandoned: int = 0
    _last_abandoned_warning: float = -math.inf

    def evicted(self, key: str, rec: _Record, now: float, max_records: int, provider_window: float) -> bool:
        """Note the eviction of ``key``'s record ``rec`` at ``now``, warning when it loses
        protection; answers whether it was a done record still inside the provider window."""
        if rec.state == "in_flight":
            self._unwarned_abandoned += 1
            if now - self._last_abandoned_warning >= WARN_INTERVAL:
                log.warning(
                    "idemsend: MemoryLedger is full (max_records=%d), holds no completed record, and evicted %d"
                    " abandoned in-flight record(s) (lease run out, outcome unknown), e.g. %s: a redelivery"
                    " of such a job is sent as new, without the frozen body and the stale-replay check, so one"
                    " arriving after the provider's window could send twice. Raise max_records, or use RedisLedger.",
                    max_records, self._unwarned_abandoned, key_ref(key),
                    extra=fields(key, code="evicted_in_flight", op="evict"),
                )
                self._unwarned_abandoned = 0
                self._last_abandoned_warning = now
            return False
        if rec.state == "fatal" and rec.code in UNSAFE_TO_CLEAR:
            # a stale unknown outcome or a mismatch: the job must not simply run again
            log.warning(
                "idemsend: MemoryLedger is full (max_records=%d) and evicted the %s record of %s: a new"
                " delivery of its job is no longer stopped and may send again. Raise max_records, or use"
                " RedisLedger.",
                max_records, rec.code, key_ref(key), extra=fields(key, code=rec.code, op="evict"),
            )
            return False
        if rec.state != "done" or now - rec.first_sent_at >= provider_window:
            return False
        self._unwarned_in_window += 1
        if now - self._last_evict_warning >= WARN_INTERVAL:
            log.warning(
                "idemsend: MemoryLedger is full (max_records=%d) and evicted %d done record(s) sent less than"
                " the provider window (%gh) ago, e.g. %s: their protection past the provider window is"
                " lost (a replay of such a job after the provider has forgotten its key is sent again)."
                " Raise max_records, or use RedisLedger.",
                max_records, self._unwarned_in_window, provider_window / 3600, key_ref(key),
                extra=fields(key, code="evicted_in_window", op="evict"),
            )
            self._unwarned_in_window = 0
            self._last_evict_warning = now
        return True

    def over_bound(self, now: float, max_records: int, size: int) -> None:
        """Warn (at most once a minute) that the ledger grows past its bound, to ``size`` records."""
        if now - self._last_over_warning >= WARN_INTERVAL:
            log.warning(
                "idemsend: MemoryLedger is full (max_records=%d) and grows past its bound (%d records): every"
                " record is in flight under a live lease, and those are never evicted (they guard sends under way)",
                max_records, size, extra=fields(code="over_bound", op="claim"),
            )
            self._last_over_warning = now


class MemoryLedger:
    """A ledger in this process's memory: single-process workers, tests, the demo.

    It follows the same state machine as ``RedisLedger``; records live ``retention``
    seconds (expired ones are swept as the ledger is used). It does not survive the
    process, so it cannot protect a replay in another worker: use ``RedisLedger`` there.

    **Bounded.** It holds at most ``max_records`` records. When full, a new record first
    evicts the oldest done or fatal record (in the order they were settled), then the
    oldest in-flight record whose lease has run out (an abandoned send); a record in
    flight under a live lease is never evicted: then the ledger grows past the bound and
    logs a WARNING. Evicting a done record whose provider window (``provider_window``,
    counted from its first send) has not passed logs a WARNING (logger
    ``idemsend.ledger``, at most one a minute, with a count): its protection past the
    provider window is lost, so a replay of that job after the provider forgets the key
    would be sent again. Evicting an abandoned in-flight record warns the same way.
    Eviction is O(1) amortised (ordered dicts, no scans). A job id's entry (for the
    unstable-key check) lives and goes with its key's record; job ids that claimed an
    existing key are kept for at most ``max_records`` of them, oldest dropped first.

    **What it costs**: about 640 bytes per completed record, measured with tracemalloc
    over 10,000 claim+complete pairs (``pytest tests/ledger/test_memory.py -k
    bytes_per_record -s``; 685 bytes at 100,000 records, as the tables grow in steps):
    about 390 bytes of data (a 26-character key, a 10-character job id, the 64-character
    fingerprint, a 107-byte recorded response as compact JSON) and about 250 bytes of
    bookkeeping. So the default bound of 100,000 records is about 70 MB; a bigger
    recorded response costs its JSON length more per record. The frozen body is dropped
    once a record is done or fatal, and the response is kept as JSON bytes, not as a
    tree of dicts (the unbounded version before, which kept dicts, cost 1,113 bytes per
    record on the same measurement).

    ``clock`` is the ledger's clock (Unix seconds): ``first_sent_at``, ``Claimed.age``,
    leases and retention are all measured on it, never on the worker's ``time.time()``.
    """

    def __init__(
        self,
        *,
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
        max_records: int = DEFAULT_MAX_RECORDS,
        provider_window: float = DEFAULT_PROVIDER_WINDOW,
    ) -> None:
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records <= 0:
            raise ConfigError(f"max_records must be an int > 0, got {max_records!r}")
        if not retention > 0:
            raise ConfigError(f"retention must be > 0, got {retention!r}")
        if not provider_window > 0:
            raise ConfigError(f"provider_window must be > 0, got {provider_window!r}")
        self.retention = retention
        self.clock = clock
        self.max_records = max_records
        self.provider_window = provider_window
        # Every record is in exactly one of these, each in the order eviction takes them:
        # settled (done/fatal) by settle time, in flight by claim time.
        self._settled: OrderedDict[str, _Record] = OrderedDict()
        self._flight: OrderedDict[str, _Record] = OrderedDict()
        # job id -> the key its first claim derived, for the unstable-key check. An entry
        # lives as long as that key's record (it goes when the record is evicted, expires,
        # is forgotten or cleared), so the map is bounded with the records. Other job ids
        # that claimed an existing key (same key, same body) are noted in _extra_jobs,
        # oldest dropped first beyond max_records.
        self._jobs: dict[str, str] = {}
        self._extra_jobs: OrderedDict[str, str] = OrderedDict()
        # No in-flight record's lease runs out before this (skips re-scanning live leases).
        self._flight_scan_after = -math.inf
        #: Records evicted to stay within ``max_records``; of them, done records still
        #: inside the provider window.
        self.evictions = 0
        self.evictions_in_window = 0
        self._warnings = _EvictionWarnings()

    def __len__(self) -> int:
        return len(self._settled) + len(self._flight)

    def __repr__(self) -> str:
        return f"<MemoryLedger {len(self)}/{self.max_records} records retention={self.retention:g}s>"

    async def start(self) -> None:
        """Nothing to check: memory keeps what it is told (within ``max_records``)."""
        return None

    # -- bookkeeping -------------------------------------------------------------------

    def _record(self, key: str, now: float) -> _Record | None:
        rec = self._settled.get(key)
        if rec is None:
            rec = self._flight.get(key)
        if rec is not None and rec.expires <= now:
            self._remove(key, rec)
            return None
        return rec

    def _remove(self, key: str, rec: _Record) -> None:
        if rec.state == "in_flight":
            self._flight.pop(key, None)
        else:
            self._settled.pop(key, None)
        self._forget_job(key, rec)

    def _forget_job(self, key: str, rec: _Record) -> None:
        if self._jobs.get(rec.job_id) == key:
            del self._jobs[rec.job_id]

    def _settle(self, key: str, rec: _Record) -> None:
        """Move an in-flight record to the settled ones (it is now the newest)."""
        self._flight.pop(key, None)
        self._settled[key] = rec

    def _expire(self, now: float) -> None:
        """Drop what has expired at the front of each queue: O(1) amortised per call.
        (Anything expired further back is dropped when looked up, or evicted.)"""
        for queue in (self._settled, self._flight):
            while queue:
                key, rec = next(iter(queue.items()))
                if rec.expires > now:
                    break
                del queue[key]
                self._forget_job(key, rec)

    def _make_room(self, now: float) -> None:
        """Evict until one more record fits: oldest done/fatal first, then the oldest
        in-flight record whose lease has run out; never a live lease."""
        while len(self) >= self.max_records:
            if self._settled:
                key, rec = self._settled.popitem(last=False)
            else:
                found = self._abandoned(now)
                if found is None:
                    self._warnings.over_bound(now, self.max_records, len(self) + 1)
                    return
                key, rec = found
                del self._flight[key]
            self.evictions += 1
            self._forget_job(key, rec)
            if self._warnings.evicted(key, rec, now, self.max_records, self.provider_window):
                self.evictions_in_window += 1

    def _abandoned(self, now: float) -> tuple[str, _Record] | None:
        """The oldest in-flight record whose lease has run out. Live leases met on the way
        go to the back, and when there is none, no scan happens until a lease can run out."""
        if now < self._flight_scan_after:
            return None
        flight = self._flight
        soonest = math.inf
        for _ in range(len(flight)):
            key, rec = next(iter(flight.items()))
            if rec.lease_until <= now:
                return key, rec
            soonest = min(soonest, rec.lease_until)
            flight.move_to_end(key)
        self._flight_scan_after = soonest
        return None

    def _recorded_key(self, job_id: str, now: float) -> str | None:
        """The key ``job_id`` was recorded with, while that key's record exists."""
        key = self._jobs.get(job_id)
        if key is None:
            key = self._extra_jobs.get(job_id)
            if key is None:
                return None
            if self._record(key, now) is None:
                del self._extra_jobs[job_id]
                return None
        elif self._record(key, now) is None:  # expired, not swept yet: dropped with its record
            self._jobs.pop(job_id, None)
            return None
        return key

    def _note_extra_job(self, job_id: str, key: str) -> None:
        extra = self._extra_jobs
        extra[job_id] = key
        extra.move_to_end(job_id)
        if len(extra) > self.max_records:
            extra.popitem(last=False)

    # -- the state machine -------------------------------------------------------------

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``."""
        validate_job_id(job_id)  # one rule for every ledger, before anything is batched
        now = self.clock()
        self._expire(now)
        recorded = self._recorded_key(job_id, now)
        if recorded is not None and recorded != key:
            return Unstable(recorded)
        rec = self._record(key, now)
        if rec is None:
            self._make_room(now)
            self._flight[key] = _Record(
                job_id=job_id, fingerprint=fingerprint, payload=payload, first_sent_at=now,
                expires=now + self.retention, token=token, lease_until=now + lease,
            )
            self._flight_scan_after = min(self._flight_scan_after, now + lease)
            self._jobs[job_id] = key
            return Claimed(True, payload, fingerprint, now, 0.0)
        if conflicts(rec.job_id, rec.fingerprint, job_id, fingerprint):
            return Conflict(rec.fingerprint)
        if recorded is None:
            self._note_extra_job(job_id, key)
        if rec.state == "done":
            return done(rec.response, rec.fingerprint)
        if rec.state == "fatal":
            return Failed(rec.code, rec.message)
        if rec.token and rec.token != token and rec.lease_until > now:
            return Busy(rec.lease_until - now)
        rec.token, rec.lease_until = token, now + lease
        self._flight_scan_after = min(self._flight_scan_after, rec.lease_until)
        return Claimed(False, rec.payload, rec.fingerprint, rec.first_sent_at, max(0.0, now - rec.first_sent_at))

    def _owned(self, key: str, token: str, now: float) -> _Record | SettleResult:
        rec = self._record(key, now)
        if rec is None:
            return "missing"
        if rec.state != "in_flight" or rec.token != token:
            return "superseded"
        return rec

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = encode_response(response).encode()
        now = self.clock()
        self._expire(now)
        rec = self._owned(key, token, now)
        if isinstance(rec, str):
            if rec == "superseded":
                return rec
            # Missing: the send happened, and only a done record stops a replay after the
            # provider's window from sending again. Job id and fingerprint are unknown.
            self._make_room(now)
            self._settled[key] = _Record(
                job_id="", fingerprint="", payload=b"", first_sent_at=now, expires=now + self.retention,
                state="done", response=body,
            )
            return "recreated"
        rec.state, rec.response, rec.token, rec.payload, rec.lease_until = "done", body, "", b"", 0.0
        rec.expires = now + self.retention
        self._settle(key, rec)
        return "ok"

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        now = self.clock()
        rec = self._owned(key, token, now)
        if isinstance(rec, str):
            return rec
        rec.state, rec.code, rec.message, rec.token, rec.payload, rec.lease_until = (
            "fatal", code, message, "", b"", 0.0,
        )
        rec.expires = now + self.retention
        self._settle(key, rec)
        return "ok"

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        now = self.clock()
        rec = self._owned(key, token, now)
        if isinstance(rec, str):
            return rec
        rec.lease_until = now + lease
        return "ok"

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``."""
        rec = self._owned(key, token, self.clock())
        if isinstance(rec, str):
            return rec
        if forget:
            del self._flight[key]
            self._forget_job(key, rec)
        else:
            rec.token, rec.lease_until = "", 0.0
            self._flight_scan_after = -math.inf  # it can be evicted now
        return "ok"

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``."""
        rec = self._record(key, self.clock())
        if rec is None or rec.state != "fatal" or (rec.code in UNSAFE_TO_CLEAR and not force):
            return False
        del self._settled[key]
        self._forget_job(key, rec)
        return True

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``."""
        rec = self._record(key, self.clock())
        if rec is None:
            return None
        return ledger_record(
            key, rec.state, job_id=rec.job_id, fingerprint=rec.fingerprint, first_sent_at=rec.first_sent_at,
            response=rec.response or None, code=rec.code or None, message=rec.message or None,
            lease_until=rec.lease_until,
        )

    async def aclose(self) -> None:
        """Nothing to release."""
        return None
