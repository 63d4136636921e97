"""The job id rule, the payload, and the outcome mapping in JetStream's terms (pure)."""

from __future__ import annotations

import pytest

from idemsend import FatalError, RetryableError

from .conftest import needs_nats

needs_nats()

from idemsend.adapters import GiveUp, RetryIn, Succeeded  # noqa: E402
from idemsend.adapters.nats import (  # noqa: E402
    BAD_MESSAGE,
    MAX_JOB_ID_LENGTH,
    Ack,
    BadMessageError,
    JetStreamMessage,
    Nak,
    NatsOutcome,
    Term,
    job_id_of,
    read_message,
    settle,
)

PAYLOAD = b'{"data": {"user_id": "u1"}, "body": {"to": ["u1@example.com"]}}'


def message(headers: dict[str, str] | None = None, data: bytes = PAYLOAD, seq: int = 42) -> JetStreamMessage:
    return JetStreamMessage(stream="EMAILS", consumer="w", stream_seq=seq, num_delivered=1, subject="e.w",
                            data=data, headers=headers or {})


def test_the_job_id_is_the_nats_msg_id_header() -> None:
    assert job_id_of(message({"Nats-Msg-Id": "job-7"})) == "job-7"
    assert job_id_of(message({"nats-msg-id": "job-8"})) == "job-8"  # headers are case-insensitive


def test_without_the_header_the_job_id_is_the_stream_and_its_sequence() -> None:
    assert job_id_of(message(seq=42)) == "EMAILS:42"
    # a stream made again starts its sequences over: its creation time keeps the ids apart
    again = JetStreamMessage(stream="EMAILS", consumer="w", stream_seq=42, num_delivered=1, subject="e.w",
                             data=PAYLOAD, stream_created=1_700_000_000_000_000)
    assert job_id_of(again) == "EMAILS:1700000000000000:42"
    # a republish of the same job is a new message: a new sequence, so a new job id (hence the header)
    assert job_id_of(message(seq=43)) != job_id_of(message(seq=42))


def test_require_msg_id_refuses_a_message_without_the_header() -> None:
    with pytest.raises(BadMessageError, match="no Nats-Msg-Id header"):
        job_id_of(message(), require_msg_id=True)


@pytest.mark.parametrize("bad", ["", " ", "a b", "tab\there", "nul\x00", "é", "x" * (MAX_JOB_ID_LENGTH + 1), "\u202e"])
def test_a_header_that_is_not_a_usable_job_id_is_a_bad_message(bad: str) -> None:
    with pytest.raises(BadMessageError, match="Nats-Msg-Id header must be") as caught:
        job_id_of(message({"Nats-Msg-Id": bad}))
    assert caught.value.code == BAD_MESSAGE
    assert bad not in str(caught.value) or bad.isascii()  # shown escaped, never raw


def test_the_longest_header_is_a_job_id() -> None:
    assert job_id_of(message({"Nats-Msg-Id": "x" * MAX_JOB_ID_LENGTH})) == "x" * MAX_JOB_ID_LENGTH


def test_read_message_gives_the_job_and_the_body() -> None:
    job, body = read_message(message({"Nats-Msg-Id": "job-1"}))
    assert (job.id, dict(job.data), body) == ("job-1", {"user_id": "u1"}, {"to": ["u1@example.com"]})


@pytest.mark.parametrize(("data", "words"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"data": {}, "body": NaN}', "NaN is not valid JSON"),
    (b'{"data": {}}', '"body"'),
    (b'{"data": [], "body": {}}', '"data" must be a JSON object'),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not JSON"),
    (b"", "not JSON"),
])
def test_a_payload_that_can_never_be_sent_is_a_bad_message(data: bytes, words: str) -> None:
    with pytest.raises(BadMessageError, match=words):
        read_message(message({"Nats-Msg-Id": "job-1"}, data=data))


def test_settle_maps_each_outcome_to_one_call() -> None:
    assert settle(Succeeded({"state": "sent"})) == Ack()
    assert settle(RetryIn(2.5, RetryableError("x", reason="http_503"))) == Nak(2.5)
    fatal = settle(GiveUp(FatalError("no such template", code="HTTP_422"), retryable=False))
    assert isinstance(fatal, Term) and fatal.reason.startswith("HTTP_422: ")
    failed = settle(GiveUp(RetryableError("still down", reason="http_503"), retryable=True))
    assert isinstance(failed, Term) and failed.reason.startswith("http_503: ")
    with pytest.raises(TypeError):
        settle("sent")  # type: ignore[arg-type]


def test_the_outcome_record_names_the_message() -> None:
    tried = NatsOutcome(message({"Nats-Msg-Id": "job-1"}), "job-1",
                        GiveUp(BadMessageError("bad"), retryable=False))
    record = tried.record()
    assert record["state"] == "fatal" and record["code"] == BAD_MESSAGE
    assert (record["stream"], record["stream_seq"], record["job_id"], record["attempt"]) == ("EMAILS", 42, "job-1", 1)
    assert tried.final and not NatsOutcome(tried.message, "job-1", RetryIn(1.0, RetryableError("x"))).final
