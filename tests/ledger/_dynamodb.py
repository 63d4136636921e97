"""DynamoDB for the ledger tests: moto's server (harness.queues.sqs.MotoServer, the SQS
tests' helper) on a loopback port, and tables of a test's own on it.

Nothing here imports aiobotocore or moto at import time: where they are missing, the
DynamoDB tests skip with the reason (``nox -s dynamodb`` runs them).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import uuid
from typing import Any

#: Whether the DynamoDB ledger can be tested here (its client and moto's server are installed).
HAVE_DYNAMODB = all(importlib.util.find_spec(m) is not None for m in ("aiobotocore", "moto", "flask"))
NO_DYNAMODB = "the DynamoDB ledger's tests need aiobotocore and moto[server]: nox -s dynamodb"
REGION = "us-east-1"


def moto_env() -> None:
    """moto takes any credentials, botocore wants some: set the harness's where none are set
    (worker processes inherit them)."""
    from harness.queues.sqs import CREDENTIALS

    os.environ.setdefault("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def table_url(endpoint: str, table: str | None = None, **params: str) -> str:
    """A ``dynamodb://`` URL on moto at ``endpoint``, a table of its own by default."""
    table = table or new_table()
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"dynamodb://{table}?region={REGION}&endpoint_url={endpoint}{extra}"


def new_table() -> str:
    """A table name of a test's own."""
    return f"t-{uuid.uuid4().hex[:12]}"


class OwnMoto:
    """A moto server of one test's own, with the ``Store`` server methods: moto keeps
    everything in memory, so a restart (or a kill) loses every record. It loses the
    tables too, which DynamoDB never does: ``start`` makes ``tables`` again, as the
    ledger's ``migrate`` would (a string key ``pk``, TTL on ``ttl``), records lost."""

    def __init__(self) -> None:
        from harness.queues.sqs import MotoServer

        self.moto = MotoServer()
        self.url = self.moto.url
        self.tables: list[str] = []

    def start(self) -> OwnMoto:
        self.moto.start()
        if self.tables:
            import boto3

            from harness.queues.sqs import CREDENTIALS
            from idemsend.ledger._dynamodb._schema import TTL_ATTRIBUTE, create_request

            db = boto3.client("dynamodb", region_name=REGION, endpoint_url=self.url, **CREDENTIALS)
            try:
                for table in self.tables:
                    db.create_table(**create_request(table))
                    db.update_time_to_live(TableName=table, TimeToLiveSpecification={
                        "Enabled": True, "AttributeName": TTL_ATTRIBUTE})
            finally:
                db.close()
        return self

    def stop(self) -> None:
        self.moto.stop()

    def kill(self) -> None:
        proc = self.moto.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.moto.proc = None

    def cleanup(self) -> None:
        self.moto.stop()


def client(endpoint: str) -> Any:
    """An aiobotocore DynamoDB client context on moto (no retries: a test sees each answer)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from harness.queues.sqs import CREDENTIALS

    return get_session().create_client(
        "dynamodb", region_name=REGION, endpoint_url=endpoint, config=AioConfig(retries={"max_attempts": 1}),
        **CREDENTIALS,
    )
