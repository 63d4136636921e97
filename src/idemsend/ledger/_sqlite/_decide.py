"""What each call does to a record: pure decisions, applied by ``_store.py``.

Each call of a batch reads its key's row (and, for a claim, the job id's note) inside the
batch's ``BEGIN IMMEDIATE`` transaction, asks a function here what that means, and writes
what it answers. ``now`` is SQLite's clock read once per transaction, after the write lock
was taken. A row whose ``expires_at`` is at or before ``now`` is treated as absent
(``live``), whether or not the sweep has deleted it yet. The rules are MemoryLedger's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .._base import UNSAFE_TO_CLEAR, Busy, Claimed, ClaimResult, Conflict, Failed, SettleResult, Unstable
from .._records import conflicts, done, malformed

__all__ = ["Op", "Row", "Write", "decide_claim", "decide_clear", "decide_settle", "live"]


@dataclass(frozen=True, slots=True)
class Op:
    """One ledger call: its kind, its key, and the kind's arguments (as ``_ledger.py`` passes them)."""

    kind: str
    key: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Row:
    """A record as the table holds it (``_store.ROW`` reads these columns, in this order)."""

    state: str
    job_id: str
    fingerprint: str
    body: bytes | None
    first_sent_at: float
    token: str
    lease_until: float | None
    response: str | None
    code: str | None
    message: str | None
    expires_at: float


#: What to write: ``fresh`` (a new in-flight record, and the job id's note), ``take`` (the
#: in-flight record under this token with a new lease), ``done`` / ``recreate`` (a done
#: record, from the in-flight one or anew), ``fatal``, ``renew``, ``free`` (drop the
#: lease, keep the record), ``delete`` (the record and the job id's note), or nothing.
WriteKind = Literal["fresh", "take", "done", "recreate", "fatal", "renew", "free", "delete", "none"]


@dataclass(frozen=True, slots=True)
class Write:
    """A decision's write: its kind; ``note`` when a claim should note its job id's key."""

    kind: WriteKind
    note: bool = False


NOTHING = Write("none")


def live(row: Row | None, now: float) -> Row | None:
    """``row`` unless it has expired at ``now`` (then it counts as absent)."""
    return row if row is not None and row.expires_at > now else None


def decide_claim(
    op: Op, row: Row | None, noted_key: str | None, now: float
) -> tuple[ClaimResult, Write]:
    """A claim's answer and write. ``row`` is the key's live record (or ``None``),
    ``noted_key`` the key the job id's live note names (or ``None``). The order of the
    checks is ``Ledger.claim``'s."""
    job_id, payload, fingerprint, token, _lease = op.args
    if noted_key is not None and noted_key != op.key:
        return Unstable(noted_key), NOTHING
    if row is None:
        return Claimed(True, payload, fingerprint, now, 0.0), Write("fresh", note=True)
    if conflicts(row.job_id, row.fingerprint, job_id, fingerprint):
        return Conflict(row.fingerprint), NOTHING
    note = noted_key is None
    if row.state == "done":
        if row.response is None:
            raise malformed(op.key, "a done record without a response")
        try:
            return done(row.response, row.fingerprint), Write("none", note=note)
        except ValueError as exc:
            raise malformed(op.key, exc) from None
    if row.state == "fatal":
        return Failed(row.code or "", row.message or ""), Write("none", note=note)
    if row.state != "in_flight":
        raise malformed(op.key, f"no such state {row.state!r}")
    lease_until = row.lease_until if row.lease_until is not None else now
    if row.token and row.token != token and lease_until > now:
        return Busy(lease_until - now), Write("none", note=note)
    if row.body is None:
        raise malformed(op.key, "an in-flight record without its frozen body")
    age = max(0.0, now - row.first_sent_at)
    return Claimed(False, bytes(row.body), row.fingerprint, row.first_sent_at, age), Write("take", note=note)


def decide_settle(kind: str, op: Op, row: Row | None) -> tuple[SettleResult, Write]:
    """The answer and write of ``complete``, ``fail``, ``renew`` or ``release`` (its
    ``args`` start with the token) for the key's live record ``row``."""
    token = op.args[0]
    if row is None:
        if kind == "complete":
            return "recreated", Write("recreate")
        return "missing", NOTHING
    if row.state != "in_flight" or row.token != token or not token:
        return "superseded", NOTHING
    if kind == "complete":
        return "ok", Write("done")
    if kind == "fail":
        return "ok", Write("fatal")
    if kind == "renew":
        return "ok", Write("renew")
    if kind == "release":
        return "ok", Write("delete" if op.args[1] else "free")
    raise ValueError(f"no such settlement {kind!r}")


def decide_clear(row: Row | None, force: bool) -> tuple[bool, Write]:
    """``clear``: a live fatal record goes (with its job id's note), unless its code is in
    ``UNSAFE_TO_CLEAR`` and ``force`` is false."""
    if row is None or row.state != "fatal" or (row.code in UNSAFE_TO_CLEAR and not force):
        return False, NOTHING
    return True, Write("delete")
