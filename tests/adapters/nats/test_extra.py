"""Without the ``nats`` extra, importing the adapter names what to install; the harness says
where the nats column runs."""

from __future__ import annotations

import importlib.util

import pytest

from idemsend import MissingExtraError


@pytest.mark.skipif(importlib.util.find_spec("nats") is not None, reason="nats-py is installed here")
def test_without_nats_py_the_import_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'idemsend\[nats\]'"):
        import idemsend.adapters.nats  # noqa: F401


def test_the_harness_says_where_nats_runs() -> None:
    from harness.queues import drivers

    reason = drivers()["nats"].unavailable()
    assert reason is None or "nox -s nats" in reason or "nats-server" in reason


def test_every_public_class_and_function_has_a_docstring() -> None:
    pytest.importorskip("nats", reason="nats-py is not installed (nox -s nats)")
    import inspect

    import idemsend.adapters.nats as module

    public = [getattr(module, name) for name in module.__all__]
    named = [value for value in public if inspect.isclass(value) or inspect.isfunction(value)]
    assert len(named) >= 15
    assert [value.__name__ for value in named if not (value.__doc__ or "").strip()] == []
