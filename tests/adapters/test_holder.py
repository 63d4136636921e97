"""StartedEngine: one Engine per worker, made on first use, started once under a lock,
closed at shutdown (what arq, BullMQ, the SQS consumer and the QStash handler share)."""

from __future__ import annotations

import asyncio

import pytest

from idemsend import ConfigError, Engine, Job
from idemsend.adapters._holder import StartedEngine
from idemsend.testing import MockTransport

from ._scripted import KEY, URL, ok, scripted

pytestmark = pytest.mark.anyio

BODY = {"to": ["ada@example.com"]}


class SlowStart(MockTransport):
    """A transport whose start yields to the loop (as a real connection does), counted."""

    starts = 0

    async def start(self) -> None:
        SlowStart.starts += 1
        await asyncio.sleep(0.01)
        await super().start()


class Made:
    """An engine factory that keeps what it made."""

    def __init__(self) -> None:
        self.engines: list[Engine] = []

    def __call__(self) -> Engine:
        self.engines.append(engine := Engine(URL, key=KEY, api_key="k-123456", transport=SlowStart(ok), retry=0))
        return engine


async def test_the_first_start_makes_and_starts_the_engine_and_later_ones_share_it() -> None:
    made = Made()
    engines = StartedEngine(made)
    assert engines.engine is None and "idle" in repr(engines)
    first = await engines.start()
    assert await engines.start() is first and engines.engine is first and "started" in repr(engines)
    result = await first.send(Job("j1", {"user_id": "u1"}), BODY)
    await engines.close()
    assert len(made.engines) == 1 and result.job_id == "j1"
    assert repr(first).endswith("closed>") and engines.engine is None


async def test_concurrent_first_calls_wait_on_one_start() -> None:
    made = Made()
    engines = StartedEngine(made)
    SlowStart.starts = 0
    got = await asyncio.gather(*(engines.start() for _ in range(10)))
    await engines.close()
    assert len(made.engines) == 1 and SlowStart.starts == 1 and all(engine is got[0] for engine in got)


async def test_a_closed_holder_makes_a_fresh_engine_on_the_next_start() -> None:
    made = Made()
    engines = StartedEngine(made)
    first = await engines.start()
    await engines.close()
    await engines.close()  # twice is nothing
    second = await engines.start()
    await engines.close()
    assert second is not first and len(made.engines) == 2


async def test_require_says_what_to_wire_up_until_started() -> None:
    engines = StartedEngine(scripted())
    with pytest.raises(ConfigError, match="set on_startup"):
        engines.require("set on_startup")
    engine = await engines.start()
    assert engines.require("unused") is engine
    await engines.close()
    with pytest.raises(ConfigError, match="start it again"):
        engines.require("start it again")


async def test_prepare_runs_before_the_start_and_a_refusal_starts_nothing() -> None:
    made = Made()
    engines = StartedEngine(made)
    seen: list[tuple[Engine, str]] = []

    def refuse(engine: Engine) -> None:
        seen.append((engine, repr(engine)))
        raise ConfigError("options refused")

    with pytest.raises(ConfigError, match="options refused"):
        await engines.start(refuse)
    # given to prepare before its start, and left as it was: the factory may hand it out again
    assert engines.engine is None and seen[0][1].endswith("not started>") and repr(seen[0][0]).endswith("not started>")
    engine = await engines.start(lambda e: seen.append((e, "ok")))
    assert await engines.start(refuse) is engine  # prepare is for the engine being made, not later calls
    await engines.close()
    assert [note for _, note in seen[1:]] == ["ok"] and len(made.engines) == 2


async def test_check_runs_after_the_start_and_a_refusal_closes_the_engine() -> None:
    made = Made()
    engines = StartedEngine(made)
    seen: list[str] = []

    def refuse(engine: Engine) -> None:
        seen.append(repr(engine))
        raise ConfigError("unsafe options")

    with pytest.raises(ConfigError, match="unsafe options"):
        await engines.start(check=refuse)
    assert engines.engine is None and seen[0].endswith("open>") and repr(made.engines[0]).endswith("closed>")
    engine = await engines.start(check=lambda e: seen.append("ok"))
    assert await engines.start(check=refuse) is engine
    await engines.close()
    assert seen[1:] == ["ok"] and len(made.engines) == 2


async def test_a_factory_that_makes_no_engine_is_refused_and_a_failed_start_keeps_nothing() -> None:
    engines = StartedEngine(lambda: "not an engine")  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigError, match=r"not an idemsend\.Engine"):
        await engines.start()
    assert engines.engine is None

    class Refused(MockTransport):
        async def start(self) -> None:
            raise OSError("no route")

    made: list[Engine] = []

    def factory() -> Engine:
        made.append(engine := Engine(URL, key=KEY, api_key="k-123456", transport=Refused(ok)))
        return engine

    failing = StartedEngine(factory)
    with pytest.raises(OSError, match="no route"):
        await failing.start()
    assert failing.engine is None and repr(made[0]).endswith("closed>")  # the engine closed itself
