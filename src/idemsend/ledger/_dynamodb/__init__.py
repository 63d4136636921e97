"""DynamoDBLedger: the ledger in one DynamoDB table (extra ``dynamodb``, aiobotocore).

For the SQS and Lambda users who keep their state in DynamoDB. One table (default
``idemsend-ledger``; ``migrate()`` or ``idemsend migrate --dynamodb`` creates it): a
string partition key ``pk``, every record ``<prefix>#r#<key>`` and every job id's note
``<prefix>#j#<job id>`` one item each, TTL on the attribute ``ttl``.

Every call is **one conditional write** (``PutItem``/``UpdateItem``/``DeleteItem`` with a
condition expression holding the claim token and the item's own expiry); a refused write
answers the item as it is (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), so the
ledger decides from it in the same round trip. A claim is two writes (the job id's note,
then the record) and a third only when it resumes an unfinished attempt (the takeover,
on condition that the record is still the one read). DynamoDB's TTL deletes expired
items lazily ("typically within a few days"; moto never does): every condition and every
read treats an item past its ``exp`` as absent, so the sweep only keeps the table small.

No group commit: ``BatchWriteItem`` takes no condition expressions (a batched claim
could overwrite another worker's record), and ``TransactWriteItems`` costs twice the
write units and fails as a whole; each call is its own request, in parallel over the
client's connection pool.

The package, one concern per module:

* ``_ledger.py``: ``DynamoDBLedger``, the protocol's methods over the other modules;
* ``_expressions.py``: every request's arguments (conditions, updates), pure;
* ``_items.py``: an item as a record, and the decisions taken on a refused write, pure;
* ``_schema.py``: the table's name, the table ``migrate`` makes, the table checks, pure;
* ``_client.py``: the aiobotocore client, one request per call, store failures in words;
* ``_fitness.py``: what ``start()`` reads and the facts it gives the fitness policy.
"""
from ..._errors import MissingExtraError

try:
    import aiobotocore  # noqa: F401 - every module here needs it: say which extra brings it
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingExtraError("dynamodb", "aiobotocore") from exc

from ._ledger import DynamoDBLedger
from ._schema import DEFAULT_TABLE, validate_table

__all__ = ["DEFAULT_TABLE", "DynamoDBLedger", "validate_table"]
