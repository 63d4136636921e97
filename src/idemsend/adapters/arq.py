"""arq adapter (``pip install 'idemsend[arq]'``).

```python
from idemsend import Engine
from idemsend.adapters.arq import ArqAdapter

idem = ArqAdapter(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY), max_tries=10)

async def send_welcome(ctx, user_id: str, email: str) -> dict:
    return await idem.send(ctx, {"user_id": user_id}, {"to": [email], "template": "welcome"})

class WorkerSettings:
    functions = [send_welcome]
    on_startup = idem.on_startup      # one Engine per worker, shared by every job
    on_shutdown = idem.on_shutdown
    max_tries = idem.max_tries
```

The job id is ``ctx["job_id"]`` (stable across arq's retries); ``ctx["job_try"]`` is
logged only. The adapter kit's outcomes in arq's terms: ``Succeeded`` -> the job returns
``result_dict``; ``RetryIn`` -> ``arq.Retry(defer=…)``: the provider's ``Retry-After``
when it gave one, else the adapter's exponential ``backoff`` (with the default 10 tries
a job rides out a ledger or provider outage of about 8.5 minutes, ``QueueBackoff().span(10)``);
``GiveUp`` -> the error is raised, so arq stores the real reason (on the last try too,
rather than a bare "max retries exceeded") and never retries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._engine import Engine
from .._errors import ConfigError, MissingExtraError
from .._keys import Job
from ._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from ._holder import StartedEngine
from ._kit import GiveUp, QueueBackoff, RetryIn, Succeeded, adapter_backoff, check_tries, run_job

try:
    from arq import Retry
except ImportError as exc:
    raise MissingExtraError("arq", "arq") from exc

__all__ = ["CTX_ENGINE", "ArqAdapter"]

CTX_ENGINE = "idemsend_engine"
_CTX_ENGINES = "idemsend_engines"  # the StartedEngine behind ctx[CTX_ENGINE]


class ArqAdapter:
    """Glue between one Engine per arq worker and ordinary arq job functions.

    ``engine_factory`` makes each worker's Engine; ``max_tries`` is arq's try budget (set
    ``WorkerSettings.max_tries = idem.max_tries``); ``backoff`` (a ``QueueBackoff``) the
    delay between tries when the provider named none, or the shorthand ``retry_base=`` (its
    first delay)."""

    def __init__(
        self, engine_factory: EngineFactory, *, max_tries: int = DEFAULT_MAX_TRIES,
        backoff: QueueBackoff | None = None, retry_base: float | None = None,
    ) -> None:
        self.engine_factory = check_factory(engine_factory)
        self.max_tries = check_tries("max_tries", max_tries)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base)
        self.retry_base = self.backoff.base

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        """arq's ``on_startup``: make and start this worker's Engine, kept in ``ctx`` (each
        arq worker has its own ``ctx``, so each its own Engine)."""
        engines = StartedEngine(self.engine_factory)
        ctx[CTX_ENGINE] = await engines.start()
        ctx[_CTX_ENGINES] = engines

    async def on_shutdown(self, ctx: dict[str, Any]) -> None:
        """arq's ``on_shutdown``: close this worker's Engine."""
        engine = ctx.pop(CTX_ENGINE, None)
        engines = ctx.pop(_CTX_ENGINES, None)
        if isinstance(engines, StartedEngine):
            await engines.close()
        elif engine is not None:  # put in ctx by hand
            await engine.aclose()

    def engine(self, ctx: Mapping[str, Any]) -> Engine:
        """This worker's Engine (ConfigError if ``on_startup`` was not wired up)."""
        engine = ctx.get(CTX_ENGINE)
        if engine is None:
            raise ConfigError(
                "no idemsend Engine in the arq ctx: set on_startup = adapter.on_startup in WorkerSettings"
            )
        assert isinstance(engine, Engine)
        return engine

    async def send(self, ctx: Mapping[str, Any], data: Mapping[str, Any], body: Any) -> dict[str, Any]:
        """Send ``body`` for this arq job; ``data`` fills the key template."""
        outcome = await run_job(
            self.engine(ctx), Job(str(ctx["job_id"]), data), body,
            attempt=int(ctx.get("job_try", 1)), max_attempts=self.max_tries, queue="arq", backoff=self.backoff,
        )
        match outcome:
            case Succeeded(result):
                return result
            case RetryIn(delay, error):
                raise Retry(defer=delay) from error
            case GiveUp(error):
                raise error
