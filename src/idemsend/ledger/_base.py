"""The Ledger protocol and the answers a claim can get.

A ledger record moves ``in_flight(token, lease) -> done(response) | fatal(code)``.
Every transition is checked against the claim token, so a worker whose lease ran out
cannot overwrite a record that another worker now owns.

``release`` does not forget a record: it drops the lease and keeps the frozen body
and the first-sent time, because the send it guarded may have reached the provider
(an unknown outcome). The next claim resumes it with the same key and the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "Busy",
    "ClaimResult",
    "Claimed",
    "Conflict",
    "Done",
    "Failed",
    "Ledger",
    "LedgerRecord",
    "LedgerUnavailableError",
    "Unstable",
]

DEFAULT_RETENTION = 7 * 24 * 3600.0
DEFAULT_LEASE = 30.0


class LedgerUnavailableError(Exception):
    """The ledger's store could not be reached. The engine turns it into RetryableError."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """This worker owns the send. ``payload`` is the frozen body to send (the first
    claim's bytes); ``fresh`` is false when an earlier, unfinished attempt is resumed."""

    fresh: bool
    payload: bytes
    fingerprint: str
    first_sent_at: float


@dataclass(frozen=True, slots=True)
class Done:
    """The send completed earlier; ``response`` is what ``complete`` recorded."""

    response: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another worker holds a live lease; ``retry_after`` is when it runs out."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Unstable:
    """This job id was recorded with another key."""

    recorded_key: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """The key is recorded for another job with a different body."""

    recorded_fingerprint: str


ClaimResult = Claimed | Done | Failed | Busy | Unstable | Conflict


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A record as ``get`` (and ``idemsend inspect``) shows it."""

    key: str
    state: str
    job_id: str
    fingerprint: str
    first_sent_at: float
    response: Mapping[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    lease_until: float | None = None


@runtime_checkable
class Ledger(Protocol):
    """Where completed and unfinished sends are recorded, shared by the workers."""

    async def claim(
        self, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult: ...

    async def complete(self, key: str, token: str, response: Mapping[str, Any]) -> bool: ...

    async def fail(self, key: str, token: str, code: str, message: str) -> bool: ...

    async def renew(self, key: str, token: str, lease: float) -> bool: ...

    async def release(self, key: str, token: str) -> bool: ...

    async def get(self, key: str) -> LedgerRecord | None: ...

    async def aclose(self) -> None: ...
