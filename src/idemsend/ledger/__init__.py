"""Ledgers: where sends are recorded so replays stay safe past the provider's window.

``MemoryLedger`` is the embedded default for one process; ``RedisLedger`` (extra
``idemsend[redis]``) serves many processes and machines. Import it from here; the
redis package is only imported when ``RedisLedger`` is first used.
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
    SettleResult,
    Unstable,
)
from ._memory import MemoryLedger

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
    "Ledger",
    "LedgerRecord",
    "LedgerUnavailableError",
    "MemoryLedger",
    "RedisLedger",
    "SettleResult",
    "Unstable",
]


def __getattr__(name: str) -> Any:
    if name == "RedisLedger":
        from ._redis import RedisLedger

        return RedisLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
