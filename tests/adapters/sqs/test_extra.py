"""Without the ``sqs`` extra, importing the adapter names what to install."""

from __future__ import annotations

import importlib.util

import pytest

from idemsend import MissingExtraError


@pytest.mark.skipif(importlib.util.find_spec("aiobotocore") is not None, reason="aiobotocore is installed here")
def test_without_aiobotocore_the_import_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'idemsend\[sqs\]'"):
        import idemsend.adapters.sqs  # noqa: F401


def test_the_harness_says_where_sqs_runs() -> None:
    from harness.queues import drivers

    driver = drivers()["sqs"]
    reason = driver.unavailable()
    assert reason is None or "nox -s sqs" in reason
