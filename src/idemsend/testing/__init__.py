"""Test doubles users need: the MockProvider (a real HTTP server), the ProviderContract it
serves (a pure object: ``handle(ProviderRequest) -> ProviderAnswer``, or the engine's
transport through ``contract_transport``), a MockTransport (the engine without sockets),
Redis and PostgreSQL launchers and ``free_port`` (a free loopback port for a server of your
own); and ``Progress``, the progress bar of long runs (the demo, a checkout's benchmarks
and chaos run)."""

from typing import TYPE_CHECKING, Any

from .._transport import MockTransport
from ._contract import ProviderAnswer, ProviderContract, ProviderRequest, SignatureCheck
from ._dialects import DIALECTS, Dialect
from ._mock import FAULTS, Faults, MockProvider
from ._postgres_server import PostgresServer
from ._progress import Progress
from ._redis_server import RedisClusterServers, RedisServer, free_port, redis_url_or_start
from ._serve import contract_transport

if TYPE_CHECKING:
    from .ledger_contract import LedgerContract

__all__ = [
    "DIALECTS",
    "FAULTS",
    "Dialect",
    "Faults",
    "LedgerContract",
    "MockProvider",
    "MockTransport",
    "PostgresServer",
    "Progress",
    "ProviderAnswer",
    "ProviderContract",
    "ProviderRequest",
    "RedisClusterServers",
    "RedisServer",
    "SignatureCheck",
    "contract_transport",
    "free_port",
    "redis_url_or_start",
]


def __getattr__(name: str) -> Any:
    # LedgerContract needs pytest, which only tests have: imported when first asked for.
    if name == "LedgerContract":
        from .ledger_contract import LedgerContract

        return LedgerContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
