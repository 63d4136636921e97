"""RQ stores a scheduled retry in whole seconds; the adapter's interval must still honour Retry-After.

These go through RQ's own ``ScheduledJobRegistry.schedule`` on a real Redis and read back the
score RQ wrote, so a change in how RQ rounds shows up here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq import Queue
from rq.registry import ScheduledJobRegistry

from idemsend.adapters import whole_seconds
from idemsend.adapters.rq import rq_interval

FRACTIONS = [0.0, 0.001, 0.25, 0.5, 0.75, 0.999]
DELAYS = [0.2, 1.0, 1.5, 2.0, 30.0]


@pytest.fixture
def registry(redis_url: str) -> Iterator[tuple[Queue, ScheduledJobRegistry]]:
    conn = redis.Redis.from_url(redis_url)
    queue = Queue(f"rq-interval-{uuid.uuid4().hex}", connection=conn)
    scheduled = ScheduledJobRegistry(queue=queue)
    try:
        yield queue, scheduled
    finally:
        conn.delete(scheduled.key)
        conn.close()


def stored_due(registry: tuple[Queue, ScheduledJobRegistry], now: float, interval: int) -> float:
    """Schedule a job the way RQ's ``Job.retry`` does and return the due time RQ stored."""
    queue, reg = registry
    job = queue.create_job(print, args=("x",))
    reg.schedule(job, datetime.fromtimestamp(now, UTC) + timedelta(seconds=interval))
    score = reg.connection.zscore(reg.key, job.id)
    assert score is not None
    return float(score)


@pytest.mark.parametrize("delay", DELAYS)
def test_the_retry_is_never_due_before_retry_after(registry: tuple[Queue, ScheduledJobRegistry], delay: float) -> None:
    base = 1_800_000_000.0
    for fraction in FRACTIONS:
        now = base + fraction
        due = stored_due(registry, now, rq_interval(delay, now))
        assert due >= now + delay, f"delay {delay}, now +{fraction}: RQ would run it {now + delay - due:.3f}s early"
        assert due < now + delay + 1, f"delay {delay}, now +{fraction}: more than a second late"


def test_plain_rounding_up_would_run_early(registry: tuple[Queue, ScheduledJobRegistry]) -> None:
    # the bug this module guards against: ceil(2.0) = 2 seconds, stored as a whole second
    now = 1_800_000_000.7
    due = stored_due(registry, now, whole_seconds(2.0))
    assert due < now + 2.0


def test_no_delay_means_requeue_now() -> None:
    assert rq_interval(0) == 0
    assert rq_interval(-1.0) == 0
