"""The issue-20 presets' classifiers, answer by answer (docs/providers.md has the same
tables with their sources), and hostile answers none of them may misread."""

from __future__ import annotations

from typing import Any

import pytest

from idemsend import Provider
from idemsend.classify import (
    MISMATCH,
    Adyen,
    Brevo,
    Checkout,
    Fatal,
    GoCardless,
    HTTPResponse,
    Increase,
    InFlight,
    Outcome,
    PayPal,
    Plaid,
    ResultClassifier,
    Retry,
    Sent,
    SparkPost,
    Square,
    StandardWebhooks,
)

ALL: list[ResultClassifier] = [
    StandardWebhooks(), Square(), Plaid(), Brevo(), Adyen(), PayPal(), Checkout(), GoCardless(), Increase(),
    SparkPost(),
]


def r(status: int, json: Any = None, **headers: str) -> HTTPResponse:
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, json)


ROWS: list[tuple[ResultClassifier, HTTPResponse, Outcome]] = [
    # Standard Webhooks
    (StandardWebhooks(), r(204), Sent(None, False)),
    (StandardWebhooks(), r(200, "<html>ok</html>"), Sent(None, False)),
    (StandardWebhooks(), r(202, {"id": "x"}, Idempotent_Replayed="true"), Sent(None, False)),
    (StandardWebhooks(), r(409), InFlight("the same key is being processed")),
    (StandardWebhooks(), r(503, Retry_After="7"), Retry(7.0, "HTTP 503")),
    (StandardWebhooks(), r(429), Retry(None, "HTTP 429")),
    (StandardWebhooks(), r(400, {"message": "bad payload"}), Fatal("HTTP_400", "bad payload")),
    # Square
    (Square(), r(200, {"payment": {"id": "pay_1", "status": "COMPLETED"}}), Sent("pay_1", False)),
    (Square(), r(200, {"payment": {}}), Retry(None, "HTTP 200 without an id in the body: nothing confirms the send")),
    (Square(), r(400, {"errors": [{"code": "IDEMPOTENCY_KEY_REUSED", "detail": "reused"}]}), Fatal(MISMATCH, "reused")),
    (Square(), r(400, {"errors": [{"code": "CARD_DECLINED", "detail": "declined"}]}),
     Fatal("CARD_DECLINED", "declined")),
    # Plaid
    (Plaid(), r(200, {"authorization": {"id": "a1"}, "request_id": "r"}), Sent("a1", False)),
    (Plaid(), r(400, {"error_code": "INVALID_FIELD", "error_message": "bad"}), Fatal("INVALID_FIELD", "bad")),
    # Brevo
    (Brevo(), r(201, {"messageId": "<m1@relay>"}), Sent("<m1@relay>", False)),
    (Brevo(), r(201, {"messageIds": ["<a>", "<b>"]}), Sent("<a>", False)),
    (Brevo(), r(201, {}), Retry(None, "HTTP 201 without an id in the body: nothing confirms the send")),
    (Brevo(), r(400, {"code": "invalid_parameter", "message": "no"}), Fatal("invalid_parameter", "no")),
    # Adyen
    (Adyen(), r(200, {"pspReference": "psp1", "resultCode": "Authorised"}), Sent("psp1", False)),
    (Adyen(), r(422, {"errorCode": "704", "message": "request already processed or in progress"}),
     InFlight("request already processed or in progress")),
    (Adyen(), r(422, {"errorCode": "101", "message": "Invalid card number"}), Fatal("101", "Invalid card number")),
    # PayPal
    (PayPal(), r(201, {"id": "PAY-1", "status": "COMPLETED"}), Sent("PAY-1", False)),
    (PayPal(), r(422, {"name": "DUPLICATE_REQUEST_ID", "message": "used"}), InFlight("used")),
    (PayPal(), r(422, {"name": "UNPROCESSABLE_ENTITY", "message": "no",
                       "details": [{"issue": "PAYPAL_REQUEST_ID_PREVIOUSLY_USED"}]}), Fatal(MISMATCH, "no")),
    (PayPal(), r(422, {"name": "UNPROCESSABLE_ENTITY", "message": "no", "details": [{"issue": "INSTRUMENT_DECLINED"}]}),
     Fatal("UNPROCESSABLE_ENTITY", "no")),
    # Checkout.com
    (Checkout(), r(201, {"id": "pay_1"}), Sent("pay_1", False)),
    (Checkout(), r(409), InFlight("the same key is being processed")),
    (Checkout(), r(422, {"error_type": "request_invalid", "error_codes": ["card_number_invalid"]}),
     Fatal("card_number_invalid", "HTTP 422")),
    # GoCardless
    (GoCardless(), r(201, {"payments": {"id": "PM1"}}), Sent("PM1", False)),
    (GoCardless(), r(409, {"error": {"type": "invalid_state", "message": "exists", "errors": [
        {"reason": "idempotent_creation_conflict", "links": {"conflicting_resource_id": "PM1"}}]}}), Sent("PM1", True)),
    (GoCardless(), r(409, {"error": {"type": "invalid_state", "errors": [{"reason": "idempotent_creation_conflict"}]}}),
     Retry(None, "HTTP 409 idempotent_creation_conflict without links.conflicting_resource_id")),
    # Increase
    (Increase(), r(200, {"id": "ach_1"}, Idempotent_Replayed="true"), Sent("ach_1", True)),
    (Increase(), r(409, {"type": "idempotency_key_already_used_error", "resource_id": "ach_0", "title": "used"}),
     Fatal(MISMATCH, "used (it made ach_0)")),
    # SparkPost
    (SparkPost(), r(200, {"results": {"id": "t1"}}, X_Idempotent_Replayed="true"), Sent("t1", True)),
    (SparkPost(), r(200, {"results": {"id": "t1"}}), Sent("t1", False)),
    (SparkPost(), r(409, {"errors": [{"code": "1600", "message": "conflict"}]}), InFlight("conflict")),
    (SparkPost(), r(409, {"errors": [{"code": "1601", "message": "conflict"}]}), InFlight("conflict")),
    (SparkPost(), r(420, {"errors": [{"code": "2102", "message": "limit"}]}), Fatal("2102", "limit")),
]


@pytest.mark.parametrize(("classifier", "response", "expected"), ROWS)
def test_each_documented_answer(classifier: ResultClassifier, response: HTTPResponse, expected: Outcome) -> None:
    assert classifier.classify(response) == expected


@pytest.mark.parametrize("classifier", ALL, ids=lambda c: type(c).__name__)
def test_the_shared_rules_hold_in_every_preset(classifier: ResultClassifier) -> None:
    moved = classifier.classify(r(301, None, Location="https://user:pw@api.example.com/v2?token=s3cr3t"))
    assert isinstance(moved, Fatal) and moved.scope == "engine" and "s3cr3t" not in moved.message
    assert "pw" not in moved.message
    for status in (401, 403, 404, 405, 407):
        out = classifier.classify(r(status, {"message": "no"}))
        assert isinstance(out, Fatal) and out.scope == "engine", status
    for status in (500, 502, 503, 504, 408, 429):
        assert isinstance(classifier.classify(r(status, None, Retry_After="1e308")), Retry), status
    assert classifier.classify(r(503, None, Retry_After="1e308")) == Retry(3600.0, "HTTP 503")
    replayed = classifier.classify(r(500, None, Idempotent_Replayed="true"))
    assert isinstance(replayed, Fatal) and replayed.scope == "key"
    assert isinstance(classifier.classify(r(100)), Retry)


HOSTILE: list[Any] = [
    None, [], "text", 7, {"id": None}, {"id": True}, {"id": ""}, {"errors": "x"}, {"errors": [None]}, {"errors": [{}]},
    {"error": []}, {"error": {"errors": [5]}}, {"details": [None]}, {"error_codes": [None]}, {"payment": [1]},
    {"results": "x"}, {"messageIds": []}, {"messageIds": [None]}, {"error": {"errors": []}},
]


@pytest.mark.parametrize("classifier", ALL, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("status", [200, 201, 400, 409, 410, 422, 500])
def test_hostile_bodies_never_raise_and_never_confirm_a_send_without_an_id(
    classifier: ResultClassifier, status: int
) -> None:
    for body in HOSTILE:
        out = classifier.classify(r(status, body))
        if isinstance(out, Sent) and not isinstance(classifier, StandardWebhooks):
            assert out.id, (body, out)


def test_410_gone_is_engine_scope_only_for_webhooks() -> None:
    gone = StandardWebhooks().classify(r(410, {"message": "endpoint removed"}))
    assert isinstance(gone, Fatal) and gone.code == "ENDPOINT_GONE" and gone.scope == "engine"
    assert "endpoint removed" in gone.message
    assert Square().classify(r(410)) == Fatal("HTTP_410", "HTTP 410")


@pytest.mark.parametrize(
    ("make", "header", "field", "length", "window"),
    [
        (lambda: Provider.square(), "Idempotency-Key", "idempotency_key", 45, 86400.0),
        (lambda: Provider.plaid(), "Idempotency-Key", "idempotency_key", 50, 2 * 86400.0),
        (lambda: Provider.brevo(), "Idempotency-Key", "headers.idempotencyKey", 255, 900.0),
        (lambda: Provider.adyen(), "Idempotency-Key", None, 64, 31 * 86400.0),
        (lambda: Provider.paypal(), "PayPal-Request-Id", None, 108, 86400.0),
        (lambda: Provider.checkout(), "Cko-Idempotency-Key", None, 255, 86400.0),
        (lambda: Provider.gocardless(), "Idempotency-Key", None, 255, 86400.0),
        (lambda: Provider.increase(), "Idempotency-Key", None, 200, 365 * 86400.0),
        (lambda: Provider.sparkpost(), "Idempotency-Key", None, 255, 86400.0),
    ],
)
def test_each_preset_has_its_carrier_key_length_and_window(
    make: Any, header: str, field: str | None, length: int, window: float
) -> None:
    provider = make()
    assert (provider.idempotency_header, provider.key_field, provider.max_key_length, provider.window) == (
        header, field, length, window,
    )
    assert provider.key_header == (None if field else header)
    assert provider.stale_margin < provider.window


def test_standard_webhooks_carries_the_key_in_webhook_id_and_signs() -> None:
    import base64

    provider = Provider.standard_webhooks("whsec_" + base64.b64encode(bytes(range(24))).decode())
    assert provider.key_header == "webhook-id" and provider.signer is not None and provider.key_field is None
