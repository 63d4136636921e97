"""Tests only: move a RedisLedger record's first-sent time back on Redis's clock.

The ledger's own script has no such operation (production code should not carry one);
this helper runs a script of its own, made of the ledger script's record helpers (how a
record is packed and read, so it stays in step with the format) and one function."""

from __future__ import annotations

from typing import Any

from idemsend.ledger import RedisLedger
from idemsend.ledger._redis._lua import HELPERS

# Move the record's first-sent time ARGV[1] ms back (and end its lease when ARGV[2] is
# '1'), as if the first claim had been made that long ago. Answers 1, or 0 for no record.
_BACKDATE = HELPERS + """
local k, ms, expire = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local v = load(k)
if not v then return 0 end
local tag = sbyte(v)
if tag == 70 then
  local tok, job, fp, body, first, lease = readF(v)
  first = first - ms
  if expire == '1' then lease = first end
  v = packF(tok, job, fp, body, first, lease)
elseif tag == 68 then
  local job, fp, first, resp = readD(v)
  v = packD(job, fp, first - ms, resp)
else
  local job, fp, first, code, msg = readX(v)
  v = packX(job, fp, first - ms, code, msg)
end
redis.call('SET', k, v, 'KEEPTTL')
return 1
"""


async def backdate(client: Any, record_key: str, seconds: float, *, end_lease: bool = False) -> bool:
    """Move the record at ``record_key`` (``RedisLedger.record_key(key)``) ``seconds`` back
    (negative: into the future), ending its lease with ``end_lease``; False when there is
    no record. ``client`` is a ``redis.asyncio`` Redis or RedisCluster."""
    return bool(await client.eval(_BACKDATE, 1, record_key, int(seconds * 1000), "1" if end_lease else "0"))


async def backdate_key(ledger: RedisLedger, key: str, seconds: float, *, end_lease: bool = False) -> bool:
    """``backdate`` for ``key``'s record in ``ledger``, over the ledger's own client."""
    return await backdate(ledger.client, ledger.record_key(key), seconds, end_lease=end_lease)
