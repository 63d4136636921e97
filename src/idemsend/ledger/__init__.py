"""Ledgers: where sends are recorded so replays stay safe past the provider's window.

``MemoryLedger`` is the embedded default for one process; ``SQLiteLedger`` (stdlib
``sqlite3``, no extra) the durable one for every process of one host; ``RedisLedger`` (extra
``idemsend[redis]``) and ``PostgresLedger`` (extra ``idemsend[postgres]``) serve many
processes and machines. ``ledger_from_url`` makes any of them from a URL (``memory://``,
``sqlite:///``, ``redis://``, ``redis+cluster://``, ``postgresql://``...; ``postgres_table_for_prefix`` names
the table a ``postgresql://`` URL's key prefix picks). Import them from here; the
redis and asyncpg packages are only imported when ``RedisLedger`` or ``PostgresLedger``
is first used. (``PostgresLedger`` is not in ``__all__``: a star import, or a check that
every exported name resolves, must not need the ``postgres`` extra.) ``DynamoDBLedger``
(extra ``idemsend[dynamodb]``, ``dynamodb://`` URLs) is imported the same lazy way, and
left out of ``__all__`` for the same reason.

A ledger of your own implements the ``Ledger`` protocol and passes
``idemsend.testing.ledger_contract.LedgerContract``; ``GroupCommit`` batches its calls, and
its ``start()`` can judge its store by the same policy as ours: gather ``StoreFacts``, then
``judge(facts).enforce()``.
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
from ._fitness import Caution, Finding, StoreFacts, Verdict, judge
from ._group import GroupCommit
from ._memory import MemoryLedger
from ._records import Recorded
from ._url import ledger_from_url, postgres_table_for_prefix

if TYPE_CHECKING:
    from ._dynamodb import DynamoDBLedger as DynamoDBLedger  # not in __all__: see the docstring
    from ._postgres import PostgresLedger as PostgresLedger  # not in __all__: see the docstring
    from ._redis import RedisLedger
    from ._sqlite import SQLiteLedger

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_PROVIDER_WINDOW",
    "DEFAULT_RETENTION",
    "Busy",
    "Caution",
    "ClaimResult",
    "Claimed",
    "Conflict",
    "Done",
    "Failed",
    "Finding",
    "GroupCommit",
    "Ledger",
    "LedgerRecord",
    "LedgerUnavailableError",
    "MemoryLedger",
    "RecordState",
    "Recorded",
    "RedisLedger",
    "SQLiteLedger",
    "SettleResult",
    "StoreFacts",
    "Unstable",
    "Verdict",
    "judge",
    "ledger_from_url",
    "postgres_table_for_prefix",
]


def __getattr__(name: str) -> Any:
    if name == "RedisLedger":
        from ._redis import RedisLedger

        return RedisLedger
    if name == "SQLiteLedger":
        from ._sqlite import SQLiteLedger

        return SQLiteLedger
    if name == "PostgresLedger":
        from ._postgres import PostgresLedger as PostgresLedger  # not in __all__: see the docstring

        return PostgresLedger
    if name == "DynamoDBLedger":
        from ._dynamodb import DynamoDBLedger as DynamoDBLedger  # not in __all__: see the docstring

        return DynamoDBLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
