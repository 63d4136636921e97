"""Every preset against the MockProvider speaking its provider's dialect (issue 20 items 3
and 4): first send, a repeat from another engine, an in-flight answer, and the key with
another body, each read by the preset's own classifier over real HTTP."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from idemsend import (
    Engine,
    FatalError,
    InFlightWait,
    Job,
    MismatchError,
    Provider,
    RetryableError,
    RetryPolicy,
    SendResult,
)
from idemsend.testing import DIALECTS, MockProvider

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class Case:
    make: Callable[[], Provider]
    replay_signal: bool  # whether a repeat is told apart (a header, or GoCardless's conflict)
    in_flight: str  # what the preset makes of the dialect's in-flight answer: a TryInfo outcome
    mismatch: str  # "mismatch", "fatal:<code>", "sent" (the provider does not compare bodies), "retryable"
    has_id: bool = True


CASES = {
    "sendoka": Case(Provider.sendoka, True, "in_flight", "mismatch"),
    "stripe": Case(Provider.stripe, True, "in_flight", "mismatch"),
    "resend": Case(Provider.resend, False, "in_flight", "mismatch"),
    "ietf": Case(Provider.ietf, True, "in_flight", "mismatch"),
    "standard-webhooks": Case(lambda: Provider.standard_webhooks(SECRET), False, "in_flight", "sent", has_id=False),
    "square": Case(Provider.square, False, "retry", "mismatch"),
    "plaid": Case(Provider.plaid, False, "retry", "fatal:INVALID_FIELD"),
    "brevo": Case(Provider.brevo, False, "retry", "fatal:invalid_parameter"),
    "adyen": Case(Provider.adyen, False, "in_flight", "fatal:000"),
    "paypal": Case(Provider.paypal, False, "in_flight", "mismatch"),
    "checkout": Case(Provider.checkout, False, "in_flight", "fatal:idempotency_key_reused"),
    "gocardless": Case(Provider.gocardless, True, "retry", "sent"),
    "increase": Case(Provider.increase, True, "retry", "mismatch"),
    "sparkpost": Case(Provider.sparkpost, True, "in_flight", "retryable"),
}


def test_every_dialect_has_a_case() -> None:
    assert set(CASES) == set(DIALECTS)


def _mock(name: str, provider: Provider) -> MockProvider:
    return MockProvider(
        key_header=provider.idempotency_header, key_field=provider.key_field, dialect=name,
        signing_secret=SECRET if name == "standard-webhooks" else None, record_requests=True,
    )


def _engine(mock: MockProvider, provider: Provider) -> Engine:
    return Engine(
        mock.emails_url, key="k:{n}", api_key=mock.api_key, provider=provider,
        retry=RetryPolicy(retries=2, backoff=0.01, max_backoff=0.02), in_flight=InFlightWait(delay=0.01, budget=0.2),
    )


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_preset_reads_its_providers_first_send_and_repeat(name: str) -> None:
    case = CASES[name]
    provider = case.make()
    async with _mock(name, provider) as mock:
        async with _engine(mock, provider) as engine:
            first = await engine.send(Job("j1", {"n": "1"}), {"amount": 100})
        async with _engine(mock, provider) as other:  # another worker: no shared memory of the first
            again = await other.send(Job("j1", {"n": "1"}), {"amount": 100})
    assert mock.sends == 1 and mock.double_sends() == {}
    assert not first.replayed
    assert (first.id is not None) is case.has_id
    assert again.id == first.id
    assert again.replayed is case.replay_signal
    request = mock.requests[0]
    if provider.key_field is None:
        assert request.header(provider.idempotency_header) == "k:1"
    else:
        assert request.header("Idempotency-Key") is None


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_preset_reads_its_providers_in_flight_answer(name: str) -> None:
    provider = CASES[name].make()
    async with _mock(name, provider) as mock, _engine(mock, provider) as engine:
        mock.script("in_flight")
        result = await engine.send(Job("j2", {"n": "2"}), {"amount": 100})
    assert [t.outcome for t in result.tries] == [CASES[name].in_flight, "sent"]
    assert mock.sends == 1


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_preset_reads_its_providers_answer_to_the_key_with_another_body(name: str) -> None:
    case = CASES[name]
    provider = case.make()
    async with _mock(name, provider) as mock, _engine(mock, provider) as engine:
        first = await engine.send(Job("j3", {"n": "3"}), {"amount": 100})
        outcome: SendResult | Exception
        try:
            outcome = await engine.send(Job("j3b", {"n": "3"}), {"amount": 999})
        except (FatalError, RetryableError) as exc:
            outcome = exc
    assert mock.sends == 1, "the key never runs twice, whatever the provider answers"
    if case.mismatch == "mismatch":
        assert isinstance(outcome, MismatchError)
    elif case.mismatch.startswith("fatal:"):
        assert isinstance(outcome, FatalError) and not isinstance(outcome, MismatchError)
        assert outcome.code == case.mismatch.split(":", 1)[1]
    elif case.mismatch == "sent":
        assert isinstance(outcome, SendResult) and outcome.id == first.id
    else:
        assert isinstance(outcome, RetryableError) and outcome.maybe_sent


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_preset_retries_a_503_and_a_lost_answer_with_the_same_key(name: str) -> None:
    provider = CASES[name].make()
    async with _mock(name, provider) as mock, _engine(mock, provider) as engine:
        mock.script("5xx", "lost")
        result = await engine.send(Job("j4", {"n": "4"}), {"amount": 100})
    assert mock.sends == 1
    assert [t.outcome for t in result.tries] == ["retry", "error", "sent"]
    assert len({r.body for r in mock.requests}) == 1
