from __future__ import annotations

import pytest

from idemsend import ConfigError, InvalidBodyError, Job, KeyDerivationError, KeyDeriver, Template, validate_key
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
