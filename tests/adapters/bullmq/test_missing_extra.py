"""Without the bullmq package, importing the adapter names the extra to install (runs in
every environment: bullmq is hidden where it is installed)."""

from __future__ import annotations

import importlib
import sys

import pytest

from idemsend import MissingExtraError


def test_the_adapter_without_bullmq_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bullmq", None)  # import bullmq -> ImportError
    monkeypatch.delitem(sys.modules, "idemsend.adapters.bullmq", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'idemsend\[bullmq\]'") as missing:
        importlib.import_module("idemsend.adapters.bullmq")
    assert missing.value.extra == "bullmq"
