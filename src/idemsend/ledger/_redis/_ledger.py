"""RedisLedger: the ledger over a Redis (plain or Cluster) client; see the package docstring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ..._errors import ConfigError
from ..._keys import validate_job_id
from .._base import (
    DEFAULT_RETENTION,
    Claimed,
    ClaimResult,
    LedgerRecord,
    LedgerUnavailableError,
    SettleResult,
    Unstable,
)
from .._fitness import judge
from .._group import GroupCommit
from .._records import encode_response, settle_result
from ._client import STORE_ERRORS, make_client
from ._executor import Executor, Op, unavailable
from ._fitness import read_servers, store_facts
from ._lua import CODES, UNSAFE
from ._record import claim_answer, claim_blob, own, record_of, text

__all__ = ["RedisLedger"]


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
        self._group: GroupCommit[Op, Any] = GroupCommit(
            Executor(client, one_call=not self._cluster, retention_ms=self._retention_ms), on_batch=on_batch,
            error=unavailable,
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
        client = make_client(url, cluster=cluster, socket_timeout=socket_timeout)
        ledger = cls(client, prefix=prefix, retention=retention, allow_eviction=allow_eviction, on_batch=on_batch)
        ledger._owns_client = True
        return ledger

    def __repr__(self) -> str:
        return f"<RedisLedger prefix={self.prefix!r} retention={self.retention:g}s>"

    def record_key(self, key: str) -> str:
        """The Redis key of ``key``'s record (one packed string; its format is in ``_lua.py``)."""
        return f"{self.prefix}:rec:{{{key}}}"

    def job_key(self, job_id: str) -> str:
        """The Redis key noting which key ``job_id`` was first claimed with."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def _call(self, op: str, keys: tuple[str, ...], *args: Any) -> asyncio.Future[Any]:
        return self._group.submit((CODES[op], keys, args))

    # -- start: is this Redis fit to be a ledger? --------------------------------------

    async def start(self) -> None:
        """Check the server once (every primary, on Cluster); see ``Ledger.start``. The
        policy is ``idemsend.ledger.judge``'s, on the facts ``_fitness.py`` reads:

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
                facts = await read_servers(self.client, cluster=self._cluster)
            except STORE_ERRORS as exc:
                raise LedgerUnavailableError(
                    f"could not check the ledger's Redis: {type(exc).__name__}: {exc}"
                ) from exc
            judge(store_facts(facts), allow_eviction=self.allow_eviction).enforce()
            self._checked = True

    # -- the state machine ---------------------------------------------------------------

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``. One operation (plain Redis) or two in one batch (Cluster)."""
        validate_job_id(job_id)  # one rule for every ledger, before anything is batched
        rec = f"{self.prefix}:rec:{{{key}}}"
        blob = claim_blob(token, job_id, fingerprint, payload, lease)
        if not self._cluster:
            reply = await self._call("claim_with_job", (rec, f"{self.prefix}:job:{{{job_id}}}"), blob, key)
            if type(reply) is int:  # a new record: this claim's own body and fingerprint
                return Claimed(True, payload, fingerprint, reply / 1000, 0.0)
            kind = text(reply[0])
            if kind == "unstable":
                return Unstable(text(reply[1]))
        else:
            job_call = self._call("job", (self.job_key(job_id),), key)
            recorded, reply = await asyncio.gather(job_call, self._call("claim", (rec,), blob))
            kind = "claimed" if type(reply) is int else text(reply[0])
            if text(recorded) != key:
                if kind == "claimed":  # give back what this claim took (forget it if fresh)
                    await self._call("release", (rec,), own(token), "1" if type(reply) is int else "0")
                return Unstable(text(recorded))
            if type(reply) is int:
                return Claimed(True, payload, fingerprint, reply / 1000, 0.0)
        return claim_answer(key, kind, reply)

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = encode_response(response)
        return settle_result(await self._call("complete", (f"{self.prefix}:rec:{{{key}}}",), own(token), body))

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        return settle_result(await self._call("fail", (self.record_key(key),), own(token), code, message))

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        return settle_result(await self._call("renew", (self.record_key(key),), own(token), int(lease * 1000)))

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``."""
        return settle_result(await self._call("release", (self.record_key(key),), own(token), "1" if forget else "0"))

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``: one script checks the state (and code) and deletes."""
        return bool(await self._call("clear", (self.record_key(key),), "1" if force else "0", UNSAFE))

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``: one read-only operation."""
        return record_of(key, await self._call("get", (self.record_key(key),)))

    async def aclose(self) -> None:
        """Wait for the calls already made, then close the client if ``from_url`` made it."""
        await self._group.drain()
        if self._owns_client:
            self._owns_client = False
            await self.client.aclose()
