"""The record glue every ledger shares (ledger/_records.py), without a store: the done
record's JSON (byte for byte what older workers read), the answer and state tables, the
decoding of a stored record, the conflict rule, and ``Recorded``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from idemsend.ledger import Done, LedgerRecord, LedgerUnavailableError, Recorded
from idemsend.ledger._records import (
    SETTLE_RESULTS,
    conflicts,
    decode_response,
    done,
    encode_response,
    ledger_record,
    malformed,
    settle_result,
)

RESPONSES: list[Any] = [
    {"id": "em_1", "status": 200, "response": None},
    {"id": "em_1", "status": 202, "response": {"id": "em_1", "to": ["ada@example.com"], "n": 1.5, "ok": True}},
    {"id": None, "status": 200, "response": "é ✓ \u0000 \ud800 \"quoted\" \\ / \n"},
    {"z": 1, "a": [1, 2.0, -0.0, 1e300, math.inf, -math.inf], "m": {"x": {"y": {}}}},
    {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
    {},
]


@pytest.mark.parametrize("response", RESPONSES)
def test_the_stored_json_is_json_dumps_compact(response: Any) -> None:
    """Older workers read the JSON newer ones write: it must stay json.dumps' compact text."""
    assert encode_response(response) == json.dumps(response, separators=(",", ":"))


def test_the_engines_done_record_bytes_are_pinned() -> None:
    """What the engine records for a send (id, status, the small body), as stored."""
    recorded = Recorded("em_1", 202, {"ok": True})
    assert encode_response(recorded.as_response()) == '{"id":"em_1","status":202,"response":{"ok":true}}'
    assert encode_response(Recorded("em_2").as_response()) == '{"id":"em_2","status":200,"response":null}'


def test_encoding_fails_as_json_dumps_does() -> None:
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        encode_response({"x": object()})
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        encode_response(circular)


@pytest.mark.parametrize("response", RESPONSES[:4])
def test_decode_reads_what_encode_wrote(response: Any) -> None:
    text = encode_response(response)
    assert encode_response(decode_response(text)) == text
    assert decode_response(text.encode()) == decode_response(text)


@pytest.mark.parametrize(("reply", "result"), [
    ("ok", "ok"), ("recreated", "recreated"), ("missing", "missing"), ("superseded", "superseded"),
    (1, "ok"), (2, "recreated"), (3, "missing"), (4, "superseded"),
])
def test_settle_results_by_name_and_by_number(reply: object, result: str) -> None:
    assert settle_result(reply) == result
    if isinstance(reply, int):  # the Redis scripts' numbers: the place in SETTLE_RESULTS, from 1
        assert SETTLE_RESULTS[reply - 1] == result


@pytest.mark.parametrize("reply", [0, 5, "OK", b"ok", None, ["ok"], {"ok": 1}, 1.5])
def test_any_other_settle_answer_is_a_store_failure(reply: object) -> None:
    with pytest.raises(LedgerUnavailableError, match="unexpected ledger answer"):
        settle_result(reply)


@pytest.mark.parametrize(("recorded_job", "recorded_fp", "job", "fp", "conflict"), [
    ("j1", "f1", "j2", "f2", True),  # another job, another body
    ("j1", "f1", "j1", "f2", False),  # the same job: a drifted body is not a conflict
    ("j1", "f1", "j2", "f1", False),  # another job, the same body
    ("", "", "j2", "f2", False),  # recreated (job and fingerprint unknown): never a conflict
    ("j1", "", "j2", "f2", False),
])
def test_conflicts(recorded_job: str, recorded_fp: str, job: str, fp: str, conflict: bool) -> None:
    assert conflicts(recorded_job, recorded_fp, job, fp) is conflict


def test_done_decodes_the_stored_response() -> None:
    answer = done(b'{"id":"em_1","status":201,"response":null}', "f1")
    assert answer == Done({"id": "em_1", "status": 201, "response": None}, "f1")
    assert answer.recorded == Recorded("em_1", 201, None)


def test_ledger_record_decodes_and_keeps_the_lease_only_in_flight() -> None:
    in_flight = ledger_record("k", "in_flight", job_id="j", fingerprint="f", first_sent_at=1.0, response=None,
                              lease_until=31.0)
    assert in_flight == LedgerRecord("k", "in_flight", "j", "f", 1.0, lease_until=31.0)
    done_record = ledger_record("k", "done", job_id="j", fingerprint="f", first_sent_at=1.0,
                                response='{"id":"x"}', lease_until=31.0)
    assert done_record == LedgerRecord("k", "done", "j", "f", 1.0, response={"id": "x"})
    fatal = ledger_record("k", "fatal", job_id="j", fingerprint="f", first_sent_at=1.0, response=None,
                          code="BAD", message="no")
    assert fatal == LedgerRecord("k", "fatal", "j", "f", 1.0, code="BAD", message="no")


@pytest.mark.parametrize(("state", "response"), [("gone", None), ("done", "{not json")])
def test_an_unreadable_record_is_a_value_error(state: str, response: str | None) -> None:
    with pytest.raises(ValueError):
        ledger_record("k", state, job_id="j", fingerprint="f", first_sent_at=1.0, response=response)
    error = malformed("k", "why")
    assert isinstance(error, LedgerUnavailableError) and str(error) == "malformed ledger record for key 'k': why"


def test_recorded_reads_any_mapping_as_the_guard_does() -> None:
    assert Recorded.of({"id": "em_1", "status": 202, "response": [1]}) == Recorded("em_1", 202, [1])
    assert Recorded.of({"id": "x"}) == Recorded("x", 200, None)  # a ledger may have been handed any mapping
    assert Recorded.of({}) == Recorded(None, 200, None)
    assert Recorded.of({"id": "x", "status": "201"}).status == 201
    assert list(Recorded("em_1", 202, None).as_response()) == ["id", "status", "response"]
