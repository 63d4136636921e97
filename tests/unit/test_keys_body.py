from __future__ import annotations

import pytest

from idemsend import (
    MAX_JOB_ID_BYTES,
    ConfigError,
    InvalidBodyError,
    InvalidJobIdError,
    Job,
    KeyDerivationError,
    KeyDeriver,
    Template,
    validate_job_id,
    validate_key,
)
from idemsend._body import canonical_body, fingerprint


def test_template_uses_job_id_and_data() -> None:
    t = Template("welcome:{user_id}:{job_id}")
    assert t.derive(Job("j-9", {"user_id": 42})) == "welcome:42:j-9"
    assert t.fields == ("user_id", "job_id")
    assert isinstance(t, KeyDeriver)


def test_template_key_is_stable_whatever_else_is_in_the_data() -> None:
    t = Template("welcome:{user_id}:{job_id}")
    a = t.derive(Job("j", {"user_id": "u", "name": "Ada"}))
    b = t.derive(Job("j", {"user_id": "u", "name": "Ada L."}))
    assert a == b


def test_missing_placeholder_names_it() -> None:
    with pytest.raises(KeyDerivationError, match=r"\{user_id\}.*job 'j'"):
        Template("welcome:{user_id}:{job_id}").derive(Job("j", {"name": "x"}))


@pytest.mark.parametrize(
    "bad", ["", "x:{attempt}", "x:{job_try}", "x:{timestamp}", "x:{0}", "x:{a!r}", "x:{a:>5}", "x:{"]
)
def test_bad_templates_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        Template(bad)


def test_job_needs_a_string_id() -> None:
    with pytest.raises(KeyDerivationError):
        Job("")
    with pytest.raises(KeyDerivationError):
        Job(123)  # type: ignore[arg-type]
    assert Job("x").data == {}


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("job-\udc80", "lone surrogate"),
        ("a\x00b", "NUL"),
        ("x" * (MAX_JOB_ID_BYTES + 1), f"{MAX_JOB_ID_BYTES + 1} UTF-8 bytes"),
        ("\u20ac" * (MAX_JOB_ID_BYTES // 3 + 1), "UTF-8 bytes, over the limit"),
    ],
)
def test_a_job_id_no_ledger_can_store_fails_at_construction(bad: str, named: str) -> None:
    """Job applies validate_job_id: the error names the problem and is a KeyDerivationError
    (a FatalError with its own code), so the job stops alone before any ledger call."""
    with pytest.raises(InvalidJobIdError, match=named) as caught:
        Job(bad)
    assert isinstance(caught.value, KeyDerivationError) and caught.value.code == "INVALID_JOB_ID"
    assert len(str(caught.value)) < 200  # a long id is cut in the message, never echoed whole


def test_job_ids_every_ledger_can_store_are_accepted() -> None:
    for good in ("x" * MAX_JOB_ID_BYTES, "\u00e9" * (MAX_JOB_ID_BYTES // 2), "\U0001f600-emoji", "ü:1"):
        assert validate_job_id(good) == good and Job(good).id == good


def test_job_is_frozen_and_has_no_attempt() -> None:
    j = Job("x", {"a": 1})
    with pytest.raises(AttributeError):
        j.id = "y"  # type: ignore[misc]
    assert not hasattr(j, "attempt")


@pytest.mark.parametrize(
    ("key", "needle"),
    [("", "empty"), ("a" * 256, "over the limit"), ("a b", "visible ASCII"), ("é", "visible ASCII"), (5, "str")],
)
def test_validate_key_rejects(key: object, needle: str) -> None:
    with pytest.raises(KeyDerivationError, match=needle):
        validate_key(key)


def test_validate_key_accepts_the_limit() -> None:
    assert validate_key("a" * 255) == "a" * 255
    assert validate_key("k" * 10, max_length=10)


def test_canonical_body_is_order_and_whitespace_free() -> None:
    a = canonical_body({"b": 1, "a": [1, {"y": 2, "x": 1}]})
    b = canonical_body({"a": [1, {"x": 1, "y": 2}], "b": 1})
    assert a == b == b'{"a":[1,{"x":1,"y":2}],"b":1}'
    assert fingerprint(a) == fingerprint(b) and len(fingerprint(a)) == 64
    assert canonical_body(b"raw") == b"raw"
    assert canonical_body({"name": "Zoë"}) == '{"name":"Zoë"}'.encode()


def test_canonical_body_rejects_what_json_cannot_carry() -> None:
    with pytest.raises(InvalidBodyError):
        canonical_body({"x": {1, 2}})
    with pytest.raises(InvalidBodyError):
        canonical_body({"x": float("inf")})
