"""An HTTP proxy in front of moto that can lose one DynamoDB reply after the write ran, or
answer a throttling error instead of forwarding: the two faults moto itself never makes.

It reads the client's HTTP/1.1 requests one at a time (headers, then ``Content-Length``
bytes), forwards each on a connection of its own to moto and reads the whole reply
before passing it on, so it knows which reply belongs to which request. A request is
picked by its operation (the ``X-Amz-Target`` header, e.g. ``PutItem``) and its body:

* ``lose(op, part)``: the first such request is forwarded (moto applies it), its reply
  swallowed and the client's connection closed: botocore sees the connection dropped
  after the write took effect, and sends it again (its standard retries).
* ``throttle(op)``: every such request is answered ``ProvisionedThroughputExceededException``
  (HTTP 400) without reaching moto, until ``throttle(None)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

__all__ = ["DynamoProxy"]


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head, headers, body


@dataclass
class DynamoProxy:
    """``async with DynamoProxy(moto_url) as proxy``: ``proxy.url`` is the endpoint to give
    the ledger. ``seen[op]`` counts the requests of each operation that reached moto."""

    upstream: str
    seen: dict[str, int] = field(default_factory=dict)
    _lose: tuple[str, bytes] | None = None
    _throttle: str | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    throttled: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lose(self, op: str, part: bytes = b"") -> None:
        """Lose the reply of the next ``op`` request whose body contains ``part``."""
        self._lose = (op, part)
        self.lost.clear()

    def throttle(self, op: str | None) -> None:
        """Answer every ``op`` request (``"*"``: every request) throttled; ``None``: stop."""
        self._throttle = op

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = urlsplit(self.upstream)
        try:
            while True:
                try:
                    head, headers, body = await _read_message(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                op = headers.get("x-amz-target", "").rpartition(".")[2]
                if self._throttle in (op, "*"):
                    self.throttled += 1
                    error = json.dumps({
                        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded.",
                    }).encode()
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n"
                                 b"x-amzn-RequestId: throttled\r\nContent-Length: %d\r\n\r\n" % len(error) + error)
                    await writer.drain()
                    continue
                r, w = await asyncio.open_connection(up.hostname, up.port)
                try:
                    w.write(head + body)
                    await w.drain()
                    reply_head, _, reply_body = await _read_message(r)
                finally:
                    w.close()
                    with contextlib.suppress(ConnectionError):
                        await w.wait_closed()
                self.seen[op] = self.seen.get(op, 0) + 1
                if self._lose is not None and self._lose[0] == op and self._lose[1] in body:
                    self._lose = None
                    self.lost.set()
                    return  # the write ran; its reply never arrives
                writer.write(reply_head + reply_body)
                await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
