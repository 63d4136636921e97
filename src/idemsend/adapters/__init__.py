"""Queue adapters: one module per queue, each imported by path so its extra stays optional.

* ``idemsend.adapters.arq``    (``pip install 'idemsend[arq]'``)
* ``idemsend.adapters.rq``     (``pip install 'idemsend[rq]'``)
* ``idemsend.adapters.qstash`` (``pip install 'idemsend[qstash]'``)

Every adapter is a short translation of one outcome model, the adapter kit's
``run_job(...) -> JobOutcome``: ``Succeeded(result)`` -> the job succeeds with
``result_dict(result)``; ``RetryIn(delay, error)`` -> the queue's own delayed retry after
``delay`` (the provider's ``retry_after``, else ``QueueBackoff``'s exponential backoff);
``GiveUp(error)`` -> a failure the queue records and never retries (a ``FatalError``, or a
``RetryableError`` on the last try, so the real reason is kept). An adapter that keeps an
account of each try writes ``outcome_record(outcome, attempt=...)``: ``state`` is ``sent``,
``retrying`` (a retry is scheduled), ``failed`` (the last try ended on a retryable error) or
``fatal``, on every queue.

Shared pieces for new adapters: ``_kit`` (the outcome and the backoff), ``_holder``
(``StartedEngine``: a worker's one Engine, made on first use, started once, closed at
shutdown), ``_portal`` (``ProcessLocalEngine``: the same per process, for queues with sync
jobs, on a loop thread), ``_webhook``
(body reads, responses, aiohttp and ASGI glue for webhook queues), ``_common`` (result
shape, ``engine_from_env``).
"""

from ._common import (
    DEFAULT_MAX_TRIES,
    DEFAULT_RETRY_BASE,
    DEFAULT_RETRY_CAP,
    EngineFactory,
    engine_from_env,
    result_dict,
    whole_seconds,
)
from ._durable import step_job_id
from ._kit import (
    GiveUp,
    JobOutcome,
    OutcomeState,
    QueueBackoff,
    RetryIn,
    Succeeded,
    outcome_record,
    run_job,
)

__all__ = [
    "DEFAULT_MAX_TRIES",
    "DEFAULT_RETRY_BASE",
    "DEFAULT_RETRY_CAP",
    "EngineFactory",
    "GiveUp",
    "JobOutcome",
    "OutcomeState",
    "QueueBackoff",
    "RetryIn",
    "Succeeded",
    "engine_from_env",
    "outcome_record",
    "result_dict",
    "run_job",
    "step_job_id",
    "whole_seconds",
]
