"""Per-try signing (issue 20 item 2): the ``Signer`` seam and Standard Webhooks signatures,
checked against the real ``standardwebhooks`` receiver package."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from idemsend import ConfigError, Provider, SignRequest, StandardWebhooksSigner
from idemsend._signing import sign_try


def whsec(size: int = 24) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(size)).decode()


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("plainsecret", "must start with 'whsec_'"),
        ("whsec_", "decodes to 0 bytes"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "decodes to 65 bytes"),
        (b"whsec_abc", "must be a 'whsec_<base64>' string"),
    ],
)
def test_a_secret_not_in_whsec_base64_form_is_a_config_error_that_never_quotes_it(secret: object, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        Provider.standard_webhooks(secret)  # type: ignore[arg-type]
    if isinstance(secret, str) and len(secret) > 8:
        assert secret not in str(caught.value)
        if secret.startswith("whsec_"):
            assert secret[6:] not in str(caught.value)


def test_no_secret_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Provider.standard_webhooks([])


def test_each_try_is_signed_so_the_real_receiver_package_accepts_it_with_a_fresh_timestamp() -> None:
    secret = whsec()
    ticks = iter([time.time(), time.time() + 7])
    signer = StandardWebhooksSigner(secret, clock=lambda: next(ticks))
    body = b'{"type":"invoice.paid","id":1}'
    first = signer.headers(SignRequest("evt:1", body, 1))
    second = signer.headers(SignRequest("evt:1", body, 2))
    assert first["webhook-id"] == second["webhook-id"] == "evt:1"
    assert first["webhook-timestamp"] != second["webhook-timestamp"]
    assert first["webhook-signature"] != second["webhook-signature"]
    receiver = Webhook(secret)
    for headers in (first, second):
        assert receiver.verify(body, dict(headers)) == {"type": "invoice.paid", "id": 1}
    with pytest.raises(WebhookVerificationError):  # the signature covers the body
        receiver.verify(body + b" ", dict(first))


def test_a_rotation_signs_with_every_secret_and_each_receiver_accepts() -> None:
    old, new = whsec(), whsec(32)
    headers = StandardWebhooksSigner([old, new]).headers(SignRequest("evt:2", b"{}", 1))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(b"{}", dict(headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec()).verify(b"{}", dict(headers))


def test_a_stale_first_signature_is_refused_by_the_real_receiver() -> None:
    secret = whsec()
    stale = StandardWebhooksSigner(secret, clock=lambda: time.time() - 6 * 60).headers(SignRequest("e", b"{}", 1))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(b"{}", dict(stale))


def test_the_secret_is_in_no_repr() -> None:
    secret = whsec()
    provider = Provider.standard_webhooks(secret)
    for text in (repr(provider), repr(provider.signer), str(provider), repr(SignRequest("k", b"body-bytes", 1))):
        assert secret not in text and secret[6:] not in text
    assert "body-bytes" not in repr(SignRequest("k", b"body-bytes", 1))
    assert set(provider.secrets) == {secret, secret[6:]}


class _Broken:
    secrets: tuple[str, ...] = ("s3cr3t-value",)

    def __init__(self, answer: object = None, fail: bool = False) -> None:
        self.answer, self.fail = answer, fail

    def headers(self, request: SignRequest) -> Mapping[str, str]:
        if self.fail:
            raise RuntimeError("boom with s3cr3t-value")
        return self.answer  # type: ignore[return-value]


def test_a_signer_that_raises_is_a_config_error_that_does_not_quote_it() -> None:
    with pytest.raises(ConfigError, match="the signer _Broken failed: RuntimeError") as caught:
        sign_try(_Broken(fail=True), "k", b"{}", 1)
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("answer", [{"x-sig": "a\r\nInjected: 1"}, {"x-sig": 5}, {3: "v"}])
def test_a_signer_header_that_is_not_a_single_line_string_is_refused(answer: object) -> None:
    with pytest.raises(ConfigError, match="single-line"):
        sign_try(_Broken(answer), "k", b"{}", 1)


def test_a_signer_without_the_protocol_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="signer must have"):
        Provider(signer=object())  # type: ignore[arg-type]


def test_signed_headers_replace_any_spelling_and_never_change_the_key() -> None:
    from idemsend._signing import merge_signed

    merged = merge_signed(
        {"Webhook-Id": "k", "Authorization": "Bearer x"}, {"webhook-id": "k", "webhook-signature": "v1,s"},
        key_header="Webhook-Id", key="k",
    )
    assert merged == {"Authorization": "Bearer x", "webhook-id": "k", "webhook-signature": "v1,s"}
    with pytest.raises(ConfigError, match="another value than the job's key"):
        merge_signed({"webhook-id": "k"}, {"WEBHOOK-ID": "other"}, key_header="webhook-id", key="k")
    assert merge_signed({}, {"webhook-id": "k2"}, key_header=None, key="k") == {"webhook-id": "k2"}
