"""The key in the body (issue 20 item 1, "Bad input"): ``key_field`` paths and
``keyed_body``, and ``Provider.payload`` that freezes the keyed body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from idemsend import ConfigError, InvalidBodyError, Provider
from idemsend._placement import MAX_DEPTH, keyed_body, parse_key_field


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("", "empty part"), ("a..b", "empty part"), (".a", "empty part"), ("a.", "empty part"),
        ("a b", "whitespace"), ("a\nb", "whitespace"), ("a\x00b", "control"),
        (".".join(["x"] * (MAX_DEPTH + 1)), "levels deep"), (3, "dotted path string"), (None, "dotted path"),
    ],
)
def test_a_bad_key_field_is_a_config_error_naming_it(path: object, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_key_field(path)
    if path is not None:
        with pytest.raises(ConfigError, match=says):
            Provider(key_field=path)  # type: ignore[arg-type]


def test_the_key_goes_in_at_the_path_creating_objects_and_leaving_the_given_body_alone() -> None:
    body: dict[str, Any] = {"to": ["a@example.com"], "headers": {"X-Tag": "t"}}
    keyed = keyed_body(body, ("headers", "idempotencyKey"), "k-1")
    assert keyed == {"to": ["a@example.com"], "headers": {"X-Tag": "t", "idempotencyKey": "k-1"}}
    assert body == {"to": ["a@example.com"], "headers": {"X-Tag": "t"}}  # not changed
    assert keyed_body({}, ("a", "b", "c"), "k") == {"a": {"b": {"c": "k"}}}
    assert keyed_body({"idempotency_key": "k"}, ("idempotency_key",), "k") == {"idempotency_key": "k"}


@pytest.mark.parametrize(
    ("body", "parts", "says"),
    [
        ([1, 2], ("idempotency_key",), "must be a JSON object, got list"),
        ("text", ("idempotency_key",), "must be a JSON object, got str"),
        (None, ("k",), "must be a JSON object, got NoneType"),
        ({"headers": "x"}, ("headers", "idempotencyKey"), "'headers' is a str, not an object"),
        ({"a": {"b": [1]}}, ("a", "b", "c"), "'a.b' is a list, not an object"),
        ({"idempotency_key": "other-key"}, ("idempotency_key",), "already holds another value at 'idempotency_key'"),
        ({"idempotency_key": None}, ("idempotency_key",), "already holds another value"),
        (b"not json", ("k",), "body bytes are not JSON"),
        (b"[1]", ("k",), "must be a JSON object, got list"),
    ],
)
def test_a_body_that_cannot_take_the_key_is_an_invalid_body_error_naming_the_path(
    body: Any, parts: tuple[str, ...], says: str
) -> None:
    with pytest.raises(InvalidBodyError, match=says):
        keyed_body(body, parts, "k-1")


def test_the_error_never_quotes_the_value_already_there() -> None:
    with pytest.raises(InvalidBodyError) as caught:
        keyed_body({"idempotency_key": "a-secretish-value"}, ("idempotency_key",), "k-1")
    assert "a-secretish-value" not in str(caught.value)


def test_payload_is_the_canonical_keyed_body_the_same_bytes_for_the_same_key() -> None:
    provider = Provider.square()
    first = provider.payload({"amount_money": {"amount": 100}, "source_id": "cnon"}, "order-1")
    again = provider.payload({"source_id": "cnon", "amount_money": {"amount": 100}}, "order-1")
    assert first == again
    assert json.loads(first)["idempotency_key"] == "order-1"
    assert provider.payload(b'{"source_id": "cnon"}', "order-1") == provider.payload({"source_id": "cnon"}, "order-1")
    assert provider.key_header is None
    assert Provider().payload({"a": 1}, "k") == b'{"a":1}'  # a header key leaves the body alone
