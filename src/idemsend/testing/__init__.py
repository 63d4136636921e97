"""Test doubles users need: the MockProvider (a real HTTP server) and a Redis launcher."""

from ._mock import FAULTS, Faults, MockProvider
from ._redis_server import RedisClusterServers, RedisServer, redis_url_or_start

__all__ = ["FAULTS", "Faults", "MockProvider", "RedisClusterServers", "RedisServer", "redis_url_or_start"]
