"""RedisLedger: one ledger for many worker processes and machines (extra ``redis``).

Every transition is a Lua function over **one** key, so each runs atomically on one
slot and works unchanged on Redis Cluster. Scripts read Redis's own clock (``TIME``),
so leases and the age of an unfinished send mean the same on every machine. Keys:

* ``{prefix}:rec:{<key>}``: the record, one packed string (see "the record" in ``_lua.py``):
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

The package, one concern per module:

* ``_ledger.py``: ``RedisLedger``, the protocol's methods over the other modules;
* ``_lua.py``: the one Lua script (the record format, every operation, their codes);
* ``_record.py``: the client's side of the record format (what a call sends, what its
  reply means), pure;
* ``_executor.py``: how a ``GroupCommit`` batch reaches Redis (one EVALSHA, or a
  Cluster pipeline; a lost script is loaded again);
* ``_client.py``: the client ``from_url`` makes (hiredis packing), what a store failure
  can raise;
* ``_fitness.py``: what ``start()`` reads of every server, and the facts it gives the one
  fitness policy (``idemsend.ledger.judge``).
"""
from ..._errors import MissingExtraError

try:
    import redis.asyncio  # noqa: F401 - every module here needs it: say which extra brings it
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingExtraError("redis", "redis") from exc

from ._ledger import RedisLedger

__all__ = ["RedisLedger"]
