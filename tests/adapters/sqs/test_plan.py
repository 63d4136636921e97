"""What an SQSConsumer makes of its queue and options at start (``plan_queue``), row by
row without a queue: FIFO, the visibility timeout, the heartbeat and its span, the receives
a retryable error gets, and every disagreement as a ConfigError naming it."""

from __future__ import annotations

import json
import logging

import pytest

from idemsend import ConfigError

from .conftest import SKIP_REASON

pytest.importorskip("aiobotocore", reason=SKIP_REASON)

from idemsend.adapters.sqs._plan import plan_queue, resolve_max_attempts

URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/emails"


def plan(attributes: dict[str, str], **options: object):  # type: ignore[no-untyped-def]
    kw: dict[str, object] = {"visibility_timeout": None, "heartbeat": None, "give_up": "delete",
                             "max_attempts": None, "worst_send": 466.0}
    kw.update(options)
    return plan_queue(URL, attributes, **kw)  # type: ignore[arg-type]


def test_the_queues_own_visibility_and_a_heartbeat_a_third_of_it() -> None:
    p = plan({"VisibilityTimeout": "30"})
    assert (p.fifo, p.visibility, p.heartbeat_every, p.max_attempts) == (False, 30, 10.0, 10)
    assert p.heartbeat_span == 466.0 + 2 * 30 + 60  # past it a send is wedged: the message goes back


def test_fifo_from_the_attribute_or_the_name() -> None:
    assert plan({"FifoQueue": "true"}).fifo
    assert plan_queue(URL + ".fifo", {}, visibility_timeout=None, heartbeat=None, give_up="delete",
                      max_attempts=None, worst_send=1.0).fifo


def test_an_option_overrides_the_queues_visibility() -> None:
    assert plan({"VisibilityTimeout": "30"}, visibility_timeout=60).visibility == 60


@pytest.mark.parametrize(
    ("attributes", "options", "match"),
    [
        ({"VisibilityTimeout": "2"}, {}, "too short to keep ahead of"),
        ({"VisibilityTimeout": "30"}, {"heartbeat": 16.0}, "cannot keep a message hidden 30s"),
        ({"VisibilityTimeout": "30"}, {"heartbeat": 0}, r"worst_case_send_time\(\) = 466s"),
    ],
)
def test_options_the_queue_cannot_honour_are_config_errors(
    attributes: dict[str, str], options: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        plan(attributes, **options)


def test_without_a_heartbeat_a_visibility_covering_the_longest_send_is_fine() -> None:
    p = plan({"VisibilityTimeout": "600"}, heartbeat=0)
    assert p.heartbeat_every == 0 and p.heartbeat_span == float("inf")


def test_the_redrive_policy_caps_the_receives() -> None:
    policy = json.dumps({"deadLetterTargetArn": "arn:aws:sqs:eu-west-1:1:dlq", "maxReceiveCount": 4})
    p = plan({"RedrivePolicy": policy})
    assert p.max_attempts == 4 and p.redrive_policy is not None
    with pytest.raises(ConfigError, match="more receives than the queue's redrive policy allows"):
        plan({"RedrivePolicy": policy}, max_attempts=5)
    assert plan({"RedrivePolicy": policy}, give_up="redrive").max_attempts == 4


def test_redrive_needs_a_redrive_policy() -> None:
    with pytest.raises(ConfigError, match="has none"):
        resolve_max_attempts(None, None, "redrive")
    assert resolve_max_attempts(None, None, "delete") == 10 and resolve_max_attempts(3, None, "delete") == 3


def test_an_unreadable_redrive_policy_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="idemsend.adapters.sqs"):
        p = plan({"RedrivePolicy": "{not json"})
    assert p.redrive_policy is None and p.max_attempts == 10
    assert "cannot be read" in caplog.text
