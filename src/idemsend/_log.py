"""Structured log fields: every record idemsend logs carries its facts as ``extra=`` fields,
so JSON formatters (python-json-logger, structlog's stdlib integration) pick them up.

Fields (all optional, prefixed so they never clash with ``LogRecord``'s own attributes):
``idemsend_key_hash`` (sha256 of the key, 16 hex characters: keys may hold user ids),
``idemsend_job_id``, ``idemsend_attempt``, ``idemsend_outcome``, ``idemsend_code``,
``idemsend_op`` (a ledger operation). Loggers, one per part: ``idemsend.engine``,
``idemsend.ledger``, ``idemsend.adapters.<queue>``. Nothing is logged at INFO or above on
the happy path.

No message logged at WARNING or above holds a raw key (keys may hold user ids): it names
the key by ``key_ref(key)``: ``key#`` and the same hash as ``idemsend_key_hash`` (the
first 16 hex characters of the SHA-256 of the key's UTF-8), so a record can be matched to
a key you hold. DEBUG messages may hold the raw key.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["fields", "key_hash", "key_ref"]


def key_hash(key: str) -> str:
    """A short, stable, non-reversible name for an idempotency key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def key_ref(key: str) -> str:
    """How a WARNING-or-above message names a key: ``key#`` and its ``key_hash``."""
    return f"key#{key_hash(key)}"


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
