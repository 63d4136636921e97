"""How a ``JetStreamConsumer`` shuts down: drain, then cut off what is left.

Until ``shutdown_timeout`` (or a second ``stop()``), the fetch under way finishes (what it
brings is released at once, ``nak()``) and running sends finish and settle. Then the runs
still going are cancelled, each releasing its message (``nak()``, so another worker takes
it at once; the ledger's lease keeps that safe).

A fetch is a pull request the server keeps open until it expires (``fetch_wait``), even when
the client stops reading it, and the server hands a released message to the first open pull
request: to the abandoned one, where it would sit until ``ack_wait`` lapses. So the fetch is
not cancelled while a release could reach it: it is let end on its own (what it brings is
released again) and cancelled only past its expiry.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["FETCH_MARGIN", "drain"]

log = logging.getLogger("idemsend.adapters.nats")

#: How long past its expiry a fetch may take to return (the clocks, a loaded machine).
FETCH_MARGIN = 5.0


async def drain(
    poller: asyncio.Task[None], runs: set[asyncio.Task[None]], *, hurry: asyncio.Event, timeout: float,
    fetch_wait: float,
) -> None:
    """Let ``poller`` and ``runs`` finish within ``timeout`` seconds (or until ``hurry`` is
    set), then cancel the runs still going (each releases its message) and let the poller's
    fetch expire (at most ``fetch_wait`` seconds, plus a margin) before cancelling it."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + timeout
    hurried = asyncio.create_task(hurry.wait())
    try:
        while not hurry.is_set():
            waiting = {task for task in (poller, *runs) if not task.done()}
            left = deadline - loop.time()
            if not waiting or left <= 0:
                break
            await asyncio.wait({*waiting, hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
        going = {task for task in runs if not task.done()}
        for task in going:
            task.cancel()
        if going:
            log.warning("shutdown: %d message run(s) still going after %.1fs: cancelled, their messages released",
                        len(going), loop.time() - began)
            await asyncio.wait(going)
        if not poller.done():
            await asyncio.wait({poller}, timeout=fetch_wait + FETCH_MARGIN)
        if not poller.done():
            poller.cancel()
            await asyncio.wait({poller})
