"""Credentials never leave the engine: the Redactor, and the engine over an echoing provider."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from idemsend import Engine, FatalError, Job, RawResponse, TransportRequest
from idemsend._redact import Redactor, is_secret_header, safe_url
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockTransport

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True), ("authorization", True), ("X-Api-Key", True), ("X-Postmark-Server-Token", True),
        ("Cookie", True), ("X-Signature", True), ("Proxy-Authorization", True), ("Idempotency-Key", False),
        ("Content-Type", False), ("X-Request-Id", False),
    ],
)
def test_secret_header_names(name: str, secret: bool) -> None:
    assert is_secret_header(name) is secret


def test_schemes_in_any_case_and_basic_credentials_are_known() -> None:
    basic = "Basic " + base64.b64encode(b"mailuser:S3cretPassw0rd").decode()
    r = Redactor(["bearer sk_live_abcdefgh12345", basic])
    for leaked in ("sk_live_abcdefgh12345", "mailuser:S3cretPassw0rd", "S3cretPassw0rd", basic.split()[1]):
        assert "[redacted]" in r.text(f"x {leaked} y") and leaked not in r.text(f"x {leaked} y")


def test_url_credentials_and_query_values_and_the_basic_header_made_of_them() -> None:
    r = Redactor.for_request("https://mailuser:S3cretPassw0rd@api.example.com/x?token=q-secret-1", {})
    made_by_aiohttp = base64.b64encode(b"mailuser:S3cretPassw0rd").decode()
    for leaked in ("S3cretPassw0rd", "q-secret-1", made_by_aiohttp):
        assert leaked not in r.text(f"echo {leaked}")
    assert safe_url("https://u:p@api.example.com/x?token=q#f") == "https://api.example.com/x"


def test_short_secrets_are_redacted_in_strings_not_cut_out_of_json() -> None:
    r = Redactor(["abc", "true"])  # an api key of three characters; a header whose value is a JSON literal
    raw = b'{"id":"em_1","ok":true,"echo":"key abc"}'
    assert r.body(raw) == raw  # short values are not cut out of the raw bytes
    assert r.needs_tree(raw)
    assert r.tree(json.loads(raw)) == {"id": "em_1", "ok": True, "echo": "key [redacted]"}
    assert Redactor(["ab"]).text("ab") == "ab"  # two characters are not a credential


def test_json_escapes_cannot_smuggle_a_secret_past_the_scrub() -> None:
    secret = "ab+cd/ef+SECRETKEY=="
    r = Redactor([f"Bearer {secret}"])
    raw = json.dumps({"id": "em_1", "echo": secret}).encode().replace(b"+", b"\\u002B")
    assert secret.encode() not in raw  # the escaped form is not the raw form
    data = json.loads(r.body(raw))
    assert r.needs_tree(raw)
    assert secret not in json.dumps(r.tree(data))


async def test_the_engine_scrubs_every_form_a_provider_can_echo(caplog: pytest.LogCaptureFixture) -> None:
    api_key = "ab+cd/ef+SECRETKEY=="
    short = "xyz"

    def echo(request: TransportRequest) -> RawResponse:
        auth, token = request.headers["Authorization"], request.headers["X-Mail-Token"]
        body = json.dumps({"id": "em_1", "auth": auth, "token": token}).replace("+", "\\u002B")
        if b"fail" in request.body:
            message = f"rejected {auth} {token}"
            return RawResponse(400, {}, json.dumps({"error": {"code": "BAD", "message": message}}).encode())
        return RawResponse(200, {}, body.encode())

    caplog.set_level(logging.DEBUG)
    ledger = MemoryLedger()
    engine = Engine(
        "https://api.example.com/x", key="{kind}:{job_id}", api_key=api_key, headers={"X-Mail-Token": short},
        transport=MockTransport(echo), ledger=ledger,
    )
    texts = [repr(engine)]
    async with engine as e:
        ok = await e.send(Job("j1", {"kind": "ok"}), {"a": 1})
        texts += [repr(ok), json.dumps(ok.response)]
        with pytest.raises(FatalError) as bad:
            await e.send(Job("j2", {"kind": "fail"}), {"a": "fail"})
        texts += [str(bad.value), repr(await ledger.get("ok:j1")), repr(await ledger.get("fail:j2"))]
    texts += [r.getMessage() for r in caplog.records]
    leaked = [t for t in texts if api_key in t or f" {short}" in t or f'"{short}' in t]
    assert not leaked, leaked


@pytest.mark.parametrize(
    "spelled",
    [
        "s3cr+t/K3y==", "s3cr%2Bt/K3y%3D%3D", "s3cr%2bt%2fK3y%3d%3d", "%73%33cr%2Bt%2FK3y%3D%3D",  # as is, wire, lower
        "s3cr%252Bt/K3y%253D%253D",  # encoded again
        "clé+sûre 1", "cl%C3%A9%2Bs%C3%BBre+1", "cl%c3%a9%2bs%c3%bbre%201",  # a non-ASCII value, "+" for a space
    ],
)
def test_a_query_value_is_redacted_in_every_url_spelling(spelled: str) -> None:
    r = Redactor.for_request("https://api.example.com/x?token=s3cr%2Bt/K3y%3D%3D&pw=cl%C3%A9%2Bs%C3%BBre+1", {})
    assert r.text(f"GET /x?token={spelled} HTTP/1.1") == "GET /x?token=[redacted] HTTP/1.1"
    raw = json.dumps({"echo": f"/x?a={spelled}&b=1"}).encode()
    assert json.loads(r.body(raw)) == {"echo": "/x?a=[redacted]&b=1"}
    slashed = raw.replace(b"/", b"\\/")  # a JSON encoder that escapes "/"
    assert json.loads(r.body(slashed)) == {"echo": "/x?a=[redacted]&b=1"}


def test_a_plus_in_the_configured_query_is_known_as_written_and_as_a_space() -> None:
    r = Redactor.for_request("https://api.example.com/x?sig=open+sesame+42", {})
    for spelled in ("open sesame 42", "open+sesame+42", "open%20sesame%2042", "open%2Bsesame%2B42"):
        assert r.text(f"echo {spelled}.") == "echo [redacted].", spelled


def test_url_spellings_match_nothing_but_the_secret() -> None:
    r = Redactor(["Bearer sk_live_abcdefgh12345"])
    assert r.text("sk%5Flive%5Fabcdefgh1234%35") == "[redacted]"  # "%35" is "5"
    for text in ("sk_live_abcdefgh1234", "sk%5Flive%5Fabcdefgh1234%36x", "100% sure + fine", "%%%+++"):
        assert r.text(text) == text
        assert r.body(text.encode()) == text.encode()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_a_secret_in_a_utf16_or_utf32_body_is_redacted_after_decoding(encoding: str) -> None:
    r = Redactor(["Bearer sk_live_abcdefgh12345"])
    raw = json.dumps({"echo": "Bearer sk_live_abcdefgh12345"}).encode(encoding)
    assert r.body(raw) == raw  # no UTF-8 spelling of it in these bytes
    assert r.needs_tree(raw)
    assert r.tree(json.loads(r.body(raw))) == {"echo": "[redacted]"}


def test_a_utf8_body_with_or_without_a_bom_is_scrubbed_as_bytes() -> None:
    r = Redactor(["Bearer sk_live_abcdefgh12345"])
    for encoding in ("utf-8", "utf-8-sig"):
        raw = json.dumps({"echo": "sk_live_abcdefgh12345"}).encode(encoding)
        assert not r.needs_tree(raw)
        assert json.loads(r.body(raw)) == {"echo": "[redacted]"}
