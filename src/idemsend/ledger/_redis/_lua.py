"""The ledger's one Lua script: the record format, every operation, and their codes.

Every operation is a Lua function over **one** key (on plain Redis a claim also notes the
job id's key in the same call; on Cluster that is an operation of its own), so each runs
atomically on one slot and works unchanged on Redis Cluster. The script reads Redis's own clock (``TIME``), so
leases and the age of an unfinished send mean the same on every machine.

``SCRIPT`` is the whole script, ``SHA`` its EVALSHA name; ``CODES`` maps an operation's
name to its letter in a call's plan (``OPS``' order, ``'a'`` first). ``HELPERS`` (how a
record is packed and read) is what a test script of its own builds on.
"""

from __future__ import annotations

import hashlib

from .._base import UNSAFE_TO_CLEAR

__all__ = ["CODES", "HELPERS", "JOB", "OPS", "SCRIPT", "SHA", "UNSAFE"]


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

HELPERS = """
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
OPS: dict[str, tuple[int, int, str]] = {}  # name -> (keys, args, Lua function)


def _op(name: str, keys: int, args: int, body: str) -> None:
    OPS[name] = (keys, args, body)


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
# its place in OPS, 'a' first), then every operation's arguments in order; KEYS holds
# every operation's keys in order. Redis's clock is
# read once per call. On plain Redis a whole GroupCommit batch is one EVALSHA of it (one
# command and one reply: redis-py's per-command packing and parsing was most of the
# ledger's CPU per send); on Cluster each operation is one EVALSHA of it, pipelined.
SCRIPT = HELPERS + "local OPS = {\n" + "".join(
    f"  [{96 + i}] = {{{keys}, {args}, {body}}},\n" for i, (keys, args, body) in enumerate(OPS.values(), 1)
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
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
CODES = {name: chr(96 + i) for i, name in enumerate(OPS, 1)}
JOB = CODES["job"]
UNSAFE = ",".join(sorted(UNSAFE_TO_CLEAR))
