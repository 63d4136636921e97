"""The Endpoint value object (the URL and header checks, the request headers and their
redactor) and the engine's read-only knobs (issue 19 item 4)."""

from __future__ import annotations

import pytest

from idemsend import ConfigError, Engine, RetryPolicy
from idemsend._endpoint import Endpoint

SECRET = "sk_live_endpoint_42"


def test_an_endpoint_holds_the_request_headers_and_redacts_their_credentials() -> None:
    endpoint = Endpoint.of(
        "https://user:pw-9f3@api.example.com:8443/v1/emails?token=t0k3n", headers={"X-Api-Key": SECRET},
    )
    assert (endpoint.host, endpoint.port) == ("api.example.com", 8443)
    assert endpoint.safe_url == "https://api.example.com:8443/v1/emails"
    assert endpoint.headers["X-Api-Key"] == SECRET and endpoint.headers["Content-Type"] == "application/json"
    for secret in (SECRET, "pw-9f3", "t0k3n"):
        assert secret not in endpoint.redact.text(f"the provider said {secret}")
        assert secret not in repr(endpoint)
    with pytest.raises(TypeError):
        endpoint.headers["X-Other"] = "x"  # type: ignore[index]


def test_api_key_becomes_a_bearer_header() -> None:
    endpoint = Endpoint.of("https://api.example.com/v1", api_key=SECRET)
    assert endpoint.headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in endpoint.redact.text(endpoint.headers["Authorization"])


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("ftp://api.example.com", {}, "must be an http"),
        ("https://", {}, "no host|not a valid URL"),
        ("https://api.example.com", {"headers": {"X-Evil": "a\r\nInjected: 1"}}, "single-line"),
        ("https://u:p@api.example.com", {"api_key": SECRET}, "use one of them"),
    ],
)
def test_a_bad_endpoint_is_a_config_error_naming_it_without_its_credentials(
    url: str, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        Endpoint.of(url, **kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(caught.value) and ":p@" not in str(caught.value)


@pytest.mark.parametrize("knob", ["retry", "provider", "timeout", "ledger", "transport", "url", "endpoint"])
def test_an_engines_knobs_are_read_only(knob: str) -> None:
    engine = Engine("https://api.example.com/v1/emails", key="w:{job_id}", retry=RetryPolicy(retries=1))
    before = engine.worst_case_send_time()
    with pytest.raises(AttributeError, match=f"Engine.{knob} is read-only"):
        setattr(engine, knob, None)
    assert engine.worst_case_send_time() == before and engine.retry.retries == 1
