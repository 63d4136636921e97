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
logged only. ``RetryableError`` becomes ``arq.Retry(defer=…)``: the provider's
``Retry-After`` when it gave one, else exponential backoff from ``retry_base`` (see
``default_retry_delay``; with the default 10 tries a job rides out a ledger or provider
outage of about 8.5 minutes, ``retry_span(10)``). On the last try the error is raised
instead, so arq stores the real reason rather than a bare "max retries exceeded".
``FatalError`` is raised: arq stores it and never retries it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._engine import Engine
from .._errors import ConfigError, MissingExtraError, RetryableError
from .._keys import Job
from ._common import (
    DEFAULT_MAX_TRIES,
    DEFAULT_RETRY_BASE,
    EngineFactory,
    build_engine,
    default_retry_delay,
    result_dict,
)

try:
    from arq import Retry
except ImportError as exc:
    raise MissingExtraError("arq", "arq") from exc

__all__ = ["CTX_ENGINE", "ArqAdapter"]

CTX_ENGINE = "idemsend_engine"


class ArqAdapter:
    """Glue between one Engine per arq worker and ordinary arq job functions."""

    def __init__(
        self, engine_factory: EngineFactory, *, max_tries: int = DEFAULT_MAX_TRIES,
        retry_base: float = DEFAULT_RETRY_BASE,
    ) -> None:
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ConfigError(f"max_tries must be an integer >= 1, got {max_tries!r}")
        if not (isinstance(retry_base, int | float) and math.isfinite(retry_base) and 0 < retry_base <= 3600):
            raise ConfigError(f"retry_base must be a number of seconds in (0, 3600], got {retry_base!r}")
        self.engine_factory = engine_factory
        self.max_tries = max_tries
        self.retry_base = retry_base

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        ctx[CTX_ENGINE] = await build_engine(self.engine_factory).start()

    async def on_shutdown(self, ctx: dict[str, Any]) -> None:
        engine = ctx.pop(CTX_ENGINE, None)
        if engine is not None:
            await engine.aclose()

    def engine(self, ctx: Mapping[str, Any]) -> Engine:
        engine = ctx.get(CTX_ENGINE)
        if engine is None:
            raise ConfigError(
                "no idemsend Engine in the arq ctx: set on_startup = adapter.on_startup in WorkerSettings"
            )
        assert isinstance(engine, Engine)
        return engine

    async def send(self, ctx: Mapping[str, Any], data: Mapping[str, Any], body: Any) -> dict[str, Any]:
        """Send ``body`` for this arq job; ``data`` fills the key template."""
        job_try = int(ctx.get("job_try", 1))
        try:
            result = await self.engine(ctx).send(Job(str(ctx["job_id"]), data), body, attempt=job_try)
        except RetryableError as exc:
            if job_try >= self.max_tries:
                raise  # the last try: arq records this reason as the job's failure
            raise Retry(defer=default_retry_delay(exc, job_try, base=self.retry_base)) from exc
        return result_dict(result)
