"""The ledger's table: its name's rule, what ``migrate`` creates, and what a table must be (pure).

One table holds every record and every job id's note: a string partition key ``pk`` and
nothing else in the key, and DynamoDB's TTL on the attribute ``ttl`` (for the sweep only:
every read and condition checks the item's own ``exp``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..._errors import ConfigError

__all__ = ["DEFAULT_TABLE", "TTL_ATTRIBUTE", "create_request", "migrate_hint", "table_problems",
           "validate_prefix", "validate_table"]

#: The table a DynamoDBLedger uses when none is named.
DEFAULT_TABLE = "idemsend-ledger"
#: The attribute the table's TTL reads.
TTL_ATTRIBUTE = "ttl"
_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def validate_table(table: str) -> str:
    """``table`` if DynamoDB accepts it as a table name (3 to 255 of letters, digits, ``_ . -``),
    else ``ConfigError``."""
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise ConfigError(
            f"not a DynamoDB table name: {table!r} (3 to 255 characters: letters, digits, '_', '.', '-')"
        )
    return table


def validate_prefix(prefix: str) -> str:
    """``prefix`` if it can namespace the ledger's items (non-empty, no ``#``, at most 200
    characters: a key of 255 characters or a job id of 1,024 bytes after it stays within
    DynamoDB's 2,048-byte partition key), else ``ConfigError``."""
    if not isinstance(prefix, str) or not prefix or "#" in prefix or len(prefix) > 200:
        raise ConfigError(
            f"a DynamoDBLedger prefix is a non-empty string without '#', at most 200 characters, got {prefix!r}"
        )
    return prefix


def create_request(table: str) -> dict[str, Any]:
    """CreateTable's arguments: ``pk`` (string) as the only key, on-demand capacity."""
    return {
        "TableName": table,
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


def migrate_hint(table: str) -> str:
    """How to make ``table`` a ledger table, for an error message."""
    return (
        f"create it with `idemsend migrate --dynamodb dynamodb://{table}?region=...` or `await ledger.migrate()`"
        f" (a string partition key `pk`, no sort key, TTL on the attribute `{TTL_ATTRIBUTE}`), or make the"
        " ledger with create_table=True"
    )


def table_problems(table: str, description: Mapping[str, Any], ttl: Mapping[str, Any]) -> list[str]:
    """Why ``table`` (DescribeTable's ``Table``, DescribeTimeToLive's
    ``TimeToLiveDescription``) cannot be the ledger's table; empty when it can."""
    problems = []
    keys = [(k.get("AttributeName"), k.get("KeyType")) for k in description.get("KeySchema", [])]
    types = {a.get("AttributeName"): a.get("AttributeType") for a in description.get("AttributeDefinitions", [])}
    if keys != [("pk", "HASH")] or types.get("pk") != "S":
        shown = ", ".join(f"{name} {kind} ({types.get(name, '?')})" for name, kind in keys) or "none"
        problems.append(
            f"its key schema is {shown}, not the ledger's (a string partition key `pk` alone): it is not an"
            " idemsend ledger table; name another table"
        )
    status, attribute = ttl.get("TimeToLiveStatus", "DISABLED"), ttl.get("AttributeName")
    if status not in ("ENABLED", "ENABLING") or attribute != TTL_ATTRIBUTE:
        problems.append(
            f"its TTL is {status}{f' on {attribute!r}' if attribute else ''}, not ENABLED on {TTL_ATTRIBUTE!r}:"
            " expired records would never be deleted and the table would grow forever. Turn it on with"
            f" `aws dynamodb update-time-to-live --table-name {table} --time-to-live-specification"
            f" Enabled=true,AttributeName={TTL_ATTRIBUTE}` or `idemsend migrate --dynamodb ...`"
        )
    return problems
