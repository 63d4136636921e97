"""The ProviderContract in every shape, without a socket: the key from a body field or any
header, the receiver's signature check, the dialects' answers."""

from __future__ import annotations

import base64
import json
import time

import pytest

from idemsend import SignRequest, StandardWebhooksSigner
from idemsend.testing import DIALECTS, ProviderContract, ProviderRequest, SignatureCheck

AUTH = {"Authorization": "Bearer test-api-key"}
SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()


def post(contract: ProviderContract, body: object, **headers: str) -> tuple[int, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = contract.handle(ProviderRequest("/api/v1/emails", {**AUTH, **headers}, raw))
    return answer.status, answer.body


def test_the_key_comes_from_the_body_field_and_a_header_is_ignored() -> None:
    contract = ProviderContract(key_field="headers.idempotencyKey")
    assert post(contract, {"headers": {"idempotencyKey": "k1"}, "n": 1}, **{"Idempotency-Key": "other"})[0] == 200
    assert post(contract, {"headers": {"idempotencyKey": "k1"}, "n": 1})[0] == 200
    assert contract.sends == 1 and contract.stats.replays == 1 and set(contract.arrivals) == {"k1"}
    assert post(contract, {"headers": {"idempotencyKey": 7}})[0] == 400  # a key that is not a string
    assert post(contract, {"n": 2})[0] == 200  # no key: an unkeyed send, as without the header
    assert contract.sends == 2


def test_the_key_comes_from_the_named_header() -> None:
    contract = ProviderContract(key_header="PayPal-Request-Id", dialect="paypal")
    assert post(contract, {"n": 1}, **{"paypal-request-id": "r1"})[0] == 201
    status, body = post(contract, {"n": 1}, **{"PayPal-Request-Id": "r1"})
    assert status == 200 and isinstance(body, dict) and body["status"] == "COMPLETED"
    assert contract.sends == 1


def _signed(key: str, raw: bytes, at: float) -> dict[str, str]:
    return dict(StandardWebhooksSigner(SECRET, clock=lambda: at).headers(SignRequest(key, raw, 1)))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"webhook-signature": None}, "missing"),
        ({"webhook-timestamp": "soon"}, "whole number"),
        ({"webhook-timestamp": "now+400"}, "stale"),  # 400 s ahead of the clock when the test runs
        ({"webhook-signature": "v1,bm9wZQ=="}, "no webhook-signature matches"),
        ({"webhook-id": "another-id"}, "no webhook-signature matches"),
    ],
)
def test_the_receiver_check_refuses_what_a_receiver_refuses(change: dict[str, str | None], says: str) -> None:
    headers = _signed("evt-1", b"{}", time.time())
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        elif value.startswith("now+"):
            headers[name] = str(int(time.time()) + int(value.removeprefix("now+")))
        else:
            headers[name] = value
    assert SignatureCheck(SECRET).check(headers, b"{}") is not None
    assert says in (SignatureCheck(SECRET).check(headers, b"{}") or "")


def test_the_receiver_check_takes_any_one_matching_signature_and_the_body_must_match() -> None:
    headers = _signed("evt-1", b"{}", time.time())
    headers["webhook-signature"] = "v1,bm9wZQ== " + headers["webhook-signature"]
    assert SignatureCheck(SECRET).check(headers, b"{}") is None
    assert SignatureCheck(SECRET).check(headers, b"{ }") == "no webhook-signature matches"
    assert "[redacted]" in repr(SignatureCheck(SECRET)) and SECRET[6:] not in repr(SignatureCheck(SECRET))


def test_a_refused_signature_runs_nothing_and_is_counted() -> None:
    contract = ProviderContract(key_header="webhook-id", signing_secret=SECRET, dialect="standard-webhooks")
    headers = _signed("evt-2", b'{"n":1}', time.time() - 3600)
    assert post(contract, b'{"n":1}', **headers)[0] == 401
    assert contract.sends == 0 and contract.stats.faults["bad_signature"] == 1


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_each_dialect_runs_a_key_once_and_answers_its_repeat(name: str) -> None:
    contract = ProviderContract(dialect=name)
    first = contract.handle(ProviderRequest("/api/v1/emails", {**AUTH, "Idempotency-Key": "k"}, b'{"a":1}'))
    again = contract.handle(ProviderRequest("/api/v1/emails", {**AUTH, "Idempotency-Key": "k"}, b'{"a":1}'))
    other = contract.handle(ProviderRequest("/api/v1/emails", {**AUTH, "Idempotency-Key": "k"}, b'{"a":2}'))
    assert 200 <= first.status < 300 and contract.sends == 1
    assert (again.status, again.body) == (first.status, first.body) or name in ("paypal", "gocardless")
    assert contract.stats.replays == 1 and contract.stats.mismatches == 1
    assert other.status >= 400 or name == "standard-webhooks"


def test_an_unknown_dialect_is_named() -> None:
    with pytest.raises(ValueError, match="unknown dialect 'nope'; known: sendoka"):
        ProviderContract(dialect="nope")
