"""A QStash-like deliverer, to test a webhook without QStash (needs ``idemsend[qstash]``).

It does what QStash does on delivery: signs each attempt with a JWT (HS256; ``iss``
"Upstash", ``sub`` the endpoint URL, ``exp``/``nbf``/``iat``, a ``jti``, and ``body``, the
base64url sha256 of the raw body), sends ``Upstash-Message-Id`` and ``Upstash-Retried``,
retries any non-2xx or connection error honouring ``Retry-After``, and stops on
489 + ``Upstash-NonRetryable-Error: true``. Each ``Attempt`` keeps the headers it sent,
so a test can capture a signed delivery and replay it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .._classify import parse_retry_after
from .._errors import MissingExtraError

try:
    import jwt
except ImportError as exc:
    raise MissingExtraError("qstash", "jwt") from exc

__all__ = ["Attempt", "Delivery", "QStashDeliverer", "sign"]


def sign(
    body: bytes,
    url: str,
    key: str,
    *,
    now: float | None = None,
    ttl: float = 300,
    issuer: str = "Upstash",
    claims: Mapping[str, Any] | None = None,
) -> str:
    """A QStash ``Upstash-Signature`` for ``body`` sent to ``url``.

    ``claims`` overrides claims (to make odd but validly signed tokens); a ``None`` value
    removes that claim, e.g. ``claims={"jti": None}`` for a token without a ``jti``.
    """
    now = time.time() if now is None else now
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()
    payload: dict[str, Any] = {
        "iss": issuer, "sub": url, "exp": int(now + ttl), "nbf": int(now), "iat": int(now),
        "jti": f"jwt_{uuid.uuid4().hex}", "body": digest,
    }
    for name, value in (claims or {}).items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return jwt.encode(payload, key, algorithm="HS256")


@dataclass(slots=True)
class Attempt:
    """One delivery attempt: when, the answer (``status`` 0: the connection failed), the
    answer's headers and body, and the headers that were sent (signature included)."""

    at: float
    status: int
    headers: dict[str, str]
    body: Any
    sent_headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Delivery:
    """A message's attempts and its ``state``: pending, delivered, failed (489 +
    ``Upstash-NonRetryable-Error``) or exhausted (the retries ran out)."""

    message_id: str
    attempts: list[Attempt] = field(default_factory=list)
    state: str = "pending"

    @property
    def last(self) -> Attempt:
        """The latest attempt."""
        return self.attempts[-1]


class QStashDeliverer:
    """Delivers messages to one endpoint URL the way QStash does.

    ``sign_url`` is the URL the tokens are signed for (default ``url``); ``deliver``
    takes a fixed ``signature`` (to replay a captured one) and extra ``headers``.
    """

    def __init__(
        self,
        url: str,
        *,
        signing_key: str,
        retries: int = 3,
        backoff: Callable[[int], float] = lambda n: min(5.0, 0.2 * 2**n),
        timeout: float = 30.0,
        sign_url: str | None = None,
    ) -> None:
        self.url = url
        self.signing_key = signing_key
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.sign_url = sign_url or url

    async def deliver(
        self, message: Any, *, message_id: str | None = None, headers: Mapping[str, str] | None = None,
        signature: str | None = None,
    ) -> Delivery:
        """Deliver ``message`` (bytes as they are, anything else as JSON) until it is
        delivered, refused for good, or the retries run out."""
        raw = message if isinstance(message, bytes) else json.dumps(message).encode()
        delivery = Delivery(message_id or f"msg_{uuid.uuid4().hex}")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            for retried in range(self.retries + 1):
                sent_headers = {
                    "Content-Type": "application/json",
                    "Upstash-Message-Id": delivery.message_id,
                    "Upstash-Retried": str(retried),
                    "Upstash-Signature": signature or sign(raw, self.sign_url, self.signing_key),
                    **(headers or {}),
                }
                attempt = await self._post(session, raw, sent_headers)
                delivery.attempts.append(attempt)
                if 200 <= attempt.status < 300:
                    delivery.state = "delivered"
                    return delivery
                if attempt.status == 489 and attempt.headers.get("Upstash-NonRetryable-Error") == "true":
                    delivery.state = "failed"
                    return delivery
                if retried == self.retries:
                    break
                after = parse_retry_after(attempt.headers.get("Retry-After"))
                await asyncio.sleep(after if after is not None else self.backoff(retried))
        delivery.state = "exhausted"
        return delivery

    async def _post(self, session: aiohttp.ClientSession, raw: bytes, headers: Mapping[str, str]) -> Attempt:
        at = time.time()
        try:
            async with session.post(self.url, data=raw, headers=headers) as resp:
                text = await resp.text()
                try:
                    body: Any = json.loads(text)
                except ValueError:
                    body = text
                return Attempt(at, resp.status, dict(resp.headers), body, dict(headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Attempt(at, 0, {}, f"{type(exc).__name__}: {exc}", dict(headers))
