"""Test doubles users need: the MockProvider (a real HTTP server), a MockTransport (the
engine without sockets), Redis and PostgreSQL launchers and ``free_port`` (a free loopback
port for a server of your own); and ``Progress``, the progress bar of long runs (the demo,
a checkout's benchmarks and chaos run)."""

from typing import TYPE_CHECKING, Any

from .._transport import MockTransport
from ._mock import FAULTS, Faults, MockProvider
from ._postgres_server import PostgresServer
from ._progress import Progress
from ._redis_server import RedisClusterServers, RedisServer, free_port, redis_url_or_start

if TYPE_CHECKING:
    from .ledger_contract import LedgerContract

__all__ = [
    "FAULTS",
    "Faults",
    "LedgerContract",
    "MockProvider",
    "MockTransport",
    "PostgresServer",
    "Progress",
    "RedisClusterServers",
    "RedisServer",
    "free_port",
    "redis_url_or_start",
]


def __getattr__(name: str) -> Any:
    # LedgerContract needs pytest, which only tests have: imported when first asked for.
    if name == "LedgerContract":
        from .ledger_contract import LedgerContract

        return LedgerContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
