"""Shared by the adapter unit tests: an Engine whose provider is a scripted MockTransport."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

from idemsend import Engine, Observer, RawResponse, SendInfo, TransportRequest
from idemsend.testing import MockTransport

URL = "https://api.example.com/api/v1/emails"
KEY = "welcome:{user_id}:{job_id}"


def ok(request: TransportRequest) -> RawResponse:
    return RawResponse(200, {}, json.dumps({"id": "em_1"}).encode())


def error(status: int, code: str, headers: dict[str, str] | None = None) -> RawResponse:
    return RawResponse(status, headers or {}, json.dumps({"error": {"code": code, "message": code.lower()}}).encode())


class Queues(Observer):
    """A Hook that keeps the ``(queue, attempt)`` of every send (its own observer, hearing
    nothing else)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, int | None]] = []

    @contextlib.contextmanager
    def send_scope(self, info: SendInfo) -> Iterator[Queues]:
        self.seen.append((info.queue, info.attempt))
        yield self


def scripted(*answers: RawResponse, hook: Queues | None = None) -> Callable[[], Engine]:
    """An engine factory: no quick retries (every retryable outcome goes back to the
    queue), the provider answers ``answers`` in turn, then 200."""
    queue = list(answers)

    def factory() -> Engine:
        transport = MockTransport(lambda request: queue.pop(0) if queue else ok(request))
        return Engine(URL, key=KEY, api_key="k-123456", transport=transport, retry=0, hooks=[hook] if hook else [])

    return factory
