"""Every adapter takes its engine factory and its ``QueueBackoff`` the same way: the factory
first (after Celery's app), ``backoff=`` a ``QueueBackoff``, or the shorthand ``retry_base=``
(Celery also ``retry_cap=``). Each queue's column runs where its library is installed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from idemsend import ConfigError, Engine
from idemsend.adapters import QueueBackoff
from idemsend.adapters._common import check_factory
from idemsend.adapters._kit import DEFAULT_BACKOFF, adapter_backoff

from ._scripted import scripted

URL = "https://api.example.com/api/v1/emails"


def _make(name: str) -> Callable[..., Any]:
    """``make(factory, **knobs)`` for the adapter ``name``, or skip where its library is missing."""
    if name == "arq":
        pytest.importorskip("arq")
        return importlib.import_module("idemsend.adapters.arq").ArqAdapter  # type: ignore[no-any-return]
    if name == "rq":
        pytest.importorskip("rq")
        return importlib.import_module("idemsend.adapters.rq").RQAdapter  # type: ignore[no-any-return]
    if name == "bullmq":
        pytest.importorskip("bullmq")
        return importlib.import_module("idemsend.adapters.bullmq").BullMQAdapter  # type: ignore[no-any-return]
    if name == "celery":
        celery = pytest.importorskip("celery")
        adapter = importlib.import_module("idemsend.adapters.celery").CeleryAdapter
        return lambda factory, **knobs: adapter(celery.Celery("knobs"), factory, **knobs)
    pytest.importorskip("aiobotocore")
    sqs = importlib.import_module("idemsend.adapters.sqs")
    if name == "sqs":
        return lambda factory, **knobs: sqs.SQSConsumer(factory, "https://sqs.example/1/q", **knobs)
    return sqs.SQSBatchHandler  # type: ignore[no-any-return]


ADAPTERS = ["arq", "rq", "bullmq", "celery", "sqs", "sqs-lambda"]


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_takes_a_queue_backoff(name: str) -> None:
    make = _make(name)
    given = QueueBackoff(base=2.0, cap=30.0)
    assert make(scripted(), backoff=given).backoff is given
    assert make(scripted()).backoff == DEFAULT_BACKOFF
    assert make(scripted(), retry_base=3).backoff == QueueBackoff(base=3.0)  # the shorthand
    with pytest.raises(ConfigError, match="not both"):
        make(scripted(), backoff=given, retry_base=3)
    with pytest.raises(ConfigError, match=r"backoff must be an idemsend\.adapters\.QueueBackoff"):
        make(scripted(), backoff=2.0)
    with pytest.raises(ConfigError, match=r"retry_base must be a number of seconds in \(0, 3600\]"):
        make(scripted(), retry_base=0)


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_refuses_an_engine_where_its_factory_belongs(name: str) -> None:
    make = _make(name)
    with pytest.raises(ConfigError, match="needs an engine factory, not an Engine"):
        make(Engine(URL, key="k:{job_id}", api_key="x"))
    with pytest.raises(ConfigError, match="engine_factory must be a zero-argument callable"):
        make("not a factory")


def test_the_backoff_rule() -> None:
    assert adapter_backoff() is DEFAULT_BACKOFF
    assert adapter_backoff(retry_base=0.5) == QueueBackoff(base=0.5)
    assert adapter_backoff(retry_cap=10) == QueueBackoff(cap=10)
    assert adapter_backoff(retry_base=0.5, retry_cap=10) == QueueBackoff(base=0.5, cap=10)
    with pytest.raises(ConfigError, match="QueueBackoff cap"):
        adapter_backoff(retry_cap=0)
    with pytest.raises(ConfigError, match="not both"):
        adapter_backoff(QueueBackoff(), retry_cap=10)


def test_a_factory_is_any_callable() -> None:
    factory = scripted()
    assert check_factory(factory) is factory
    assert check_factory(Engine) is Engine  # the class itself is a callable too (it needs arguments, found at start)
