"""Every row of the guard's two decision tables (``idemsend._decide``), without a ledger:
what a claim's answer means for a send, and how an outcome settles the record."""

from __future__ import annotations

import asyncio

import pytest

from idemsend import (
    FatalError,
    MismatchError,
    RetryableError,
    SendResult,
    SetupError,
    TransportError,
    UnstableKeyError,
)
from idemsend._decide import (
    MAX_RECORDED_RESPONSE,
    Answer,
    Complete,
    Fail,
    Refuse,
    Release,
    Send,
    Stale,
    Wait,
    on_claim,
    settle,
)
from idemsend._errors import MAY_HAVE_RUN, fatal_error
from idemsend.ledger import Busy, Claimed, Conflict, Done, Failed, Unstable

DAY = 86_400.0
STALE_AFTER = DAY - 3600.0


def claimed(*, fresh: bool, age: float = 0.0, fingerprint: str = "fp1", payload: bytes = b"first") -> Claimed:
    return Claimed(fresh=fresh, payload=payload, fingerprint=fingerprint, first_sent_at=1.0e9, age=age)


def decide(claim: object, fingerprint: str = "fp1") -> object:
    return on_claim(claim, key="k", job_id="j", fingerprint=fingerprint, stale_after=STALE_AFTER)  # type: ignore[arg-type]


# -- on_claim -------------------------------------------------------------------------------


def test_a_fresh_claim_sends_its_own_body() -> None:
    claim = claimed(fresh=True)
    assert decide(claim) == Send(claim, b"first", "fp1", drifted=False)


def test_a_fresh_claim_is_never_stale_whatever_its_age() -> None:
    # a fresh record's age is 0 by construction; even a nonsense age must not fail a first send
    claim = claimed(fresh=True, age=10 * DAY)
    assert isinstance(decide(claim), Send)


def test_a_resumed_claim_within_the_window_sends_the_frozen_body_and_notes_drift() -> None:
    claim = claimed(fresh=False, age=STALE_AFTER, fingerprint="fp-first", payload=b"first bytes")
    decision = decide(claim, fingerprint="fp-now")
    assert decision == Send(claim, b"first bytes", "fp-first", drifted=True)


def test_a_resumed_claim_past_the_window_less_the_margin_is_stale() -> None:
    claim = claimed(fresh=False, age=STALE_AFTER + 0.001)
    assert decide(claim) == Stale(claim)


def test_a_done_record_answers_and_notes_drift_only_with_a_recorded_fingerprint() -> None:
    done = Done(response={"id": "e1", "status": 200}, fingerprint="fp-first")
    assert decide(done, fingerprint="fp-first") == Answer(done, drifted=False)
    assert decide(done, fingerprint="fp-now") == Answer(done, drifted=True)
    legacy = Done(response={"id": "e1"}, fingerprint="")
    assert decide(legacy, fingerprint="fp-now") == Answer(legacy, drifted=False)


def test_a_fatal_record_refuses_with_its_recorded_error() -> None:
    decision = decide(Failed(code="INVALID_EMAIL", message="no such mailbox"))
    assert isinstance(decision, Refuse) and type(decision.error) is FatalError
    assert decision.error.code == "INVALID_EMAIL" and "recorded in the ledger" in str(decision.error)
    assert decision.error.maybe_sent is False


def test_a_fatal_record_that_may_have_run_says_so_when_replayed() -> None:
    decision = decide(Failed(code="INVALID_EMAIL", message=f"no such mailbox; {MAY_HAVE_RUN}"))
    assert isinstance(decision, Refuse) and decision.error.maybe_sent is True


def test_an_unstable_key_refuses_naming_both_keys() -> None:
    decision = decide(Unstable(recorded_key="k-old"))
    assert isinstance(decision, Refuse) and isinstance(decision.error, UnstableKeyError)
    assert decision.error.recorded_key == "k-old" and "'k'" in str(decision.error)


def test_a_conflict_refuses_as_a_mismatch() -> None:
    decision = decide(Conflict(recorded_fingerprint="abcdef0123456789"))
    assert isinstance(decision, Refuse) and isinstance(decision.error, MismatchError)
    assert "abcdef012345" in str(decision.error)


def test_a_busy_key_waits_with_the_leases_hint() -> None:
    assert decide(Busy(retry_after=12.5)) == Wait(12.5)


# -- settle ---------------------------------------------------------------------------------


def result(response: object = None) -> SendResult:
    return SendResult(key="k", id="e1", status=201, response=response, replayed=False, attempts=1,
                      fingerprint="fp1", job_id="j")


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("maybe_sent", [True, False])
def test_a_result_completes_keeping_a_small_body(fresh: bool, maybe_sent: bool) -> None:
    decision = settle(result({"id": "e1"}), fresh=fresh, maybe_sent=maybe_sent, body_size=MAX_RECORDED_RESPONSE)
    assert decision == Complete({"id": "e1", "status": 201, "response": {"id": "e1"}})


def test_a_result_over_the_recorded_size_keeps_only_its_id_and_status() -> None:
    decision = settle(result({"id": "e1"}), fresh=True, maybe_sent=True, body_size=MAX_RECORDED_RESPONSE + 1)
    assert decision == Complete({"id": "e1", "status": 201, "response": None})


def test_a_fatal_answer_fails_the_key_with_its_detail() -> None:
    error = fatal_error("INVALID_EMAIL", "no such mailbox", "k", maybe_sent=True)
    decision = settle(error, fresh=True, maybe_sent=True, body_size=10)
    assert decision == Fail("INVALID_EMAIL", error.detail) and error.detail.endswith(MAY_HAVE_RUN)


def test_a_mismatch_is_recorded_as_a_fatal() -> None:
    error = fatal_error("MISMATCH", "the key ran with another body", "k")
    assert isinstance(settle(error, fresh=False, maybe_sent=True, body_size=0), Fail)


@pytest.mark.parametrize(
    ("fresh", "maybe_sent", "forget"),
    [(True, False, True), (True, True, False), (False, False, False), (False, True, False)],
)
@pytest.mark.parametrize(
    "error",
    [
        fatal_error("UNAUTHORIZED", "the API key was refused", "k", setup=True),
        RetryableError("HTTP 503", key="k", reason="provider"),
        TransportError("connection reset", kind="network"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
    ],
    ids=["setup", "retryable", "transport", "cancelled", "interrupt"],
)
def test_a_setup_error_or_an_unknown_outcome_releases_forgetting_only_a_fresh_claim_that_ran_nothing(
    error: BaseException, fresh: bool, maybe_sent: bool, forget: bool
) -> None:
    if isinstance(error, SetupError):
        assert isinstance(error, FatalError)  # the setup row must win over the fatal one
    assert settle(error, fresh=fresh, maybe_sent=maybe_sent, body_size=0) == Release(forget=forget)
