"""How an ``SQSConsumer`` shuts down: drain, then cut off what is left.

Until ``shutdown_timeout`` (or a second ``stop()``), the long poll under way finishes (what
it brings is released at once) and running sends finish. Then the runs still going are
cancelled (each releases its messages, visibility 0), and the poll is ended.

A long poll abandoned client-side stays open at SQS until its wait ends, and SQS hands it
what is released meanwhile: in flight for a whole visibility timeout with no consumer left.
So the poll is not cancelled while the released messages could reach it: it is let end on
its own (it brings them back at once, and they are released again), and cancelled only
past the end of its wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["POLL_MARGIN", "drain"]

log = logging.getLogger("idemsend.adapters.sqs")

#: How long past its wait a long poll may take to answer (the clocks, the network).
POLL_MARGIN = 5.0


async def drain(
    poller: asyncio.Task[None], runs: set[asyncio.Task[None]], *, hurry: asyncio.Event, timeout: float,
    poll_ends: Callable[[], float],
) -> None:
    """Let ``poller`` and ``runs`` finish within ``timeout`` seconds (or until ``hurry`` is
    set), then cut off what is left. ``poll_ends()``: the loop time by which the long poll
    under way ends at SQS."""
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
        await _cut_off(poller, runs, began, poll_ends)


async def _cut_off(
    poller: asyncio.Task[None], runs: set[asyncio.Task[None]], began: float, poll_ends: Callable[[], float],
) -> None:
    """Cancel the runs still going (each releases its messages), then end the poll (see the
    module docstring for why it is let end first)."""
    loop = asyncio.get_running_loop()
    going = {task for task in runs if not task.done()}
    for task in going:
        task.cancel()
    if going:
        log.warning("shutdown: %d message run(s) still going after %.1fs: cancelled, their messages released",
                    len(going), loop.time() - began)
        await asyncio.wait(going)
        if not poller.done():
            await asyncio.wait({poller}, timeout=max(0.0, poll_ends() - loop.time()) + POLL_MARGIN)
    if not poller.done():
        poller.cancel()
        await asyncio.wait({poller})
