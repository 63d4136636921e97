"""Queue adapters: one module per queue, each imported by path so its extra stays optional.

* ``idemsend.adapters.arq``    (``pip install 'idemsend[arq]'``)
* ``idemsend.adapters.rq``     (``pip install 'idemsend[rq]'``)
* ``idemsend.adapters.qstash`` (``pip install 'idemsend[qstash]'``)

Every adapter maps the one outcome model the same way: sent -> the job succeeds with
``result_dict(result)``; ``RetryableError`` -> the queue's own delayed retry after
``default_retry_delay`` (the provider's ``retry_after``, else exponential backoff);
``FatalError`` -> a failure the queue records and never retries.
"""

from ._common import (
    DEFAULT_MAX_TRIES,
    DEFAULT_RETRY_BASE,
    DEFAULT_RETRY_CAP,
    EngineFactory,
    default_retry_delay,
    engine_from_env,
    result_dict,
    retry_span,
    whole_seconds,
)

__all__ = [
    "DEFAULT_MAX_TRIES",
    "DEFAULT_RETRY_BASE",
    "DEFAULT_RETRY_CAP",
    "EngineFactory",
    "default_retry_delay",
    "engine_from_env",
    "result_dict",
    "retry_span",
    "whole_seconds",
]
