"""``plan_consumer``: the durable consumer's settings against the adapter's options, row by row
(pure: no server)."""

from __future__ import annotations

import pytest

from idemsend import ConfigError

from .conftest import needs_nats

needs_nats()

from idemsend.adapters.nats import MIN_HEARTBEAT_ACK_WAIT, ConsumerSettings, plan_consumer  # noqa: E402


def plan(settings: ConsumerSettings, *, heartbeat: float | None = None, max_tries: int = 10,
         concurrency: int = 10, worst_send: float = 60.0) -> object:
    return plan_consumer(settings, heartbeat=heartbeat, max_tries=max_tries, concurrency=concurrency,
                         worst_send=worst_send)


def test_explicit_acks_with_the_defaults_beat_every_third_of_ack_wait() -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 30.0), heartbeat=None, max_tries=10, concurrency=10,
                        worst_send=60.0)
    assert (got.ack_window, got.heartbeat_every, got.max_attempts, got.warnings) == (30.0, 10.0, 10, ())
    assert got.heartbeat_span == 60.0 + 2 * 30.0 + 60


@pytest.mark.parametrize(("policy", "words"), [("none", "AckPolicy.NONE"), ("all", "AckPolicy.ALL")])
def test_ack_none_and_ack_all_are_refused_naming_the_setting(policy: str, words: str) -> None:
    with pytest.raises(ConfigError, match=rf"'c'.*ack_policy={words}.*AckPolicy.EXPLICIT"):
        plan(ConsumerSettings("c", policy, 30.0))


def test_an_unknown_ack_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown ack_policy 'sometimes'"):
        plan(ConsumerSettings("c", "sometimes", 30.0))


def test_the_shortest_backoff_step_is_the_window() -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 30.0, backoff=(6.0, 60.0)), heartbeat=None,
                        max_tries=10, concurrency=10, worst_send=60.0)
    assert (got.ack_window, got.heartbeat_every) == (6.0, 2.0)


def test_a_heartbeat_slower_than_half_the_window_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"heartbeat=20s cannot keep .* ack_wait .* is 30s; beat at most every 15s"):
        plan(ConsumerSettings("c", "explicit", 30.0), heartbeat=20.0)


def test_a_short_ack_wait_is_warned_about() -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 1.5), heartbeat=None, max_tries=10, concurrency=10,
                        worst_send=60.0)
    assert got.heartbeat_every == 0.5
    assert len(got.warnings) == 1 and f"at least {MIN_HEARTBEAT_ACK_WAIT:g}s" in got.warnings[0]


def test_without_a_heartbeat_ack_wait_must_cover_the_longest_send() -> None:
    with pytest.raises(ConfigError, match=r"without a heartbeat the ack_wait .*\(30s.*worst_case_send_time\(\) = 61s"):
        plan(ConsumerSettings("c", "explicit", 30.0), heartbeat=0, worst_send=61.0)
    ok = plan_consumer(ConsumerSettings("c", "explicit", 120.0), heartbeat=0, max_tries=10, concurrency=10,
                       worst_send=61.0)
    assert (ok.heartbeat_every, ok.heartbeat_span) == (0.0, float("inf"))


def test_a_smaller_max_deliver_is_the_last_try_and_is_warned_about() -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 30.0, max_deliver=4), heartbeat=None, max_tries=10,
                        concurrency=10, worst_send=60.0)
    assert got.max_attempts == 4
    assert any("max_deliver=4, fewer than max_tries=10" in w for w in got.warnings)
    assert any("never delivered again" in w for w in got.warnings)


@pytest.mark.parametrize("unlimited", [None, -1, 0])
def test_an_unlimited_max_deliver_leaves_max_tries(unlimited: int | None) -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 30.0, max_deliver=unlimited), heartbeat=None,
                        max_tries=7, concurrency=10, worst_send=60.0)
    assert (got.max_attempts, got.warnings) == (7, ())


def test_a_larger_max_deliver_keeps_max_tries_but_warns_of_the_killed_last_delivery() -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 30.0, max_deliver=20), heartbeat=None, max_tries=10,
                        concurrency=10, worst_send=60.0)
    assert got.max_attempts == 10
    assert len(got.warnings) == 1 and "MAX_DELIVERIES" in got.warnings[0]


def test_max_ack_pending_under_the_concurrency_is_warned_about() -> None:
    got = plan_consumer(ConsumerSettings("c", "explicit", 30.0, max_ack_pending=5), heartbeat=None, max_tries=10,
                        concurrency=20, worst_send=60.0)
    assert len(got.warnings) == 1 and "max_ack_pending=5, under concurrency=20" in got.warnings[0]


def test_settings_from_a_nats_py_consumer_config() -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

    read = ConsumerSettings.from_config("c", ConsumerConfig(ack_policy=AckPolicy.NONE, ack_wait=12.0,
                                                            backoff=[1, 2], max_deliver=3))
    assert read == ConsumerSettings("c", "none", 12.0, (1.0, 2.0), 3, None)
    assert ConsumerSettings.from_config("c", ConsumerConfig()).ack_wait == 30.0  # the server's default
