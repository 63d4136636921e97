"""QStash webhook adapter (``pip install 'idemsend[qstash]'``).

A framework-neutral handler, ``QStashHandler.handle(raw_body, headers, url)`` ->
``(status, headers, body)``, with an aiohttp route and an ASGI app on top, so it mounts
in aiohttp, Starlette or FastAPI:

```python
handler = QStashHandler(engine, current_signing_key=..., next_signing_key=...,
                        url="https://example.com/qstash/welcome")
app.router.add_post("/qstash/welcome", handler.aiohttp_handler)        # aiohttp
app.mount("/qstash/welcome", handler.asgi_app())                        # Starlette / FastAPI
```

Order of checks: a body over ``max_body`` -> 413 (before it is read in full); then the
``Upstash-Signature`` JWT is verified with the official ``qstash`` SDK's ``Receiver``
(current key, then next key; issuer, expiry with ``clock_tolerance``, the endpoint
``url`` as subject, and the sha256 of the raw body): missing or bad -> 401 and nothing
is sent. Only then is the body parsed. The job id is ``Upstash-Message-Id``;
``Upstash-Retried`` is the attempt (for logs).

Outcomes: sent -> 200 with the result; ``RetryableError`` -> 503 with ``Retry-After``;
``FatalError`` or a body that is not the expected JSON -> 489 with
``Upstash-NonRetryable-Error: true`` (QStash stops retrying and sends it to the DLQ).

The message body is JSON ``{"data": {...}, "body": {...}}`` by default: ``data`` fills the
key template, ``body`` is what is sent. Pass ``parse=`` to read another shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._engine import Engine
from .._errors import ConfigError, FatalError, MissingExtraError, RetryableError
from .._keys import Job
from ._common import build_engine, result_dict, whole_seconds

try:
    from aiohttp import web
    from qstash import Receiver
    from qstash.errors import SignatureError
except ImportError as exc:
    raise MissingExtraError("qstash", "qstash") from exc

__all__ = ["DEFAULT_MAX_BODY", "NON_RETRYABLE_STATUS", "QStashHandler", "Response", "default_parse"]

log = logging.getLogger("idemsend.qstash")

DEFAULT_MAX_BODY = 1024 * 1024
NON_RETRYABLE_STATUS = 489
Response = tuple[int, dict[str, str], bytes]
Parse = Callable[[Any], tuple[Mapping[str, Any], Any]]
_JSON = {"Content-Type": "application/json"}


def default_parse(payload: Any) -> tuple[Mapping[str, Any], Any]:
    """``{"data": {...}, "body": ...}`` -> (data, body)."""
    if not isinstance(payload, Mapping) or "body" not in payload:
        raise ValueError('the message must be a JSON object with "body" (and optional "data")')
    data = payload.get("data", {})
    if not isinstance(data, Mapping):
        raise ValueError('"data" must be a JSON object')
    return data, payload["body"]


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return status, {**_JSON, **(headers or {})}, json.dumps(payload).encode()


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, {"error": {"code": code, "message": message}}, headers)


def _too_large(max_body: int) -> Response:
    return _error(413, "BODY_TOO_LARGE", f"the body is over {max_body} bytes")


def _non_retryable(code: str, message: str) -> Response:
    return _error(NON_RETRYABLE_STATUS, code, message, {"Upstash-NonRetryable-Error": "true"})


class QStashHandler:
    """Verifies, then sends, one QStash delivery. ``engine`` is an Engine (started by
    whoever owns it, e.g. ``aiohttp_app`` below) or a zero-argument factory."""

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        *,
        current_signing_key: str,
        next_signing_key: str,
        url: str | None = None,
        clock_tolerance: int = 0,
        max_body: int = DEFAULT_MAX_BODY,
        parse: Parse = default_parse,
    ) -> None:
        if not current_signing_key or not next_signing_key:
            raise ConfigError("QStashHandler needs both the current and the next signing key")
        if max_body < 1:
            raise ConfigError(f"max_body must be >= 1, got {max_body}")
        self._engine_or_factory = engine
        self._engine: Engine | None = engine if isinstance(engine, Engine) else None
        self.receiver = Receiver(current_signing_key=current_signing_key, next_signing_key=next_signing_key)
        self.url = url
        self.clock_tolerance = clock_tolerance
        self.max_body = max_body
        self.parse = parse

    def __repr__(self) -> str:  # the signing keys stay out of it
        return f"<QStashHandler url={self.url!r} max_body={self.max_body}>"

    async def engine(self) -> Engine:
        if self._engine is None:
            factory = self._engine_or_factory
            assert callable(factory)
            self._engine = await build_engine(factory).start()
        return self._engine

    async def aclose(self) -> None:
        if self._engine is not None and not isinstance(self._engine_or_factory, Engine):
            await self._engine.aclose()
        self._engine = None

    def verify(self, raw_body: bytes, headers: Mapping[str, str], url: str) -> Response | None:
        """None if the signature is good, else the 401 to answer with."""
        signature = _header(headers, "Upstash-Signature")
        if not signature:
            return _error(401, "MISSING_SIGNATURE", "the Upstash-Signature header is missing")
        try:
            text = raw_body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(401, "INVALID_SIGNATURE", "the body is not UTF-8, so its signature cannot be checked")
        try:
            self.receiver.verify(
                signature=signature, body=text, url=self.url or url, clock_tolerance=self.clock_tolerance
            )
        except SignatureError as exc:
            return _error(401, "INVALID_SIGNATURE", str(exc))
        return None

    async def handle(self, raw_body: bytes, headers: Mapping[str, str], url: str) -> Response:
        if len(raw_body) > self.max_body:
            return _too_large(self.max_body)
        rejected = self.verify(raw_body, headers, url)
        if rejected is not None:
            return rejected
        message_id = _header(headers, "Upstash-Message-Id")
        if not message_id:
            return _non_retryable("MISSING_MESSAGE_ID", "the Upstash-Message-Id header is missing")
        try:
            data, body = self.parse(json.loads(raw_body))
        except ValueError as exc:  # JSONDecodeError is a ValueError too
            return _non_retryable("INVALID_MESSAGE", f"the message is not the expected JSON: {exc}")
        retried = _header(headers, "Upstash-Retried") or "0"
        attempt = int(retried) + 1 if retried.isdigit() else None
        try:
            result = await (await self.engine()).send(Job(message_id, data), body, attempt=attempt)
        except RetryableError as exc:
            delay = whole_seconds(exc.retry_after if exc.retry_after is not None else 1.0)
            return _error(503, "RETRY", str(exc), {"Retry-After": str(delay)})
        except FatalError as exc:
            return _non_retryable(exc.code, str(exc))
        return _json(200, result_dict(result))

    # -- framework glue -----------------------------------------------------------------

    async def aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp route handler."""
        if request.content_length is not None and request.content_length > self.max_body:
            status, headers, body = _too_large(self.max_body)
            return web.Response(status=status, headers=headers, body=body)
        # Read to the end (one read() returns only what has arrived so far), stopping as
        # soon as the body is over the limit.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body:
                status, headers, body = _too_large(self.max_body)
                return web.Response(status=status, headers=headers, body=body)
            chunks.append(chunk)
        status, headers, body = await self.handle(b"".join(chunks), request.headers, str(request.url))
        return web.Response(status=status, headers=headers, body=body)

    def aiohttp_app(self, path: str = "/") -> web.Application:
        """A whole aiohttp app serving the handler at ``path``: it starts the engine when the
        app starts (so a bad configuration fails at boot, not on the first message) and
        closes a factory-made engine when it stops."""
        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(path, self.aiohttp_handler)

        async def start(_app: web.Application) -> None:
            await self.engine()

        async def close(_app: web.Application) -> None:
            await self.aclose()

        app.on_startup.append(start)
        app.on_cleanup.append(close)
        return app

    def asgi_app(self) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
        """A minimal ASGI app (mount it in Starlette or FastAPI)."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        try:
                            await self.engine()
                        except Exception as exc:  # the server reports it and does not start
                            await send({"type": "lifespan.startup.failed", "message": f"idemsend: {exc}"})
                            return
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await self.aclose()
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            if scope["type"] != "http":
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if scope.get("method") != "POST":
                status, out_headers, body = _error(405, "METHOD_NOT_ALLOWED", "QStash delivers with POST")
            else:
                chunks: list[bytes] = []
                size, too_large = 0, False
                while True:
                    message = await receive()
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        too_large = True
                    elif chunk:
                        chunks.append(chunk)
                    if not message.get("more_body"):
                        break
                if too_large:
                    status, out_headers, body = _too_large(self.max_body)
                else:
                    status, out_headers, body = await self.handle(b"".join(chunks), headers, _asgi_url(scope, headers))
            await send({
                "type": "http.response.start", "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers.items()],
            })
            await send({"type": "http.response.body", "body": body})

        return app


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _asgi_url(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    host = _header(headers, "host") or "localhost"
    path = scope.get("root_path", "") + scope.get("path", "/")
    query = scope.get("query_string", b"").decode()
    return f"{scope.get('scheme', 'http')}://{host}{path}{'?' + query if query else ''}"
