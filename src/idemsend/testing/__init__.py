"""Test doubles users need: the MockProvider (a real HTTP server), a MockTransport (the
engine without sockets) and Redis and PostgreSQL launchers."""

from typing import TYPE_CHECKING, Any

from .._transport import MockTransport
from ._mock import FAULTS, Faults, MockProvider
from ._postgres_server import PostgresServer
from ._redis_server import RedisClusterServers, RedisServer, redis_url_or_start

if TYPE_CHECKING:
    from .ledger_contract import LedgerContract

__all__ = [
    "FAULTS",
    "Faults",
    "LedgerContract",
    "MockProvider",
    "MockTransport",
    "PostgresServer",
    "RedisClusterServers",
    "RedisServer",
    "redis_url_or_start",
]


def __getattr__(name: str) -> Any:
    # LedgerContract needs pytest, which only tests have: imported when first asked for.
    if name == "LedgerContract":
        from .ledger_contract import LedgerContract

        return LedgerContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
