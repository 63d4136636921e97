"""The Temporal adapter's decisions, as pure functions (no I/O, no activity context):
the job id of an activity, the warnings its timeouts earn, whether a key holds the run id,
and the ``ApplicationError`` each outcome becomes. ``tests/adapters/temporal/test_decide.py``
tries them row by row; ``__init__.py`` applies them inside a running activity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.exceptions import ApplicationError

from ..._classify import MAX_RETRY_AFTER
from ..._errors import ConfigError
from .._durable import step_job_id
from .._kit import GiveUp, QueueBackoff, RetryIn, outcome_record

__all__ = [
    "RUN_ID_FIELDS",
    "ActivityFacts",
    "check_template_fields",
    "heartbeat_every",
    "job_id_for",
    "retry_delay",
    "run_id_in_key",
    "timeout_warnings",
    "to_application_error",
]

#: Key-template placeholders that name a Temporal run id: refused at start, since a
#: workflow retried or continued-as-new gets a new run id (and so a new key: a double send).
RUN_ID_FIELDS = frozenset({"run_id", "workflow_run_id", "activity_run_id", "runid"})


def job_id_for(workflow_id: str | None, activity_id: str) -> str:
    """The job id of an activity: ``<workflow id>/<activity id>`` for a workflow's activity,
    the activity id alone for a standalone one (``idemsend.adapters.step_job_id``: each part
    with ``%`` and ``/`` escaped, so no two activities share one). Never the run id."""
    return step_job_id(workflow_id, activity_id)


def check_template_fields(fields: tuple[str, ...]) -> None:
    """ConfigError when a key template's placeholders name a run id (see ``RUN_ID_FIELDS``)."""
    bad = [name for name in fields if name.lower() in RUN_ID_FIELDS]
    if bad:
        raise ConfigError(
            f"the key template uses {{{bad[0]}}}: a Temporal run id changes when the workflow is retried,"
            " reset or continued-as-new, so the key would change and the send could happen twice;"
            " derive the key from {job_id} (workflow id + activity id) and the job's data"
        )


def run_id_in_key(key: str, run_ids: tuple[str | None, ...]) -> str | None:
    """The run id (of ``run_ids``: the workflow's, the activity's) that ``key`` contains,
    else None. A key holding one changes on every new run: the adapter refuses to send it."""
    for run_id in run_ids:
        if run_id and len(run_id) >= 8 and run_id in key:
            return run_id
    return None


@dataclass(frozen=True, slots=True)
class ActivityFacts:
    """What the timeout check needs from ``activity.info()``."""

    activity_type: str
    start_to_close: timedelta | None
    schedule_to_close: timedelta | None
    heartbeat: timedelta | None
    maximum_attempts: int | None  # the retry policy's, when the server said (0: unlimited)
    is_local: bool = False


def timeout_warnings(facts: ActivityFacts, worst_send: float) -> list[str]:
    """Why the activity's settings can cost a send or a wasted attempt (empty: none).
    ``worst_send`` is ``engine.worst_case_send_time()``, seconds."""
    notes: list[str] = []
    for name, value in (("start_to_close_timeout", facts.start_to_close),
                        ("schedule_to_close_timeout", facts.schedule_to_close)):
        if value is not None and value.total_seconds() < worst_send:
            notes.append(
                f"activity {facts.activity_type!r}: {name} is {value.total_seconds():g}s, shorter than"
                f" engine.worst_case_send_time() = {worst_send:.0f}s: Temporal may time an attempt out while"
                f" its send still runs and start the next (the ledger holds that one off until the first"
                f" settles); set {name} above {math.ceil(worst_send)}s"
            )
    if facts.heartbeat is None and not facts.is_local:
        notes.append(
            f"activity {facts.activity_type!r} has no heartbeat_timeout: a worker that dies mid-send is"
            " noticed only when start_to_close_timeout runs out; set heartbeat_timeout (the adapter"
            " heartbeats while the send runs)"
        )
    if facts.maximum_attempts == 1:
        notes.append(
            f"activity {facts.activity_type!r}: its retry policy has maximum_attempts=1, so a retryable"
            " error (a 503, a lost response, the ledger down) fails it for good; retries live in Temporal"
        )
    return notes


def heartbeat_every(heartbeat: timedelta | None, default: float) -> float:
    """Seconds between heartbeats while a send runs: a third of the heartbeat timeout
    (at most ``default``), else ``default``."""
    if heartbeat is None or heartbeat.total_seconds() <= 0:
        return default
    return max(0.05, min(default, heartbeat.total_seconds() / 3))


def retry_delay(outcome: RetryIn, backoff: QueueBackoff | None, attempt: int) -> timedelta | None:
    """``next_retry_delay`` for a retry: with ``backoff``, the kit's delay; without, the
    provider's ``retry_after`` (clamped to ``[0, MAX_RETRY_AFTER]``) when it named one, else
    None (Temporal's retry policy spaces the tries)."""
    if backoff is not None:
        seconds = backoff.delay(outcome.error, attempt)
    else:
        after = outcome.error.retry_after
        if not isinstance(after, int | float) or isinstance(after, bool) or math.isnan(after) or after <= 0:
            return None
        seconds = min(float(after), MAX_RETRY_AFTER)
    return timedelta(seconds=min(seconds, MAX_RETRY_AFTER)) if seconds > 0 else None


def to_application_error(outcome: RetryIn | GiveUp, *, attempt: int, next_delay: timedelta | None) -> ApplicationError:
    """The ``ApplicationError`` an activity raises for ``outcome``: ``type`` is the one-word
    reason (the fatal code: ``IDEMPOTENCY_MISMATCH``...; the retryable reason: ``5xx``,
    ``ledger``, ``busy``...), the message is the error's own, and the one detail is the
    outcome record (``idemsend.adapters.outcome_record``: state, reason or code,
    ``maybe_sent``...). A ``GiveUp`` is ``non_retryable``; a ``RetryIn`` carries
    ``next_retry_delay`` (None: the retry policy's own interval)."""
    details: dict[str, Any]
    match outcome:
        case RetryIn(_, error):
            details = outcome_record(outcome, attempt=attempt)
            if next_delay is None:
                details.pop("delay", None)
            else:
                details["delay"] = round(next_delay.total_seconds(), 3)
            return ApplicationError(str(error), details, type=error.reason, next_retry_delay=next_delay)
        case GiveUp(error):
            details = outcome_record(outcome, attempt=attempt)
            return ApplicationError(str(error), details, type=outcome.code, non_retryable=True)
    raise TypeError(f"not a RetryIn or GiveUp: {outcome!r}")
