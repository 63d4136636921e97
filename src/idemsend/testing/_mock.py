"""MockProvider: the Sendoka idempotency contract as a real aiohttp server.

It implements ``provider-idempotency-contract.txt`` exactly and counts real
executions, so a test can assert "exactly one send per job" at the provider:

1. the first call with a key runs (``processing_delay``) and stores
   {key -> response, body hash} for ``window`` seconds from the first send;
2. same key + same body -> the stored response, with ``Idempotent-Replayed: true``;
3. same key + different body -> 409 ``IDEMPOTENCY_MISMATCH``;
4. same key while the first is still processing (up to ``in_flight_window``) ->
   409 ``IDEMPOTENCY_IN_FLIGHT``;
5. ``POST /api/v1/emails/batch`` takes a list and rejects an ``Idempotency-Key`` (400).

Faults, each as a rate (``Faults``) and as a scripted sequence (``script``): ``"5xx"``
(503 before processing), ``"429"`` (with ``Retry-After``), ``"lost"`` (the send is
committed, then the connection is dropped before the response), ``"in_flight"`` (a
409 IN_FLIGHT without processing) and ``latency`` (added before answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = ["FAULTS", "Faults", "MockProvider"]

FAULTS = ("5xx", "429", "lost", "in_flight")
MAX_KEY_LENGTH = 255


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


@dataclass(slots=True)
class _Record:
    body_hash: str
    created: float
    done: bool = False
    status: int = 0
    response: Any = None


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    sends: int = 0
    sends_by_key: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    replays: int = 0
    in_flight_409: int = 0
    mismatches: int = 0
    concurrency: int = 0
    max_concurrency: int = 0


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class MockProvider:
    """``async with MockProvider() as p:`` serves the contract at ``p.url``.

    Every request must carry ``Authorization: Bearer <api_key>``: ``test-api-key`` by
    default (``idemsend mock-provider`` has the same default); ``api_key=None`` accepts any
    non-empty bearer token.
    ``clock`` (seconds) drives the window and the in-flight window, so a test can
    expire keys without waiting. ``arrivals[key]`` holds the arrival time of every
    authorized request with that ``Idempotency-Key``, whatever it was answered (a body
    refused with 400 or 422 included).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-api-key",
        host: str = "127.0.0.1",
        port: int = 0,
        processing_delay: float = 0.0,
        window: float = 24 * 3600.0,
        in_flight_window: float = 30.0,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.processing_delay = processing_delay
        self.window = window
        self.in_flight_window = in_flight_window
        self.faults = faults or Faults()
        self.clock = clock
        self._rng = random.Random(seed)
        self._records: dict[str, _Record] = {}
        self._script: deque[str] = deque()
        self._key_scripts: dict[str, deque[str]] = {}
        self._ids = itertools.count(1)
        self.key_delays: dict[str, float] = {}
        self.arrivals: dict[str, list[float]] = {}
        self.stats = _Stats()
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (to mount the MockProvider in your own server)."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/api/v1/emails", self._send)
        app.router.add_post("/api/v1/emails/batch", self._batch)
        app.router.add_get("/_mock/stats", self._stats)
        app.router.add_post("/_mock/reset", self._reset)
        app.router.add_post("/_mock/script", self._script_route)
        return app

    async def start(self) -> Self:
        """Listen on ``host:port`` (a free port when 0; read it back from ``port``)."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        # a deep accept queue: benchmarks open a thousand connections at once
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=4096)
        await site.start()
        server = site._server
        if server is not None and self.port == 0:
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """The base URL, ``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def emails_url(self) -> str:
        """The send endpoint, ``http://host:port/api/v1/emails``."""
        return f"{self.url}/api/v1/emails"

    # -- what a test reads -----------------------------------------------------------

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
        self.stats = _Stats()

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

    # -- handlers --------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
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
            f, r = self.faults, self._rng.random()
            for name, rate in (
                ("5xx", f.rate_5xx), ("429", f.rate_429), ("in_flight", f.rate_in_flight), ("lost", f.rate_lost)
            ):
                if r < rate:
                    return name
                r -= rate
            return None
        return None if fault == "none" else fault

    async def _send(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.concurrency += 1
        stats.max_concurrency = max(stats.max_concurrency, stats.concurrency)
        try:
            return await self._handle_send(request)
        finally:
            stats.concurrency -= 1

    async def _handle_send(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "UNAUTHORIZED", "missing or invalid API key")
        key = request.headers.get("Idempotency-Key")
        if key is not None:  # counted before any answer about the body, so a refused body is a try too
            self.arrivals.setdefault(key, []).append(time.time())
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "INVALID_JSON", "the body is not JSON")
        if not isinstance(body, dict):
            return _error(422, "VALIDATION_ERROR", "the body must be a JSON object")
        if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
            return _error(400, "INVALID_IDEMPOTENCY_KEY", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        fault = self._next_fault(key)
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault == "5xx":
            return _error(503, "SERVICE_UNAVAILABLE", "try again later")
        if fault == "429":
            return _error(
                429, "RATE_LIMITED", "too many requests",
                headers={"Retry-After": f"{self.faults.retry_after:g}"},
            )
        if fault == "in_flight":
            self.stats.in_flight_409 += 1
            return _error(409, "IDEMPOTENCY_IN_FLIGHT", "a request with this key is in progress")

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
                return _error(409, "IDEMPOTENCY_IN_FLIGHT", "a request with this key is in progress")
            if record.body_hash != body_hash:
                self.stats.mismatches += 1
                return _error(409, "IDEMPOTENCY_MISMATCH", "this key was used with a different body")
            self.stats.replays += 1
            return self._finish(request, fault, web.json_response(
                record.response, status=record.status, headers={"Idempotent-Replayed": "true"}
            ))

        if key is not None:
            record = self._records[key] = _Record(body_hash=body_hash, created=now)
        delay = self.processing_delay + (self.key_delays.get(key, 0.0) if key is not None else 0.0)
        if delay:
            await asyncio.sleep(delay)
        response = {"id": f"em_{next(self._ids):08d}", "object": "email", "to": body.get("to")}
        self.stats.sends += 1
        if key is not None:
            self.stats.sends_by_key[key] += 1
        if record is not None:
            record.done, record.status, record.response = True, 200, response
        return self._finish(request, fault, web.json_response(response, status=200))

    def _finish(self, request: web.Request, fault: str | None, response: web.Response) -> web.StreamResponse:
        if fault == "lost":
            # The send is committed; the client never hears about it.
            transport = request.transport
            if transport is not None:
                transport.abort()
        return response

    async def _batch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "UNAUTHORIZED", "missing or invalid API key")
        if "Idempotency-Key" in request.headers:
            return _error(
                400, "IDEMPOTENCY_NOT_SUPPORTED",
                "batch endpoints don't support idempotency keys; use /api/v1/emails per message",
            )
        try:
            items = json.loads(await request.read())
        except ValueError:
            return _error(400, "INVALID_JSON", "the body is not JSON")
        if not isinstance(items, list):
            return _error(422, "VALIDATION_ERROR", "the batch body must be a JSON list")
        data = []
        for _ in items:
            self.stats.sends += 1
            data.append({"id": f"em_{next(self._ids):08d}"})
        return web.json_response({"data": data})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _script_route(self, request: web.Request) -> web.Response:
        spec = await request.json()
        try:
            self.script(*spec.get("faults", []), key=spec.get("key"))
        except ValueError as exc:
            return _error(400, "BAD_SCRIPT", str(exc))
        return web.json_response({"ok": True})


def run(host: str = "127.0.0.1", port: int = 8025, **options: Any) -> None:
    """Serve a MockProvider until interrupted (``idemsend mock-provider``)."""

    async def main() -> None:
        async with MockProvider(host=host, port=port, **options) as provider:
            token = f"bearer token {provider.api_key!r}" if provider.api_key else "any bearer token"
            print(f"MockProvider listening on {provider.url} (POST {provider.emails_url}; {token})", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
