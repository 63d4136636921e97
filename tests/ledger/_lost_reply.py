"""A TCP proxy that loses one Redis reply after the command ran: the client's write is
applied on the real server, its answer never arrives, and the client's own retry (if
any) sends the command again.

The proxy reads the client's commands one at a time (RESP2 or RESP3), forwards each to the real
redis-server and reads that command's whole reply before forwarding it, so it knows
which reply belongs to which command. The first command ``drop`` picks whose reply is
not ``NOSCRIPT`` (a script the server did not have yet ran nothing) has its reply
swallowed and its client connection closed: the client sees "connection closed by
server" after the write took effect. Every later command passes untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self

__all__ = ["Loss", "LostReplyProxy", "evalsha_plan"]


async def _line(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n")


async def _read_command(reader: asyncio.StreamReader) -> tuple[bytes, list[bytes]]:
    """One client command (a RESP array of bulk strings): its bytes and its arguments."""
    head = await _line(reader)
    if not head.startswith(b"*"):
        raise ValueError(f"not a RESP command: {head!r}")
    raw, args = [head], []
    for _ in range(int(head[1:-2])):
        size = await _line(reader)
        data = await reader.readexactly(int(size[1:-2]) + 2)
        raw += (size, data)
        args.append(data[:-2])
    return b"".join(raw), args


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole reply's bytes, RESP2 or RESP3 (redis-py 8 speaks RESP3), nested ones included."""
    head = await _line(reader)
    kind, rest = head[:1], head[1:-2]
    if kind in (b"+", b"-", b":", b"_", b"#", b",", b"("):  # one line
        return head
    if kind in (b"$", b"!", b"="):  # a length, then that many bytes
        return head if int(rest) < 0 else head + await reader.readexactly(int(rest) + 2)
    if kind in (b"*", b"~", b">", b"%", b"|"):  # that many replies (pairs for a map or attributes)
        count = max(int(rest), 0) * (2 if kind in (b"%", b"|") else 1)
        parts = [head] + [await _read_reply(reader) for _ in range(count)]
        if kind == b"|":  # attributes come before the reply they describe
            parts.append(await _read_reply(reader))
        return b"".join(parts)
    raise ValueError(f"not a RESP reply: {head!r}")


def evalsha_plan(args: list[bytes]) -> bytes | None:
    """The plan (the operation codes, ``_CODES``) of a ledger EVALSHA, else None."""
    if not args or args[0].upper() != b"EVALSHA":
        return None
    return args[3 + int(args[2]) + 1]


class Loss:
    """Which reply to lose, shared by the proxies in front of one server or cluster: the
    first command ``drop(args)`` picks. ``ran`` counts the picked commands the server
    answered (the lost one included): 2 after one loss means the client sent it again.
    ``dropped`` is set once the reply was lost."""

    def __init__(self, drop: Callable[[list[bytes]], bool]) -> None:
        self.drop = drop
        self.ran = 0
        self.dropped = asyncio.Event()

    def lose(self, args: list[bytes], reply: bytes) -> bool:
        """Whether this reply to ``args`` is the one to lose (counting the picked ones)."""
        if not self.drop(args) or reply.startswith(b"-NOSCRIPT"):
            return False
        self.ran += 1
        if self.dropped.is_set():
            return False
        self.dropped.set()
        return True


class LostReplyProxy:
    """``async with LostReplyProxy(port, loss) as proxy``: a proxy on ``proxy.port`` to
    the redis-server at 127.0.0.1:``port`` that loses the reply ``loss`` picks."""

    def __init__(self, port: int, loss: Loss, host: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.loss = loss
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        try:
            while True:
                raw, args = await _read_command(reader)
                up_writer.write(raw)
                await up_writer.drain()
                reply = await _read_reply(up_reader)
                if self.loss.lose(args, reply):
                    return  # the command ran; its answer is lost with the connection
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            self._tasks.discard(task)
            writer.close()
            up_writer.close()
