"""The outcome model and the classifiers that map an HTTP response onto it.

Every classifier returns one of four outcomes:

| outcome        | meaning                                         | the engine                      |
|----------------|-------------------------------------------------|---------------------------------|
| ``Sent``       | accepted (first time, or a replay)              | returns a ``SendResult``        |
| ``InFlight``   | the same key is being processed                 | waits ~500 ms with jitter       |
| ``Retry``      | 429, 408, 5xx (network errors: the engine)      | backs off, then RetryableError  |
| ``Fatal``      | mismatch, any other 4xx                         | FatalError / MismatchError      |

A classifier only sees a response; network errors and timeouts are ``Retry`` by the
engine's own rule (the send may have happened; the same key makes a retry safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

from ._errors import MISMATCH

__all__ = [
    "MISMATCH",
    "Fatal",
    "HTTPResponse",
    "IETFDraft",
    "InFlight",
    "Outcome",
    "Resend",
    "ResultClassifier",
    "Retry",
    "Sendoka",
    "Sent",
    "Stripe",
    "parse_retry_after",
]


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """What a classifier sees of a response: status, headers and the parsed JSON body."""

    status: int
    headers: Mapping[str, str]
    json: Any


@dataclass(frozen=True, slots=True)
class Sent:
    id: str | None
    replayed: bool = False


_IN_FLIGHT = "the same key is being processed"


@dataclass(frozen=True, slots=True)
class InFlight:
    message: str = _IN_FLIGHT


@dataclass(frozen=True, slots=True)
class Retry:
    after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Fatal:
    code: str
    message: str


Outcome = Sent | InFlight | Retry | Fatal


@runtime_checkable
class ResultClassifier(Protocol):
    """Anything with ``classify(response) -> Outcome`` classifies provider responses."""

    def classify(self, response: HTTPResponse) -> Outcome: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _id_of(body: Any) -> str | None:
    value = _get(body, "id")
    return str(value) if value is not None else None


def _replayed(headers: Mapping[str, str]) -> bool:
    return str(headers.get("Idempotent-Replayed", "")).lower() == "true"


def _transient(response: HTTPResponse) -> Retry | None:
    """The rule every preset shares for 429, 408 and 5xx."""
    status = response.status
    if status == 429 or status == 408 or status >= 500:
        after = parse_retry_after(response.headers.get("Retry-After"))
        return Retry(after, f"HTTP {status}")
    return None


def _message(body: Any, *paths: tuple[str, ...]) -> str:
    for path in paths:
        value = _get(body, *path)
        if isinstance(value, str) and value:
            return value
    return ""


@dataclass(frozen=True, slots=True)
class Sendoka:
    """The contract in ``provider-idempotency-contract.txt``.

    2xx is sent (``Idempotent-Replayed: true`` marks a replay); 409 with
    ``IDEMPOTENCY_IN_FLIGHT`` is in flight; 409 with ``IDEMPOTENCY_MISMATCH`` is fatal;
    429/408/5xx retry; other 4xx are fatal with the provider's error code.
    """

    def classify(self, response: HTTPResponse) -> Outcome:
        if 200 <= response.status < 300:
            return Sent(_id_of(response.json), _replayed(response.headers))
        code = _get(response.json, "error", "code")
        message = _message(response.json, ("error", "message"))
        if code == "IDEMPOTENCY_IN_FLIGHT":
            return InFlight(message or _IN_FLIGHT)
        if code == MISMATCH:
            return Fatal(MISMATCH, message or "same key, different body")
        transient = _transient(response)
        if transient is not None:
            return transient
        return Fatal(str(code or f"HTTP_{response.status}"), message or f"HTTP {response.status}")


@dataclass(frozen=True, slots=True)
class IETFDraft:
    """The IETF ``Idempotency-Key`` header draft: 400 missing key, 409 in progress,
    422 key reused with a different payload. Bodies are problem+json."""

    def classify(self, response: HTTPResponse) -> Outcome:
        status = response.status
        if 200 <= status < 300:
            return Sent(_id_of(response.json), _replayed(response.headers))
        message = _message(response.json, ("detail",), ("title",))
        if status == 409:
            return InFlight(message or _IN_FLIGHT)
        if status == 422:
            return Fatal(MISMATCH, message or "idempotency key reused with a different payload")
        transient = _transient(response)
        if transient is not None:
            return transient
        if status == 400 and "idempotency" in message.lower():
            return Fatal("IDEMPOTENCY_KEY_MISSING", message)
        return Fatal(f"HTTP_{status}", message or f"HTTP {status}")


@dataclass(frozen=True, slots=True)
class Stripe:
    """Stripe: ``{"error": {"type", "code", "message"}}``. 409 ``idempotency_key_in_use``
    is in flight; ``idempotency_error`` (400) is a parameter mismatch."""

    def classify(self, response: HTTPResponse) -> Outcome:
        status = response.status
        if 200 <= status < 300:
            return Sent(_id_of(response.json), _replayed(response.headers))
        kind = _get(response.json, "error", "type")
        code = _get(response.json, "error", "code")
        message = _message(response.json, ("error", "message"))
        if code == "idempotency_key_in_use" or (status == 409 and kind == "idempotency_error"):
            return InFlight(message or _IN_FLIGHT)
        if kind == "idempotency_error":
            return Fatal(MISMATCH, message or "idempotency key reused with different parameters")
        transient = _transient(response)
        if transient is not None:
            return transient
        return Fatal(str(code or kind or f"HTTP_{status}"), message or f"HTTP {status}")


@dataclass(frozen=True, slots=True)
class Resend:
    """Resend: ``{"statusCode", "name", "message"}``. 409 ``concurrent_idempotent_requests``
    is in flight; 409 ``invalid_idempotent_request`` is a payload mismatch."""

    def classify(self, response: HTTPResponse) -> Outcome:
        status = response.status
        if 200 <= status < 300:
            return Sent(_id_of(response.json), _replayed(response.headers))
        name = _get(response.json, "name")
        message = _message(response.json, ("message",))
        if name == "concurrent_idempotent_requests":
            return InFlight(message or _IN_FLIGHT)
        if name == "invalid_idempotent_request":
            return Fatal(MISMATCH, message or "same idempotency key, different payload")
        transient = _transient(response)
        if transient is not None:
            return transient
        return Fatal(str(name or f"HTTP_{status}"), message or f"HTTP {status}")
