"""Is this Redis fit to be a ledger? What ``RedisLedger.start()`` reads of every server
(``read_servers``) and the facts it gives ``judge`` (``store_facts``, pure).

CONFIG GET answers the settings (``maxmemory-policy``, ``maxmemory``, ``appendonly``,
``save``); where CONFIG is disabled or renamed (managed Redis), INFO answers most of them.

Valkey answers the same commands; its ``INFO server`` has ``valkey_version`` (``"9.1.2"``)
beside a ``redis_version`` frozen at the Redis it forked from (``"7.2.4"``), which is the
command set the scripts need, so the version check reads ``redis_version`` on both and
the messages name Valkey (and its own version) where every server is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import AskError, ClusterError, ResponseError, TryAgainError

from .._fitness import Finding, StoreFacts

__all__ = ["MIN_REDIS", "ServerFacts", "read_server", "read_servers", "server_name", "store_facts", "version_of"]

#: The oldest Redis the ledger's scripts run on (SET ... NX GET arrived in 7.0).
MIN_REDIS = (7, 0)


def version_of(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; parts that are not numbers count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in text.split(".")[:3])


@dataclass(slots=True)
class ServerFacts:
    """What ``start()`` learned about one Redis server (one primary, on Cluster)."""

    node: str
    via: str = ""  # "CONFIG GET" or "INFO"; "" when neither answered
    policy: str | None = None
    maxmemory: str | None = None
    persisted: bool | None = None
    persistence: str = ""  # the settings as read, for the message
    version: str | None = None  # redis_version from INFO server; None when it did not answer
    valkey: str | None = None  # valkey_version from INFO server: None on Redis (or when INFO did not answer)
    errors: list[str] = field(default_factory=list)


def server_name(servers: Sequence[ServerFacts]) -> str:
    """How messages name the store: ``"Valkey"`` when every server said ``valkey_version``,
    else ``"Redis"`` (pure)."""
    return "Valkey" if servers and all(f.valkey is not None for f in servers) else "Redis"


def _runs(f: ServerFacts) -> str:
    if f.valkey is not None:
        return f"runs Valkey {f.valkey} (redis_version {f.version})"
    return f"runs Redis {f.version}"


def store_facts(servers: Sequence[ServerFacts]) -> StoreFacts:
    """What ``start()`` read of every server, as the facts ``judge`` rules on (pure)."""
    return StoreFacts(
        store=server_name(servers),
        ledger="RedisLedger",
        too_old=tuple(
            Finding(f.node, _runs(f))
            for f in servers if f.version is not None and version_of(f.version) < MIN_REDIS
        ),
        needs="Redis 7.0 or newer (its scripts use SET with both NX and GET)",
        evicts=tuple(
            Finding(f.node, f"has maxmemory-policy {f.policy} (maxmemory {f.maxmemory}, read with {f.via})")
            for f in servers if f.policy is not None and f.policy != "noeviction"
        ),
        eviction=(
            "A Redis that may evict keys can drop ledger records under memory pressure (every ledger key has a"
            " TTL, so volatile-* policies evict them as readily as allkeys-* ones; with maxmemory 0 nothing is"
            " evicted until a limit is set)."
        ),
        keep_records="Set maxmemory-policy noeviction (a full Redis then refuses writes and the ledger fails closed)",
        forgets=tuple(Finding(f.node, f.persistence) for f in servers if f.persisted is False),
        persist=(
            "in production enable appendonly yes (or RDB save points, which lose the writes since the last snapshot)"
        ),
        unchecked=tuple(Finding(f.node, "; ".join(f.errors)) for f in servers if f.policy is None),
        check="make sure maxmemory-policy is noeviction and persistence (appendonly yes) is on",
    )


async def read_servers(client: Any, *, cluster: bool) -> list[ServerFacts]:
    """What every server holding ledger keys says of itself (every primary, on Cluster).
    Store failures raise as they are (``STORE_ERRORS``)."""
    return [await read_server(client, node, name) for node, name in await _servers(client, cluster)]


async def _servers(client: Any, cluster: bool) -> list[tuple[Any, str]]:
    """(target node or None, name) for every server holding ledger keys."""
    if cluster:
        await client.initialize()
        return [(node, str(node.name)) for node in client.get_primaries()]
    kw = client.connection_pool.connection_kwargs
    name = str(kw["path"]) if kw.get("path") else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
    return [(None, name)]


async def _ask(client: Any, node: Any, method: str, *args: Any) -> Any:
    call = getattr(client, method)
    if node is None:
        return await call(*args)
    return await call(*args, target_nodes=node)


async def read_server(client: Any, node: Any, name: str) -> ServerFacts:
    """What one server says of itself (``node``: the Cluster node to ask, None on plain
    Redis); a refused CONFIG or INFO is noted in ``errors``, a store failure raises."""
    facts = ServerFacts(name)
    try:
        server = await _ask(client, node, "info", "server")
        facts.version = str(server["redis_version"]) if "redis_version" in server else None
        facts.valkey = str(server["valkey_version"]) if "valkey_version" in server else None
    except ResponseError as exc:
        _reraise_store_failure(exc)
        facts.errors.append(f"INFO server: {exc}")
    try:
        config: dict[str, Any] = {}
        for setting in ("maxmemory-policy", "maxmemory", "appendonly", "save"):
            config.update(await _ask(client, node, "config_get", setting))
        if "maxmemory-policy" not in config:
            raise ResponseError("CONFIG GET maxmemory-policy returned nothing")
    except ResponseError as exc:
        _reraise_store_failure(exc)
        facts.errors.append(f"CONFIG GET: {exc}")
    else:
        facts.via = "CONFIG GET"
        facts.policy = str(config["maxmemory-policy"])
        facts.maxmemory = str(config.get("maxmemory", "?"))
        aof = str(config.get("appendonly", "no"))
        save = str(config.get("save", ""))
        facts.persisted = aof == "yes" or bool(save.strip())
        facts.persistence = f"appendonly {aof}, save {save!r}"
        return facts
    # CONFIG is disabled or renamed (managed Redis): INFO says most of it.
    try:
        memory = await _ask(client, node, "info", "memory")
        persistence = await _ask(client, node, "info", "persistence")
    except ResponseError as exc:
        _reraise_store_failure(exc)
        facts.errors.append(f"INFO: {exc}")
        return facts
    facts.via = "INFO"
    if "maxmemory_policy" in memory:
        facts.policy = str(memory["maxmemory_policy"])
        facts.maxmemory = str(memory.get("maxmemory", "?"))
    else:
        facts.errors.append("INFO memory has no maxmemory_policy")
    aof_on = int(persistence.get("aof_enabled", 0)) == 1
    # INFO cannot show the RDB save points, only whether snapshots have been taken.
    snapshots = (
        int(persistence.get("rdb_saves", 0)) > 0
        or int(persistence.get("rdb_bgsave_in_progress", 0)) == 1
        or int(persistence.get("rdb_last_bgsave_time_sec", -1)) >= 0
    )
    facts.persisted = aof_on or snapshots
    facts.persistence = (
        f"aof_enabled:{int(aof_on)}, "
        + ("RDB snapshots taken since start" if snapshots else "no RDB snapshot since start")
        + " (CONFIG unavailable: the RDB save schedule could not be read)"
    )
    return facts


def _reraise_store_failure(exc: ResponseError) -> None:
    """A cluster redirection or outage is the store failing, not CONFIG/INFO being refused."""
    if isinstance(exc, (ClusterError, AskError, TryAgainError)):
        raise exc
