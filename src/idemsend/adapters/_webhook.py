"""What a webhook adapter needs around its framework-neutral handler: JSON responses,
header lookup, a body read that stops at a size limit (aiohttp and ASGI), and the glue
that serves a handler as an aiohttp app or an ASGI app (with the lifespan protocol).

A webhook adapter writes ``handle(raw_body, headers, url) -> Response`` and gets the rest
from here; ``Response`` is ``(status, headers, body)``, whatever the framework.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "ASGIApp",
    "BodyTooLarge",
    "Response",
    "UnreadableBody",
    "aiohttp_app",
    "aiohttp_response",
    "asgi_app",
    "asgi_lifespan",
    "asgi_url",
    "error_response",
    "header",
    "json_response",
    "read_aiohttp_body",
    "read_asgi_body",
]

#: ``(status, headers, body)``: what a framework-neutral handler answers.
Response = tuple[int, dict[str, str], bytes]
#: An ASGI application.
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
#: ``handle(raw_body, headers, url)``; ``url`` is None unless the handler asked for it.
Handle = Callable[[bytes, Mapping[str, str], str | None], Awaitable[Response]]

_JSON = {"Content-Type": "application/json"}
_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """The request body is over the limit (read no further)."""


class UnreadableBody(Exception):
    """The request body could not be read (e.g. a Content-Encoding that does not decode)."""


# -- responses ----------------------------------------------------------------------------


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer."""
    return status, {**_JSON, **(headers or {})}, json.dumps(payload).encode()


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, *, maybe_sent: bool | None = None
) -> Response:
    """``{"error": {"code": ..., "message": ...}}`` with ``status``; with ``maybe_sent``
    also ``"maybe_sent"``: whether the job may have been sent (so a dead-letter record
    never reads as "not sent" when it may have been)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if maybe_sent is not None:
        error["maybe_sent"] = maybe_sent
    return json_response(status, {"error": error}, headers)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, whatever its case in ``headers``."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


# -- bounded body reads ---------------------------------------------------------------------


async def read_aiohttp_body(request: web.Request, max_body: int) -> bytes:
    """The whole body, read chunk by chunk (one ``read()`` returns only what has arrived so
    far), stopping as soon as it is over ``max_body``: ``BodyTooLarge`` (also when the
    Content-Length says so up front), ``UnreadableBody`` when it does not decode."""
    if request.content_length is not None and request.content_length > max_body:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > max_body:
                raise BodyTooLarge
            chunks.append(chunk)
    except RequestPayloadError as exc:
        raise UnreadableBody(type(exc).__name__) from exc
    return b"".join(chunks)


async def read_asgi_body(receive: Callable[[], Awaitable[dict[str, Any]]], max_body: int) -> bytes:
    """The whole body of an ASGI request. Past ``max_body`` the rest is drained, not kept,
    and ``BodyTooLarge`` is raised at the end (so the server can answer cleanly)."""
    chunks: list[bytes] = []
    size, too_large = 0, False
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            too_large = True
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    if too_large:
        raise BodyTooLarge
    return b"".join(chunks)


# -- aiohttp ----------------------------------------------------------------------------------


def aiohttp_response(response: Response) -> web.Response:
    """A ``Response`` as an aiohttp response."""
    status, headers, body = response
    return web.Response(status=status, headers=headers, body=body)


def aiohttp_app(
    path: str,
    route: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    max_body: int,
    startup: Callable[[], Awaitable[Any]],
    shutdown: Callable[[], Awaitable[None]],
) -> web.Application:
    """An aiohttp app serving ``route`` for POSTs to ``path``; ``startup`` runs when the app
    starts (a bad configuration fails at boot, not on the first message), ``shutdown`` when
    it stops."""
    app = web.Application(client_max_size=max_body + 1)
    app.router.add_post(path, route)

    async def start(_app: web.Application) -> None:
        await startup()

    async def close(_app: web.Application) -> None:
        await shutdown()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app


# -- ASGI ---------------------------------------------------------------------------------------


async def asgi_lifespan(
    receive: Any, send: Any, *, startup: Callable[[], Awaitable[Any]], shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Answer an ASGI ``lifespan`` scope: run ``startup`` (a failure is reported to the
    server, which then does not start) and, at the end, ``shutdown``."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:  # the server reports it and does not start
                await send({"type": "lifespan.startup.failed", "message": f"idemsend: {exc}"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def asgi_url(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """The request's URL, built from the scope and its ``Host`` header."""
    host = header(headers, "host") or "localhost"
    path = scope.get("root_path", "") + scope.get("path", "/")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{path}{'?' + query if query else ''}"


def asgi_app(
    handle: Handle,
    *,
    max_body: int,
    too_large: Response,
    method_not_allowed: Response,
    url_from_request: bool,
    startup: Callable[[], Awaitable[Any]],
    shutdown: Callable[[], Awaitable[None]],
) -> ASGIApp:
    """A minimal ASGI app (mount it in Starlette or FastAPI) around ``handle``: POST only
    (else ``method_not_allowed``), the body read up to ``max_body`` (else ``too_large``),
    the request URL passed only when ``url_from_request``, and the lifespan protocol."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await asgi_lifespan(receive, send, startup=startup, shutdown=shutdown)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope.get("method") != "POST":
            status, out_headers, body = method_not_allowed
        else:
            try:
                raw = await read_asgi_body(receive, max_body)
            except BodyTooLarge:
                status, out_headers, body = too_large
            else:
                url = asgi_url(scope, headers) if url_from_request else None
                status, out_headers, body = await handle(raw, headers, url)
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers.items()],
        })
        await send({"type": "http.response.body", "body": body})

    return app
