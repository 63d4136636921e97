"""``idemsend inspect`` and ``idemsend clear``: read a RedisLedger record, or remove a
fatal one so its job can run again."""

from __future__ import annotations

import json

__all__ = ["clear", "inspect"]


async def inspect(url: str, key: str, prefix: str) -> tuple[bool, str]:
    """``(found, text)``: the record for ``key`` as JSON, or why there is none."""
    from ..ledger._redis import inspect_record

    record = await inspect_record(url, key, prefix=prefix)
    if record is None:
        return False, f"no record for key {key!r}"
    return True, json.dumps(record, indent=2, sort_keys=True)


async def clear(url: str, key: str, prefix: str, *, force: bool = False) -> tuple[bool, str]:
    """``(cleared, text)``. Only a fatal record is cleared: clearing a done or in-flight
    record could let its job send twice; a fatal whose send may have run (``UNSAFE_TO_CLEAR``:
    a stale replay, a mismatch) only with ``force``."""
    from ..ledger._base import UNSAFE_TO_CLEAR
    from ..ledger._redis import RedisLedger

    ledger = RedisLedger.from_url(url, prefix=prefix)
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
            return False, f"key {key!r} changed while clearing it; nothing was cleared"
        return True, f"cleared the fatal record of key {key!r} ({record.code}: {record.message})"
    finally:
        await ledger.aclose()
