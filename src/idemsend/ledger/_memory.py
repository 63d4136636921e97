"""MemoryLedger: the embedded default, for one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._base import (
    DEFAULT_RETENTION,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Done,
    Failed,
    LedgerRecord,
    Unstable,
)

__all__ = ["MemoryLedger"]


@dataclass(slots=True)
class _Record:
    job_id: str
    fingerprint: str
    payload: bytes
    first_sent_at: float
    expires: float
    state: str = "in_flight"
    token: str = ""
    lease_until: float = 0.0
    response: Mapping[str, Any] | None = None
    code: str = ""
    message: str = ""


class MemoryLedger:
    """A ledger in this process's memory: single-process workers, tests, the demo.

    It follows the same state machine as ``RedisLedger``; records live ``retention``
    seconds (expired ones are swept as the ledger is used). It does not survive the
    process, so it cannot protect a replay in another worker: use ``RedisLedger`` there.
    """

    def __init__(self, *, retention: float = DEFAULT_RETENTION, clock: Callable[[], float] = time.time) -> None:
        self.retention = retention
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self._jobs: dict[str, tuple[str, float]] = {}
        self._ops = 0

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, key: str, now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is not None and rec.expires <= now:
            del self._records[key]
            return None
        return rec

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % 4096:
            return
        for key in [k for k, r in self._records.items() if r.expires <= now]:
            del self._records[key]
        for job in [j for j, (_, exp) in self._jobs.items() if exp <= now]:
            del self._jobs[job]

    async def claim(
        self, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        now = self.clock()
        self._sweep(now)
        recorded = self._jobs.get(job_id)
        if recorded is not None and recorded[1] > now and recorded[0] != key:
            return Unstable(recorded[0])
        rec = self._record(key, now)
        if rec is None:
            self._records[key] = _Record(
                job_id=job_id, fingerprint=fingerprint, payload=payload, first_sent_at=now,
                expires=now + self.retention, token=token, lease_until=now + lease,
            )
            self._jobs[job_id] = (key, now + self.retention)
            return Claimed(True, payload, fingerprint, now)
        if rec.job_id != job_id and rec.fingerprint != fingerprint:
            return Conflict(rec.fingerprint)
        self._jobs[job_id] = (key, now + self.retention)
        if rec.state == "done":
            assert rec.response is not None
            return Done(rec.response)
        if rec.state == "fatal":
            return Failed(rec.code, rec.message)
        if rec.token and rec.token != token and rec.lease_until > now:
            return Busy(rec.lease_until - now)
        rec.token, rec.lease_until = token, now + lease
        return Claimed(False, rec.payload, rec.fingerprint, rec.first_sent_at)

    def _owned(self, key: str, token: str) -> _Record | None:
        rec = self._record(key, self.clock())
        if rec is None or rec.state != "in_flight" or rec.token != token:
            return None
        return rec

    async def complete(self, key: str, token: str, response: Mapping[str, Any]) -> bool:
        rec = self._owned(key, token)
        if rec is None:
            return False
        rec.state, rec.response, rec.token, rec.payload = "done", dict(response), "", b""
        rec.expires = self.clock() + self.retention
        return True

    async def fail(self, key: str, token: str, code: str, message: str) -> bool:
        rec = self._owned(key, token)
        if rec is None:
            return False
        rec.state, rec.code, rec.message, rec.token, rec.payload = "fatal", code, message, "", b""
        return True

    async def renew(self, key: str, token: str, lease: float) -> bool:
        rec = self._owned(key, token)
        if rec is None:
            return False
        rec.lease_until = self.clock() + lease
        return True

    async def release(self, key: str, token: str) -> bool:
        rec = self._owned(key, token)
        if rec is None:
            return False
        rec.token, rec.lease_until = "", 0.0
        return True

    async def get(self, key: str) -> LedgerRecord | None:
        rec = self._record(key, self.clock())
        if rec is None:
            return None
        return LedgerRecord(
            key=key, state=rec.state, job_id=rec.job_id, fingerprint=rec.fingerprint,
            first_sent_at=rec.first_sent_at, response=rec.response, code=rec.code or None,
            message=rec.message or None, lease_until=rec.lease_until if rec.state == "in_flight" else None,
        )

    async def aclose(self) -> None:
        return None
