"""Calls as statement arguments, rows as answers: the pure part of a batch.

``Op`` is one ledger call; ``rounds`` splits a batch so a statement holds each key once;
``params`` makes a statement's arrays from the calls of one kind; ``answer`` reads the
row each call gets back, ``record_of`` the row ``get`` reads.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._base import (
    UNSAFE_TO_CLEAR,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Failed,
    LedgerRecord,
    LedgerUnavailableError,
    Unstable,
)
from .._records import conflicts, done, ledger_record, malformed, settle_result

__all__ = ["Op", "answer", "claim_answer", "clean", "params", "record_of", "rounds"]


@dataclass(frozen=True, slots=True)
class Op:
    """One ledger call: its kind, its key, and the kind's arguments."""

    kind: str
    key: str
    args: tuple[Any, ...]


# What PostgreSQL text cannot hold: NUL, and a surrogate code point (a Python str may hold
# one alone; UTF-8 cannot encode it).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

_UNSAFE = sorted(UNSAFE_TO_CLEAR)


def clean(text: str) -> str:
    """``text`` as PostgreSQL ``text`` can hold it: NUL and unpaired surrogates replaced
    (a job id or a message with one would otherwise fail the whole batch it is in)."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def rounds(ops: Sequence[Op]) -> list[list[int]]:
    """Split a batch so each statement has a key (and a claim's job id) at most once,
    keeping the order of the calls on each: a call goes in the round after the last one
    that holds any of its keys."""
    last: dict[tuple[str, str], int] = {}
    out: list[list[int]] = []
    for index, op in enumerate(ops):
        slots = [("k", op.key)] if op.kind != "claim" else [("k", op.key), ("j", op.args[0])]
        r = max((last.get(slot, -1) + 1 for slot in slots), default=0)
        for slot in slots:
            last[slot] = r
        if r == len(out):
            out.append([])
        out[r].append(index)
    return out


def params(kind: str, ops: Sequence[Op], retention: float) -> list[Any]:
    """The arguments of ``kind``'s statement for ``ops``. Every array is ``text[]`` (cast in
    the SQL) and the bodies go as one ``bytea`` with offsets: asyncpg knows ``text[]`` and
    scalars without asking the server, so it never runs its type introspection (three more
    statements on every new connection, one of them a session-level ``set_config`` that
    PgBouncer's transaction mode would leak to other clients)."""
    keys = [op.key for op in ops]
    if kind == "claim":
        sizes = [len(op.args[1]) for op in ops]
        starts = list(itertools.accumulate(sizes, initial=0))[:-1]
        return [
            keys, [op.args[0] for op in ops], b"".join(op.args[1] for op in ops), [op.args[2] for op in ops],
            [op.args[3] for op in ops], [repr(op.args[4]) for op in ops], retention,
            [str(n) for n in starts], [str(n) for n in sizes],
        ]
    if kind == "complete":
        return [keys, [op.args[0] for op in ops], [op.args[1] for op in ops], retention]
    if kind == "fail":
        return [keys, [op.args[0] for op in ops], [op.args[1] for op in ops], [op.args[2] for op in ops],
                retention]
    if kind == "renew":
        return [keys, [op.args[0] for op in ops], [repr(op.args[1]) for op in ops]]
    if kind == "release":
        return [keys, [op.args[0] for op in ops], ["t" if op.args[1] else "f" for op in ops]]
    return [keys, ["t" if op.args[0] else "f" for op in ops], _UNSAFE]  # clear


def answer(kind: str, op: Op, row: Any) -> Any:
    """What the row ``op`` got back from ``kind``'s statement answers its caller."""
    if kind == "claim":
        return claim_answer(op, row)
    if kind == "clear":
        return bool(row[0])
    return settle_result(row[0])


def claim_answer(op: Op, row: Any) -> ClaimResult:
    """What a claim's row (``CLAIM``'s columns) answers; ``LedgerUnavailableError`` for one
    that cannot be read."""
    job_id, payload, fp, token, _lease = op.args
    recorded = row[0]
    if recorded != op.key:
        return Unstable(recorded)
    state = row[1]
    if state is None:
        raise LedgerUnavailableError(f"the claim of key {op.key!r} returned no record")
    recorded_fp = row[3]
    if conflicts(row[2], recorded_fp, job_id, fp):
        return Conflict(recorded_fp)
    if state == "done":
        return done(row[6], recorded_fp)
    if state == "fatal":
        return Failed(row[7] or "", row[8] or "")
    if state != "in_flight":
        raise LedgerUnavailableError(f"the record of key {op.key!r} has no such state {state!r}")
    if row[4] == token:
        if row[9]:
            return Claimed(True, payload, fp, row[10], 0.0)
        return Claimed(False, bytes(row[5]), recorded_fp, row[10], row[11])
    return Busy(max(0.0, row[12]))


def record_of(key: str, row: Sequence[Any]) -> LedgerRecord:
    """The ``LedgerRecord`` of ``GET``'s row; ``LedgerUnavailableError`` for one that cannot be read."""
    state, job_id, fp, first, response, code, message, lease_until = row
    try:
        return ledger_record(
            key, state, job_id=job_id, fingerprint=fp, first_sent_at=first, response=response,
            code=code, message=message, lease_until=lease_until,
        )
    except (ValueError, TypeError) as exc:
        raise malformed(key, exc) from None
