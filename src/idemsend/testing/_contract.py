"""ProviderContract: the Sendoka idempotency contract as a pure object, without a socket.

It implements ``provider-idempotency-contract.txt`` (``docs/provider-contract.md``) and
counts real executions, so a test can assert "exactly one send per job":

1. the first call with a key runs (``processing_delay``) and stores
   {key -> response, body hash} for ``window`` seconds from the first send;
2. same key + same body -> the stored response, with ``Idempotent-Replayed: true``;
3. same key + different body -> 409 ``IDEMPOTENCY_MISMATCH``;
4. same key while the first is still processing (up to ``in_flight_window``) ->
   409 ``IDEMPOTENCY_IN_FLIGHT``;
5. ``POST /api/v1/emails/batch`` takes a list and rejects an ``Idempotency-Key`` (400).

Faults, each as a rate (``Faults``) and as a scripted sequence (``script``): ``"5xx"``
(503 before processing), ``"429"`` (with ``Retry-After``), ``"lost"`` (the send is
committed, then the answer is lost: ``ProviderAnswer.lost``), ``"in_flight"`` (a 409
IN_FLIGHT without processing), ``"gone"`` (scripted only: a 410 Gone before processing)
and ``latency`` (added before answering).

Nothing here does I/O or reads the time or a random number on its own: the clock (the
window), the arrival stamps and the fault draws are injected. Time that passes inside one
request (``latency``, processing) is a ``Wait`` step the caller plays out; the body is read
when the contract asks for it (``ReadBody``), after the caller is authenticated, as a server
would. ``handle`` runs a request through in one go (waits skipped); ``MockProvider`` (aiohttp)
and ``contract_transport`` (a ``MockTransport``) play the same steps with real awaits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "BATCH_PATH", "EMAILS_PATH", "FAULTS", "MAX_KEY_LENGTH",
    "Exchange", "Faults", "ProviderAnswer", "ProviderContract", "ProviderRequest", "ProviderStats", "ReadBody", "Wait",
]

FAULTS = ("5xx", "429", "lost", "in_flight", "gone")
MAX_KEY_LENGTH = 255
EMAILS_PATH = "/api/v1/emails"
BATCH_PATH = EMAILS_PATH + "/batch"


@dataclass(slots=True)
class Faults:
    """Random fault rates, each in [0, 1], drawn per request in the order 5xx, 429,
    in_flight, lost. ``latency`` seconds are added to every answer."""

    rate_5xx: float = 0.0
    rate_429: float = 0.0
    rate_lost: float = 0.0
    rate_in_flight: float = 0.0
    latency: float = 0.0
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        rates = (self.rate_5xx, self.rate_429, self.rate_lost, self.rate_in_flight)
        # a small tolerance: 0.4 + 0.2 + 0.3 + 0.1 is 1.0000000000000002 in floating point
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and add up to at most 1, got {rates}")


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One POST to the provider: its path (``/api/v1/emails``), headers and body bytes."""

    path: str
    headers: Mapping[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), or None."""
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """The provider's answer: a status, a JSON body and extra headers. ``lost``: the send
    is committed but the client never hears the answer (the connection is dropped)."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    lost: bool = False

    @property
    def code(self) -> str | None:
        """The error code (``IDEMPOTENCY_MISMATCH``...), or None for an answer that is no error."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    @property
    def replayed(self) -> bool:
        """Whether this is a stored answer replayed (``Idempotent-Replayed: true``)."""
        return _header(self.headers, "Idempotent-Replayed") == "true"

    def content(self) -> bytes:
        """The body as the server writes it (``json.dumps``, as aiohttp's ``json_response``);
        nothing for a ``None`` body (a 204)."""
        return b"" if self.body is None else json.dumps(self.body).encode()


@dataclass(frozen=True, slots=True)
class ReadBody:
    """A step: the contract needs the request's body now (answer it with the bytes)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """A step: ``seconds`` pass before the contract goes on (``latency`` or ``processing``).
    While a ``processing`` wait runs, the key is in flight."""

    seconds: float
    why: Literal["latency", "processing"]


#: One request, step by step: yields ``ReadBody`` (send the body bytes back) and ``Wait``
#: (send None back), returns the answer.
Exchange = Generator[ReadBody | Wait, bytes | None, ProviderAnswer]


@dataclass(slots=True)
class _Record:
    body_hash: str
    created: float
    done: bool = False
    status: int = 0
    response: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ProviderStats:
    """What the provider counted: requests to the send endpoint, real executions (per key),
    faults by kind, replays, 409s, mismatches, and requests being answered at once."""

    requests: int = 0
    sends: int = 0
    sends_by_key: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    replays: int = 0
    in_flight_409: int = 0
    mismatches: int = 0
    concurrency: int = 0
    max_concurrency: int = 0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> ProviderAnswer:
    return ProviderAnswer(status, {"error": {"code": code, "message": message}}, headers or {})


class ProviderContract:
    """The contract's state and rules: ``handle(request)`` answers one request at once;
    ``exchange(path, headers)`` answers it step by step (see ``Exchange``), so a caller can
    let time pass while a send is processing.

    Every request must carry ``Authorization: Bearer <api_key>``; ``api_key=None`` accepts any
    non-empty bearer token. ``clock`` (seconds) drives the window and the in-flight window;
    ``arrival_clock`` stamps ``arrivals[key]`` (wall time by default, so waits between tries
    can be measured while ``clock`` is frozen); ``draw`` gives the number in [0, 1) each
    request's random fault is drawn from. ``arrivals[key]`` holds the arrival time of every
    authorized request with that ``Idempotency-Key``, whatever it was answered (a body refused
    with 400 or 422 included).

    Every provider shape: ``key_header`` names the header the key comes in
    (``"webhook-id"``, ``"PayPal-Request-Id"``...), or ``key_field`` a dotted path into the
    JSON body it comes in instead (``"idempotency_key"``); ``signing_secret`` (``whsec_...``)
    makes it verify Standard Webhooks signatures as a receiver does, refusing a stale or
    future timestamp (5 minutes, on ``arrival_clock``) or a signature that does not match with
    401; ``dialect`` words its answers as a preset's provider does (``_dialects.DIALECTS``).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-api-key",
        processing_delay: float = 0.0,
        window: float = 24 * 3600.0,
        in_flight_window: float = 30.0,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        arrival_clock: Callable[[], float] = time.time,
        draw: Callable[[], float] | None = None,
        key_header: str = "Idempotency-Key",
        key_field: str | None = None,
        signing_secret: str | None = None,
        dialect: str = "sendoka",
        record_requests: bool = False,
    ) -> None:
        from ._dialects import dialect as find_dialect

        self.api_key = api_key
        self.key_header = key_header
        self.key_field = tuple(key_field.split(".")) if key_field else None
        self.verifier = SignatureCheck(signing_secret, clock=arrival_clock) if signing_secret else None
        self.dialect = find_dialect(dialect)
        self.record_requests = record_requests
        #: every authorized request to the send endpoint (when ``record_requests``): headers and body
        self.requests: list[ProviderRequest] = []
        self.processing_delay = processing_delay
        self.window = window
        self.in_flight_window = in_flight_window
        self.faults = faults or Faults()
        self.clock = clock
        self.arrival_clock = arrival_clock
        self.draw = draw or random.Random().random
        self._records: dict[str, _Record] = {}
        self._script: deque[str] = deque()
        self._key_scripts: dict[str, deque[str]] = {}
        self._ids = itertools.count(1)
        self.key_delays: dict[str, float] = {}
        self.arrivals: dict[str, list[float]] = {}
        self.stats = ProviderStats()

    # -- what a test sets and reads --------------------------------------------------

    @property
    def sends(self) -> int:
        """Real executions (a replay is not one)."""
        return self.stats.sends

    @property
    def sends_by_key(self) -> Counter[str]:
        """Real executions per idempotency key."""
        return self.stats.sends_by_key

    def sends_for(self, key: str) -> int:
        """Real executions of ``key``."""
        return self.stats.sends_by_key[key]

    def double_sends(self) -> dict[str, int]:
        """Keys executed more than once, with their counts."""
        return {k: n for k, n in self.stats.sends_by_key.items() if n > 1}

    def script(self, *faults: str | None, key: str | None = None) -> None:
        """Queue faults for the next requests (of ``key``, or of any key). ``None`` in
        the sequence means "no fault" for that request."""
        for fault in faults:
            if fault is not None and fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        target = self._script if key is None else self._key_scripts.setdefault(key, deque())
        target.extend(f or "none" for f in faults)

    def delay(self, key: str, seconds: float) -> None:
        """Process ``key`` slowly (on top of ``processing_delay``): time to kill a worker."""
        self.key_delays[key] = seconds

    def reset(self) -> None:
        """Forget every key, script, delay and counter."""
        self.key_delays.clear()
        self.arrivals.clear()
        self._records.clear()
        self._script.clear()
        self._key_scripts.clear()
        self.stats = ProviderStats()

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data (what ``GET /_mock/stats`` answers)."""
        s = self.stats
        return {
            "requests": s.requests,
            "sends": s.sends,
            "sends_by_key": dict(s.sends_by_key),
            "faults": dict(s.faults),
            "replays": s.replays,
            "in_flight_409": s.in_flight_409,
            "mismatches": s.mismatches,
            "max_concurrency": s.max_concurrency,
            "arrivals": self.arrivals,
        }

    # -- answering -------------------------------------------------------------------

    def handle(self, request: ProviderRequest) -> ProviderAnswer:
        """Answer ``request`` at once: its body is read when asked for, and waits are skipped."""
        exchange = self.exchange(request.path, request.headers)
        try:
            step = next(exchange)
            while True:
                step = exchange.send(request.body if isinstance(step, ReadBody) else None)
        except StopIteration as stop:
            answer: ProviderAnswer = stop.value
            return answer

    def exchange(self, path: str, headers: Mapping[str, str]) -> Exchange:
        """Answer a POST to ``path`` step by step (``Exchange``); an unknown path is a 404."""
        if path == EMAILS_PATH:
            return self._send(headers)
        if path == BATCH_PATH:
            return self._batch(headers)
        return self._not_found(path)

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        auth = _header(headers, "Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[7:]:
            return False
        return self.api_key is None or auth[7:] == self.api_key

    def _next_fault(self, key: str | None) -> str | None:
        queue = self._key_scripts.get(key) if key is not None else None
        if queue:
            fault = queue.popleft()
        elif self._script:
            fault = self._script.popleft()
        else:
            f, r = self.faults, self.draw()
            for name, rate in (
                ("5xx", f.rate_5xx), ("429", f.rate_429), ("in_flight", f.rate_in_flight), ("lost", f.rate_lost)
            ):
                if r < rate:
                    return name
                r -= rate
            return None
        return None if fault == "none" else fault

    def _send(self, headers: Mapping[str, str]) -> Exchange:
        stats = self.stats
        stats.requests += 1
        stats.concurrency += 1
        stats.max_concurrency = max(stats.max_concurrency, stats.concurrency)
        try:
            return (yield from self._answer_send(headers))
        finally:
            stats.concurrency -= 1

    def _answer_send(self, headers: Mapping[str, str]) -> Exchange:
        if not self._authorized(headers):
            return _error(401, "UNAUTHORIZED", "missing or invalid API key")
        key = _header(headers, self.key_header) if self.key_field is None else None
        if key is not None:  # counted before any answer about the body, so a refused body is a try too
            self.arrivals.setdefault(key, []).append(self.arrival_clock())
        raw = yield from _read_body()
        if self.record_requests:
            self.requests.append(ProviderRequest(EMAILS_PATH, dict(headers), raw))
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "INVALID_JSON", "the body is not JSON")
        if not isinstance(body, dict):
            return _error(422, "VALIDATION_ERROR", "the body must be a JSON object")
        if self.key_field is not None:
            found = _dig(body, self.key_field)
            if found is not None and not isinstance(found, str):
                return _error(400, "INVALID_IDEMPOTENCY_KEY", f"{'.'.join(self.key_field)} must be a string")
            key = found
            if key is not None:
                self.arrivals.setdefault(key, []).append(self.arrival_clock())
        if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
            return _error(400, "INVALID_IDEMPOTENCY_KEY", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        if self.verifier is not None:
            refused = self.verifier.check(headers, raw)
            if refused is not None:
                self.stats.faults["bad_signature"] += 1
                return _error(401, "INVALID_SIGNATURE", refused)
        if self.faults.latency:
            yield Wait(self.faults.latency, "latency")
        fault = self._next_fault(key)
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault == "5xx":
            return _error(503, "SERVICE_UNAVAILABLE", "try again later")
        if fault == "429":
            return _error(429, "RATE_LIMITED", "too many requests", {"Retry-After": f"{self.faults.retry_after:g}"})
        if fault == "in_flight":
            self.stats.in_flight_409 += 1
            return self.dialect.in_flight()
        if fault == "gone":  # scripted only: the endpoint asks to stop receiving (Standard Webhooks 410)
            return _error(410, "GONE", "this endpoint no longer receives webhooks")

        body_hash = hashlib.sha256(raw).hexdigest()
        now = self.clock()
        record = self._records.get(key) if key is not None else None
        if record is not None and now - record.created >= self.window:
            record = None  # the window starts at first send; after it the key is forgotten
        if record is not None and not record.done and now - record.created >= self.in_flight_window:
            record = None  # abandoned processing
        if record is not None:
            if not record.done:
                self.stats.in_flight_409 += 1
                return self.dialect.in_flight()
            stored = ProviderAnswer(record.status, record.response, record.headers)
            if record.body_hash != body_hash:
                self.stats.mismatches += 1
                return self.dialect.mismatch(stored)
            self.stats.replays += 1
            return replace(self.dialect.replay(stored), lost=fault == "lost")

        if key is not None:
            record = self._records[key] = _Record(body_hash=body_hash, created=now)
        delay = self.processing_delay + (self.key_delays.get(key, 0.0) if key is not None else 0.0)
        if delay:
            yield Wait(delay, "processing")
        answer = self.dialect.sent(f"em_{next(self._ids):08d}", body)
        self.stats.sends += 1
        if key is not None:
            self.stats.sends_by_key[key] += 1
        if record is not None:
            record.done, record.status, record.response = True, answer.status, answer.body
            record.headers = answer.headers
        return replace(answer, lost=fault == "lost")

    def _batch(self, headers: Mapping[str, str]) -> Exchange:
        if not self._authorized(headers):
            return _error(401, "UNAUTHORIZED", "missing or invalid API key")
        if _header(headers, "Idempotency-Key") is not None:
            return _error(
                400, "IDEMPOTENCY_NOT_SUPPORTED",
                "batch endpoints don't support idempotency keys; use /api/v1/emails per message",
            )
        raw = yield from _read_body()
        try:
            items = json.loads(raw)
        except ValueError:
            return _error(400, "INVALID_JSON", "the body is not JSON")
        if not isinstance(items, list):
            return _error(422, "VALIDATION_ERROR", "the batch body must be a JSON list")
        data = []
        for _ in items:
            self.stats.sends += 1
            data.append({"id": f"em_{next(self._ids):08d}"})
        return ProviderAnswer(200, {"data": data})

    def _not_found(self, path: str) -> Exchange:
        return _error(404, "NOT_FOUND", f"no endpoint at {path}")
        yield  # a generator: nothing to wait for


def _read_body() -> Generator[ReadBody, bytes | None, bytes]:
    raw = yield ReadBody()
    if not isinstance(raw, bytes):
        raise TypeError(f"a ReadBody step is answered with the body's bytes, not {raw!r}")
    return raw


def _dig(body: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``body``, or None when the path is not there."""
    node: Any = body
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class SignatureCheck:
    """A Standard Webhooks receiver's check: ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature`` present, the timestamp within ``tolerance`` seconds of ``clock``
    (either side), and one of the space-separated ``v1,`` signatures the HMAC-SHA256 of
    ``"{id}.{timestamp}.{body}"`` with the secret. ``check`` returns why it refuses, or None."""

    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time, tolerance: float = 300.0) -> None:
        if not secret.startswith("whsec_"):
            raise ValueError("signing_secret must be a whsec_<base64> secret")
        self._key = base64.b64decode(secret[len("whsec_"):])
        self.clock = clock
        self.tolerance = tolerance

    def __repr__(self) -> str:
        return f"<SignatureCheck tolerance={self.tolerance:g}s [redacted]>"

    def check(self, headers: Mapping[str, str], raw: bytes) -> str | None:
        """None when the request is signed as the spec says; else the reason it is refused."""
        names = ("webhook-id", "webhook-timestamp", "webhook-signature")
        msg_id, stamp, signatures = (_header(headers, n) for n in names)
        if not (msg_id and stamp and signatures):
            return "missing webhook-id, webhook-timestamp or webhook-signature"
        try:
            when = int(stamp)
        except ValueError:
            return "webhook-timestamp is not a whole number of seconds"
        if abs(self.clock() - when) > self.tolerance:
            return f"webhook-timestamp is more than {self.tolerance:g}s away from now: refused as stale"
        digest = hmac.new(self._key, f"{msg_id}.{when}.".encode() + raw, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        if not any(hmac.compare_digest(expected, given) for given in signatures.split(" ")):
            return "no webhook-signature matches"
        return None
