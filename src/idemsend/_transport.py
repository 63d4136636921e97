"""The transport: one POST in, one HTTP answer (or a transport error) out.

The engine speaks to the network only through a ``Transport``, so tests (yours and ours)
can drive the whole engine without sockets: ``MockTransport(handler)`` answers each
request with whatever ``handler`` returns, as httpx's ``MockTransport`` does.
``AiohttpTransport`` is the real one: one pooled ``aiohttp.ClientSession``, a total
timeout per request, and **no redirects**: aiohttp would turn a redirected POST into a GET
without the body, and a 200 from the new location would read as a send that never was.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import aiohttp

from ._errors import BackendError, ConfigError

__all__ = [
    "AiohttpTransport", "MockTransport", "RawResponse", "Transport", "TransportError", "TransportRequest",
    "describe_error",
]


@dataclass(frozen=True, slots=True)
class TransportRequest:
    """One POST as the transport sends it. ``timeout``: the seconds the engine counts this
    request may take (what ``worst_case_send_time`` is sized from); a transport should give
    up by then (``TransportError(kind="timeout")``). None: the transport's own."""

    url: str
    headers: Mapping[str, str] = field(repr=False)  # credentials and per-try signatures: never in a repr
    body: bytes = field(repr=False)
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An HTTP answer: status, headers and the raw body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


class TransportError(BackendError):
    """A request that got no HTTP answer.

    ``kind`` says how far it got: ``"connect"`` (no connection was made, so nothing
    reached the provider), ``"timeout"`` or ``"network"`` (the request may have reached
    the provider and run: an unknown outcome).
    """

    def __init__(self, message: str, *, kind: Literal["connect", "timeout", "network"]) -> None:
        super().__init__(message, maybe_sent=kind != "connect")
        self.kind = kind

    @property
    def may_have_reached(self) -> bool:
        """Whether the provider may have received (and run) the request."""
        return self.kind != "connect"


@runtime_checkable
class Transport(Protocol):
    """Sends one POST. ``post`` returns the answer, whatever its status, or raises
    ``TransportError``; it never follows a redirect, and gives up after the request's
    ``timeout``. A transport with a ``timeout`` attribute of its own (seconds) declares it:
    the engine sends with that one, and sizes ``worst_case_send_time`` from it."""

    async def start(self) -> None:
        """Open what the transport needs (a connection pool). Called by ``Engine.start``."""
        ...

    async def post(self, request: TransportRequest) -> RawResponse:
        """Send ``request``; the answer as it came, or ``TransportError``."""
        ...

    async def aclose(self) -> None:
        """Close the pool. Called by ``Engine.aclose``."""
        ...


class AiohttpTransport:
    """The real transport: one pooled ``aiohttp.ClientSession`` (``max_connections``
    connections), ``timeout`` seconds in all per request, no redirects, and at most
    ``max_response_bytes`` of a response read (a bigger one is an unknown outcome)."""

    def __init__(
        self, *, timeout: float = 10.0, max_connections: int = 100, max_response_bytes: int = 8 * 1024 * 1024
    ) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<AiohttpTransport timeout={self.timeout:g}s max_connections={self.max_connections}>"

    async def start(self) -> None:
        """Open the session (idempotent)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )

    async def post(self, request: TransportRequest) -> RawResponse:
        """POST ``request`` once; aiohttp's errors become ``TransportError``."""
        session = self._session
        if session is None:
            raise ConfigError("the transport is not started (or was closed)")
        timeout = request.timeout or self.timeout
        try:
            async with session.post(
                request.url, data=request.body, headers=request.headers, allow_redirects=False,
                timeout=_timeout(timeout),
            ) as resp:
                length = resp.content_length
                if (
                    length is not None and length <= self.max_response_bytes
                    and resp.headers.get("Content-Encoding", "identity").lower() == "identity"
                ):
                    # the usual answer: its length said up front and not compressed (a gzip
                    # Content-Length says nothing of the size aiohttp decompresses it to),
                    # read in one call
                    return RawResponse(resp.status, resp.headers, await resp.read())
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        # the request ran, or may have: an unknown outcome, retried with the same key
                        raise TransportError(
                            f"the response is over {self.max_response_bytes} bytes; not read", kind="network"
                        )
                    chunks.append(chunk)
                return RawResponse(resp.status, resp.headers, b"".join(chunks))
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect: {describe_error(exc)}", kind="connect") from exc
        except TimeoutError as exc:
            raise TransportError(f"timeout after {timeout:g}s", kind="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"network error {describe_error(exc)}", kind="network") from exc

    async def aclose(self) -> None:
        """Close the session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


@functools.lru_cache(maxsize=16)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def describe_error(exc: BaseException) -> str:
    """What an aiohttp error says, from its fields where its own text would name the URL:
    a ``ClientResponseError`` (a garbled status line, a bad header) quotes the request URL,
    query string and all; an ``InvalidURL`` is the URL. Others: class name and text, on one line."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        message = " ".join(str(exc.message).split())
        return f"{name} {exc.status}: {message}" if message else f"{name} {exc.status}"
    if isinstance(exc, aiohttp.InvalidURL):
        description = getattr(exc, "description", None)  # aiohttp 3.10 and newer
        return f"{name}: {description}" if description else f"{name}: the URL is not valid"
    text = " ".join(str(exc).split())
    return f"{name}: {text}" if text else name


Handler = Callable[[TransportRequest], "RawResponse | Awaitable[RawResponse]"]


class MockTransport:
    """A transport that answers every request with ``handler(request)`` (sync or async):
    drive the engine in tests without a socket. ``requests`` keeps what was sent.
    ``handler`` may raise ``TransportError`` to act out a refused connection or a timeout."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[TransportRequest] = []

    async def start(self) -> None:
        """Nothing to open."""

    async def post(self, request: TransportRequest) -> RawResponse:
        """Record ``request`` and return the handler's answer."""
        self.requests.append(request)
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        assert isinstance(answer, RawResponse), f"the MockTransport handler returned {answer!r}"
        return answer

    async def aclose(self) -> None:
        """Nothing to close."""
