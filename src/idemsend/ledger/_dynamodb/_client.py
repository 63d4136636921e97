"""The ledger's DynamoDB client: made (aiobotocore) or given, one request per call, store
failures in words (``LedgerUnavailableError``), a refused condition answered as the item.

``Client.write(op, **request)`` sends one conditional write and answers ``(True, None)``
when it applied, ``(False, item)`` when DynamoDB refused its condition (``item``: the
record as it is, from ``ReturnValuesOnConditionCheckFailure=ALL_OLD``; ``None`` when
there is none). Everything else DynamoDB or the network answers (throttling included,
once botocore's own retries are spent) raises ``LedgerUnavailableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..._redact import safe_url
from .._base import LedgerUnavailableError

__all__ = ["THROTTLED", "Client", "error_code"]

#: What DynamoDB answers when the table (or the account) is over its throughput.
THROTTLED = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "TransactionConflictException",
})
_REFUSED = "ConditionalCheckFailedException"


def error_code(exc: BaseException) -> str:
    """The error code of a DynamoDB ``ClientError`` (``""`` for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class Client:
    """One DynamoDB client for one ledger: ``given`` (an aiobotocore DynamoDB client you own:
    it stays open) or made on the first call from ``region``, ``endpoint_url`` and
    ``config`` (and closed by ``aclose``). ``calls`` counts the requests by operation."""

    def __init__(
        self, given: Any = None, *, region: str | None = None, endpoint_url: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self._client = given
        self._own = given is None
        self.region = region
        self.endpoint_url = endpoint_url
        self.config = dict(config or {})
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self.calls: Counter[str] = Counter()

    @property
    def where(self) -> str:
        """The endpoint, as messages name it (never a credential)."""
        if self.endpoint_url:
            return safe_url(self.endpoint_url)
        return f"DynamoDB in {self.region or 'the default region'}"

    async def client(self) -> Any:
        """The aiobotocore client, made on first use."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                options = {"retries": {"mode": "standard", "max_attempts": 3}, "connect_timeout": 5,
                           "read_timeout": 10, "max_pool_connections": 64, **self.config}
                stack = contextlib.AsyncExitStack()
                try:
                    self._client = await stack.enter_async_context(get_session().create_client(
                        "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url,
                        config=AioConfig(**options),
                    ))
                except (BotoCoreError, ValueError) as exc:
                    await stack.aclose()
                    raise self.fail(exc) from None
                self._stack = stack
        return self._client

    def fail(self, exc: BaseException, what: str = "") -> LedgerUnavailableError:
        """A store failure in words: which endpoint, what it answered (throttling named)."""
        if isinstance(exc, LedgerUnavailableError):
            return exc
        code = error_code(exc)
        if code in THROTTLED:
            return LedgerUnavailableError(
                f"{what}{self.where} throttled the ledger's table ({code}) after botocore's retries: give the table"
                " more capacity (on-demand, or a higher provisioned rate)"
            )
        if isinstance(exc, ClientError):
            message = exc.response.get("Error", {}).get("Message", "")
            return LedgerUnavailableError(f"{what}{self.where} answered {code or 'an error'}: {message}")
        return LedgerUnavailableError(f"{what}could not reach {self.where}: {type(exc).__name__}: {exc}")

    async def call(self, op: str, **request: Any) -> dict[str, Any]:
        """One request (``op``: the client method's name); store failures raise
        ``LedgerUnavailableError``."""
        client = await self.client()
        self.calls[op] += 1
        try:
            answer: dict[str, Any] = await getattr(client, op)(**request)
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            raise self.fail(exc) from None
        return answer

    async def write(self, op: str, **request: Any) -> tuple[bool, dict[str, Any] | None, dict[str, Any]]:
        """One conditional write: ``(applied, item_if_refused, answer)``."""
        client = await self.client()
        self.calls[op] += 1
        try:
            answer: dict[str, Any] = await getattr(client, op)(**request)
        except ClientError as exc:
            if error_code(exc) == _REFUSED:
                item = exc.response.get("Item")
                return False, item if item else None, {}
            raise self.fail(exc) from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise self.fail(exc) from None
        return True, None, answer

    async def aclose(self) -> None:
        """Close the client if it was made here."""
        stack, self._stack = self._stack, None
        if stack is not None:
            self._client = None
            await stack.aclose()
