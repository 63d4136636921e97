from __future__ import annotations

from typing import Any

import pytest

from idemsend.classify import (
    MISMATCH,
    Fatal,
    HTTPResponse,
    IETFDraft,
    InFlight,
    Resend,
    ResultClassifier,
    Retry,
    Sendoka,
    Sent,
    Stripe,
    parse_retry_after,
)


def r(status: int, body: Any = None, **headers: str) -> HTTPResponse:
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


def err(code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": f"m {code}"}}


@pytest.mark.parametrize("cls", [Sendoka, IETFDraft, Stripe, Resend])
def test_common_rules(cls: type[ResultClassifier]) -> None:
    c = cls()
    assert isinstance(c, ResultClassifier)
    assert c.classify(r(200, {"id": "x"})) == Sent("x", False)
    assert c.classify(r(201, {"id": 7}, Idempotent_Replayed="true")) == Sent("7", True)
    assert c.classify(r(503)) == Retry(None, "HTTP 503")
    assert c.classify(r(429, None, Retry_After="3")) == Retry(3.0, "HTTP 429")
    assert c.classify(r(408)) == Retry(None, "HTTP 408")
    assert isinstance(c.classify(r(404)), Fatal)


def test_sendoka_contract() -> None:
    c = Sendoka()
    assert c.classify(r(409, err("IDEMPOTENCY_IN_FLIGHT"))) == InFlight("m IDEMPOTENCY_IN_FLIGHT")
    assert c.classify(r(409, err("IDEMPOTENCY_MISMATCH"))) == Fatal(MISMATCH, "m IDEMPOTENCY_MISMATCH")
    assert c.classify(r(401, err("UNAUTHORIZED"))).code == "UNAUTHORIZED"  # type: ignore[union-attr]
    assert c.classify(r(400, "not json")) == Fatal("HTTP_400", "HTTP 400")


def test_ietf_draft() -> None:
    c = IETFDraft()
    assert isinstance(c.classify(r(409, {"title": "Conflict"})), InFlight)
    assert c.classify(r(422, {"detail": "reused"})) == Fatal(MISMATCH, "reused")
    missing = c.classify(r(400, {"detail": "Idempotency-Key header is missing"}))
    assert missing == Fatal("IDEMPOTENCY_KEY_MISSING", "Idempotency-Key header is missing")


def test_stripe() -> None:
    c = Stripe()
    in_use = {"error": {"type": "idempotency_error", "code": "idempotency_key_in_use", "message": "in use"}}
    assert c.classify(r(409, in_use)) == InFlight("in use")
    mismatch = {"error": {"type": "idempotency_error", "message": "Keys for idempotent requests..."}}
    assert c.classify(r(400, mismatch)).code == MISMATCH  # type: ignore[union-attr]
    card = {"error": {"type": "card_error", "code": "card_declined", "message": "declined"}}
    assert c.classify(r(402, card)) == Fatal("card_declined", "declined")


def test_resend() -> None:
    c = Resend()
    assert isinstance(c.classify(r(409, {"name": "concurrent_idempotent_requests", "message": "m"})), InFlight)
    mismatch = c.classify(r(409, {"name": "invalid_idempotent_request", "message": "m"}))
    assert mismatch == Fatal(MISMATCH, "m")
    assert c.classify(r(422, {"name": "validation_error", "message": "bad"})) == Fatal("validation_error", "bad")


def test_retry_after_forms() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    future = parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT")
    assert future is not None and future > 1e8
