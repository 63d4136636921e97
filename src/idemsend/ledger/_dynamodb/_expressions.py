"""Every request the ledger sends, as the keyword arguments of the aiobotocore call (pure).

Each call is one conditional write on one item; the condition carries the claim token and
the item's own expiry (``exp``), so an expired item is treated as absent whatever the TTL
sweep has done (DynamoDB deletes expired items lazily, moto never). Every refused write
asks for the item as it is (``ReturnValuesOnConditionCheckFailure=ALL_OLD``): the caller
decides from it in the same round trip (``_items.claim_answer``, ``settle_answer``).

Times are Unix seconds on the ledger's clock, written as DynamoDB numbers (``repr`` of
the float: exact, and compared numerically by DynamoDB).
"""

from __future__ import annotations

import math
from typing import Any

from .._base import UNSAFE_TO_CLEAR

__all__ = [
    "claim_fresh", "clear", "complete", "complete_anew", "delete_note", "fail", "get", "note",
    "record_key", "release", "release_forget", "renew", "resume",
]

_OLD = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
#: In flight under this token and not expired: what every settlement by a token requires.
_OWNED = "st = :inflight AND tok = :tok AND exp > :now"


def num(value: float) -> dict[str, str]:
    """A DynamoDB number attribute value."""
    return {"N": repr(float(value))}


def record_key(prefix: str, key: str) -> dict[str, Any]:
    """The primary key of ``key``'s record."""
    return {"pk": {"S": f"{prefix}#r#{key}"}}


def note_key(prefix: str, job_id: str) -> dict[str, Any]:
    """The primary key of ``job_id``'s note (the key its first claim derived)."""
    return {"pk": {"S": f"{prefix}#j#{job_id}"}}


def _expiry(now: float, retention: float) -> dict[str, Any]:
    return {":exp": num(now + retention), ":ttl": {"N": str(math.ceil(now + retention))}}


def note(table: str, prefix: str, *, job_id: str, key: str, now: float, retention: float) -> dict[str, Any]:
    """PutItem: note that ``job_id`` claims ``key``, unless a live note names another key (then
    refused, and the refusal answers that note: ``Unstable``). A live note for the same key
    is written again (its retention counted from this claim)."""
    return {
        "TableName": table,
        "Item": {**note_key(prefix, job_id), "rk": {"S": key}, "exp": num(now + retention),
                 "ttl": {"N": str(math.ceil(now + retention))}},
        "ConditionExpression": "attribute_not_exists(pk) OR exp <= :now OR rk = :key",
        "ExpressionAttributeValues": {":now": num(now), ":key": {"S": key}},
        **_OLD,
    }


def delete_note(table: str, prefix: str, *, job_id: str, key: str) -> dict[str, Any]:
    """DeleteItem: drop ``job_id``'s note if it names ``key`` (a forgotten or cleared record's)."""
    return {
        "TableName": table, "Key": note_key(prefix, job_id),
        "ConditionExpression": "rk = :key", "ExpressionAttributeValues": {":key": {"S": key}},
    }


def claim_fresh(
    table: str, prefix: str, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str,
    lease: float, now: float, retention: float,
) -> dict[str, Any]:
    """PutItem: a fresh in-flight record, on condition that there is none (or it expired)."""
    return {
        "TableName": table,
        "Item": {
            **record_key(prefix, key), "st": {"S": "in_flight"}, "job": {"S": job_id}, "fp": {"S": fingerprint},
            "body": {"B": payload}, "first": num(now), "tok": {"S": token}, "ft": {"S": token},
            "lease": num(now + lease), "exp": num(now + retention),
            "ttl": {"N": str(math.ceil(now + retention))},
        },
        "ConditionExpression": "attribute_not_exists(pk) OR exp <= :now",
        "ExpressionAttributeValues": {":now": num(now)},
        **_OLD,
    }


def resume(
    table: str, prefix: str, *, key: str, token: str, lease: float, now: float, seen_token: str,
    seen_lease: float, seen_first: float,
) -> dict[str, Any]:
    """UpdateItem: take over an unfinished record under ``token``, on condition that it is
    still the one read (in flight, live, same first claim, same holder and lease end)."""
    holder = "tok = :seen" if seen_token else "attribute_not_exists(tok)"
    values: dict[str, Any] = {
        ":tok": {"S": token}, ":lease": num(now + lease), ":now": num(now), ":inflight": {"S": "in_flight"},
        ":first": num(seen_first), ":seenlease": num(seen_lease),
    }
    if seen_token:
        values[":seen"] = {"S": seen_token}
    lease_was = "lease = :seenlease" if seen_lease else "attribute_not_exists(lease)"
    if not seen_lease:
        del values[":seenlease"]
    return {
        "TableName": table, "Key": record_key(prefix, key),
        "UpdateExpression": "SET tok = :tok, lease = :lease REMOVE rel",
        "ConditionExpression": f"st = :inflight AND exp > :now AND #first = :first AND {holder} AND {lease_was}",
        "ExpressionAttributeNames": {"#first": "first"},
        "ExpressionAttributeValues": values,
        **_OLD,
    }


def complete(
    table: str, prefix: str, *, key: str, token: str, response: str, now: float, retention: float
) -> dict[str, Any]:
    """UpdateItem: in flight under ``token`` -> done with ``response``, the body dropped."""
    return {
        "TableName": table, "Key": record_key(prefix, key),
        "UpdateExpression": "SET st = :done, resp = :resp, exp = :exp, #ttl = :ttl REMOVE body, lease, rel",
        "ConditionExpression": _OWNED,
        "ExpressionAttributeNames": {"#ttl": "ttl"},
        "ExpressionAttributeValues": {
            ":done": {"S": "done"}, ":resp": {"S": response}, ":inflight": {"S": "in_flight"},
            ":tok": {"S": token}, ":now": num(now), **_expiry(now, retention),
        },
        **_OLD,
    }


def complete_anew(
    table: str, prefix: str, *, key: str, token: str, response: str, now: float, retention: float
) -> dict[str, Any]:
    """PutItem: the done record written anew (the store lost it), on condition there is none."""
    return {
        "TableName": table,
        "Item": {
            **record_key(prefix, key), "st": {"S": "done"}, "job": {"S": ""}, "fp": {"S": ""},
            "first": num(now), "tok": {"S": token}, "resp": {"S": response}, "exp": num(now + retention),
            "ttl": {"N": str(math.ceil(now + retention))},
        },
        "ConditionExpression": "attribute_not_exists(pk) OR exp <= :now",
        "ExpressionAttributeValues": {":now": num(now)},
        **_OLD,
    }


def fail(
    table: str, prefix: str, *, key: str, token: str, code: str, message: str, now: float, retention: float
) -> dict[str, Any]:
    """UpdateItem: in flight under ``token`` -> fatal with ``code`` and ``message``."""
    return {
        "TableName": table, "Key": record_key(prefix, key),
        "UpdateExpression": "SET st = :fatal, code = :code, msg = :msg, exp = :exp, #ttl = :ttl"
                            " REMOVE body, lease, rel",
        "ConditionExpression": _OWNED,
        "ExpressionAttributeNames": {"#ttl": "ttl"},
        "ExpressionAttributeValues": {
            ":fatal": {"S": "fatal"}, ":code": {"S": code}, ":msg": {"S": message},
            ":inflight": {"S": "in_flight"}, ":tok": {"S": token}, ":now": num(now), **_expiry(now, retention),
        },
        **_OLD,
    }


def renew(table: str, prefix: str, *, key: str, token: str, lease: float, now: float) -> dict[str, Any]:
    """UpdateItem: this token's lease runs ``lease`` seconds from ``now``."""
    return {
        "TableName": table, "Key": record_key(prefix, key),
        "UpdateExpression": "SET lease = :lease",
        "ConditionExpression": _OWNED,
        "ExpressionAttributeValues": {
            ":lease": num(now + lease), ":inflight": {"S": "in_flight"}, ":tok": {"S": token}, ":now": num(now),
        },
        **_OLD,
    }


def release(table: str, prefix: str, *, key: str, token: str, now: float) -> dict[str, Any]:
    """UpdateItem: drop this token's lease (the record, frozen body and first-sent time kept);
    ``rel`` remembers who released it, so a retried release knows its own."""
    return {
        "TableName": table, "Key": record_key(prefix, key),
        "UpdateExpression": "SET lease = :now, rel = :tok REMOVE tok",
        "ConditionExpression": _OWNED,
        "ExpressionAttributeValues": {":inflight": {"S": "in_flight"}, ":tok": {"S": token}, ":now": num(now)},
        **_OLD,
    }


def release_forget(table: str, prefix: str, *, key: str, token: str, now: float) -> dict[str, Any]:
    """DeleteItem: delete the record in flight under ``token``; it answers the deleted item
    (for its job id's note)."""
    return {
        "TableName": table, "Key": record_key(prefix, key),
        "ConditionExpression": _OWNED,
        "ExpressionAttributeValues": {":inflight": {"S": "in_flight"}, ":tok": {"S": token}, ":now": num(now)},
        "ReturnValues": "ALL_OLD",
        **_OLD,
    }


def clear(table: str, prefix: str, *, key: str, force: bool, now: float) -> dict[str, Any]:
    """DeleteItem: delete a live fatal record (one whose code is in ``UNSAFE_TO_CLEAR`` only
    when ``force``); it answers the deleted item (for its job id's note)."""
    values: dict[str, Any] = {":fatal": {"S": "fatal"}, ":now": num(now)}
    condition = "st = :fatal AND exp > :now"
    if not force:
        unsafe = sorted(UNSAFE_TO_CLEAR)
        names = [f":u{i}" for i in range(len(unsafe))]
        values.update({name: {"S": code} for name, code in zip(names, unsafe, strict=True)})
        condition += f" AND NOT code IN ({', '.join(names)})"
    return {
        "TableName": table, "Key": record_key(prefix, key), "ConditionExpression": condition,
        "ExpressionAttributeValues": values, "ReturnValues": "ALL_OLD",
    }


def get(table: str, prefix: str, *, key: str) -> dict[str, Any]:
    """GetItem, strongly consistent (a worker reads what another has just written)."""
    return {"TableName": table, "Key": record_key(prefix, key), "ConsistentRead": True}
