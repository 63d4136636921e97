"""RedisLedger: one ledger for many worker processes and machines (extra ``redis``).

Every transition is a Lua function over **one** key, so each runs atomically on one
slot and works unchanged on Redis Cluster. Scripts read Redis's own clock (``TIME``),
so leases and the age of an unfinished send mean the same on every machine. Keys:

* ``{prefix}:rec:{<key>}``: the record, one packed string (see "the record" below):
  in flight (token, job id, fingerprint, the frozen body, first-sent time, lease), done
  (job id, fingerprint, first-sent time, the recorded response) or fatal (job id,
  fingerprint, first-sent time, code, message). It expires ``retention`` after it was
  claimed, completed or failed. Records an earlier version wrote as hashes are read.
* ``{prefix}:job:{<job id>}``: the key the job's first attempt derived.

Cost per send, the happy path: two round trips (claim, complete), and in Redis four
commands inside the script (job map SET NX GET, record SET NX GET; record GET, SET).
Calls made in the same event-loop turn by many coroutines are flushed together
(``GroupCommit``, ledger/_group.py): on plain Redis a batch is one EVALSHA of a script
that runs every operation, on Cluster one pipeline (one EVALSHA per operation, the job
map a plain SET NX GET); so a hundred concurrent sends cost two round trips, not two
hundred.

The ledger relies on Redis keeping what it was told: ``start()`` refuses a server that
evicts keys (``maxmemory-policy`` other than ``noeviction``) and warns about one that
persists nothing. A done record that vanishes turns a replay after the provider's
window into a double send.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, MissingExtraError
from .._keys import validate_job_id
from ._base import (
    DEFAULT_RETENTION,
    UNSAFE_TO_CLEAR,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Failed,
    LedgerRecord,
    LedgerUnavailableError,
    SettleResult,
    Unstable,
)
from ._fitness import Finding, StoreFacts, judge
from ._group import GroupCommit
from ._records import done, encode_response, ledger_record, malformed, settle_result

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        AskError,
        ClusterError,
        NoScriptError,
        RedisClusterException,
        RedisError,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import (
        ConnectionError as RedisConnectionError,
    )
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingExtraError("redis", "redis") from exc

try:  # the C packer; it ships with idemsend[redis] (redis[hiredis])
    import hiredis

    _HIREDIS = True
except ImportError:  # pragma: no cover
    _HIREDIS = False

__all__ = ["RedisLedger"]

log = logging.getLogger("idemsend.ledger")

# What a store failure can raise: redis-py's errors, the cluster client's own exception
# (not a RedisError), and socket errors that slip through.
_STORE_ERRORS = (RedisError, RedisClusterException, OSError)


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


# -- the record ----------------------------------------------------------------------------
#
# A record is one string: a tag byte, then its fields, each string field preceded by its
# length as a 4-byte big-endian integer ("L"), times as 8-byte doubles (Unix milliseconds
# on Redis's clock):
#
#   in flight  'F' L tok  L job  L fp  body  lease first    (lease: when it ends, less first)
#   done       'D' L job  L fp   first  response (JSON, to the end)
#   fatal      'X' L job  L fp   first  L code  message (to the end)
#
# Why a string: a hash holding a body over 64 bytes is a hash table of seven entries, where
# a string is one allocation; and a claim can make the record or read the one there in one
# command (SET NX GET). Why this order: the client packs 'F' L tok L job L fp body lease
# itself, so a claim's script only appends the first-sent time; a settlement checks
# ownership by comparing the record's first bytes with 'F' L tok (the client sends them); a
# completion cuts job and fingerprint out of the record as they are. So the hot path
# (claim, complete) does four commands and almost no Lua string work. A done record keeps
# what a replay needs (job id, fingerprint, first-sent time, the recorded response), not
# the frozen body. Records an earlier version wrote as hashes are read as they are
# (``legacy``) and rewritten in this form the next time they change.

_HELPERS = """
local spack, sunpack, sbyte, ssub, sfind = struct.pack, struct.unpack, string.byte, string.sub, string.find
local OK, RECREATED, MISSING, SUPERSEDED = 1, 2, 3, 4

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function packF(tok, job, fp, body, first, lease)
  return 'F' .. spack('>I4c0I4c0I4c0', #tok, tok, #job, job, #fp, fp) .. body .. spack('>dd', lease - first, first)
end

local function packD(job, fp, first, resp)
  return 'D' .. spack('>I4c0I4c0d', #job, job, #fp, fp, first) .. resp
end

local function packX(job, fp, first, code, msg)
  return 'X' .. spack('>I4c0I4c0dI4c0', #job, job, #fp, fp, first, #code, code) .. msg
end

-- in flight: tok, job, fp, body, first, lease (until)
local function readF(v)
  local tok, job, fp, pos = sunpack('>I4c0I4c0I4c0', v, 2)
  local lease, first = sunpack('>dd', v, #v - 15)
  return tok, job, fp, ssub(v, pos, -17), first, first + lease
end

-- done: job, fp, first, response; fatal: job, fp, first, code, message
local function readD(v)
  local job, fp, first, pos = sunpack('>I4c0I4c0d', v, 2)
  return job, fp, first, ssub(v, pos)
end

local function readX(v)
  local job, fp, first, code, pos = sunpack('>I4c0I4c0dI4c0', v, 2)
  return job, fp, first, code, ssub(v, pos)
end

local function wellformed(v)
  local tag = sbyte(v)
  if tag == 70 then return pcall(readF, v) end
  if tag == 68 then return pcall(readD, v) end
  if tag == 88 then return pcall(readX, v) end
  return false
end

-- A record an earlier version wrote as a hash, in today's form (nothing is written);
-- false when the hash is not a record.
local function legacy(k)
  local r = redis.call('HMGET', k, 'st', 'job', 'fp', 'first', 'tok', 'lease', 'body', 'resp', 'code', 'msg')
  local first, job, fp = tonumber(r[4]) or 0, r[2] or '', r[3] or ''
  if r[1] == 'in_flight' then return packF(r[5] or '', job, fp, r[7] or '', first, tonumber(r[6]) or first) end
  if r[1] == 'done' then return packD(job, fp, first, r[8] or '') end
  if r[1] == 'fatal' then return packX(job, fp, first, r[9] or '', r[10] or '') end
  return false
end

-- The record at k: its string; false when there is none; nil and a reason when what is
-- there is not a record.
local function load(k)
  local v = redis.pcall('GET', k)
  if type(v) == 'table' then
    if v.err and sfind(v.err, 'WRONGTYPE', 1, true) and redis.call('TYPE', k)['ok'] == 'hash' then
      v = legacy(k)
      if not v then return nil, 'a hash that is not a ledger record' end
      return v
    end
    return nil, v.err or 'unreadable'
  end
  if v and not wellformed(v) then return nil, 'a string that is not a ledger record' end
  return v
end

-- The part of an in-flight record after 'F' L tok up to the end of the fingerprint, from
-- position p: what a done or fatal record keeps of it.
local function jobfp(v, p)
  local lj = sunpack('>I4', v, p)
  local lf = sunpack('>I4', v, p + 4 + lj)
  return ssub(v, p, p + 7 + lj + lf)
end
"""

# Every operation is a function (clock, retention, key1, key2, args...) answering one reply;
# clock() is Redis's time in milliseconds.
_OPS: dict[str, tuple[int, int, str]] = {}  # name -> (keys, args, Lua function)


def _op(name: str, keys: int, args: int, body: str) -> None:
    _OPS[name] = (keys, args, body)


_op("job", 1, 1, """function(clock, ret, k, _, key)
  local cur = redis.call('SET', k, key, 'NX', 'GET', 'PX', ret)
  if cur then return cur end
  return key
end""")

# A claim: the job map (plain Redis: in the same call; Cluster: the "job" operation beside
# it), then one SET NX GET that makes the record (answering its first-sent time, a number)
# or answers the one there. `blob` is 'F' L tok L job L fp body lease, packed by the client. A
# record recreated by complete after the store lost it has job '' and fp '' (unknown): it
# answers every claim of its key with 'done', never with 'conflict'.
#
# A claim sent again after its reply was lost (redis-py repeats a command whose connection
# failed) finds the record it made itself: exactly `blob` and a first-sent time. It is
# answered as what it was, fresh (that time), not as an earlier attempt to resume: only a
# fresh claim's record is forgotten after a definite "not sent" (a 401), and a resumed
# one would go stale. A resume never writes a record that reads so (its lease is moved
# 1 ms when it would).
_CLAIM = """function(clock, ret, rec, jk, blob, key)
  if jk then
    local cur = redis.call('SET', jk, key, 'NX', 'GET', 'PX', ret)
    if cur and cur ~= key then return {'unstable', cur} end
  end
  local now = clock()
  local old = redis.pcall('SET', rec, blob .. spack('>d', now), 'NX', 'GET', 'PX', ret)
  if not old then return now end
  local why
  if type(old) == 'table' then old, why = load(rec) elseif not wellformed(old) then old = nil end
  if not old then return {'malformed', why or 'a string that is not a ledger record'} end
  local tok, job, fp = sunpack('>I4c0I4c0I4c0', blob, 2)
  local tag = sbyte(old)
  if tag == 70 then
    if #old == #blob + 8 and ssub(old, 1, #blob) == blob then
      local made = sunpack('>d', old, #blob + 1)
      return made
    end
    local otok, ojob, ofp, frozen, first, held = readF(old)
    if ofp ~= '' and ojob ~= job and ofp ~= fp then return {'conflict', ofp} end
    if otok ~= '' and otok ~= tok and held > now then return {'busy', held - now} end
    local lease = sunpack('>d', blob, #blob - 7)
    local ends = now + lease
    if ends - first == lease then ends = ends + 1 end
    redis.call('SET', rec, packF(tok, ojob, ofp, frozen, first, ends), 'KEEPTTL')
    local age = now - first
    if age < 0 then age = 0 end
    return {'claimed', first, frozen, ofp, age}
  end
  if tag == 68 then
    local ojob, ofp, first, resp = readD(old)
    if ofp ~= '' and ojob ~= job and ofp ~= fp then return {'conflict', ofp} end
    return {'done', resp, ofp}
  end
  local ojob, ofp, first, code, msg = readX(old)
  if ofp ~= '' and ojob ~= job and ofp ~= fp then return {'conflict', ofp} end
  return {'fatal', code, msg}
end"""
_op("claim", 1, 2, _CLAIM)  # Cluster: jk is false, the job map is the "job" operation
_op("claim_with_job", 2, 2, _CLAIM)

# Settling needs the record in flight under this token, which is so when the record
# starts with `own` ('F' L tok, sent by the client): MISSING when there is no record at
# all (lost to a restart, an eviction or retention), SUPERSEDED when it is someone else's
# or already done/fatal. Neither writes anything. A missing record is written anew as
# done by complete (RECREATED): the send happened, and only a done record stops a replay
# after the provider's window from sending again.
#
# A complete or fail sent again after its reply was lost (redis-py repeats a command whose
# connection failed) finds the record settled as it settled it, same response (same code
# and message): it answers what the first answered (OK, or RECREATED for a done record of
# unknown job and fingerprint), not SUPERSEDED, which the engine logs as another worker's.
_OWNED = """
  local v = redis.pcall('GET', k)
  if type(v) == 'table' then
    local why
    v, why = load(k)
    if v == nil then return {err = 'malformed ledger record: ' .. why} end
  end
  if not v then WHEN_MISSING end
  if ssub(v, 1, #own) ~= own then
    WHEN_SETTLED
    return SUPERSEDED
  end
"""


def _settle(args: str, when_missing: str, then: str, when_settled: str = "") -> str:
    owned = _OWNED.replace("WHEN_MISSING", when_missing).replace("WHEN_SETTLED", when_settled)
    return f"function(clock, ret, k, _, own, {args})" + owned + then + "\nend"


_op("complete", 1, 2, _settle(
    "resp", "redis.call('SET', k, packD('', '', clock(), resp), 'PX', ret) return RECREATED", """
  redis.call('SET', k, 'D' .. jobfp(v, #own + 1) .. ssub(v, -8) .. resp, 'PX', ret)
  return OK""", """if sbyte(v) == 68 then
      local job, fp, first, done = readD(v)
      if done == resp then if job == '' and fp == '' then return RECREATED end return OK end
    end"""))

_op("fail", 1, 3, _settle("code, msg", "return MISSING", """
  redis.call('SET', k, 'X' .. jobfp(v, #own + 1) .. ssub(v, -8) .. spack('>I4c0', #code, code) .. msg,
             'PX', ret)
  return OK""", """if sbyte(v) == 88 then
      local job, fp, first, c, m = readX(v)
      if c == code and m == msg then return OK end
    end"""))

_op("renew", 1, 2, _settle("lease", "return MISSING", """
  local first = sunpack('>d', v, #v - 7)
  redis.call('SET', k, ssub(v, 1, -17) .. spack('>dd', clock() + tonumber(lease) - first, first), 'KEEPTTL')
  return OK"""))

# forget == '1': the claim was fresh and nothing can have been sent, so the record goes.
# Otherwise the record (frozen body, first-sent time) stays, unleased (token '').
_op("release", 1, 2, _settle("forget", "return MISSING", """
  if forget == '1' then redis.call('DEL', k) return OK end
  redis.call('SET', k, 'F' .. spack('>I4', 0) .. ssub(v, #own + 1, -17) .. spack('>d', 0) .. ssub(v, -8), 'KEEPTTL')
  return OK"""))

# Only a fatal record is ever cleared: a done one stops a double send, an in-flight one may
# be mid-send. force == '1' clears any fatal code; otherwise not those in `unsafe`
# (UNSAFE_TO_CLEAR, comma-separated).
_op("clear", 1, 2, """function(clock, ret, k, _, force, unsafe)
  local v = load(k)
  if not v or sbyte(v) ~= 88 then return 0 end
  local job, fp, first, code = readX(v)
  if force ~= '1' and sfind(',' .. unsafe .. ',', ',' .. code .. ',', 1, true) then return 0 end
  redis.call('DEL', k)
  return 1
end""")

# get: {state, first, job, fp, response, code, message, lease}; {} when there is none.
_op("get", 1, 0, """function(clock, ret, k)
  local v, why = load(k)
  if v == nil then return {'malformed', why} end
  if not v then return {} end
  local tag = sbyte(v)
  if tag == 70 then
    local tok, job, fp, body, first, lease = readF(v)
    return {'in_flight', first, job, fp, false, false, false, lease}
  end
  if tag == 68 then
    local job, fp, first, resp = readD(v)
    return {'done', first, job, fp, resp, false, false, false}
  end
  local job, fp, first, code, msg = readX(v)
  return {'fatal', first, job, fp, false, code, msg, false}
end""")

# The one script: ARGV[1] is the retention (ms), ARGV[2] the plan (a letter per operation:
# its place in _OPS, 'a' first), then every operation's arguments in order; KEYS holds
# every operation's keys in order. Redis's clock is
# read once per call. On plain Redis a whole GroupCommit batch is one EVALSHA of it (one
# command and one reply: redis-py's per-command packing and parsing was most of the
# ledger's CPU per send); on Cluster each operation is one EVALSHA of it, pipelined.
_SCRIPT = _HELPERS + "local OPS = {\n" + "".join(
    f"  [{96 + i}] = {{{keys}, {args}, {body}}},\n" for i, (keys, args, body) in enumerate(_OPS.values(), 1)
) + """}
-- Redis's clock, read once per call and only by the operations that need it
local now
local function clock()
  if not now then now = now_ms() end
  return now
end
local ret, plan, out = ARGV[1], ARGV[2], {}
local ki, ai = 1, 3
for i = 1, #plan do
  local op = OPS[sbyte(plan, i)]
  local nk, na = op[1], op[2]
  local k2 = false
  if nk == 2 then k2 = KEYS[ki + 1] end
  out[i] = op[3](clock, ret, KEYS[ki], k2, unpack(ARGV, ai, ai + na - 1))
  ki, ai = ki + nk, ai + na
end
return out
"""
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_CODES = {name: chr(96 + i) for i, name in enumerate(_OPS, 1)}
_JOB = _CODES["job"]
_UNSAFE = ",".join(sorted(UNSAFE_TO_CLEAR))
_L = struct.Struct(">I").pack
_D = struct.Struct(">d").pack


def _own(token: str) -> bytes:
    """The first bytes of an in-flight record held by ``token``: 'F' L tok."""
    tok = token.encode()
    return b"F" + _L(len(tok)) + tok


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


#: One operation: its code, its keys, its arguments.
_Op = tuple[str, tuple[str, ...], tuple[Any, ...]]


class _Executor:
    """Runs one GroupCommit batch of operations: on plain Redis one EVALSHA of the script
    (one command, one reply), on Cluster one pipeline of EVALSHAs, one per operation
    (redis-py sends each to its key's node). A server that lost the script (restarted, new,
    SCRIPT FLUSH) answers NOSCRIPT: the script is loaded and those calls run again."""

    def __init__(self, client: Any, *, one_call: bool, retention_ms: str) -> None:
        self.client = client
        self.one_call = one_call
        self.retention_ms = retention_ms

    async def __call__(self, ops: Sequence[_Op]) -> list[Any]:
        results = await self._execute(ops)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self.client.script_load(_SCRIPT)
            again = await self._execute([ops[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results

    async def _execute(self, ops: Sequence[_Op]) -> list[Any]:
        if self.one_call:
            keys: list[Any] = []
            argv: list[Any] = []
            for _, op_keys, args in ops:
                keys += op_keys
                argv += args
            plan = "".join([op[0] for op in ops])
            try:
                reply = await self.client.execute_command(
                    "EVALSHA", _SHA, len(keys), *keys, self.retention_ms, plan, *argv
                )
            except NoScriptError as exc:
                return [exc] * len(ops)
            return list(reply)
        pipe = self.client.pipeline(transaction=False)
        for code, op_keys, args in ops:
            if code == _JOB:  # the job map needs no script: SET NX GET answers the key noted first
                # get=True: redis-py's SET callback passes the old value through as it is
                pipe.execute_command("SET", op_keys[0], args[0], "NX", "GET", "PX", self.retention_ms, get=True)
                continue
            # execute_command, not evalsha(): redis-py 5 blocks the evalsha method on
            # cluster pipelines, though one-slot scripts route to one node just fine.
            pipe.execute_command("EVALSHA", _SHA, len(op_keys), *op_keys, self.retention_ms, code, *args)
        # a script answers a list of one reply (or failed as a whole: an exception); the job
        # map answers the key noted before, or None when this one was noted now
        replies = await pipe.execute(raise_on_error=False)
        return [
            (args[0] if r is None else r) if code == _JOB else r[0] if isinstance(r, list) else r
            for (code, _, args), r in zip(ops, replies, strict=True)
        ]


def _unavailable(exc: BaseException) -> LedgerUnavailableError:
    return LedgerUnavailableError(f"{type(exc).__name__}: {exc}")


#: The oldest Redis the ledger's scripts run on (SET ... NX GET arrived in 7.0).
MIN_REDIS = (7, 0)


def _version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; parts that are not numbers count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in text.split(".")[:3])


@dataclass(slots=True)
class _ServerFacts:
    """What ``start()`` learned about one Redis server (one primary, on Cluster)."""

    node: str
    via: str = ""  # "CONFIG GET" or "INFO"; "" when neither answered
    policy: str | None = None
    maxmemory: str | None = None
    persisted: bool | None = None
    persistence: str = ""  # the settings as read, for the message
    version: str | None = None  # redis_version from INFO server; None when it did not answer
    errors: list[str] = field(default_factory=list)


def store_facts(servers: Sequence[_ServerFacts]) -> StoreFacts:
    """What ``start()`` read of every server, as the facts ``judge`` rules on (pure)."""
    return StoreFacts(
        store="Redis",
        ledger="RedisLedger",
        too_old=tuple(
            Finding(f.node, f"runs Redis {f.version}")
            for f in servers if f.version is not None and _version(f.version) < MIN_REDIS
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
            _Executor(client, one_call=not self._cluster, retention_ms=self._retention_ms), on_batch=on_batch,
            error=_unavailable,
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
            extra = _packing_connection_class(url)
            # A pooled connection the server closed (a restart) fails its first command when
            # the close was not yet seen (redis-py 6+ no longer probes the socket on checkout):
            # such a call is sent once more on a new connection (a timeout is not: Retry's
            # default would repeat those too, doubling a slow call). Every ledger operation is
            # safe to repeat: a repeated claim finds the record it made and answers as the
            # first did (fresh, or the resume), so does a repeated complete or fail; a
            # repeated release answers "superseded" or "missing" (logged); nothing is sent.
            client = aioredis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                retry_on_error=[RedisConnectionError], **extra,
            )
        ledger = cls(client, prefix=prefix, retention=retention, allow_eviction=allow_eviction, on_batch=on_batch)
        ledger._owns_client = True
        return ledger

    def __repr__(self) -> str:
        return f"<RedisLedger prefix={self.prefix!r} retention={self.retention:g}s>"

    def record_key(self, key: str) -> str:
        """The Redis key of ``key``'s record (one packed string; see the module docstring)."""
        return f"{self.prefix}:rec:{{{key}}}"

    def job_key(self, job_id: str) -> str:
        """The Redis key noting which key ``job_id`` was first claimed with."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def _call(self, op: str, keys: tuple[str, ...], *args: Any) -> asyncio.Future[Any]:
        return self._group.submit((_CODES[op], keys, args))

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
        * Redis older than 7.0 (``INFO server``): raises ``ConfigError`` (the scripts use
          ``SET ... NX GET``; on an older server every claim would fail, so nothing would be
          sent, but the error would only say "syntax error").
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
            judge(store_facts(facts), allow_eviction=self.allow_eviction).enforce()
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
            server = await self._ask(node, "info", "server")
            facts.version = str(server["redis_version"]) if "redis_version" in server else None
        except ResponseError as exc:
            _reraise_store_failure(exc)
            facts.errors.append(f"INFO server: {exc}")
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

    # -- the state machine ---------------------------------------------------------------

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``. One operation (plain Redis) or two in one batch (Cluster)."""
        validate_job_id(job_id)  # one rule for every ledger, before anything is batched
        rec = f"{self.prefix}:rec:{{{key}}}"
        job, fp = job_id.encode(), fingerprint.encode()
        blob = b"".join((_own(token), _L(len(job)), job, _L(len(fp)), fp, payload, _D(lease * 1000.0)))
        if not self._cluster:
            reply = await self._call("claim_with_job", (rec, f"{self.prefix}:job:{{{job_id}}}"), blob, key)
            if type(reply) is int:  # a new record: this claim's own body and fingerprint
                return Claimed(True, payload, fingerprint, reply / 1000, 0.0)
            kind = _s(reply[0])
            if kind == "unstable":
                return Unstable(_s(reply[1]))
        else:
            job_call = self._call("job", (self.job_key(job_id),), key)
            recorded, reply = await asyncio.gather(job_call, self._call("claim", (rec,), blob))
            kind = "claimed" if type(reply) is int else _s(reply[0])
            if _s(recorded) != key:
                if kind == "claimed":  # give back what this claim took (forget it if fresh)
                    await self._call("release", (rec,), _own(token), "1" if type(reply) is int else "0")
                return Unstable(_s(recorded))
            if type(reply) is int:
                return Claimed(True, payload, fingerprint, reply / 1000, 0.0)
        try:
            if kind == "claimed":
                return Claimed(False, _b(reply[2]), _s(reply[3]), reply[1] / 1000, reply[4] / 1000)
            if kind == "done":
                return done(reply[1], _s(reply[2]))
            if kind == "fatal":
                return Failed(_s(reply[1]), _s(reply[2]))
            if kind == "busy":
                return Busy(reply[1] / 1000)
            if kind == "conflict":
                return Conflict(_s(reply[1]))
            if kind == "malformed":
                raise malformed(key, _s(reply[1]))
        except (ValueError, IndexError, TypeError) as exc:
            raise LedgerUnavailableError(f"malformed claim reply {reply!r}: {exc}") from exc
        raise LedgerUnavailableError(f"unexpected claim reply {reply!r}")

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = encode_response(response)
        return settle_result(await self._call("complete", (f"{self.prefix}:rec:{{{key}}}",), _own(token), body))

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        return settle_result(await self._call("fail", (self.record_key(key),), _own(token), code, message))

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        return settle_result(await self._call("renew", (self.record_key(key),), _own(token), int(lease * 1000)))

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``."""
        return settle_result(await self._call("release", (self.record_key(key),), _own(token), "1" if forget else "0"))

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``: one script checks the state (and code) and deletes."""
        return bool(await self._call("clear", (self.record_key(key),), "1" if force else "0", _UNSAFE))

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``: one read-only operation."""
        reply = await self._call("get", (self.record_key(key),))
        if not reply:
            return None
        try:
            if _s(reply[0]) == "malformed":
                raise ValueError(_s(reply[1]))
            return ledger_record(
                key, _s(reply[0]), job_id=_s(reply[2]), fingerprint=_s(reply[3]), first_sent_at=reply[1] / 1000,
                response=reply[4], code=_s(reply[5]) if reply[5] is not None else None,
                message=_s(reply[6]) if reply[6] is not None else None,
                lease_until=reply[7] / 1000 if reply[7] is not None else None,
            )
        except (ValueError, IndexError, TypeError) as exc:
            raise malformed(key, exc) from exc

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
