"""Every provider shape over real HTTP to the MockProvider (issue 20 items 1, 2 and 4, and
"Done when"): a body key identical on every try and from every worker, a Standard Webhooks
send that fails once with 503 and then arrives signed twice under one ``webhook-id`` (both
signatures accepted by the real ``standardwebhooks`` package), stale signatures refused,
410 Gone a setup error not recorded against the key, bad input refused before any HTTP.
"""

from __future__ import annotations

import base64
import json
import secrets
import time

import pytest
from standardwebhooks import Webhook

from idemsend import (
    Engine,
    InvalidBodyError,
    Job,
    KeyDerivationError,
    Provider,
    RetryPolicy,
    SetupError,
    SignRequest,
    StandardWebhooksSigner,
)
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider, ProviderContract, ProviderRequest

pytestmark = pytest.mark.anyio

QUICK = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.02)


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _engine(mock: MockProvider, provider: Provider, **kw: object) -> Engine:
    return Engine(mock.emails_url, key="pay:{order}", api_key=mock.api_key, provider=provider, retry=QUICK, **kw)  # type: ignore[arg-type]


async def test_a_square_style_body_key_is_the_same_bytes_on_every_try_and_from_every_worker() -> None:
    async with MockProvider(key_field="idempotency_key", dialect="square", record_requests=True) as mock:
        mock.script("5xx", "lost")  # two tries fail (the second after it ran), the third is answered
        job, body = Job("job-1", {"order": "o-1"}), {"amount_money": {"amount": 100, "currency": "USD"}}
        async with _engine(mock, Provider.square()) as worker_a:
            first = await worker_a.send(job, body)
        async with _engine(mock, Provider.square()) as worker_b:  # another worker, another engine
            again = await worker_b.send(job, dict(reversed(list(body.items()))))
    sent = [r for r in mock.requests]
    assert len(sent) == 4
    assert len({r.body for r in sent}) == 1, "every try and every worker sends the same bytes"
    assert json.loads(sent[0].body)["idempotency_key"] == "pay:o-1"
    assert all(r.header("Idempotency-Key") is None for r in sent), "a body-key provider sends no key header"
    assert mock.sends_for("pay:o-1") == 1 and mock.double_sends() == {}
    assert first.id == again.id and first.key == again.key == "pay:o-1"


async def test_a_body_key_reaches_the_ledger_frozen_with_the_key_in_it() -> None:
    ledger = MemoryLedger()
    body = {"subject": "hi", "headers": {"X-Tag": "t"}}
    async with (
        MockProvider(key_field="headers.idempotencyKey", dialect="brevo", record_requests=True) as mock,
        _engine(mock, Provider.brevo(), ledger=ledger) as engine,
    ):
        result = await engine.send(Job("j", {"order": "o-2"}), body)
        replay = await engine.send(Job("j", {"order": "o-2"}), body)
    assert replay.from_ledger and replay.id == result.id
    assert json.loads(mock.requests[0].body)["headers"] == {"X-Tag": "t", "idempotencyKey": "pay:o-2"}
    assert mock.sends == 1


async def test_a_standard_webhooks_send_that_fails_once_arrives_twice_under_one_id_each_try_signed() -> None:
    secret = whsec()
    start = time.time()
    ticks = iter(start + i * 3 for i in range(10))  # each try at its own second
    provider = Provider(
        classifier=Provider.standard_webhooks(secret).classifier, idempotency_header="webhook-id",
        signer=StandardWebhooksSigner(secret, clock=lambda: next(ticks)),
    )
    async with MockProvider(
        key_header="webhook-id", signing_secret=secret, dialect="standard-webhooks", record_requests=True
    ) as mock:
        mock.script("5xx")
        async with _engine(mock, provider) as engine:
            result = await engine.send(Job("evt-1", {"order": "o-3"}), {"type": "order.paid", "id": "o-3"})
    assert result.status == 204 and result.id is None and result.attempts == 2
    tries = mock.requests
    assert len(tries) == 2
    assert {r.header("webhook-id") for r in tries} == {"pay:o-3"}
    assert len({r.header("webhook-signature") for r in tries}) == 2, "a fresh signature per try"
    assert len({r.header("webhook-timestamp") for r in tries}) == 2, "a fresh timestamp per try"
    assert len({r.body for r in tries}) == 1, "the same frozen body"
    receiver = Webhook(secret)
    for r in tries:
        assert receiver.verify(r.body, dict(r.headers)) == {"type": "order.paid", "id": "o-3"}
    assert mock.sends == 1


async def test_the_preset_signs_with_the_wall_clock_and_the_receiver_accepts_it() -> None:
    secret = whsec()
    async with MockProvider(
        key_header="webhook-id", signing_secret=secret, dialect="standard-webhooks", record_requests=True
    ) as mock, _engine(mock, Provider.standard_webhooks([whsec(), secret])) as engine:
        await engine.send(Job("evt-2", {"order": "o-4"}), {"n": 1})
    assert mock.sends == 1 and mock.stats.faults.get("bad_signature", 0) == 0
    Webhook(secret).verify(mock.requests[0].body, dict(mock.requests[0].headers))


def test_the_mock_refuses_a_stale_timestamp_and_a_wrong_signature_like_a_receiver() -> None:
    secret, now = whsec(), [time.time()]
    contract = ProviderContract(
        key_header="webhook-id", signing_secret=secret, dialect="standard-webhooks", arrival_clock=lambda: now[0]
    )
    signed = dict(StandardWebhooksSigner(secret, clock=lambda: now[0]).headers(SignRequest("evt-3", b'{"n":1}', 1)))
    auth = {"Authorization": "Bearer test-api-key"}
    request = ProviderRequest("/api/v1/emails", {**auth, **signed}, b'{"n":1}')
    assert contract.handle(request).status == 204
    now[0] += 6 * 60  # the first try's signature, resent six minutes later: refused
    stale = contract.handle(request)
    assert stale.status == 401 and "stale" in stale.body["error"]["message"]
    forged = ProviderRequest("/api/v1/emails", {**auth, **signed, "webhook-signature": "v1,AAAA"}, b'{"n":1}')
    now[0] -= 6 * 60
    assert contract.handle(forged).status == 401
    assert contract.sends == 1


async def test_410_gone_is_a_setup_error_not_recorded_against_the_key() -> None:
    secret, ledger = whsec(), MemoryLedger()
    async with MockProvider(key_header="webhook-id", signing_secret=secret, dialect="standard-webhooks") as mock:
        mock.script("gone")
        async with _engine(mock, Provider.standard_webhooks(secret), ledger=ledger) as engine:
            with pytest.raises(SetupError) as caught:
                await engine.send(Job("evt-4", {"order": "o-5"}), {"n": 1})
            assert caught.value.code == "ENDPOINT_GONE" and not caught.value.maybe_sent
            assert await ledger.get("pay:o-5") is None, "nothing recorded against the key"
            # the endpoint is fixed: the same job sends
            result = await engine.send(Job("evt-4", {"order": "o-5"}), {"n": 1})
    assert result.status == 204 and mock.sends == 1


async def test_bad_input_is_refused_before_any_http() -> None:
    async with MockProvider(key_field="idempotency_key") as mock:
        async with _engine(mock, Provider.square()) as engine:
            with pytest.raises(InvalidBodyError, match="'idempotency_key'"):
                await engine.send(Job("j", {"order": "o"}), {"idempotency_key": "someone-elses"})
            with pytest.raises(InvalidBodyError, match="JSON object"):
                await engine.send(Job("j", {"order": "o"}), ["a", "list"])
            with pytest.raises(KeyDerivationError, match="45"):
                await engine.send(Job("j", {"order": "x" * 60}), {"amount": 1})
        async with _engine(mock, Provider.brevo()) as engine:
            with pytest.raises(InvalidBodyError, match="'headers' is a list"):
                await engine.send(Job("j", {"order": "o"}), {"headers": ["X-Tag"]})
    assert mock.stats.requests == 0


async def test_a_resumed_claim_sends_the_frozen_keyed_body_from_another_worker() -> None:
    from idemsend import RetryableError

    ledger = MemoryLedger()
    async with MockProvider(key_field="idempotency_key", dialect="square", record_requests=True) as mock:
        mock.script("lost")  # the first worker's only try runs at the provider, its answer is lost
        job = Job("job-r", {"order": "o-r"})
        async with Engine(mock.emails_url, key="pay:{order}", api_key=mock.api_key, provider=Provider.square(),
                          ledger=ledger, retry=0, lease=0.2) as worker_a:
            with pytest.raises(RetryableError) as caught:
                await worker_a.send(job, {"amount": 1}, attempt=1)
            assert caught.value.maybe_sent
        async with _engine(mock, Provider.square(), ledger=ledger) as worker_b:
            result = await worker_b.send(job, {"amount": 1}, attempt=2)
    assert mock.sends == 1 and result.id == "em_00000001"  # the first send's answer (Square marks no replay)
    assert len(mock.requests) == 2 and len({r.body for r in mock.requests}) == 1
    assert json.loads(mock.requests[1].body) == {"amount": 1, "idempotency_key": "pay:o-r"}
