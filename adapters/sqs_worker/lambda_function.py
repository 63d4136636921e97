"""The same job as a Lambda function on an SQS event source mapping (turn on
ReportBatchItemFailures, or Lambda ignores the answer and deletes the whole batch).

Handler: `lambda_function.lambda_handler`. Environment: IDEMSEND_* as for the worker (see
idemsend.adapters.engine_from_env), SQS_MAX_ATTEMPTS (keep it at or under the redrive
policy's maxReceiveCount), SQS_RETRY_BASE (1.0), SQS_GIVE_UP (delete | redrive). One Engine per container, made on
the first event and reused by the next ones.
"""

from __future__ import annotations

import os
from typing import Any

import boto3

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.sqs import SQSBatchHandler

handler = SQSBatchHandler(
    engine_from_env,
    max_attempts=int(os.environ.get("SQS_MAX_ATTEMPTS", "10")),
    backoff=QueueBackoff(base=float(os.environ.get("SQS_RETRY_BASE", "1.0"))),
    give_up=os.environ.get("SQS_GIVE_UP", "delete"),  # type: ignore[arg-type]
    # with a client, a retry comes back after its delay, not after the queue's visibility timeout
    client=boto3.client("sqs", endpoint_url=os.environ.get("SQS_ENDPOINT_URL") or None),
)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda's entry point: {"batchItemFailures": [{"itemIdentifier": messageId}, ...]}."""
    return handler(event, context)
