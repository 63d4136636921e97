"""Is this DynamoDB table fit to be a ledger? What ``start()`` reads (DescribeTable,
DescribeTimeToLive, the endpoint's ``Date`` header), the table checks (``_schema``), and
the facts it gives the one fitness policy (``store_facts``, pure; ``idemsend.ledger.judge``).

DynamoDB has no clock to read: leases, ages and expiry are the workers' clocks (see
``DynamoDBLedger``). ``start()`` measures this worker's clock against the endpoint's
``Date`` header (whole seconds) and warns (code ``clock_skew``) when they differ by more
than ``max_skew``: skew between workers shortens or lengthens a lease by as much.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from ..._errors import ConfigError
from .._fitness import Caution, StoreFacts, judge
from ._client import Client, error_code
from ._schema import migrate_hint, table_problems

__all__ = ["check", "clock_skew", "server_time", "store_facts"]


def server_time(answer: Mapping[str, Any]) -> float | None:
    """The endpoint's clock (Unix seconds, whole) from a response's ``Date`` header, if any."""
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def clock_skew(sent: float, received: float, theirs: float | None) -> float | None:
    """How far this worker's clock is off the endpoint's at least (pure): ``theirs`` is its
    ``Date`` header (whole seconds, truncated), read between ``sent`` and ``received`` on
    this worker's clock. The answer is the smallest difference that fits what was read (0
    when the clocks may agree), signed (positive: this worker is ahead); ``None`` when the
    endpoint sent no date."""
    if theirs is None:
        return None
    if sent > theirs + 1:  # ahead: at sending, the endpoint's clock read less than theirs + 1
        return sent - (theirs + 1)
    if received < theirs:  # behind: at receiving, it read theirs at least
        return received - theirs
    return 0.0


def store_facts(
    table: str, description: Mapping[str, Any], *, skew: float | None, max_skew: float
) -> StoreFacts:
    """The facts ``judge`` rules on (pure): ``skew`` is this worker's clock minus the
    endpoint's (``None``: not measured), ``description`` DescribeTable's ``Table``."""
    cautions = []
    if skew is not None and abs(skew) > max_skew:
        cautions.append(Caution("clock_skew", (
            f"idemsend: this worker's clock is {skew:+.0f} s off DynamoDB's (its Date header), more than"
            f" max_skew={max_skew:g} s. DynamoDBLedger's leases and ages are the workers' clocks: a worker that"
            " far ahead takes over a lease that early (two sends at once on one key, the provider's idempotency"
            " key then the only guard), one behind waits that much longer. Run NTP (chrony, Amazon Time Sync)."
        )))
    billing = description.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    if billing == "PROVISIONED":
        cautions.append(Caution("provisioned", (
            f"idemsend: the ledger table {table} has provisioned capacity: over it, DynamoDB throttles the"
            " ledger, and every send waits (LedgerUnavailableError, retried through the queue) until it has"
            " capacity again. On-demand (PAY_PER_REQUEST) or auto scaling avoids that."
        )))
    return StoreFacts(store=f"the DynamoDB table {table}", ledger="DynamoDBLedger", cautions=tuple(cautions))


async def check(
    client: Client, table: str, *, clock: Callable[[], float], max_skew: float, create_table: bool,
    migrate: Callable[[], Awaitable[None]],
) -> None:
    """Check the table (a missing one made with ``migrate`` when ``create_table``, else
    ``ConfigError``; the wrong key schema or TTL off: ``ConfigError``), then judge it and
    log the warnings. Store failures raise ``LedgerUnavailableError``."""
    db = await client.client()
    try:
        await db.describe_table(TableName=table)
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise client.fail(exc, f"could not read the ledger table {table}: ") from None
        if not create_table:
            raise ConfigError(
                f"the ledger table {table} does not exist at {client.where}: {migrate_hint(table)}"
            ) from None
        await migrate()
    ttl = await client.call("describe_time_to_live", TableName=table)
    sent = clock()
    answer = await client.call("describe_table", TableName=table)
    received = clock()
    description = answer.get("Table", {})
    problems = table_problems(table, description, ttl.get("TimeToLiveDescription", {}))
    if problems:
        raise ConfigError(f"the DynamoDB table {table} at {client.where} cannot be the ledger's: "
                          + "; ".join(problems))
    skew = clock_skew(sent, received, server_time(answer))
    judge(store_facts(table, description, skew=skew, max_skew=max_skew)).enforce()
