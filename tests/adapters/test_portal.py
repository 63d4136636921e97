"""ProcessLocalEngine: one started Engine per process on one loop thread, rebuilt after a
fork, closed at the end."""

from __future__ import annotations

import os
import threading

import pytest

from idemsend import ConfigError, Engine, Job
from idemsend.adapters._portal import ProcessLocalEngine

from ._scripted import scripted

BODY = {"to": ["ada@example.com"]}


def test_one_engine_and_one_loop_thread_serve_every_call() -> None:
    made: list[Engine] = []

    def factory() -> Engine:
        made.append(engine := scripted()())
        return engine

    engines = ProcessLocalEngine(factory)
    try:
        threads = {engines.call(lambda e: _thread_of(e)) for _ in range(3)}
        results = [engines.call(lambda e, n=n: e.send(Job(f"j{n}", {"user_id": "u"}), BODY)) for n in range(3)]
    finally:
        engines.close()
    assert len(made) == 1 and len(threads) == 1 and threads != {threading.get_ident()}
    assert [r.job_id for r in results] == ["j0", "j1", "j2"]
    assert repr(made[0]).endswith("closed>")


async def _thread_of(engine: Engine) -> int:
    return threading.get_ident()


def test_errors_come_back_to_the_caller() -> None:
    engines = ProcessLocalEngine(scripted())
    try:
        with pytest.raises(ConfigError, match="must be a template"):
            engines.call(lambda e: _boom())
    finally:
        engines.close()


async def _boom() -> None:
    raise ConfigError("key must be a template")


def test_a_forked_child_builds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Engine] = []

    def factory() -> Engine:
        made.append(engine := scripted()())
        return engine

    engines = ProcessLocalEngine(factory)
    first = engines.engine()
    parents_loop = engines._loop
    assert parents_loop is not None
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)  # as in a forked work-horse
    try:
        second = engines.engine()
        assert second is not first and len(made) == 2
        engines.close()
        assert repr(second).endswith("closed>") and not repr(first).endswith("closed>")
    finally:
        monkeypatch.undo()
        # a real child has no parent's thread; here it runs on: stop it
        parents_loop.call(first.aclose)
        parents_loop.stop()


def test_a_factory_that_fails_leaves_nothing_running() -> None:
    def broken() -> Engine:
        raise ConfigError("no URL")

    engines = ProcessLocalEngine(broken)
    before = threading.active_count()
    for _ in range(2):
        with pytest.raises(ConfigError, match="no URL"):
            engines.engine()
    assert threading.active_count() == before
    engines.close()


def test_close_stops_the_loop_thread_and_a_call_from_it_is_refused_not_deadlocked() -> None:
    engines = ProcessLocalEngine(scripted())
    before = threading.active_count()
    loop = engines.engine() and engines._loop
    assert loop is not None and loop.thread.is_alive() and threading.active_count() == before + 1

    async def from_the_loop(engine: Engine) -> None:
        engines.call(lambda e: _thread_of(e))

    with pytest.raises(RuntimeError, match="own loop thread"):
        engines.call(from_the_loop)
    engines.close()
    assert not loop.thread.is_alive() and loop.loop.is_closed() and threading.active_count() == before
    engines.close()  # twice is fine
