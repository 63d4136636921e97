"""The DBOS step example (adapters/dbos_step) runs as shown: a step keyed by workflow id +
step id, run again under the same ids, sends once. Runs where dbos is installed (nox -s temporal)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "adapters" / "dbos_step" / "example.py"


@pytest.mark.skipif(importlib.util.find_spec("dbos") is None, reason="needs dbos (nox -s temporal installs it)")
def test_the_dbos_step_example_sends_once(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "sent once: welcome:u1:" in out.stdout
