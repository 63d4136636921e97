"""Ledgers: where sends are recorded so replays stay safe past the provider's window.

``MemoryLedger`` is the embedded default for one process; ``RedisLedger`` (extra
``idemsend[redis]``) serves many processes and machines. ``ledger_from_url`` makes
either from a URL (``memory://``, ``redis://``, ``redis+cluster://``...). Import them
from here; the redis package is only imported when ``RedisLedger`` is first used.

A ledger of your own implements the ``Ledger`` protocol and passes
``idemsend.testing.ledger_contract.LedgerContract``; ``GroupCommit`` batches its calls.
"""

from typing import TYPE_CHECKING, Any

from ._base import (
    DEFAULT_LEASE,
    DEFAULT_PROVIDER_WINDOW,
    DEFAULT_RETENTION,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Done,
    Failed,
    Ledger,
    LedgerRecord,
    LedgerUnavailableError,
    RecordState,
    SettleResult,
    Unstable,
)
from ._group import GroupCommit
from ._memory import MemoryLedger
from ._url import ledger_from_url

if TYPE_CHECKING:
    from ._redis import RedisLedger

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_PROVIDER_WINDOW",
    "DEFAULT_RETENTION",
    "Busy",
    "ClaimResult",
    "Claimed",
    "Conflict",
    "Done",
    "Failed",
    "GroupCommit",
    "Ledger",
    "LedgerRecord",
    "LedgerUnavailableError",
    "MemoryLedger",
    "RecordState",
    "RedisLedger",
    "SettleResult",
    "Unstable",
    "ledger_from_url",
]


def __getattr__(name: str) -> Any:
    if name == "RedisLedger":
        from ._redis import RedisLedger

        return RedisLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
