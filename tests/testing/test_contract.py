"""The provider contract without a socket: ``ProviderContract.handle`` answers every request
the contract documents, with its clock and fault draws injected, so each answer is exact."""

from __future__ import annotations

import json
from typing import Any

import pytest

from idemsend.testing import Faults, ProviderAnswer, ProviderContract, ProviderRequest
from idemsend.testing._contract import EMAILS_PATH, Exchange, ReadBody, Wait

AUTH = {"Authorization": "Bearer test-api-key"}
BODY = {"to": ["ada@example.com"]}


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(
    body: Any = BODY, key: str | None = "k1", *, path: str = EMAILS_PATH, auth: dict[str, str] | None = None
) -> ProviderRequest:
    headers = dict(AUTH if auth is None else auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ProviderRequest(path, headers, raw)


def contract(**options: Any) -> ProviderContract:
    options.setdefault("clock", Clock())
    options.setdefault("arrival_clock", Clock(5.0))
    options.setdefault("draw", lambda: 0.99)
    return ProviderContract(**options)


class Stepper:
    """One request driven step by step, as a server does while time passes."""

    def __init__(self, c: ProviderContract, req: ProviderRequest) -> None:
        self.req = req
        self.exchange: Exchange = c.exchange(req.path, req.headers)
        self.answer: ProviderAnswer | None = None
        self.steps: list[ReadBody | Wait] = []
        self._advance(None, first=True)

    def _advance(self, value: bytes | None, *, first: bool = False) -> None:
        try:
            step = next(self.exchange) if first else self.exchange.send(value)
            while isinstance(step, ReadBody):  # the body is there at once
                self.steps.append(step)
                step = self.exchange.send(self.req.body)
            self.steps.append(step)  # a Wait: stop here, time passes
        except StopIteration as stop:
            self.answer = stop.value

    def finish(self) -> ProviderAnswer:
        """Let the current wait pass, and every later one."""
        while self.answer is None:
            self._advance(None)
        return self.answer


# -- the documented answers ----------------------------------------------------------


def test_a_first_send_runs_and_answers_the_new_id() -> None:
    c = contract()
    answer = c.handle(request())
    assert answer == ProviderAnswer(200, {"id": "em_00000001", "object": "email", "to": BODY["to"]})
    assert not answer.replayed and not answer.lost and answer.code is None
    assert c.sends == 1 and c.sends_for("k1") == 1 and c.stats.requests == 1
    assert c.arrivals == {"k1": [5.0]}


def test_a_replay_within_the_window_is_the_stored_answer_marked_replayed() -> None:
    clock = Clock()
    c = contract(clock=clock)
    first = c.handle(request())
    clock.now += 24 * 3600 - 1
    again = c.handle(request())
    assert (again.status, again.body) == (first.status, first.body)
    assert again.replayed and again.headers == {"Idempotent-Replayed": "true"}
    assert c.sends == 1 and c.stats.replays == 1 and c.double_sends() == {}


def test_a_replay_after_the_window_runs_again() -> None:
    clock = Clock()
    c = contract(clock=clock, window=60)
    c.handle(request())
    clock.now += 60  # the window starts at the first send and ends 60 s later
    again = c.handle(request())
    assert again.status == 200 and not again.replayed and again.body["id"] == "em_00000002"
    assert c.sends == 2 and c.double_sends() == {"k1": 2}


def test_the_same_key_while_the_first_is_processing_is_in_flight() -> None:
    c = contract(processing_delay=0.5)
    first = Stepper(c, request())
    assert first.answer is None and first.steps == [ReadBody(), Wait(0.5, "processing")]
    second = c.handle(request())
    assert second.status == 409 and second.code == "IDEMPOTENCY_IN_FLIGHT"
    assert c.stats.in_flight_409 == 1 and c.sends == 0
    assert c.stats.concurrency == 1 and c.stats.max_concurrency == 2
    assert first.finish().status == 200
    assert c.handle(request()).replayed and c.sends == 1 and c.stats.concurrency == 0


def test_a_send_processing_past_the_in_flight_window_is_abandoned() -> None:
    clock = Clock()
    c = contract(clock=clock, processing_delay=1.0, in_flight_window=30)
    stuck = Stepper(c, request())
    clock.now += 30
    retry = Stepper(c, request())
    assert retry.answer is None  # not IN_FLIGHT: this one runs
    assert retry.finish().body["id"] == "em_00000001"
    assert stuck.finish().body["id"] == "em_00000002"
    assert c.sends_for("k1") == 2 and c.handle(request()).body["id"] == "em_00000001"


def test_a_request_that_is_dropped_while_processing_leaves_its_key_in_flight() -> None:
    c = contract(processing_delay=1.0)
    dropped = Stepper(c, request())
    dropped.exchange.close()  # the server cancelled it (or the wait raised)
    assert c.stats.concurrency == 0 and c.sends == 0
    assert c.handle(request()).code == "IDEMPOTENCY_IN_FLIGHT"


def test_the_same_key_with_another_body_is_a_mismatch() -> None:
    c = contract()
    c.handle(request())
    answer = c.handle(request({"to": ["bob@example.com"]}))
    assert answer.status == 409 and answer.code == "IDEMPOTENCY_MISMATCH"
    assert c.sends == 1 and c.stats.mismatches == 1


def test_a_mismatch_is_by_the_exact_bytes() -> None:
    c = contract()
    c.handle(request(b'{"to": ["a"]}'))
    assert c.handle(request(b'{"to":["a"]}')).code == "IDEMPOTENCY_MISMATCH"


@pytest.mark.parametrize(
    "auth", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer "}, {"Authorization": "test-api-key"}]
)
def test_a_request_without_the_api_key_is_401_before_its_body_is_read(auth: dict[str, str]) -> None:
    c = contract()
    unread = Stepper(c, request(auth=auth))
    assert unread.steps == []  # answered before asking for the body
    assert unread.answer is not None and unread.answer.status == 401 and unread.answer.code == "UNAUTHORIZED"
    assert c.stats.requests == 1 and c.arrivals == {} and c.sends == 0


def test_api_key_none_takes_any_bearer_token_and_headers_match_in_any_case() -> None:
    c = contract(api_key=None)
    answer = c.handle(request(key=None, auth={"authorization": "Bearer whatever"}))
    assert answer.status == 200
    assert c.handle(request(auth={"AUTHORIZATION": "Bearer x", "idempotency-key": "k9"})).status == 200
    assert c.sends_for("k9") == 1
    assert c.handle(request(key=None, auth={"Authorization": "Bearer "})).status == 401


@pytest.mark.parametrize(
    ("body", "key", "status", "code"),
    [
        (b"{", "k1", 400, "INVALID_JSON"),
        ([1, 2], "k1", 422, "VALIDATION_ERROR"),
        ("text", "k1", 422, "VALIDATION_ERROR"),
        (BODY, "x" * 256, 400, "INVALID_IDEMPOTENCY_KEY"),
        (BODY, "", 400, "INVALID_IDEMPOTENCY_KEY"),
    ],
)
def test_a_refused_body_or_key_is_answered_without_a_send_and_is_still_an_arrival(
    body: Any, key: str, status: int, code: str
) -> None:
    c = contract()
    answer = c.handle(request(body, key))
    assert (answer.status, answer.code) == (status, code)
    assert c.sends == 0 and c.stats.requests == 1 and c.arrivals == {key: [5.0]}


def test_a_key_of_255_characters_is_taken_and_a_request_without_a_key_always_runs() -> None:
    c = contract()
    assert c.handle(request(key="x" * 255)).status == 200
    assert [c.handle(request(key=None)).body["id"] for _ in range(2)] == ["em_00000002", "em_00000003"]
    assert c.sends == 3 and c.sends_by_key == {"x" * 255: 1}


# -- faults --------------------------------------------------------------------------


def test_a_5xx_fault_is_503_and_sends_nothing() -> None:
    c = contract()
    c.script("5xx")
    answer = c.handle(request())
    assert (answer.status, answer.code) == (503, "SERVICE_UNAVAILABLE")
    assert c.sends == 0 and c.stats.faults == {"5xx": 1}
    assert c.handle(request()).status == 200  # nothing was stored for the key


@pytest.mark.parametrize(("retry_after", "header"), [(1.0, "1"), (7, "7"), (0.5, "0.5")])
def test_a_429_fault_says_retry_after(retry_after: float, header: str) -> None:
    c = contract(faults=Faults(retry_after=retry_after))
    c.script("429")
    answer = c.handle(request())
    assert (answer.status, answer.code, answer.headers) == (429, "RATE_LIMITED", {"Retry-After": header})
    assert c.sends == 0


def test_an_in_flight_fault_is_409_without_processing() -> None:
    c = contract()
    c.script("in_flight")
    assert c.handle(request()).code == "IDEMPOTENCY_IN_FLIGHT"
    assert c.stats.in_flight_409 == 1 and c.sends == 0
    assert not c.handle(request()).replayed  # the key was not taken


def test_a_lost_fault_commits_the_send_and_loses_the_answer() -> None:
    c = contract()
    c.script("lost", "lost")
    lost = c.handle(request())
    assert lost.lost and lost.status == 200 and c.sends == 1
    replay = c.handle(request())  # a lost fault on a replay loses the replay too
    assert replay.lost and replay.replayed
    again = c.handle(request())
    assert again.replayed and not again.lost and again.body == lost.body and c.sends == 1
    assert c.stats.faults == {"lost": 2}


def test_latency_is_a_wait_before_the_answer() -> None:
    c = contract(faults=Faults(latency=0.25), processing_delay=0.1)
    c.delay("k1", 2.0)
    stepper = Stepper(c, request())
    assert stepper.steps == [ReadBody(), Wait(0.25, "latency")]
    assert stepper.finish().status == 200
    assert stepper.steps[-1] == Wait(2.1, "processing")  # processing_delay plus the key's own delay


def test_latency_comes_before_the_fault_is_drawn() -> None:
    draws: list[float] = []

    def draw() -> float:
        draws.append(0.0)
        return 0.0

    c = contract(faults=Faults(latency=1.0, rate_5xx=1.0), draw=draw)
    stepper = Stepper(c, request())
    assert draws == [] and stepper.answer is None
    assert stepper.finish().status == 503 and draws == [0.0]


def test_a_keys_script_comes_first_then_the_shared_one_and_none_is_no_fault() -> None:
    c = contract()
    c.script("5xx", None, "429")
    c.script("in_flight", key="k2")
    assert c.handle(request(key="k2")).status == 409  # its own script
    assert c.handle(request(key="k2")).status == 503  # then the shared one
    assert c.handle(request(key="k1")).status == 200  # None: no fault
    assert c.handle(request(key="k3")).status == 429
    assert c.handle(request(key="k4")).status == 200  # scripts used up: the (zero) rates
    with pytest.raises(ValueError, match="unknown fault"):
        c.script("explode")


@pytest.mark.parametrize(
    ("drawn", "status", "fault"),
    [(0.05, 503, "5xx"), (0.15, 429, "429"), (0.25, 409, "in_flight"), (0.35, 200, "lost"), (0.45, 200, None)],
)
def test_random_faults_are_drawn_in_order_from_the_injected_draw(drawn: float, status: int, fault: str | None) -> None:
    c = contract(faults=Faults(rate_5xx=0.1, rate_429=0.1, rate_in_flight=0.1, rate_lost=0.1), draw=lambda: drawn)
    answer = c.handle(request())
    assert answer.status == status and answer.lost == (fault == "lost")
    assert c.stats.faults == ({fault: 1} if fault else {})


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="add up to at most 1"):
        Faults(rate_5xx=0.7, rate_lost=0.7)
    Faults(rate_5xx=0.4, rate_429=0.2, rate_lost=0.3, rate_in_flight=0.1)  # 1.0000000000000002 is 1


# -- the batch endpoint, other paths, the body step, the counters ----------------------


def test_the_batch_endpoint_takes_a_list_and_refuses_a_key() -> None:
    c = contract()
    batch = EMAILS_PATH + "/batch"
    refused = c.handle(request([BODY], path=batch))
    assert (refused.status, refused.code) == (400, "IDEMPOTENCY_NOT_SUPPORTED")
    sent = c.handle(request([BODY, BODY], key=None, path=batch))
    assert sent == ProviderAnswer(200, {"data": [{"id": "em_00000001"}, {"id": "em_00000002"}]})
    assert c.handle(request(BODY, key=None, path=batch)).code == "VALIDATION_ERROR"
    assert c.handle(request(b"[", key=None, path=batch)).code == "INVALID_JSON"
    assert c.handle(request([BODY], key=None, path=batch, auth={})).status == 401
    assert c.sends == 2 and c.stats.requests == 0  # the counters of the send endpoint only


def test_an_unknown_path_is_404() -> None:
    c = contract()
    answer = c.handle(request(path="/api/v1/other"))
    assert (answer.status, answer.code) == (404, "NOT_FOUND") and c.stats.requests == 0


def test_a_body_step_must_be_answered_with_bytes() -> None:
    exchange = contract().exchange(EMAILS_PATH, {**AUTH, "Idempotency-Key": "k1"})
    assert next(exchange) == ReadBody()
    with pytest.raises(TypeError, match="body's bytes"):
        exchange.send(None)


def test_reset_forgets_keys_scripts_delays_and_counters() -> None:
    c = contract()
    c.handle(request())
    c.script("5xx")
    c.delay("k1", 3.0)
    c.reset()
    assert c.snapshot() == {
        "requests": 0, "sends": 0, "sends_by_key": {}, "faults": {}, "replays": 0, "in_flight_409": 0,
        "mismatches": 0, "max_concurrency": 0, "arrivals": {},
    }
    assert c.key_delays == {}
    assert not c.handle(request()).replayed


def test_the_answer_writes_what_aiohttp_would() -> None:
    answer = contract().handle(request())
    assert answer.content() == b'{"id": "em_00000001", "object": "email", "to": ["ada@example.com"]}'


def test_the_clocks_are_the_injected_ones() -> None:
    c = contract(arrival_clock=iter([10.0, 20.0, 30.0]).__next__)
    for _ in range(3):
        c.handle(request())
    assert c.arrivals == {"k1": [10.0, 20.0, 30.0]}
