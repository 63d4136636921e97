"""How each preset's provider words the contract's answers: the MockProvider's *dialects*.

The contract's rules are the same for every provider (a first send runs once, the same key
and body is a replay, another body is a mismatch, a key still processing is in flight);
what differs is how a provider says so. A ``Dialect`` is the four answers in one
provider's words, so the conformance suite and the chaos run meet every preset's shapes:

* ``sent(resource_id, body)``: the first send's answer (stored for the key);
* ``replay(stored)``: a repeat of the same request (the stored answer, marked or not);
* ``in_flight()``: the key is still being processed;
* ``mismatch(stored)``: the key with another body.

Where a provider's documentation names no answer for one of these, the dialect says so
beside it (``guessed``): the MockProvider then answers in the generic shape the preset's
classifier reads by status alone (a 503 for an undocumented in-flight answer), never in a
shape that would put words in the provider's mouth. docs/providers.md lists the same.
Pure data and functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._contract import ProviderAnswer

__all__ = ["DIALECTS", "Dialect", "dialect"]

_REPLAYED = {"Idempotent-Replayed": "true"}


def _busy() -> ProviderAnswer:
    """An undocumented in-flight answer: a plain 503, which every classifier retries."""
    return ProviderAnswer(503, {"error": {"code": "SERVICE_UNAVAILABLE", "message": "try again later"}})


@dataclass(frozen=True, slots=True)
class Dialect:
    """One provider's words for the contract's four answers (see the module docstring).
    ``guessed`` names the answers its documentation does not show (the mock's own)."""

    name: str
    sent: Callable[[str, Mapping[str, Any]], ProviderAnswer]
    replay: Callable[[ProviderAnswer], ProviderAnswer]
    in_flight: Callable[[], ProviderAnswer] = _busy
    mismatch: Callable[[ProviderAnswer], ProviderAnswer] = field(default=lambda stored: _sendoka_mismatch())
    guessed: tuple[str, ...] = ()


def _sendoka_mismatch() -> ProviderAnswer:
    return ProviderAnswer(
        409, {"error": {"code": "IDEMPOTENCY_MISMATCH", "message": "this key was used with a different body"}}
    )


def _marked(stored: ProviderAnswer, headers: Mapping[str, str] = _REPLAYED) -> ProviderAnswer:
    return replace(stored, headers={**stored.headers, **headers})


def _same(stored: ProviderAnswer) -> ProviderAnswer:
    return stored


def _email(rid: str, body: Mapping[str, Any]) -> ProviderAnswer:
    return ProviderAnswer(200, {"id": rid, "object": "email", "to": body.get("to")})


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            "sendoka", _email, _marked,
            in_flight=lambda: ProviderAnswer(
                409, {"error": {"code": "IDEMPOTENCY_IN_FLIGHT", "message": "a request with this key is in progress"}}
            ),
        ),
        Dialect(
            "stripe", lambda rid, body: ProviderAnswer(200, {"id": rid, "object": "charge"}), _marked,
            in_flight=lambda: ProviderAnswer(409, {"error": {
                "type": "idempotency_error", "code": "idempotency_key_in_use",
                "message": "There is currently another in-progress request using this Idempotent Key",
            }}),
            mismatch=lambda stored: ProviderAnswer(400, {"error": {
                "type": "idempotency_error",
                "message": "Keys for idempotent requests can only be used with the same parameters they were first"
                " used with.",
            }}),
        ),
        Dialect(
            "resend", _email, _same,
            in_flight=lambda: ProviderAnswer(409, {
                "statusCode": 409, "name": "concurrent_idempotent_requests",
                "message": "Same idempotency key used while original request is still in progress.",
            }),
            mismatch=lambda stored: ProviderAnswer(409, {
                "statusCode": 409, "name": "invalid_idempotent_request",
                "message": "Same idempotency key used with a different request payload.",
            }),
        ),
        Dialect(
            "ietf", _email, _marked,
            in_flight=lambda: ProviderAnswer(409, {"title": "A request is outstanding for this Idempotency-Key"}),
            mismatch=lambda stored: ProviderAnswer(422, {"title": "Idempotency-Key is already used"}),
        ),
        Dialect(
            # receivers answer 2xx, often without a body, and dedupe webhook-id silently
            "standard-webhooks", lambda rid, body: ProviderAnswer(204, None), _same,
            in_flight=lambda: ProviderAnswer(409, {"message": "this webhook-id is being processed"}),
            mismatch=_same, guessed=("in_flight",),
        ),
        Dialect(
            "square", lambda rid, body: ProviderAnswer(200, {"payment": {"id": rid, "status": "COMPLETED"}}), _same,
            mismatch=lambda stored: ProviderAnswer(400, {"errors": [{
                "category": "INVALID_REQUEST_ERROR", "code": "IDEMPOTENCY_KEY_REUSED",
                "detail": "The idempotency key can only be retried with the same request data.",
            }]}),
            guessed=("in_flight",),
        ),
        Dialect(
            "plaid",
            lambda rid, body: ProviderAnswer(200, {"authorization": {"id": rid, "decision": "approved"},
                                                   "request_id": "mock"}),
            _same,
            mismatch=lambda stored: ProviderAnswer(400, {
                "error_type": "INVALID_REQUEST", "error_code": "INVALID_FIELD",
                "error_message": "idempotency_key was used with other parameters",
            }),
            guessed=("in_flight", "mismatch"),
        ),
        Dialect(
            "brevo", lambda rid, body: ProviderAnswer(201, {"messageId": f"<{rid}@smtp-relay.mailin.fr>"}), _same,
            mismatch=lambda stored: ProviderAnswer(400, {
                "code": "invalid_parameter", "message": "idempotencyKey was used with another request",
            }),
            guessed=("replay", "in_flight", "mismatch"),
        ),
        Dialect(
            "adyen", lambda rid, body: ProviderAnswer(200, {"pspReference": rid, "resultCode": "Authorised"}), _same,
            in_flight=lambda: ProviderAnswer(422, {
                "status": 422, "errorCode": "704", "message": "request already processed or in progress",
                "errorType": "validation",
            }),
            mismatch=lambda stored: ProviderAnswer(422, {
                "status": 422, "errorCode": "000", "message": "idempotency key reused with another request",
                "errorType": "validation",
            }),
            guessed=("in_flight", "mismatch"),
        ),
        Dialect(
            "paypal", lambda rid, body: ProviderAnswer(201, {"id": rid, "status": "COMPLETED"}),
            lambda stored: replace(stored, status=200),
            in_flight=lambda: ProviderAnswer(422, {
                "name": "DUPLICATE_REQUEST_ID",
                "message": "The value of PayPal-Request-Id header has already been used.",
            }),
            mismatch=lambda stored: ProviderAnswer(422, {
                "name": "UNPROCESSABLE_ENTITY", "message": "The requested action could not be performed.",
                "details": [{"issue": "PAYPAL_REQUEST_ID_PREVIOUSLY_USED",
                             "description": "The PayPal-Request-ID has already been used for another request."}],
            }),
            guessed=("in_flight",),
        ),
        Dialect(
            "checkout", lambda rid, body: ProviderAnswer(201, {"id": rid, "status": "Authorized"}), _same,
            in_flight=lambda: ProviderAnswer(409, None),
            mismatch=lambda stored: ProviderAnswer(422, {
                "error_type": "request_invalid", "error_codes": ["idempotency_key_reused"],
            }),
            guessed=("mismatch",),
        ),
        Dialect(
            # GoCardless answers every reuse of a key with the conflict naming the first resource
            "gocardless",
            lambda rid, body: ProviderAnswer(201, {"payments": {"id": rid, "status": "pending_submission"}}),
            lambda stored: _gocardless_conflict(stored),
            mismatch=lambda stored: _gocardless_conflict(stored),
            guessed=("in_flight",),
        ),
        Dialect(
            "increase", lambda rid, body: ProviderAnswer(200, {"id": rid, "type": "ach_transfer"}), _marked,
            mismatch=lambda stored: ProviderAnswer(409, {
                "type": "idempotency_key_already_used_error", "status": 409,
                "title": "The idempotency key submitted has already been used.",
                "resource_id": _resource_id(stored),
            }),
            guessed=("in_flight",),
        ),
        Dialect(
            "sparkpost",
            lambda rid, body: ProviderAnswer(200, {"results": {"id": rid, "total_accepted_recipients": 1}}),
            lambda stored: _marked(stored, {"X-Idempotent-Replayed": "true"}),
            in_flight=lambda: ProviderAnswer(409, {"errors": [{"code": "1600", "message": "idempotency conflict"}]}),
            mismatch=lambda stored: ProviderAnswer(
                409, {"errors": [{"code": "1601", "message": "idempotency conflict"}]}
            ),
            guessed=("in_flight", "mismatch"),
        ),
    )
}


def _resource_id(stored: ProviderAnswer) -> str | None:
    """The id a stored answer names, wherever its dialect puts it."""
    body = stored.body
    if not isinstance(body, Mapping):
        return None
    if isinstance(body.get("id"), str):
        return str(body["id"])
    for value in body.values():
        if isinstance(value, Mapping) and isinstance(value.get("id"), str):
            return str(value["id"])
    return None


def _gocardless_conflict(stored: ProviderAnswer) -> ProviderAnswer:
    return ProviderAnswer(409, {"error": {
        "type": "invalid_state", "code": 409,
        "message": "A resource has already been created with this idempotency key",
        "errors": [{
            "reason": "idempotent_creation_conflict",
            "message": "A resource has already been created with this idempotency key",
            "links": {"conflicting_resource_id": _resource_id(stored)},
        }],
    }})


def dialect(name: str) -> Dialect:
    """The dialect called ``name``, or ``ValueError`` listing the known ones."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)}") from None
