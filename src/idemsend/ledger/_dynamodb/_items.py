"""A DynamoDB item as a record, and the decisions taken on it (pure).

DynamoDB answers items in its wire form (``{"st": {"S": "done"}, "exp": {"N": "1.7e9"}}``);
``Item.of`` reads one into an ``Item`` (``ValueError``, ``KeyError``, ``TypeError`` for
one that is not a ledger record: the ledger wraps it with ``malformed``). The decisions a
call takes on the item a refused write answered (``ReturnValuesOnConditionCheckFailure=
ALL_OLD``) live here too, so they are tested without a table: ``claim_answer`` (what a
claim that did not make a fresh record answers, or that it may resume), and
``settle_answer`` (what a refused ``complete``, ``fail``, ``renew`` or ``release`` answers).

Attributes (short names: every byte is paid for in write units and storage):

=======  =======================================================================
``pk``   the partition key: ``<prefix>#r#<key>`` (a record), ``<prefix>#j#<job id>`` (a note)
``st``   ``in_flight`` | ``done`` | ``fatal``
``job``  the job id of the first claim (``""`` for a done record written anew)
``fp``   the fingerprint of the frozen body (``""``: unknown)
``body`` the frozen body (binary) while in flight
``first``  when the first claim was made (Unix seconds, the claiming worker's clock)
``tok``  the token that holds the lease (and, on a done or fatal record, settled it)
``ft``   the token that made the record fresh (a lost reply's retry knows its own)
``rel``  the token that released it last (a released record has no ``tok``)
``lease``  when the lease runs out (Unix seconds)
``resp`` the recorded response (compact JSON) once done
``code``, ``msg``  the fatal code and message
``exp``  when the record expires (Unix seconds, float): every condition and read checks it
``ttl``  ``exp`` rounded up to a whole second: the table's TTL attribute, for the sweep only
``rk``   (a note) the key the job id's first claim derived
=======  =======================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._base import Busy, Claimed, ClaimResult, Conflict, Failed, LedgerRecord, SettleResult
from .._records import STATES, conflicts, done, ledger_record

__all__ = ["Item", "Resume", "claim_answer", "settle_answer"]


def _s(raw: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = raw.get(name)
    if value is None:
        if default is None:
            raise KeyError(f"attribute {name!r} missing")
        return default
    return str(value["S"])


def _n(raw: Mapping[str, Any], name: str, default: float | None = None) -> float:
    value = raw.get(name)
    if value is None:
        if default is None:
            raise KeyError(f"attribute {name!r} missing")
        return default
    return float(value["N"])


@dataclass(frozen=True, slots=True)
class Item:
    """A record item as read (see the module docstring for the attributes)."""

    state: str
    job_id: str
    fingerprint: str
    first_sent_at: float
    expires: float
    body: bytes = b""
    token: str = ""
    fresh_token: str = ""
    released_by: str = ""
    lease_until: float = 0.0
    response: str | None = None
    code: str = ""
    message: str = ""

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Item:
        """The item DynamoDB answered, read; ``KeyError``, ``ValueError`` or ``TypeError`` for
        one that is not a ledger record."""
        state = _s(raw, "st")
        if state not in STATES:
            raise ValueError(f"no such state {state!r}")
        body = raw.get("body")
        response = raw.get("resp")
        return cls(
            state=state, job_id=_s(raw, "job", ""), fingerprint=_s(raw, "fp", ""),
            first_sent_at=_n(raw, "first"), expires=_n(raw, "exp"),
            body=bytes(body["B"]) if body is not None else b"",
            token=_s(raw, "tok", ""), fresh_token=_s(raw, "ft", ""), released_by=_s(raw, "rel", ""),
            lease_until=_n(raw, "lease", 0.0),
            response=str(response["S"]) if response is not None else None,
            code=_s(raw, "code", ""), message=_s(raw, "msg", ""),
        )

    def live(self, now: float) -> bool:
        """Whether the record is still there at ``now`` (by its own expiry, not the TTL sweep)."""
        return self.expires > now

    def record(self, key: str) -> LedgerRecord:
        """The ``LedgerRecord`` ``get`` answers (``ValueError`` for a response that is not JSON)."""
        return ledger_record(
            key, self.state, job_id=self.job_id, fingerprint=self.fingerprint, first_sent_at=self.first_sent_at,
            response=self.response, code=self.code or None, message=self.message or None,
            lease_until=self.lease_until,
        )


@dataclass(frozen=True, slots=True)
class Resume:
    """A claim may resume ``item`` (in flight, its lease free, released or this token's):
    the ledger writes this token's lease on condition that the item is still as read."""

    item: Item


def claim_answer(
    item: Item | None, *, job_id: str, fingerprint: str, token: str, now: float
) -> ClaimResult | Resume | None:
    """What a claim answers when its fresh write was refused, ``item`` being what the refusal
    answered (``None``: no item, or one past its expiry: the fresh write may be tried again).

    The protocol's order: ``Conflict``, ``Done``, ``Failed``, ``Busy``; then a record this
    very token made fresh, unchanged (the claim's reply was lost and the client sent it
    again, or it claims again at once) is that fresh claim; else ``Resume``."""
    if item is None or not item.live(now):
        return None
    if conflicts(item.job_id, item.fingerprint, job_id, fingerprint):
        return Conflict(item.fingerprint)
    if item.state == "done":
        return done(item.response or "null", item.fingerprint)
    if item.state == "fatal":
        return Failed(item.code, item.message)
    if item.token and item.token != token and item.lease_until > now:
        return Busy(item.lease_until - now)
    if item.token == token and item.fresh_token == token and item.fingerprint == fingerprint:
        return Claimed(True, item.body, item.fingerprint, item.first_sent_at, max(0.0, now - item.first_sent_at))
    return Resume(item)


def settle_answer(
    item: Item | None, *, op: str, token: str, now: float, response: str | None = None, code: str = "",
    message: str = "",
) -> SettleResult:
    """What a settlement answers when its conditional write was refused, ``item`` being what
    the refusal answered: ``"missing"`` without a live record; ``"ok"`` when the record shows
    this very call's write already applied (its reply was lost and the client sent it again:
    a done record settled by this token with this ``response`` for ``complete``, a fatal one
    settled by this token with this ``code`` and ``message`` for ``fail``, a release by this
    token for ``release``); else ``"superseded"``."""
    if item is None or not item.live(now):
        return "missing"
    if op == "complete" and item.state == "done" and item.token == token and item.response == response:
        return "ok"
    if (op == "fail" and item.state == "fatal" and item.token == token and item.code == code
            and item.message == message):
        return "ok"
    if op == "release" and item.state == "in_flight" and not item.token and item.released_by == token:
        return "ok"
    return "superseded"
