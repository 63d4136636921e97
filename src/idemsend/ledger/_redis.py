"""RedisLedger: one ledger for many worker processes and machines (extra ``redis``).

Every transition is a Lua script over **one** key, so each runs atomically on one
slot and works unchanged on Redis Cluster. Scripts read Redis's own clock (``TIME``),
so leases and the age of an unfinished send mean the same on every machine. Records:

* ``{prefix}:rec:{<key>}``: a hash ``st`` (in_flight|done|fatal), ``job``, ``fp``,
  ``body`` (frozen bytes, dropped once done or fatal), ``first`` (ms), ``tok``,
  ``lease`` (ms), ``resp`` (JSON), ``code``, ``msg``; it expires ``retention`` after it
  was claimed, completed or failed.
* ``{prefix}:job:{<job id>}``: the key the job's first attempt derived.

Cost: a claim is one script (on Cluster two, job map and record, in one pipeline) and
a completion is one, so the happy path is two round trips. Calls made in the same event-loop turn
by many coroutines are flushed together (``GroupCommit``, ledger/_group.py): on plain
Redis a batch is one EVALSHA of a script that runs every operation, on Cluster one
pipeline; so a hundred concurrent sends cost two round trips, not two hundred.

The ledger relies on Redis keeping what it was told: ``start()`` refuses a server that
evicts keys (``maxmemory-policy`` other than ``noeviction``) and warns about one that
persists nothing. A done record that vanishes turns a replay after the provider's
window into a double send.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, MissingExtraError
from .._log import fields
from ._base import (
    DEFAULT_RETENTION,
    UNSAFE_TO_CLEAR,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Done,
    Failed,
    LedgerRecord,
    LedgerUnavailableError,
    RecordState,
    SettleResult,
    Unstable,
)
from ._group import GroupCommit

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import (
        AskError,
        ClusterError,
        NoScriptError,
        RedisClusterException,
        RedisError,
        ResponseError,
        TryAgainError,
    )
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingExtraError("redis", "redis") from exc

try:  # the C packer; it ships with idemsend[redis] (redis[hiredis])
    import hiredis

    _HIREDIS = True
except ImportError:  # pragma: no cover
    _HIREDIS = False

__all__ = ["RedisLedger", "inspect_record"]

log = logging.getLogger("idemsend.ledger")

# What a store failure can raise: redis-py's errors, the cluster client's own exception
# (not a RedisError), and socket errors that slip through.
_STORE_ERRORS = (RedisError, RedisClusterException, OSError)


class _HiredisPackConnection(aioredis.Connection):
    """redis-py's asyncio connection packs commands in Python (its sync one already uses
    hiredis); packing was most of the ledger's CPU per send, so pack them in C here."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        return [hiredis.pack_command(args)]


_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
_FMT = "local function n(x) return string.format('%.0f', x) end\n"

_JOB = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
"""

# A record recreated by _COMPLETE after the store lost it has job '' and fp '' (unknown):
# it answers every claim of its key with 'done', never with 'conflict'.
_CLAIM_BODY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'st', 'in_flight', 'job', ARGV[2], 'fp', ARGV[3], 'body', ARGV[4],
             'first', n(now), 'tok', ARGV[1], 'lease', n(now + tonumber(ARGV[5])))
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {'claimed', '1', ARGV[4], ARGV[3], n(now), '0'}
end
local r = redis.call('HMGET', KEYS[1], 'st', 'job', 'fp', 'tok', 'lease', 'body', 'first', 'resp', 'code', 'msg')
local fp = r[3] or ''
if fp ~= '' and r[2] ~= ARGV[2] and fp ~= ARGV[3] then return {'conflict', fp} end
if r[1] == 'done' then return {'done', r[8], fp} end
if r[1] == 'fatal' then return {'fatal', r[9], r[10]} end
if r[4] and r[4] ~= '' and r[4] ~= ARGV[1] and tonumber(r[5]) > now then
  return {'busy', n(tonumber(r[5]) - now)}
end
redis.call('HSET', KEYS[1], 'tok', ARGV[1], 'lease', n(now + tonumber(ARGV[5])))
local first = tonumber(r[7]) or now
local age = now - first
if age < 0 then age = 0 end
return {'claimed', '0', r[6], fp, n(first), n(age)}
"""
_CLAIM = _NOW + _FMT + _CLAIM_BODY

# Plain Redis: the job map (KEYS[2]) is checked in the same script, one command a claim.
# Cluster: the two keys live in different slots, so _JOB and _CLAIM go separately.
_CLAIM_WITH_JOB = _NOW + _FMT + """
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[7] then return {'unstable', cur} end
if not cur then redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[6]) end
""" + _CLAIM_BODY

# Settling needs the record in flight under this token: 'missing' when there is no
# record at all (lost to a restart, an eviction or retention), 'superseded' when it is
# someone else's or already done/fatal. Neither writes anything.
_OWNED = """
local owned = redis.call('HMGET', KEYS[1], 'st', 'tok')
if not owned[1] then return 'missing' end
if owned[1] ~= 'in_flight' or owned[2] ~= ARGV[1] then return 'superseded' end
"""

# A missing record is written anew as done: the send happened, and only a done record
# stops a replay after the provider's window from sending again.
_COMPLETE = _NOW + _FMT + """
local owned = redis.call('HMGET', KEYS[1], 'st', 'tok')
if not owned[1] then
  redis.call('HSET', KEYS[1], 'st', 'done', 'resp', ARGV[2], 'job', '', 'fp', '', 'first', n(now), 'tok', '')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'recreated'
end
if owned[1] ~= 'in_flight' or owned[2] ~= ARGV[1] then return 'superseded' end
redis.call('HSET', KEYS[1], 'st', 'done', 'resp', ARGV[2], 'tok', '')
redis.call('HDEL', KEYS[1], 'body', 'lease')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
"""

_FAIL = _OWNED + """
redis.call('HSET', KEYS[1], 'st', 'fatal', 'code', ARGV[2], 'msg', ARGV[3], 'tok', '')
redis.call('HDEL', KEYS[1], 'body', 'lease')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'ok'
"""

_RENEW = _NOW + _FMT + _OWNED + """
redis.call('HSET', KEYS[1], 'lease', n(now + tonumber(ARGV[2])))
return 'ok'
"""

# ARGV[2] == '1' (forget): the claim was fresh and nothing can have been sent, so the
# record goes. Otherwise the record (frozen body, first-sent time) stays, unleased.
_RELEASE = _OWNED + """
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) return 'ok' end
redis.call('HSET', KEYS[1], 'tok', '', 'lease', '0')
return 'ok'
"""

# Only a fatal record is ever cleared: a done one stops a double send, an in-flight one
# may be mid-send.
# ARGV[1] == '1': force; ARGV[2..]: the codes cleared only with force (UNSAFE_TO_CLEAR)
_CLEAR = """
local r = redis.call('HMGET', KEYS[1], 'st', 'code')
if r[1] ~= 'fatal' then return 0 end
if ARGV[1] ~= '1' then
  for i = 2, #ARGV do if r[2] == ARGV[i] then return 0 end end
end
redis.call('DEL', KEYS[1])
return 1
"""


class _Script:
    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


_OPS = (
    ("job", _JOB), ("claim", _CLAIM), ("claim_with_job", _CLAIM_WITH_JOB), ("complete", _COMPLETE),
    ("fail", _FAIL), ("renew", _RENEW), ("release", _RELEASE), ("clear", _CLEAR),
)

# Plain Redis: a whole batch is one EVALSHA of this script, which runs each operation
# above as a function. One command and one reply per batch instead of one per operation:
# redis-py's per-command packing and parsing was most of the ledger's CPU per send.
# ARGV: count, then per operation: name, number of keys, number of args, args...
_BATCH = "local ops = {}\n" + "".join(
    f"ops['{name}'] = function(KEYS, ARGV)\n{text}\nend\n" for name, text in _OPS
) + """
local out, ki, ai = {}, 1, 2
for i = 1, tonumber(ARGV[1]) do
  local name, nk, na = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  ai = ai + 3
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[ki]; ki = ki + 1 end
  for j = 1, na do a[j] = ARGV[ai]; ai = ai + 1 end
  out[i] = ops[name](k, a)
end
return out
"""

_SCRIPTS = {name: _Script(name, text) for name, text in (*_OPS, ("batch", _BATCH))}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


#: One script call: the script, its keys, its arguments.
_Op = tuple[_Script, tuple[str, ...], tuple[Any, ...]]


class _Executor:
    """Runs one GroupCommit batch of script calls: on plain Redis one EVALSHA of
    ``_BATCH`` (one command, one reply), on Cluster one pipeline of EVALSHAs (redis-py
    sends it to each node concerned). A server that lost its scripts (restarted, new,
    SCRIPT FLUSH) answers NOSCRIPT: the scripts are loaded and those calls run again."""

    def __init__(self, client: Any, *, one_call: bool) -> None:
        self.client = client
        self.one_call = one_call

    async def __call__(self, ops: Sequence[_Op]) -> list[Any]:
        results = await self._execute(ops)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for script in _SCRIPTS.values():
                await self.client.script_load(script.text)
            again = await self._execute([ops[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results

    async def _execute(self, ops: Sequence[_Op]) -> list[Any]:
        if self.one_call:
            batch_keys: list[Any] = []
            argv: list[Any] = [len(ops)]
            for script, keys, args in ops:
                batch_keys.extend(keys)
                argv.extend((script.name, len(keys), len(args)))
                argv.extend(args)
            try:
                reply = await self.client.execute_command(
                    "EVALSHA", _SCRIPTS["batch"].sha, len(batch_keys), *batch_keys, *argv
                )
            except NoScriptError as exc:
                return [exc] * len(ops)
            return list(reply)
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in ops:
            # execute_command, not evalsha(): redis-py 5 blocks the evalsha method on
            # cluster pipelines, though one-slot scripts route to one node just fine.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


def _unavailable(exc: BaseException) -> LedgerUnavailableError:
    return LedgerUnavailableError(f"{type(exc).__name__}: {exc}")


_STATES: dict[str, RecordState] = {"in_flight": "in_flight", "done": "done", "fatal": "fatal"}

_ANSWERS: dict[str, SettleResult] = {
    "ok": "ok", "recreated": "recreated", "missing": "missing", "superseded": "superseded",
}


def _answer(reply: Any) -> SettleResult:
    answer = _ANSWERS.get(_s(reply))
    if answer is None:
        raise LedgerUnavailableError(f"unexpected ledger reply {reply!r}")
    return answer


@dataclass(slots=True)
class _ServerFacts:
    """What ``start()`` learned about one Redis server (one primary, on Cluster)."""

    node: str
    via: str = ""  # "CONFIG GET" or "INFO"; "" when neither answered
    policy: str | None = None
    maxmemory: str | None = None
    persisted: bool | None = None
    persistence: str = ""  # the settings as read, for the message
    errors: list[str] = field(default_factory=list)


class RedisLedger:
    """A ledger in Redis (plain or Cluster), shared by every worker.

    ``RedisLedger(client)`` takes a ``redis.asyncio.Redis`` or ``RedisCluster`` that you
    own; ``RedisLedger.from_url(url)`` makes (and on ``aclose`` closes) its own.

    The server must keep what it is told (see ``start``): ``maxmemory-policy noeviction``
    (anything else is refused unless ``allow_eviction=True``), and persistence (AOF or RDB)
    if a restart must not forget completed sends.
    """

    def __init__(
        self, client: Any, *, prefix: str = "idemsend", retention: float = DEFAULT_RETENTION,
        allow_eviction: bool = False, on_batch: Callable[[int], object] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        if isinstance(retention, bool) or not isinstance(retention, int | float) or not 0.001 <= retention < 1e9:
            raise ConfigError(f"retention must be a number of seconds (at least 0.001), got {retention!r}")
        self.retention = retention
        self.allow_eviction = allow_eviction
        self._retention_ms = str(int(retention * 1000))
        self._cluster = isinstance(client, RedisCluster)
        self._group: GroupCommit[_Op, Any] = GroupCommit(
            _Executor(client, one_call=not self._cluster), on_batch=on_batch, error=_unavailable
        )
        self._owns_client = False
        self._checked = False
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls, url: str, *, cluster: bool = False, prefix: str = "idemsend", retention: float = DEFAULT_RETENTION,
        socket_timeout: float = 5.0, allow_eviction: bool = False, on_batch: Callable[[int], object] | None = None,
    ) -> RedisLedger:
        """A ledger over a client it makes (and closes on ``aclose``) for ``url``
        (``redis://``, ``rediss://``, ``unix://``), a Cluster client with ``cluster=True``.
        ``on_batch(size)`` is called as each batch of ledger calls goes out."""
        if cluster:
            client: Any = RedisCluster.from_url(url, socket_timeout=socket_timeout)
        else:
            extra: dict[str, Any] = {"connection_class": _HiredisPackConnection} if _HIREDIS else {}
            client = aioredis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, **extra
            )
        ledger = cls(client, prefix=prefix, retention=retention, allow_eviction=allow_eviction, on_batch=on_batch)
        ledger._owns_client = True
        return ledger

    def __repr__(self) -> str:
        return f"<RedisLedger prefix={self.prefix!r} retention={self.retention:g}s>"

    def record_key(self, key: str) -> str:
        """The Redis key of ``key``'s record (a hash)."""
        return f"{self.prefix}:rec:{{{key}}}"

    def job_key(self, job_id: str) -> str:
        """The Redis key noting which key ``job_id`` was first claimed with."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def _call(self, script: str, keys: str | tuple[str, ...], *args: Any) -> asyncio.Future[Any]:
        return self._group.submit((_SCRIPTS[script], keys if isinstance(keys, tuple) else (keys,), args))

    # -- start: is this Redis fit to be a ledger? --------------------------------------

    async def start(self) -> None:
        """Check the server once (every primary, on Cluster); see ``Ledger.start``.

        * ``maxmemory-policy`` other than ``noeviction`` (read with ``CONFIG GET``, else from
          ``INFO memory``): raises ``ConfigError``, or logs a WARNING with
          ``allow_eviction=True``. Every ledger key has a TTL, so ``volatile-*`` policies
          evict records as readily as ``allkeys-*`` ones.
        * no persistence (``appendonly no`` and no RDB ``save`` points; from ``INFO
          persistence`` when CONFIG is unavailable): a WARNING.
        * neither CONFIG nor INFO answers (a managed or locked-down server): a WARNING.
        * the server cannot be reached: ``LedgerUnavailableError``; nothing was checked and
          ``start`` can be called again.
        """
        if self._checked:
            return
        async with self._start_lock:
            if self._checked:
                return
            try:
                facts = [await self._facts(node, name) for node, name in await self._servers()]
            except _STORE_ERRORS as exc:
                raise LedgerUnavailableError(
                    f"could not check the ledger's Redis: {type(exc).__name__}: {exc}"
                ) from exc
            self._judge(facts)
            self._checked = True

    async def _servers(self) -> list[tuple[Any, str]]:
        """(target node or None, name) for every server holding ledger keys."""
        if self._cluster:
            await self.client.initialize()
            return [(node, str(node.name)) for node in self.client.get_primaries()]
        kw = self.client.connection_pool.connection_kwargs
        name = str(kw["path"]) if kw.get("path") else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
        return [(None, name)]

    async def _ask(self, node: Any, method: str, *args: Any) -> Any:
        call = getattr(self.client, method)
        if node is None:
            return await call(*args)
        return await call(*args, target_nodes=node)

    async def _facts(self, node: Any, name: str) -> _ServerFacts:
        facts = _ServerFacts(name)
        try:
            config: dict[str, Any] = {}
            for setting in ("maxmemory-policy", "maxmemory", "appendonly", "save"):
                config.update(await self._ask(node, "config_get", setting))
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
            memory = await self._ask(node, "info", "memory")
            persistence = await self._ask(node, "info", "persistence")
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

    def _judge(self, facts: list[_ServerFacts]) -> None:
        evicting = [f for f in facts if f.policy is not None and f.policy != "noeviction"]
        if evicting:
            where = "; ".join(
                f"{f.node} has maxmemory-policy {f.policy} (maxmemory {f.maxmemory}, read with {f.via})"
                for f in evicting
            )
            risk = (
                f"Redis {where}. A Redis that may evict keys can drop ledger records under memory"
                " pressure (every ledger key has a TTL, so volatile-* policies evict them as readily as"
                " allkeys-* ones; with maxmemory 0 nothing is evicted until a limit is set). A done record"
                " lost that way means a replay of its job after the provider's idempotency window is sent"
                " again: a double send."
            )
            if not self.allow_eviction:
                raise ConfigError(
                    f"{risk} Set maxmemory-policy noeviction (a full Redis then refuses writes and the"
                    " ledger fails closed), or pass allow_eviction=True to RedisLedger to accept the risk."
                )
            log.warning("idemsend: %s Continuing because allow_eviction=True.", risk,
                        extra=fields(code="eviction_allowed", op="start"))
        unpersisted = [f for f in facts if f.persisted is False]
        if unpersisted:
            log.warning(
                "idemsend: Redis %s persists nothing (%s): a restart loses every ledger record, and a done"
                " record lost that way means a replay of its job after the provider's idempotency window"
                " is sent again (a double send). Fine for development and CI; in production enable"
                " appendonly yes (or RDB save points, which lose the writes since the last snapshot).",
                ", ".join(f.node for f in unpersisted), "; ".join(f.persistence for f in unpersisted),
                extra=fields(code="no_persistence", op="start"),
            )
        unchecked = [f for f in facts if f.policy is None]
        if unchecked:
            log.warning(
                "idemsend: could not check Redis %s (%s): make sure maxmemory-policy is noeviction and"
                " persistence (appendonly yes) is on, or ledger records can vanish and a replay after the"
                " provider's idempotency window is sent again (a double send).",
                ", ".join(f.node for f in unchecked), "; ".join("; ".join(f.errors) for f in unchecked),
                extra=fields(code="unchecked", op="start"),
            )

    # -- the state machine ---------------------------------------------------------------

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``. One script (plain Redis) or two in one batch (Cluster)."""
        rec = self.record_key(key)
        args = (token, job_id, fingerprint, payload, str(int(lease * 1000)), self._retention_ms)
        if not self._cluster:
            reply = await self._call("claim_with_job", (rec, self.job_key(job_id)), *args, key)
            kind = _s(reply[0])
            if kind == "unstable":
                return Unstable(_s(reply[1]))
        else:
            job_call = self._call("job", self.job_key(job_id), key, self._retention_ms)
            recorded, reply = await asyncio.gather(job_call, self._call("claim", rec, *args))
            kind = _s(reply[0])
            if _s(recorded) != key:
                if kind == "claimed":  # give back what this claim took (forget it if fresh)
                    await self._call("release", rec, token, _s(reply[1]))
                return Unstable(_s(recorded))
        try:
            if kind == "claimed":
                return Claimed(
                    _s(reply[1]) == "1", _b(reply[2]), _s(reply[3]), int(_s(reply[4])) / 1000,
                    int(_s(reply[5])) / 1000,
                )
            if kind == "done":
                return Done(json.loads(_s(reply[1])), _s(reply[2]))
            if kind == "fatal":
                return Failed(_s(reply[1]), _s(reply[2]))
            if kind == "busy":
                return Busy(int(_s(reply[1])) / 1000)
            if kind == "conflict":
                return Conflict(_s(reply[1]))
        except (ValueError, IndexError, TypeError) as exc:
            raise LedgerUnavailableError(f"malformed claim reply {reply!r}: {exc}") from exc
        raise LedgerUnavailableError(f"unexpected claim reply {reply!r}")

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = json.dumps(response, separators=(",", ":"))
        return _answer(await self._call("complete", self.record_key(key), token, body, self._retention_ms))

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        return _answer(await self._call("fail", self.record_key(key), token, code, message, self._retention_ms))

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        return _answer(await self._call("renew", self.record_key(key), token, str(int(lease * 1000))))

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``."""
        return _answer(await self._call("release", self.record_key(key), token, "1" if forget else "0"))

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``: one script checks the state (and code) and deletes."""
        return bool(await self._call("clear", self.record_key(key), "1" if force else "0", *sorted(UNSAFE_TO_CLEAR)))

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``: one HGETALL (outside the batches)."""
        try:
            raw = await self.client.hgetall(self.record_key(key))
        except _STORE_ERRORS as exc:
            raise LedgerUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        if not raw:
            return None
        h = {_s(k): v for k, v in raw.items()}
        state = _STATES.get(_s(h.get("st", b"")))
        try:
            if state is None:
                raise ValueError(f"no such state {_s(h.get('st', b''))!r}")
            return LedgerRecord(
                key=key,
                state=state,
                job_id=_s(h.get("job", b"")),
                fingerprint=_s(h.get("fp", b"")),
                first_sent_at=int(_s(h.get("first", b"0"))) / 1000,
                response=json.loads(_s(h["resp"])) if "resp" in h else None,
                code=_s(h["code"]) if "code" in h else None,
                message=_s(h["msg"]) if "msg" in h else None,
                lease_until=int(_s(h["lease"])) / 1000 if state == "in_flight" and "lease" in h else None,
            )
        except ValueError as exc:
            raise LedgerUnavailableError(f"malformed ledger record for key {key!r}: {exc}") from exc

    async def aclose(self) -> None:
        """Wait for the calls already made, then close the client if ``from_url`` made it."""
        await self._group.drain()
        if self._owns_client:
            self._owns_client = False
            await self.client.aclose()


def _reraise_store_failure(exc: ResponseError) -> None:
    """A cluster redirection or outage is the store failing, not CONFIG/INFO being refused."""
    if isinstance(exc, (ClusterError, AskError, TryAgainError)):
        raise exc


async def inspect_record(url: str, key: str, *, prefix: str = "idemsend") -> dict[str, Any] | None:
    """The record for ``key`` as a dict (``idemsend inspect``)."""
    ledger = RedisLedger.from_url(url, prefix=prefix)
    try:
        record = await ledger.get(key)
    finally:
        await ledger.aclose()
    if record is None:
        return None
    return {
        "key": record.key,
        "state": record.state,
        "job_id": record.job_id,
        "fingerprint": record.fingerprint,
        "first_sent_at": record.first_sent_at,
        "response_id": (record.response or {}).get("id"),
        "response": record.response,
        "code": record.code,
        "message": record.message,
        "lease_until": record.lease_until,
    }
