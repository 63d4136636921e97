"""How a ``JetStreamConsumer`` shuts down: drain, then cut off what is left.

Until ``shutdown_timeout`` (or a second ``stop()``), the fetch under way finishes (what it
brings is released at once, ``nak()``) and running sends finish and settle. Then the runs
still going are cancelled, each releasing its message (``nak()``, so another worker takes
it at once; the ledger's lease keeps that safe), and the fetch is cancelled: a message the
server was handing it then is not lost, it comes back after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["drain"]

log = logging.getLogger("idemsend.adapters.nats")


async def drain(
    poller: asyncio.Task[None], runs: set[asyncio.Task[None]], *, hurry: asyncio.Event, timeout: float,
) -> None:
    """Let ``poller`` and ``runs`` finish within ``timeout`` seconds (or until ``hurry`` is
    set), then cancel what is left and wait for it (each run releases its message)."""
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
        going = {task for task in (poller, *runs) if not task.done()}
        for task in going:
            task.cancel()
        if going - {poller}:
            log.warning("shutdown: %d message run(s) still going after %.1fs: cancelled, their messages released",
                        len(going - {poller}), loop.time() - began)
        if going:
            await asyncio.wait(going)
