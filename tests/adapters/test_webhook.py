"""The webhook glue every webhook adapter shares: bounded body reads, the ASGI app and its
lifespan, responses and header lookup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from idemsend.adapters._webhook import (
    BodyTooLarge,
    Response,
    asgi_app,
    asgi_url,
    error_response,
    header,
    json_response,
    read_asgi_body,
)

pytestmark = pytest.mark.anyio


def receiver(*chunks: bytes) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    receive.left = messages  # type: ignore[attr-defined]
    return receive


async def test_an_asgi_body_is_read_whole_up_to_the_limit() -> None:
    assert await read_asgi_body(receiver(b"ab", b"", b"cd"), 4) == b"abcd"


async def test_an_asgi_body_over_the_limit_is_drained_then_refused() -> None:
    receive = receiver(b"abc", b"def", b"ghi")
    with pytest.raises(BodyTooLarge):
        await read_asgi_body(receive, 4)
    assert receive.left == []  # the server's stream was read to its end


def test_responses_and_headers() -> None:
    status, headers, body = error_response(489, "BAD", "why", {"X-A": "1"})
    assert status == 489 and headers == {"Content-Type": "application/json", "X-A": "1"}
    assert json.loads(body) == {"error": {"code": "BAD", "message": "why"}}
    assert json_response(200, [1])[2] == b"[1]"
    assert header({"upstash-signature": "s"}, "Upstash-Signature") == "s" and header({}, "X") is None
    scope = {"scheme": "https", "root_path": "/a", "path": "/b", "query_string": b"q=1"}
    assert asgi_url(scope, {"Host": "h.example"}) == "https://h.example/a/b?q=1"


async def call(app: Any, scope: dict[str, Any], *chunks: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receiver(*chunks), send)
    return sent


async def test_the_asgi_app_posts_only_bounds_the_body_and_passes_the_url_on_request() -> None:
    seen: list[tuple[bytes, str | None]] = []

    async def handle(raw: bytes, headers: Mapping[str, str], url: str | None) -> Response:
        seen.append((raw, url))
        return json_response(200, {"ok": True})

    async def nothing() -> None:
        return None

    def app(url_from_request: bool) -> Any:
        return asgi_app(
            handle, max_body=3, too_large=error_response(413, "BIG", "big"),
            method_not_allowed=error_response(405, "POST", "post only"), url_from_request=url_from_request,
            startup=nothing, shutdown=nothing,
        )

    post = {"type": "http", "method": "POST", "path": "/h", "headers": [(b"host", b"x.example")]}
    assert (await call(app(False), {**post, "method": "GET"}, b""))[0]["status"] == 405
    assert (await call(app(False), post, b"ab", b"cd"))[0]["status"] == 413
    assert (await call(app(False), post, b"abc"))[0]["status"] == 200
    assert (await call(app(True), post, b"x"))[0]["status"] == 200
    assert seen == [(b"abc", None), (b"x", "http://x.example/h")]


async def test_the_lifespan_reports_a_failed_startup() -> None:
    calls: list[str] = []

    async def broken() -> None:
        raise RuntimeError("no engine")

    async def shutdown() -> None:
        calls.append("shutdown")

    async def handle(raw: bytes, headers: Mapping[str, str], url: str | None) -> Response:
        raise AssertionError("not called")

    app = asgi_app(
        handle, max_body=1, too_large=error_response(413, "BIG", "big"), method_not_allowed=error_response(405, "", ""),
        url_from_request=False, startup=broken, shutdown=shutdown,
    )
    messages = [{"type": "lifespan.startup"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.failed", "message": "idemsend: no engine"}] and calls == []
