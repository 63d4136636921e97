"""``engine_from_env`` speaks every provider shape (what the ``adapters/`` projects and the
chaos run use): ``IDEMSEND_PROVIDER``, ``IDEMSEND_KEY_FIELD``, ``IDEMSEND_WEBHOOK_SECRET``."""

from __future__ import annotations

import base64

import pytest

from idemsend import ConfigError
from idemsend.adapters import engine_from_env
from idemsend.adapters._common import provider_from_env
from idemsend.classify import Sendoka, Square, StandardWebhooks

SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()


def test_the_default_is_the_sendoka_header_provider() -> None:
    provider = provider_from_env({})
    assert isinstance(provider.classifier, Sendoka) and provider.key_header == "Idempotency-Key"


def test_a_preset_a_key_field_and_a_signed_receiver() -> None:
    assert isinstance(provider_from_env({"IDEMSEND_PROVIDER": "square"}).classifier, Square)
    body = provider_from_env({"IDEMSEND_KEY_FIELD": "idempotency_key"})
    assert body.key_field == "idempotency_key" and body.key_header is None
    signed = provider_from_env(
        {"IDEMSEND_PROVIDER": "standard_webhooks", "IDEMSEND_WEBHOOK_SECRET": f"{SECRET} {SECRET}"}
    )
    assert isinstance(signed.classifier, StandardWebhooks) and signed.key_header == "webhook-id"
    engine = engine_from_env({"IDEMSEND_URL": "http://127.0.0.1:9/x", "IDEMSEND_PROVIDER": "standard-webhooks",
                              "IDEMSEND_WEBHOOK_SECRET": SECRET})
    assert SECRET not in repr(engine) and SECRET not in repr(engine.provider)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"IDEMSEND_PROVIDER": "nope"}, "not a preset; known: standard-webhooks, sendoka"),
        ({"IDEMSEND_PROVIDER": "standard-webhooks"}, "needs IDEMSEND_WEBHOOK_SECRET"),
        ({"IDEMSEND_PROVIDER": "standard-webhooks", "IDEMSEND_WEBHOOK_SECRET": "plain"}, "whsec_"),
        ({"IDEMSEND_KEY_FIELD": "a..b"}, "empty part"),
    ],
)
def test_a_wrong_environment_is_a_config_error_naming_it(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        provider_from_env(env)
