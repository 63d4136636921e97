"""Queue adapters: one module per queue, each imported by path so its extra stays optional.

* ``idemsend.adapters.arq``    (``pip install 'idemsend[arq]'``)
* ``idemsend.adapters.rq``     (``pip install 'idemsend[rq]'``)
* ``idemsend.adapters.qstash`` (``pip install 'idemsend[qstash]'``)

Every adapter maps the one outcome model the same way: sent -> the job succeeds with
``result_dict(result)``; ``RetryableError`` -> the queue's own delayed retry after
``retry_after``; ``FatalError`` -> a failure the queue records and never retries.
"""

from ._common import EngineFactory, default_retry_delay, engine_from_env, result_dict, whole_seconds

__all__ = ["EngineFactory", "default_retry_delay", "engine_from_env", "result_dict", "whole_seconds"]
