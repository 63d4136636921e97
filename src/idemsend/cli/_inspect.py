"""``idemsend inspect``, ``clear`` and ``migrate``: read a ledger record, remove a fatal one
so its job can run again, or create a ledger's tables. Every ledger ``ledger_from_url``
knows works (``redis://``, ``redis+cluster://``, ``postgresql://``, ...)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ..ledger import Ledger, LedgerRecord, ledger_from_url
from ..ledger._base import UNSAFE_TO_CLEAR

__all__ = ["clear", "inspect", "migrate", "record_view"]


def _when(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_view(record: LedgerRecord) -> dict[str, Any]:
    """A record as a person reads it: times in ISO 8601 UTC, the provider's answer flat."""
    recorded = dict(record.response or {})
    return {
        "key": record.key,
        "state": record.state,
        "job_id": record.job_id or None,
        "fingerprint": record.fingerprint or None,
        "first_sent_at": _when(record.first_sent_at),
        "lease_until": _when(record.lease_until) if record.lease_until else None,
        "provider_id": recorded.get("id"),
        "provider_status": recorded.get("status"),
        "provider_response": recorded.get("response"),
        "code": record.code,
        "message": record.message,
    }


async def _with_ledger(url: str, prefix: str) -> Ledger:
    return ledger_from_url(url, prefix=prefix)


async def inspect(url: str, key: str, prefix: str) -> tuple[bool, str]:
    """``(found, text)``: the record for ``key`` as JSON, or why there is none."""
    ledger = await _with_ledger(url, prefix)
    try:
        record = await ledger.get(key)
    finally:
        await ledger.aclose()
    if record is None:
        return False, f"no record for key {key!r}"
    return True, json.dumps(record_view(record), indent=2)


async def clear(url: str, key: str, prefix: str, *, force: bool = False) -> tuple[bool, str]:
    """``(cleared, text)``. Only a fatal record is cleared: clearing a done or in-flight
    record could let its job send twice; a fatal whose send may have run (``UNSAFE_TO_CLEAR``:
    a stale replay, a mismatch) only with ``force``.

    A clear that answers "nothing removed" is checked by reading the record again: a command
    whose reply was lost and that the client sent again finds its own work done (the record
    gone), and that is reported as cleared."""
    ledger = await _with_ledger(url, prefix)
    try:
        record = await ledger.get(key)
        if record is None:
            return False, f"no record for key {key!r}"
        if record.state != "fatal":
            return False, (
                f"key {key!r} is {record.state}, not fatal: only fatal records are cleared"
                " (clearing a done or in-flight record could let the job send twice)"
            )
        if record.code in UNSAFE_TO_CLEAR and not force:
            return False, (
                f"key {key!r} is fatal with {record.code}: its send may have run (or ran with another body),"
                " so running the job again could send twice; check at the provider, then clear with --force"
            )
        if not await ledger.clear(key, force=force):
            now = await ledger.get(key)
            if now == record:
                return False, f"key {key!r} was not cleared (its record is unchanged: see idemsend inspect)"
            if now is not None:
                return False, f"key {key!r} changed while clearing it: it is {now.state} now (see idemsend inspect)"
        return True, f"cleared the fatal record of key {key!r} ({record.code}: {record.message})"
    finally:
        await ledger.aclose()


async def migrate(url: str, prefix: str, *, qstash_guard: bool = False) -> tuple[bool, str]:
    """``(ok, text)``: create the ledger's tables (a ledger that needs none says so), and with
    ``qstash_guard`` the QStash replay guard's table beside a PostgresLedger's
    (``<ledger table>_jti``, where the webhook's default guard keeps its tokens)."""
    ledger = await _with_ledger(url, prefix)
    try:
        step = getattr(ledger, "migrate", None)
        if step is None:
            return True, f"{type(ledger).__name__} needs no migration"
        await step()
        if not qstash_guard:
            return True, f"{type(ledger).__name__}: migrated"
        from ..adapters.qstash._pg_guard import PostgresReplayGuard

        guard = PostgresReplayGuard.for_ledger(ledger)
        await guard.migrate()
        return True, f"{type(ledger).__name__}: migrated, with the QStash replay guard table {guard.table}"
    finally:
        await ledger.aclose()
