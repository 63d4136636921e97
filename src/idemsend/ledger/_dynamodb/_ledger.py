"""DynamoDBLedger: the ledger in one DynamoDB table; see the package docstring."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

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
from .._records import encode_response, malformed
from . import _expressions as ex
from ._client import Client, error_code
from ._fitness import check
from ._items import Item, Resume, claim_answer, settle_answer
from ._schema import DEFAULT_TABLE, TTL_ATTRIBUTE, create_request, validate_prefix, validate_table

__all__ = ["DynamoDBLedger"]

#: How many times a claim re-reads a record that changed under it before it gives up
#: (``LedgerUnavailableError``: the queue retries it). Each round is another worker's write.
MAX_ROUNDS = 8


class DynamoDBLedger:
    """A ledger in a DynamoDB table, shared by every worker (``pip install 'idemsend[dynamodb]'``).

    ``DynamoDBLedger(table, region=..., endpoint_url=...)`` makes (and closes) its own
    aiobotocore client on the first call; ``client=`` takes one you own (it stays open).
    Credentials come from botocore's usual chain (environment, profile, role). Options:

    * ``prefix``: namespaces the items (``<prefix>#r#<key>``, ``<prefix>#j#<job id>``), so
      several ledgers may share a table.
    * ``retention`` (seconds): how long a record lives after it was claimed, completed or
      failed (by its own ``exp``; the TTL sweep only deletes it some time later).
    * ``create_table``: when ``start()`` finds no table, create it (``migrate()``).
    * ``clock``: the ledger's clock (Unix seconds; default ``time.time`` of this process).
      DynamoDB has no clock to read, so leases, ages and expiry are the workers' clocks:
      ``start()`` warns (``clock_skew``) when this one is more than ``max_skew`` seconds off
      the endpoint's ``Date`` header. See docs/ledgers.md for how skew is bounded.
    * ``config``: options for ``aiobotocore.config.AioConfig`` (retries, timeouts, pool).

    Every call is one conditional write (a claim: the job id's note, then the record),
    the condition holding the claim token and the item's expiry; a refused write answers
    the item as it is (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), so a claim that
    meets a record decides from it without a read. No group commit: ``BatchWriteItem``
    takes no conditions. Store failures (the endpoint down, a throttled table once
    botocore's retries are spent) raise ``LedgerUnavailableError``.

    Keys are at most ``max_key_length`` characters: the partition key holds 2,048 bytes,
    and ``<prefix>#r#<key>`` must fit even when every character takes 4 bytes in UTF-8
    (509 characters with the default prefix); ``Engine`` refuses a provider that allows
    longer ones. The frozen body is at most about 400 KB (DynamoDB's item limit).
    """

    def __init__(
        self,
        table: str = DEFAULT_TABLE,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
        prefix: str = "idemsend",
        retention: float = DEFAULT_RETENTION,
        create_table: bool = False,
        clock: Callable[[], float] = time.time,
        max_skew: float = 2.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not retention > 0:
            raise ConfigError(f"retention must be > 0, got {retention!r}")
        if not max_skew > 0:
            raise ConfigError(f"max_skew must be > 0, got {max_skew!r}")
        self.table = validate_table(table)
        self.prefix = validate_prefix(prefix)
        #: The longest key (characters) the ledger stores, whatever the characters.
        self.max_key_length = (2048 - len(f"{self.prefix}#r#".encode())) // 4
        self.retention = retention
        self.create_table = create_table
        self.clock = clock
        self.max_skew = max_skew
        self.db = Client(client, region=region, endpoint_url=endpoint_url, config=config)
        self._started = False

    def __repr__(self) -> str:
        return f"<DynamoDBLedger table={self.table} prefix={self.prefix} at {self.db.where}>"

    @property
    def calls(self) -> Mapping[str, int]:
        """How many requests this ledger sent, by operation (``put_item``, ``update_item``...)."""
        return self.db.calls

    async def start(self) -> None:
        """See ``Ledger.start``: the table must exist with the ledger's key schema and TTL on
        (``ConfigError`` naming the fix otherwise); then the clock and billing are judged."""
        if self._started:
            return None
        await check(self.db, self.table, clock=self.clock, max_skew=self.max_skew,
                    create_table=self.create_table, migrate=self.migrate)
        self._started = True
        return None

    async def migrate(self) -> None:
        """Create the table (on-demand capacity) and turn its TTL on; a table already there
        is kept, and its TTL turned on if it is off."""
        client = await self.db.client()
        try:
            await client.create_table(**create_request(self.table))
        except Exception as exc:
            if error_code(exc) != "ResourceInUseException":
                raise self.db.fail(exc, f"could not create the ledger table {self.table}: ") from None
        try:
            await client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1})
        except Exception as exc:
            raise self.db.fail(exc, f"the ledger table {self.table} did not become active: ") from None
        ttl = await self.db.call("describe_time_to_live", TableName=self.table)
        if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            await self.db.call("update_time_to_live", TableName=self.table, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": TTL_ATTRIBUTE})

    # -- the state machine -------------------------------------------------------------

    def _item(self, key: str, raw: Mapping[str, Any] | None) -> Item | None:
        if raw is None:
            return None
        try:
            return Item.of(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise malformed(key, exc) from None

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``."""
        validate_job_id(job_id)
        now = self.clock()
        applied, old, _ = await self.db.write("put_item", **ex.note(
            self.table, self.prefix, job_id=job_id, key=key, now=now, retention=self.retention))
        if not applied:
            recorded = old.get("rk", {}).get("S") if old else None
            if not isinstance(recorded, str):
                raise malformed(key, f"job id {job_id!r}'s note has no key")
            return Unstable(recorded)
        seen: Item | None = None  # None: try the fresh write; else resume this record as read
        for _ in range(MAX_ROUNDS):
            if seen is None:
                applied, old, _ = await self.db.write("put_item", **ex.claim_fresh(
                    self.table, self.prefix, key=key, job_id=job_id, payload=payload, fingerprint=fingerprint,
                    token=token, lease=lease, now=now, retention=self.retention))
                if applied:
                    return Claimed(True, payload, fingerprint, now, 0.0)
            else:
                applied, old, _ = await self.db.write("update_item", **ex.resume(
                    self.table, self.prefix, key=key, token=token, lease=lease, now=now, seen_token=seen.token,
                    seen_lease=seen.lease_until, seen_first=seen.first_sent_at))
                if applied:
                    return Claimed(False, seen.body, seen.fingerprint, seen.first_sent_at,
                                   max(0.0, now - seen.first_sent_at))
            answer = claim_answer(self._item(key, old), job_id=job_id, fingerprint=fingerprint, token=token, now=now)
            if answer is None:  # no record (it expired, or went meanwhile): the fresh write again
                seen, now = None, self.clock()
            elif isinstance(answer, Resume):  # an unfinished attempt, or it changed since read
                seen = answer.item
            else:
                return answer
        raise LedgerUnavailableError(
            f"the record of key {key!r} changed under the claim {MAX_ROUNDS} times in a row; try again"
        )

    async def _settle(self, op: str, key: str, token: str, request: dict[str, Any], now: float,
                      code: str = "", message: str = "") -> SettleResult:
        applied, old, _ = await self.db.write("update_item", **request)
        if applied:
            return "ok"
        return settle_answer(self._item(key, old), op=op, token=token, now=now, code=code, message=message)

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        text = encode_response(response)
        now = self.clock()
        applied, old, _ = await self.db.write("update_item", **ex.complete(
            self.table, self.prefix, key=key, token=token, response=text, now=now, retention=self.retention))
        if applied:
            return "ok"
        answer = settle_answer(self._item(key, old), op="complete", token=token, now=now, response=text)
        if answer != "missing":
            return answer
        # The store lost it (or it expired): only a done record stops a replay after the
        # provider's window from sending again.
        applied, old, _ = await self.db.write("put_item", **ex.complete_anew(
            self.table, self.prefix, key=key, token=token, response=text, now=now, retention=self.retention))
        if applied:
            return "recreated"
        item = self._item(key, old)
        if item is not None and item.state == "done" and item.token == token and not item.job_id:
            return "recreated"  # this very write, sent again after its reply was lost
        return "superseded"

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        now = self.clock()
        return await self._settle("fail", key, token, ex.fail(
            self.table, self.prefix, key=key, token=token, code=code, message=message, now=now,
            retention=self.retention), now, code, message)

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        now = self.clock()
        return await self._settle("renew", key, token, ex.renew(
            self.table, self.prefix, key=key, token=token, lease=lease, now=now), now)

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``."""
        now = self.clock()
        if not forget:
            return await self._settle("release", key, token, ex.release(
                self.table, self.prefix, key=key, token=token, now=now), now)
        applied, old, answer = await self.db.write("delete_item", **ex.release_forget(
            self.table, self.prefix, key=key, token=token, now=now))
        if not applied:
            return settle_answer(self._item(key, old), op="forget", token=token, now=now)
        await self._drop_note(key, answer.get("Attributes"))
        return "ok"

    async def _drop_note(self, key: str, deleted: Mapping[str, Any] | None) -> None:
        item = self._item(key, deleted)
        if item is not None and item.job_id:
            await self.db.write("delete_item", **ex.delete_note(self.table, self.prefix, job_id=item.job_id, key=key))

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``."""
        applied, _, answer = await self.db.write("delete_item", **ex.clear(
            self.table, self.prefix, key=key, force=force, now=self.clock()))
        if applied:
            await self._drop_note(key, answer.get("Attributes"))
        return applied

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``."""
        answer = await self.db.call("get_item", **ex.get(self.table, self.prefix, key=key))
        item = self._item(key, answer.get("Item"))
        if item is None or not item.live(self.clock()):
            return None
        try:
            return item.record(key)
        except ValueError as exc:
            raise malformed(key, exc) from None

    async def aclose(self) -> None:
        """Close the client if the ledger made it (one given stays open)."""
        await self.db.aclose()
