"""Test doubles users need: the MockProvider (a real HTTP server), a MockTransport (the
engine without sockets) and a Redis launcher."""

from .._transport import MockTransport
from ._mock import FAULTS, Faults, MockProvider
from ._redis_server import RedisClusterServers, RedisServer, redis_url_or_start

__all__ = [
    "FAULTS",
    "Faults",
    "MockProvider",
    "MockTransport",
    "RedisClusterServers",
    "RedisServer",
    "redis_url_or_start",
]
