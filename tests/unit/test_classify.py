from __future__ import annotations

import math
from typing import Any

import pytest

import idemsend.classify
from idemsend.classify import (
    MAX_RETRY_AFTER,
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
    # The header did not reach the provider, which ran nothing: the engine's setup, not the key.
    assert isinstance(missing, Fatal) and missing.code == "IDEMPOTENCY_KEY_MISSING" and missing.scope == "engine"
    assert missing.message.startswith("Idempotency-Key header is missing")


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
    assert parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT") == MAX_RETRY_AFTER  # far off: clamped


# -- Fatal.scope -------------------------------------------------------------------------

PRESETS: list[type[ResultClassifier]] = [Sendoka, IETFDraft, Stripe, Resend]


def test_fatal_scope_defaults_to_key_and_existing_constructions_still_work() -> None:
    assert Fatal("X", "m").scope == "key"
    assert Fatal("X", "m") == Fatal("X", "m", "key")
    assert Fatal("X", "m", scope="engine").scope == "engine"
    assert Fatal("X", "m") != Fatal("X", "m", scope="engine")


@pytest.mark.parametrize("cls", PRESETS)
@pytest.mark.parametrize("status", [401, 403, 404, 405, 407])
def test_setup_errors_are_engine_scoped(cls: type[ResultClassifier], status: int) -> None:
    bodies: list[Any] = [None, "<html>Unauthorized</html>", {}]
    for body in bodies:
        outcome = cls().classify(r(status, body))
        assert isinstance(outcome, Fatal), (body, outcome)
        assert (outcome.code, outcome.scope) == (f"HTTP_{status}", "engine")
        assert outcome.message.startswith(f"HTTP {status}: ")


@pytest.mark.parametrize(
    ("cls", "body", "code", "text"),
    [
        (Sendoka, err("UNAUTHORIZED"), "UNAUTHORIZED", "m UNAUTHORIZED"),
        (Stripe, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_***"}},
         "invalid_request_error", "Invalid API Key provided: sk_***"),
        (Resend, {"statusCode": 401, "name": "missing_api_key", "message": "Missing API key"},
         "missing_api_key", "Missing API key"),
        (IETFDraft, {"title": "Unauthorized", "detail": "bad token"}, "HTTP_401", "bad token"),
    ],
)
def test_setup_errors_keep_the_providers_code_and_message(
    cls: type[ResultClassifier], body: Any, code: str, text: str
) -> None:
    outcome = cls().classify(r(401, body))
    assert isinstance(outcome, Fatal) and outcome.scope == "engine"
    assert outcome.code == code
    assert outcome.message.startswith(text)


def test_resend_invalid_api_key_as_validation_error_is_a_setup_error() -> None:
    # Resend answers an invalid key with name validation_error, status 400 or 401 (errors page).
    body = {"statusCode": 400, "name": "validation_error", "message": "API key is invalid"}
    assert Resend().classify(r(400, body)) == Fatal(
        "validation_error", "API key is invalid (HTTP 400: the provider refused the credentials: check the API key)",
        scope="engine",
    )
    fields = {"statusCode": 400, "name": "validation_error", "message": "The `to` field is invalid"}
    assert Resend().classify(r(400, fields)) == Fatal("validation_error", "The `to` field is invalid")


# -- redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PRESETS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_an_engine_fatal_naming_the_location_without_credentials(
    cls: type[ResultClassifier], status: int
) -> None:
    location = "https://user:s3cret@api.example.com/v2/emails?token=abc123#frag"
    outcome = cls().classify(r(status, {"id": "x"}, Location=location))
    assert outcome == Fatal(
        "REDIRECT",
        f"the provider answered {status} with Location https://api.example.com/v2/emails;"
        " the engine never follows a redirect for a send: fix the URL",
        scope="engine",
    )
    # a plain dict with a lower-case name, and no Location at all
    lower = cls().classify(HTTPResponse(status, {"location": "/v2/emails?api_key=k"}, None))
    assert isinstance(lower, Fatal) and "Location /v2/emails;" in lower.message and "api_key" not in lower.message
    bare = cls().classify(r(status))
    assert isinstance(bare, Fatal) and bare.scope == "engine" and "without a Location header" in bare.message


def test_redirect_location_is_sanitised() -> None:
    c = Sendoka()
    for location, shown in [
        ("https://API.example.com:8443/v2/emails", "https://api.example.com:8443/v2/emails"),
        ("https://user@[::1]:8080/x?y=1", "https://[::1]:8080/x"),
        ("https:user:pw@host/x", "[redacted]"),
        ("https://api.example.com/\x1b[31mred\x00", "https://api.example.com/[31mred"),
        ("http://[::1", "(an unreadable URL)"),
    ]:
        outcome = c.classify(r(302, None, Location=location))
        assert isinstance(outcome, Fatal) and f"Location {shown};" in outcome.message, (location, outcome)
    long = c.classify(r(302, None, Location="https://api.example.com/" + "a" * 5000))
    assert isinstance(long, Fatal) and len(long.message) < 500


# -- a 2xx that confirms nothing -----------------------------------------------------------

NO_ID_BODIES: list[Any] = [
    None,  # empty body, or an HTML page from a proxy (not JSON)
    {},
    {"id": None},
    {"id": ""},
    {"id": "   "},
    [{"id": "x"}],
    "x",
    7,
    {"id": 1.5},
    {"id": True},
    {"id": {"nested": "x"}},
    {"data": {"id": "x"}},
]


@pytest.mark.parametrize("cls", [Sendoka, Stripe, Resend])
@pytest.mark.parametrize("body", NO_ID_BODIES)
def test_2xx_without_a_usable_id_is_an_unknown_outcome(cls: type[ResultClassifier], body: Any) -> None:
    for status in (200, 201, 202):
        assert cls().classify(r(status, body)) == Retry(
            None, f"HTTP {status} without an id in the body: nothing confirms the send"
        )
    assert cls().classify(r(200, body, Idempotent_Replayed="true")) == Retry(
        None, "HTTP 200 without an id in the body: nothing confirms the send"
    )


def test_ietf_draft_accepts_a_2xx_without_id_unless_required() -> None:
    for body in NO_ID_BODIES:
        assert IETFDraft().classify(r(204, body)) == Sent(None, False)
        assert IETFDraft(require_id=True).classify(r(204, body)) == Retry(
            None, "HTTP 204 without an id in the body: nothing confirms the send"
        )
    assert IETFDraft(require_id=True).classify(r(201, {"id": 0})) == Sent("0", False)


def test_1xx_is_not_a_final_answer() -> None:
    for cls in PRESETS:
        outcome = cls().classify(r(100))
        assert isinstance(outcome, Retry) and outcome.after is None


# -- replayed failures -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", PRESETS)
@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_a_replayed_failure_is_final_for_the_key(cls: type[ResultClassifier], status: int) -> None:
    for headers in ({"Idempotent-Replayed": "true"}, {"idempotent-replayed": "TRUE"}):
        outcome = cls().classify(HTTPResponse(status, {**headers, "Retry-After": "1"}, None))
        assert isinstance(outcome, Fatal), outcome
        assert (outcome.code, outcome.scope) == ("PROVIDER_ERROR_REPLAYED", "key")
        assert "stored this failure" in outcome.message and "every retry with the same key" in outcome.message
        assert f"HTTP {status}" in outcome.message
    # without the header it is still a retry
    assert isinstance(cls().classify(r(status)), Retry)


def test_a_replayed_failure_keeps_the_providers_code() -> None:
    stripe_500 = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
    outcome = Stripe().classify(r(500, stripe_500, Idempotent_Replayed="true"))
    assert isinstance(outcome, Fatal) and (outcome.code, outcome.scope) == ("api_error", "key")
    assert "An unknown error occurred" in outcome.message
    sendoka = Sendoka().classify(r(503, err("SERVICE_UNAVAILABLE"), Idempotent_Replayed="true"))
    assert isinstance(sendoka, Fatal) and sendoka.code == "SERVICE_UNAVAILABLE"
    resend = Resend().classify(
        r(500, {"statusCode": 500, "name": "application_error", "message": "boom"}, Idempotent_Replayed="true")
    )
    assert isinstance(resend, Fatal) and resend.code == "application_error"
    # A failure the provider stored is final for the key even when its status reads like setup:
    # the provider replays it for this key whatever the engine's setup becomes.
    stored_404 = Stripe().classify(r(404, {"error": {"type": "invalid_request_error"}}, Idempotent_Replayed="true"))
    assert isinstance(stored_404, Fatal) and stored_404.scope == "key"


def test_headers_are_read_case_insensitively_from_a_plain_dict() -> None:
    for cls in PRESETS:
        assert cls().classify(HTTPResponse(200, {"idempotent-replayed": "true"}, {"id": "x"})) == Sent("x", True)
        assert cls().classify(HTTPResponse(429, {"RETRY-AFTER": "2"}, None)) == Retry(2.0, "HTTP 429")


# -- bodies in another shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"statusCode": 400, "message": "Idempotency-Key is missing"},
        {"error": "Idempotency-Key is missing"},
        {"error": {"message": "Idempotency-Key is missing"}},
        {"title": "Idempotency-Key is missing"},
        {"type": "https://developer.example.com/idempotency", "title": "Bad Request", "detail": "header required"},
    ],
)
def test_ietf_missing_key_in_any_common_shape(body: Any) -> None:
    outcome = IETFDraft().classify(r(400, body))
    assert isinstance(outcome, Fatal)
    assert (outcome.code, outcome.scope) == ("IDEMPOTENCY_KEY_MISSING", "engine")


def test_ietf_messages_from_any_common_field() -> None:
    c = IETFDraft()
    assert c.classify(r(409, {"message": "busy"})) == InFlight("busy")
    assert c.classify(r(422, {"error": {"message": "reused"}})) == Fatal(MISMATCH, "reused")
    assert c.classify(r(400, {"error": "bad field"})) == Fatal("HTTP_400", "bad field")
    assert c.classify(r(400, {"statusCode": 400, "message": "bad field"})) == Fatal("HTTP_400", "bad field")


def test_sendoka_other_shapes() -> None:
    c = Sendoka()
    assert c.classify(r(409, {"code": "IDEMPOTENCY_IN_FLIGHT", "message": "busy"})) == InFlight("busy")
    assert c.classify(r(409, {"code": MISMATCH, "detail": "other body"})) == Fatal(MISMATCH, "other body")
    assert c.classify(r(422, {"message": "bad"})) == Fatal("HTTP_422", "bad")
    assert c.classify(r(400, {"error": "bad request"})) == Fatal("HTTP_400", "bad request")
    # the contract's 409s are IN_FLIGHT or MISMATCH; a 409 that says neither is unknown, not final
    plain_409 = c.classify(r(409, None))
    assert isinstance(plain_409, Retry) and plain_409.after is None


def test_stripe_other_shapes() -> None:
    c = Stripe()
    assert c.classify(r(400, {"message": "no error object"})) == Fatal("HTTP_400", "no error object")
    assert c.classify(r(400, {"error": {"code": "parameter_missing", "message": "Missing amount"}})) == Fatal(
        "parameter_missing", "Missing amount"
    )
    assert c.classify(r(409, {"error": {"code": "idempotency_key_in_use"}})) == InFlight(
        "the same key is being processed"
    )
    # a problem+json "type" is a URI, not a Stripe code
    problem = c.classify(r(400, {"type": "https://example.com/probs/x", "title": "Bad"}))
    assert problem == Fatal("HTTP_400", "Bad")


def test_stripe_conflicts_and_dependency_failures_retry() -> None:
    # Stripe's status table: 409 "conflicts with another request", 424 "external dependency failed"
    other_409 = {"error": {"type": "invalid_request_error", "code": "lock_timeout", "message": "locked"}}
    assert Stripe().classify(r(409, other_409)) == Retry(None, "HTTP 409")
    assert Stripe().classify(r(424, None, Retry_After="5")) == Retry(5.0, "HTTP 424")


def test_resend_other_shapes() -> None:
    c = Resend()
    nested = {"error": {"name": "invalid_idempotent_request", "message": "m"}}
    assert c.classify(r(409, nested)) == Fatal(MISMATCH, "m")
    assert c.classify(r(409, {"error": {"name": "concurrent_idempotent_requests"}})) == InFlight(
        "the same key is being processed"
    )
    assert c.classify(r(422, {"error": "Unprocessable", "message": "bad from"})) == Fatal("HTTP_422", "bad from")
    assert c.classify(r(400, None)) == Fatal("HTTP_400", "HTTP 400")
    assert c.classify(r(400, {"name": "invalid_idempotency_key", "message": "1-256"})) == Fatal(
        "invalid_idempotency_key", "1-256"
    )
    unknown_409 = c.classify(r(409, "<html>conflict</html>"))
    assert isinstance(unknown_409, Retry)


def test_codes_are_identifiers_not_prose() -> None:
    body = {"error": {"code": "this is a sentence, not a code", "message": "m"}}
    assert Sendoka().classify(r(400, body)) == Fatal("HTTP_400", "m")
    assert Resend().classify(r(400, {"name": "x" * 500, "message": "m"})) == Fatal("HTTP_400", "m")


# -- Retry-After -----------------------------------------------------------------------------


def test_max_retry_after_is_exported() -> None:
    assert MAX_RETRY_AFTER == 3600.0
    assert "MAX_RETRY_AFTER" in idemsend.classify.__all__


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Infinity", MAX_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("-Infinity", 0.0),
        ("1e308", MAX_RETRY_AFTER),
        ("1e999", MAX_RETRY_AFTER),
        ("-5", 0.0),
        ("7200", MAX_RETRY_AFTER),
        ("3600", 3600.0),
        (" 3 ", 3.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        ("9" * 10_000, MAX_RETRY_AFTER),
        ("nan", None),
        ("NaN", None),
        ("1_0", None),
        ("0x10", None),
        ("٣", None),  # a digit, but not an ASCII one: not delta-seconds
        ("soon", None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
        ("Fri, 31 Dec 2099 23:59:59 +9999", None),
        (" " * 100 + "5", None),  # only the first 64 characters are read
    ],
)
def test_retry_after_is_finite_and_bounded(value: str, expected: float | None) -> None:
    got = parse_retry_after(value)
    assert got == expected
    assert got is None or (math.isfinite(got) and 0.0 <= got <= MAX_RETRY_AFTER)


@pytest.mark.parametrize("cls", PRESETS)
def test_presets_pass_on_a_bounded_retry_after(cls: type[ResultClassifier]) -> None:
    assert cls().classify(r(429, None, Retry_After="Infinity")) == Retry(MAX_RETRY_AFTER, "HTTP 429")
    assert cls().classify(r(503, None, Retry_After="nan")) == Retry(None, "HTTP 503")
