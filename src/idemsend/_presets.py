"""The classifiers of issue 20's presets, beside each other: Standard Webhooks receivers,
Square, Plaid, Brevo, Adyen, PayPal, Checkout.com, GoCardless, Increase and SparkPost.

Each maps one provider's documented answers (replay signal, in flight, mismatch, a conflict
that proves the send happened) onto the four outcomes, and hands everything else to the
shared rules of ``_classify`` (redirects, setup errors, replayed failures, 429/408/5xx).
docs/providers.md has a table per preset with its sources, and says which details the
provider's own documentation does not confirm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._classify import (
    _IN_FLIGHT,
    MISMATCH,
    Fatal,
    HTTPResponse,
    InFlight,
    Outcome,
    Retry,
    Sent,
    _after,
    _before,
    _code,
    _get,
    _header,
    _message,
    _usable_id,
)

__all__ = [
    "Adyen", "Brevo", "Checkout", "GoCardless", "Increase", "PayPal", "Plaid", "SparkPost", "Square",
    "StandardWebhooks",
]


def _nested_id(body: Any) -> str | None:
    """The id of a send's answer: a top-level ``id``, else the ``id`` of the first object the
    body holds (Square ``{"payment": {"id"}}``, GoCardless ``{"payments": {"id"}}``, Plaid
    ``{"authorization": {"id"}}``)."""
    if not isinstance(body, Mapping):
        return None
    found = _usable_id(body)
    if found is None:
        found = next((i for v in body.values() if isinstance(v, Mapping) and (i := _usable_id(v))), None)
    return found


def _sent(response: HTTPResponse, sent_id: str | None, *, replayed: bool | None = None) -> Outcome:
    """A 2xx: sent with ``sent_id``, or ``Retry`` when the answer carries none (a proxy's
    page, an empty body: nothing confirms the send)."""
    if sent_id is None:
        return Retry(None, f"HTTP {response.status} without an id in the body: nothing confirms the send")
    return Sent(sent_id, bool(replayed) if replayed is not None else _header_true(response, "Idempotent-Replayed"))


def _header_true(response: HTTPResponse, name: str) -> bool:
    return (_header(response.headers, name) or "").strip().lower() == "true"


def _ok(response: HTTPResponse) -> bool:
    return 200 <= response.status < 300


@dataclass(frozen=True, slots=True)
class StandardWebhooks:
    """A Standard Webhooks receiver: any 2xx is sent, with or without a body (receivers
    often answer 204), never a replay by itself (receivers dedupe ``webhook-id`` silently).
    410 Gone is ``ENDPOINT_GONE`` with ``scope="engine"``: the endpoint asks to stop
    receiving, which is the setup's fate, not this message's, so nothing is recorded
    against the key. A 409 is in flight (the receiver is still processing this
    ``webhook-id``): the engine waits and sends again, signed afresh. Everything else follows
    the shared rules (401/403/404 setup, 429/408/5xx retry with ``Retry-After``, other 4xx
    final for the message)."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        if _ok(response):
            return Sent(None, False)
        early = _before(response, require_id=False)
        if early is not None:
            return early
        message = _message(response.json)
        if response.status == 410:
            return Fatal(
                "ENDPOINT_GONE",
                f"{message or 'HTTP 410'} (HTTP 410 Gone: the receiver asks to stop sending to this endpoint;"
                " remove or fix the endpoint)",
                scope="engine",
            )
        if response.status == 409:
            return InFlight(message or _IN_FLIGHT)
        return _after(response, None, message)


@dataclass(frozen=True, slots=True)
class Square:
    """Square: ``{"errors": [{"category", "code", "detail"}]}``. A 2xx is sent with the
    resource's id (``{"payment": {"id"}}``); Square answers a repeat with the first success
    and no replay header, so ``replayed`` is never known. ``IDEMPOTENCY_KEY_REUSED`` (the
    key with another request) is a mismatch."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _nested_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        code = _first_error(body, "code")
        message = _first_error(body, "detail") or _message(body)
        if code == "IDEMPOTENCY_KEY_REUSED":
            return Fatal(MISMATCH, message or "the idempotency key was used with another request")
        return _after(response, code, message)


def _first_error(body: Any, field: str) -> str | None:
    """``field`` of the first entry of an ``errors`` list (Square, SparkPost, GoCardless)."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        value = errors[0].get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


@dataclass(frozen=True, slots=True)
class Plaid:
    """Plaid: ``{"error_type", "error_code", "error_message"}``. A 2xx is sent with the
    object's id (``{"authorization": {"id"}}``); a repeat returns the first object, with no
    replay header. Errors follow the shared rules, with Plaid's own code and message."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _nested_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        return _after(
            response, _code(body, ("error_code",), ("error_type",)), _message(body, ("error_message",))
        )


@dataclass(frozen=True, slots=True)
class Brevo:
    """Brevo transactional email: a 2xx is sent with ``messageId`` (or the first of
    ``messageIds``); errors ``{"code", "message"}`` follow the shared rules. Brevo documents
    no answer of its own for a repeat within its window (see docs/providers.md)."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            sent_id = _usable_id({"id": _get(body, "messageId")})
            ids = _get(body, "messageIds")
            if sent_id is None and isinstance(ids, list) and ids:
                sent_id = _usable_id({"id": ids[0]})
            return _sent(response, sent_id)
        early = _before(response, require_id=False)
        if early is not None:
            return early
        return _after(response, _code(body, ("code",)), _message(body, ("message",)))


@dataclass(frozen=True, slots=True)
class Adyen:
    """Adyen: a 2xx is sent with ``pspReference``; errors ``{"status", "errorCode",
    "message", "errorType"}``. ``errorCode`` 704 ("request already processed or in
    progress") is in flight: the engine waits and asks again with the same key, and a
    processed request then answers with its stored result."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _usable_id({"id": _get(body, "pspReference")}) or _usable_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        code = _code(body, ("errorCode",))
        message = _message(body, ("message",))
        if code == "704":
            return InFlight(message or _IN_FLIGHT)
        return _after(response, code, message)


@dataclass(frozen=True, slots=True)
class PayPal:
    """PayPal REST: a 2xx is sent with ``id`` (a repeated ``PayPal-Request-Id`` answers the
    first request's latest status, no replay header). Errors ``{"name", "message",
    "details": [{"issue"}]}``: ``DUPLICATE_REQUEST_ID`` (two requests at once with one id:
    PayPal "might fail the second") is in flight; ``PAYPAL_REQUEST_ID_PREVIOUSLY_USED`` (the
    id was used "for another request") is a mismatch."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _usable_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        names = {_code(body, ("name",)), _first_issue(body)}
        message = _message(body, ("message",))
        if "DUPLICATE_REQUEST_ID" in names:
            return InFlight(message or _IN_FLIGHT)
        if "PAYPAL_REQUEST_ID_PREVIOUSLY_USED" in names:
            return Fatal(MISMATCH, message or "the PayPal-Request-Id was used for another request")
        return _after(response, _code(body, ("name",)) or _first_issue(body), message)


def _first_issue(body: Any) -> str | None:
    details = body.get("details") if isinstance(body, Mapping) else None
    if isinstance(details, list) and details and isinstance(details[0], Mapping):
        return _code(details[0], ("issue",))
    return None


@dataclass(frozen=True, slots=True)
class Checkout:
    """Checkout.com: a 2xx is sent with ``id`` (a repeat of a processed request answers the
    same status and body). 409 is in flight: another request with the key is being
    processed (Checkout.com asks to wait at least 30 seconds: use ``InFlightWait(delay=30,
    budget=...)`` or let the queue retry). Only 2xx answers are stored, so a failure is
    never replayed. Errors ``{"error_type", "error_codes"}`` follow the shared rules."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _usable_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        codes = body.get("error_codes") if isinstance(body, Mapping) else None
        first = {"c": codes[0]} if isinstance(codes, list) and codes else {}
        code = _code(first, ("c",)) or _code(body, ("error_type",))
        message = _message(body)
        if response.status == 409:
            return InFlight(message or _IN_FLIGHT)
        return _after(response, code, message)


@dataclass(frozen=True, slots=True)
class GoCardless:
    """GoCardless: a 2xx is sent with the resource's id (``{"payments": {"id"}}``). A 409
    ``invalid_state`` whose error is ``idempotent_creation_conflict`` ("A resource has
    already been created with this idempotency key") proves the send happened: it is
    ``Sent(links.conflicting_resource_id, replayed=True)``. Without that id it is ``Retry``
    (nothing names the resource). Errors ``{"error": {"type", "code", "message",
    "errors": [{"reason", "message", "links"}]}}``."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _nested_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        error = _get(body, "error")
        reason = _first_error(error, "reason")
        message = _message(body, ("error", "message"))
        if response.status == 409 and reason == "idempotent_creation_conflict":
            errors = error.get("errors") if isinstance(error, Mapping) else None
            links = errors[0].get("links") if isinstance(errors, list) and isinstance(errors[0], Mapping) else None
            conflicting = _usable_id({"id": _get(links, "conflicting_resource_id")})
            if conflicting is not None:
                return Sent(conflicting, True)
            return Retry(None, "HTTP 409 idempotent_creation_conflict without links.conflicting_resource_id")
        return _after(response, reason or _code(body, ("error", "type")), message)


@dataclass(frozen=True, slots=True)
class Increase:
    """Increase: a 2xx is sent with ``id``; ``Idempotent-Replayed: true`` marks a replay.
    A 409 ``idempotency_key_already_used_error`` means the key made *another* object
    (different arguments): a mismatch, naming that object's ``resource_id``. Errors
    ``{"type", "title", "detail", "status"}`` follow the shared rules."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            return _sent(response, _usable_id(body))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        kind = _code(body, ("type",))
        message = _message(body)
        if kind == "idempotency_key_already_used_error":
            other = _usable_id({"id": _get(body, "resource_id")})
            named = f" (it made {other})" if other else ""
            return Fatal(MISMATCH, f"{message or 'the idempotency key was used for another object'}{named}")
        return _after(response, kind, message)


@dataclass(frozen=True, slots=True)
class SparkPost:
    """SparkPost: a 2xx is sent with ``results.id``; ``X-Idempotent-Replayed: true`` marks
    a replay. A 409 with error code 1600 or 1601 is an idempotency conflict; which of the
    two means "in progress" is not documented where we could read it, so both are in flight
    (the engine waits, then the queue retries: never a second send, at worst a retry).
    Errors ``{"errors": [{"message", "code", "description"}]}`` follow the shared rules."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring)."""
        body = response.json
        if _ok(response):
            sent_id = _usable_id({"id": _get(body, "results", "id")}) or _usable_id(body)
            return _sent(response, sent_id, replayed=_header_true(response, "X-Idempotent-Replayed"))
        early = _before(response, require_id=False)
        if early is not None:
            return early
        code = _first_error(body, "code")
        message = _first_error(body, "message") or _message(body)
        if response.status == 409 and code in ("1600", "1601"):
            return InFlight(message or _IN_FLIGHT)
        return _after(response, code, message)

