"""Skip the Temporal tests where the extra is not installed (``nox -s temporal`` has it)."""

from __future__ import annotations

import pytest

pytest.importorskip("temporalio", reason="the Temporal tests need temporalio: pip install -e '.[temporal]'")
