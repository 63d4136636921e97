"""The client's side of the record format (``_lua.py`` has the script's): what a call
sends (``own``, ``claim_blob``) and what its reply means (``claim_answer``,
``record_of``), as pure functions.

A reply's strings come back as ``bytes`` (or ``str`` from a client made with
``decode_responses``), its numbers as ints, times in milliseconds on Redis's clock.
"""

from __future__ import annotations

import struct
from typing import Any

from .._base import Busy, Claimed, ClaimResult, Conflict, Failed, LedgerRecord, LedgerUnavailableError
from .._records import done, ledger_record, malformed

__all__ = ["claim_answer", "claim_blob", "own", "raw", "record_of", "text"]

_L = struct.Struct(">I").pack
_D = struct.Struct(">d").pack


def own(token: str) -> bytes:
    """The first bytes of an in-flight record held by ``token``: 'F' L tok."""
    tok = token.encode()
    return b"F" + _L(len(tok)) + tok


def claim_blob(token: str, job_id: str, fingerprint: str, payload: bytes, lease: float) -> bytes:
    """A claim's record as the client packs it: 'F' L tok L job L fp body lease (the script
    appends the first-sent time)."""
    job, fp = job_id.encode(), fingerprint.encode()
    return b"".join((own(token), _L(len(job)), job, _L(len(fp)), fp, payload, _D(lease * 1000.0)))


def text(value: Any) -> str:
    """A reply's string."""
    return value.decode() if isinstance(value, bytes) else str(value)


def raw(value: Any) -> bytes:
    """A reply's bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


def claim_answer(key: str, kind: str, reply: Any) -> ClaimResult:
    """What a claim's ``reply`` of ``kind`` (its first element) means, for every kind but a
    fresh record and ``unstable`` (the caller has those); ``LedgerUnavailableError`` for a
    record or a reply that cannot be read."""
    try:
        if kind == "claimed":
            return Claimed(False, raw(reply[2]), text(reply[3]), reply[1] / 1000, reply[4] / 1000)
        if kind == "done":
            return done(reply[1], text(reply[2]))
        if kind == "fatal":
            return Failed(text(reply[1]), text(reply[2]))
        if kind == "busy":
            return Busy(reply[1] / 1000)
        if kind == "conflict":
            return Conflict(text(reply[1]))
        if kind == "malformed":
            raise malformed(key, text(reply[1]))
    except (ValueError, IndexError, TypeError) as exc:
        raise LedgerUnavailableError(f"malformed claim reply {reply!r}: {exc}") from exc
    raise LedgerUnavailableError(f"unexpected claim reply {reply!r}")


def record_of(key: str, reply: Any) -> LedgerRecord | None:
    """The ``LedgerRecord`` a ``get`` reply shows (``{state, first, job, fp, response,
    code, message, lease}``), ``None`` for an empty one; ``LedgerUnavailableError`` for a
    record that cannot be read."""
    if not reply:
        return None
    try:
        if text(reply[0]) == "malformed":
            raise ValueError(text(reply[1]))
        return ledger_record(
            key, text(reply[0]), job_id=text(reply[2]), fingerprint=text(reply[3]), first_sent_at=reply[1] / 1000,
            response=reply[4], code=text(reply[5]) if reply[5] is not None else None,
            message=text(reply[6]) if reply[6] is not None else None,
            lease_until=reply[7] / 1000 if reply[7] is not None else None,
        )
    except (ValueError, IndexError, TypeError) as exc:
        raise malformed(key, exc) from exc
