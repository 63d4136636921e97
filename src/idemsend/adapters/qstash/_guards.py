"""Replay guards: remember which job id each signed token (its ``jti``) first came with.

QStash's signature does not cover the headers, so a captured delivery can be replayed
within its token's lifetime under a fresh ``Upstash-Message-Id`` (a new job, so a new
send). A guard refuses the same ``jti`` under another message id. It must be shared by
every process serving the endpoint, and outlive a restart, to be a defence:
``RedisReplayGuard`` here, ``PostgresReplayGuard`` in ``_pg_guard``; ``InMemoryReplayGuard``
only for one process that is never restarted within a token's lifetime. See
``docs/qstash-security.md``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..._errors import ConfigError, IdemsendError, MissingExtraError

__all__ = [
    "JTI_KEY_PREFIX",
    "InMemoryReplayGuard",
    "RedisReplayGuard",
    "ReplayGuardUnavailable",
    "SignatureReplayGuard",
]

#: Where ``RedisReplayGuard`` keeps each token id, by default.
JTI_KEY_PREFIX = "idemsend:qstash:jti:"


class ReplayGuardUnavailable(IdemsendError):
    """A replay guard could not answer (its store is unreachable, full or missing its
    table). The handler fails closed on it: 503 (no ``Retry-After``), nothing sent."""


@runtime_checkable
class SignatureReplayGuard(Protocol):
    """Remembers which job id each signed token (its ``jti``) first came with.

    ``remember(jti, message_id, expires_at)`` records ``message_id`` for ``jti`` unless
    ``jti`` is already recorded, keeps it until ``expires_at`` (Unix seconds) at least,
    and returns the message id recorded first (``message_id`` itself on the first call).
    It raises when it cannot answer; the handler then refuses the delivery (503).
    Every process serving the endpoint must share one memory for it to be a defence.
    """

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new; return the one recorded first."""
        ...


class InMemoryReplayGuard:
    """A ``SignatureReplayGuard`` in this process's memory: a defence only when a single
    process serves the endpoint. Expired entries are swept on every call; at
    ``max_entries`` live entries it raises ``ReplayGuardUnavailable`` (the handler
    answers 503) rather than forget a token that is still valid."""

    def __init__(self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def sweep(self) -> None:
        """Forget the entries whose token has expired."""
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, jti = heapq.heappop(self._expiry)
            entry = self._entries.get(jti)
            if entry is not None and entry[1] == expires_at:
                del self._entries[jti]

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new; return the one recorded first."""
        self.sweep()
        entry = self._entries.get(jti)
        if entry is not None:
            return entry[0]
        if len(self._entries) >= self.max_entries:
            raise ReplayGuardUnavailable(
                f"the in-memory replay guard holds {self.max_entries} unexpired tokens; raise max_entries"
                " or use RedisReplayGuard"
            )
        self._entries[jti] = (message_id, expires_at)
        heapq.heappush(self._expiry, (expires_at, jti))
        return message_id


_REMEMBER_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return ARGV[1]
end
local first = redis.call('GET', KEYS[1])
if not first then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return ARGV[1]
end
return first
"""


class RedisReplayGuard:
    """A ``SignatureReplayGuard`` in Redis, shared by every webhook process.

    One Lua script, atomically: ``SET <prefix><jti> <message_id> NX PX <ms to expiry>``,
    then ``GET`` when the key was already there. The expiry is computed on this host's
    clock (the one that judged the token valid), at least 1 ms. ``redis`` is a
    ``redis.asyncio`` client (``Redis`` or ``RedisCluster``: one key per call, so any slot
    serves it); ``from_url`` makes one, ``for_ledger`` shares a ``RedisLedger``'s.
    ``redis`` is imported only in ``from_url``, so the ``qstash`` extra does not need it.
    """

    def __init__(self, redis: Any, *, prefix: str = JTI_KEY_PREFIX, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self._clock = clock
        self._owned = False
        self._script = redis.register_script(_REMEMBER_LUA)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = JTI_KEY_PREFIX, timeout: float = 2.0, **redis_kwargs: Any
    ) -> RedisReplayGuard:
        """A guard with its own ``redis.asyncio.Redis`` client (closed by ``aclose``);
        ``timeout`` bounds connecting and each command, so an unreachable Redis fails fast."""
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise MissingExtraError("redis", "redis") from exc
        redis_kwargs.setdefault("socket_connect_timeout", timeout)
        redis_kwargs.setdefault("socket_timeout", timeout)
        guard = cls(aioredis.Redis.from_url(url, **redis_kwargs), prefix=prefix)
        guard._owned = True
        return guard

    @classmethod
    def for_ledger(cls, ledger: Any) -> RedisReplayGuard:
        """A guard on the client of ``ledger`` (a ``RedisLedger``: its public ``client`` and
        ``prefix``), keys ``<prefix>:qstash:jti:<jti>``; the client stays the ledger's (not
        closed by ``aclose``). What the ledger demands of its server (no eviction) then
        holds for the guard's keys too."""
        return cls(ledger.client, prefix=f"{ledger.prefix}:qstash:jti:")

    def __repr__(self) -> str:
        return f"<RedisReplayGuard prefix={self.prefix!r}>"

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new; return the one recorded first."""
        ttl_ms = max(1, math.ceil((expires_at - self._clock()) * 1000))
        first = await self._script(keys=[self.prefix + jti], args=[message_id, ttl_ms])
        return first.decode() if isinstance(first, bytes) else str(first)

    async def aclose(self) -> None:
        """Close the Redis client if ``from_url`` made it."""
        if self._owned:
            await self.redis.aclose()
