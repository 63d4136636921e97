"""The Redis client a ledger makes for a URL, and what a store failure can raise.

redis-py's asyncio connection packs commands in Python; the ledger's connections pack
them with hiredis (C) where it is installed (it ships with ``idemsend[redis]``), keeping
the kind of connection the URL asks for (TCP, TLS, Unix socket).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

try:  # the C packer; it ships with idemsend[redis] (redis[hiredis])
    import hiredis

    _HIREDIS = True
except ImportError:  # pragma: no cover
    _HIREDIS = False

__all__ = ["STORE_ERRORS", "make_client"]

#: What a store failure can raise: redis-py's errors, the cluster client's own exception
#: (not a RedisError), and socket errors that slip through.
STORE_ERRORS = (RedisError, RedisClusterException, OSError)


class _HiredisPacking:
    """redis-py's asyncio connection packs commands in Python (its sync one already uses
    hiredis); packing was most of the ledger's CPU per send, so pack them in C here. Mixed
    into each connection class a URL can ask for, so ``rediss://`` keeps TLS and
    ``unix://`` its socket."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        return [hiredis.pack_command(args)]


class _HiredisPackConnection(_HiredisPacking, aioredis.Connection):
    """A TCP connection (``redis://``) that packs commands with hiredis."""


class _HiredisPackSSLConnection(_HiredisPacking, aioredis.SSLConnection):
    """A TLS connection (``rediss://``) that packs commands with hiredis."""


class _HiredisPackUnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    """A Unix-socket connection (``unix://``) that packs commands with hiredis."""


_PACKING_FOR_SCHEME: dict[str, type[aioredis.Connection] | type[aioredis.UnixDomainSocketConnection]] = {
    "redis": _HiredisPackConnection, "rediss": _HiredisPackSSLConnection, "unix": _HiredisPackUnixConnection,
}


def _packing_connection_class(url: str) -> dict[str, Any]:
    """``connection_class`` for ``url``'s scheme, as a keyword: a hiredis-packing class of
    the same kind redis-py would pick (an explicit class wins over the URL's, so a plain
    one here would silently turn TLS off), or nothing without hiredis or for a scheme
    not known here."""
    if not _HIREDIS:
        return {}
    cls = _PACKING_FOR_SCHEME.get(url.partition("://")[0].lower())
    return {"connection_class": cls} if cls is not None else {}



def make_client(url: str, *, cluster: bool, socket_timeout: float) -> Any:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``; a Cluster client with
    ``cluster=True``), as ``RedisLedger.from_url`` makes it."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=socket_timeout)
    # A pooled connection the server closed (a restart) fails its first command when
    # the close was not yet seen (redis-py 6+ no longer probes the socket on checkout):
    # such a call is sent once more on a new connection (a timeout is not: Retry's
    # default would repeat those too, doubling a slow call). Every ledger operation is
    # safe to repeat: a repeated claim finds the record it made and answers as the
    # first did (fresh, or the resume), so does a repeated complete or fail; a
    # repeated release answers "superseded" or "missing" (logged); nothing is sent.
    return aioredis.Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError], **_packing_connection_class(url),
    )
