"""Every Python block in the README runs as shown: each is written to a file and run with
the interpreter of this environment. A block preceded by ``<!-- needs: module -->`` runs
only where that module is installed (its queue's test environment runs it: noxfile.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w.]+) -->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def _blocks() -> list[tuple[int, str | None, str]]:
    text = (ROOT / "README.md").read_text()
    return [
        (text.count("\n", 0, match.start()) + 1, match.group("needs"), match.group("code"))
        for match in _BLOCK.finditer(text)
    ]


BLOCKS = _blocks()


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("line", "needs", "code"), BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line: int, needs: str | None, code: str, tmp_path: Path, redis_url: str) -> None:
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"needs {needs} (its test environment runs this block)")
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code)
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, f"README.md:{line} failed:\n{out.stdout}\n{out.stderr[-3000:]}"
