"""Structured log fields: every record idemsend logs carries its facts as ``extra=`` fields,
so JSON formatters (python-json-logger, structlog's stdlib integration) pick them up.

Fields (all optional, prefixed so they never clash with ``LogRecord``'s own attributes):
``idemsend_key_hash`` (sha256 of the key, 16 hex characters: keys may hold user ids),
``idemsend_job_id``, ``idemsend_attempt``, ``idemsend_outcome``, ``idemsend_code``,
``idemsend_op`` (a ledger operation). Loggers, one per part: ``idemsend.engine``,
``idemsend.ledger``, ``idemsend.adapters.<queue>``. Nothing is logged at INFO or above on
the happy path.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["fields", "key_hash"]


def key_hash(key: str) -> str:
    """A short, stable, non-reversible name for an idempotency key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fields(
    key: str | None = None, *, job_id: str | None = None, attempt: int | None = None, outcome: str | None = None,
    code: str | None = None, op: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` mapping for one log record (only the facts that are known)."""
    out: dict[str, Any] = {}
    if key is not None:
        out["idemsend_key_hash"] = key_hash(key)
    if job_id is not None:
        out["idemsend_job_id"] = job_id
    if attempt is not None:
        out["idemsend_attempt"] = attempt
    if outcome is not None:
        out["idemsend_outcome"] = outcome
    if code is not None:
        out["idemsend_code"] = code
    if op is not None:
        out["idemsend_op"] = op
    return out
