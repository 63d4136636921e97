"""MockProvider: the Sendoka idempotency contract (``ProviderContract``) as a real aiohttp server.

It serves ``provider-idempotency-contract.txt`` exactly and counts real executions, so a
test can assert "exactly one send per job" at the provider. The rules (keys, windows, in
flight, mismatch, faults, the answers) are the contract's (``_contract.py``); this is the
glue: routes, the body read, processing time awaited (``play``), a ``lost`` answer's
connection dropped, and the ``/_mock/*`` control routes.

Faults, each as a rate (``Faults``) and as a scripted sequence (``script``): ``"5xx"``
(503 before processing), ``"429"`` (with ``Retry-After``), ``"lost"`` (the send is
committed, then the connection is dropped before the response), ``"in_flight"`` (a
409 IN_FLIGHT without processing) and ``latency`` (added before answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from ._contract import BATCH_PATH, EMAILS_PATH, FAULTS, Faults, ProviderContract, ProviderRequest, ProviderStats
from ._serve import play

__all__ = ["FAULTS", "Faults", "MockProvider"]


class MockProvider:
    """``async with MockProvider() as p:`` serves the contract at ``p.url``.

    Every request must carry ``Authorization: Bearer <api_key>``: ``test-api-key`` by
    default (``idemsend mock-provider`` has the same default); ``api_key=None`` accepts any
    non-empty bearer token.
    ``clock`` (seconds) drives the window and the in-flight window, so a test can
    expire keys without waiting. ``arrivals[key]`` holds the arrival time of every
    authorized request with that ``Idempotency-Key``, whatever it was answered (a body
    refused with 400 or 422 included). ``contract`` is the ``ProviderContract`` it serves:
    its settings and counters are the ones read and set here.

    Every provider shape (see ``ProviderContract``): the key from another header
    (``key_header="webhook-id"``) or from a body field (``key_field="idempotency_key"``),
    Standard Webhooks signatures verified as a receiver does (``signing_secret="whsec_..."``),
    and each preset's answers (``dialect="square"``; ``idemsend.testing.DIALECTS``).
    ``record_requests=True`` keeps every request's headers and body in ``requests``.
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
        key_header: str = "Idempotency-Key",
        key_field: str | None = None,
        signing_secret: str | None = None,
        dialect: str = "sendoka",
        record_requests: bool = False,
    ) -> None:
        self.contract = ProviderContract(
            api_key=api_key, processing_delay=processing_delay, window=window, in_flight_window=in_flight_window,
            faults=faults, clock=clock, draw=random.Random(seed).random, key_header=key_header, key_field=key_field,
            signing_secret=signing_secret, dialect=dialect, record_requests=record_requests,
        )
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (to mount the MockProvider in your own server)."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post(EMAILS_PATH, self._serve)
        app.router.add_post(BATCH_PATH, self._serve)
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
        return f"{self.url}{EMAILS_PATH}"

    # -- the contract's settings (set them at any time) ------------------------------

    @property
    def api_key(self) -> str | None:
        """The bearer token every request must carry (None: any non-empty one)."""
        return self.contract.api_key

    @api_key.setter
    def api_key(self, value: str | None) -> None:
        self.contract.api_key = value

    @property
    def processing_delay(self) -> float:
        """Seconds each first send of a key takes (the key is in flight meanwhile)."""
        return self.contract.processing_delay

    @processing_delay.setter
    def processing_delay(self, value: float) -> None:
        self.contract.processing_delay = value

    @property
    def window(self) -> float:
        """Seconds a key is remembered, from its first send."""
        return self.contract.window

    @window.setter
    def window(self, value: float) -> None:
        self.contract.window = value

    @property
    def in_flight_window(self) -> float:
        """Seconds after which a send still processing counts as abandoned."""
        return self.contract.in_flight_window

    @in_flight_window.setter
    def in_flight_window(self, value: float) -> None:
        self.contract.in_flight_window = value

    @property
    def faults(self) -> Faults:
        """The random fault rates, latency and ``Retry-After``."""
        return self.contract.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.contract.faults = value

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (seconds) the window and the in-flight window are measured on."""
        return self.contract.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.contract.clock = value

    # -- what a test reads -----------------------------------------------------------

    @property
    def stats(self) -> ProviderStats:
        """The counters (requests, sends, faults, replays, 409s, concurrency)."""
        return self.contract.stats

    @property
    def arrivals(self) -> dict[str, list[float]]:
        """The arrival times (wall clock) of every authorized request, by ``Idempotency-Key``."""
        return self.contract.arrivals

    @property
    def key_delays(self) -> dict[str, float]:
        """Extra processing seconds by key (``delay``)."""
        return self.contract.key_delays

    @property
    def requests(self) -> list[ProviderRequest]:
        """Every request to the send endpoint, headers and body (with ``record_requests=True``)."""
        return self.contract.requests

    @property
    def sends(self) -> int:
        """Real executions (a replay is not one)."""
        return self.contract.sends

    @property
    def sends_by_key(self) -> Counter[str]:
        """Real executions per idempotency key."""
        return self.contract.sends_by_key

    def sends_for(self, key: str) -> int:
        """Real executions of ``key``."""
        return self.contract.sends_for(key)

    def double_sends(self) -> dict[str, int]:
        """Keys executed more than once, with their counts."""
        return self.contract.double_sends()

    def script(self, *faults: str | None, key: str | None = None) -> None:
        """Queue faults for the next requests (of ``key``, or of any key). ``None`` in
        the sequence means "no fault" for that request."""
        self.contract.script(*faults, key=key)

    def delay(self, key: str, seconds: float) -> None:
        """Process ``key`` slowly (on top of ``processing_delay``): time to kill a worker."""
        self.contract.delay(key, seconds)

    def reset(self) -> None:
        """Forget every key, script, delay and counter."""
        self.contract.reset()

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data (what ``GET /_mock/stats`` answers)."""
        return self.contract.snapshot()

    # -- handlers --------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        answer = await play(self.contract.exchange(request.path, request.headers), read=request.read)
        response = web.Response(
            body=answer.content(), status=answer.status, headers=dict(answer.headers) or None,
            content_type="application/json" if answer.body is not None else None,
            charset="utf-8" if answer.body is not None else None,  # what json_response wrote
        )
        if answer.lost:
            # The send is committed; the client never hears about it.
            transport = request.transport
            if transport is not None:
                transport.abort()
        return response

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
            return web.json_response({"error": {"code": "BAD_SCRIPT", "message": str(exc)}}, status=400)
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
