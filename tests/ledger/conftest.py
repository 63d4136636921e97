"""Stores for the ledger tests that need a server of their own (processes, restarts).

A ``Store`` is what such a test may use of a ledger's backing server: a URL that
``ledger_from_url`` accepts, the worker script's flags for it, and, for a server the
test owns, ``stop``/``start``/``restart``/``kill``. Redis is the only store today; a
Postgres store joins ``STORES`` (and the two ``_make_*`` functions) and every test
parametrized over it runs on both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from idemsend.ledger import Ledger, ledger_from_url
from idemsend.testing import RedisServer

#: The stores the process tests run on (pytest ids; "redis" also gets the `redis` marker).
STORES = ["redis"]


class _Server(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def cleanup(self) -> None: ...


@dataclass
class Store:
    """A ledger store for a test: ``url`` for ``ledger_from_url``; ``persistent`` when a
    restart keeps the data; ``server`` when the test owns it (and may stop it)."""

    kind: str
    url: str
    persistent: bool = False
    server: _Server | None = field(default=None, repr=False)

    def ledger(self, *, prefix: str = "idemsend", **options: Any) -> Ledger:
        """A new ledger over this store."""
        return ledger_from_url(self.url, prefix=prefix, **options)

    def worker_args(self) -> list[str]:
        """tests/workers/send_jobs.py's flags for this store (it takes a Redis URL)."""
        if self.kind != "redis":
            raise NotImplementedError(f"tests/workers/send_jobs.py cannot use a {self.kind} store yet")
        return ["--redis", self.url]

    def _owned(self) -> _Server:
        if self.server is None:
            pytest.fail(f"the {self.kind} store at {self.url} is shared: this test may not stop it")
        return self.server

    def stop(self) -> None:
        """Stop the server (its data stays on disk if it persists)."""
        self._owned().stop()

    def start(self) -> None:
        """Start the server again, same address (and data, if it persists)."""
        self._owned().start()

    def restart(self) -> None:
        """Stop and start: a persistent store keeps its records, another loses them."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server: a crash."""
        self._owned().kill()


def _make_shared(kind: str, request: pytest.FixtureRequest) -> Store:
    if kind == "redis":
        return Store("redis", request.getfixturevalue("redis_url"))
    raise AssertionError(kind)


def _make_own(kind: str, persistent: bool) -> Store:
    if kind == "redis":
        server = RedisServer(appendonly=persistent).start()
        return Store("redis", server.url, persistent=persistent, server=server)
    raise AssertionError(kind)


@pytest.fixture(params=STORES)
def shared_store(request: pytest.FixtureRequest) -> Store:
    """The session's store of this kind (shared: no stop or restart); use a fresh prefix."""
    return _make_shared(request.param, request)


@pytest.fixture(params=STORES)
def own_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """``own_store(persistent=...)``: a server of this kind for this test alone."""
    made: list[Store] = []

    def make(*, persistent: bool) -> Store:
        store = _make_own(request.param, persistent)
        made.append(store)
        return store

    yield make
    for store in made:
        if store.server is not None:
            store.server.cleanup()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"t-{uuid.uuid4().hex[:10]}"
