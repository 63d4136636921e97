"""Without the ``dramatiq`` extra, importing the adapter names what to install; with it, every
public name is documented; the harness says where its drivers run."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from tests.unit.test_docstrings import _public

BLOCKED_IMPORT = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "dramatiq" or name.startswith("dramatiq."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
try:
    import idemsend.adapters.dramatiq
except ImportError as exc:
    from idemsend import MissingExtraError
    assert isinstance(exc, MissingExtraError), type(exc)
    print(exc)
else:
    raise SystemExit("imported without dramatiq")
"""


def test_without_dramatiq_the_import_names_the_extra() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'idemsend[dramatiq]'" in out.stdout


def test_every_public_name_has_a_docstring() -> None:
    pytest.importorskip("dramatiq", reason="Dramatiq is not installed here: nox -s dramatiq tests it")
    names = list(_public("idemsend.adapters.dramatiq"))
    assert len(names) > 10
    assert [name for name, obj in names if not (inspect.getdoc(obj) or "").strip()] == []


def test_the_harness_says_where_dramatiq_runs() -> None:
    from harness.queues import drivers

    for name in ("dramatiq", "dramatiq-redis"):
        reason = drivers()[name].unavailable()
        assert reason is None or "dramatiq" in reason
