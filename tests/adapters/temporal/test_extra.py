"""Without the ``temporal`` extra, importing the adapter names what to install; the step
key helper needs no engine package."""

from __future__ import annotations

import subprocess
import sys

from idemsend.adapters import step_job_id


def test_without_temporalio_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['temporalio'] = None\n"
        "try:\n    import idemsend.adapters.temporal\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "MissingExtraError" in out.stdout, out.stdout + out.stderr
    assert "pip install 'idemsend[temporal]'" in out.stdout and "'temporalio' package" in out.stdout


def test_the_step_key_helper_is_unambiguous_without_any_engine() -> None:
    assert step_job_id("wf", 3) == "wf/3"
    assert step_job_id(None, "act") == "act"
    assert len({step_job_id("a/b", "c"), step_job_id("a", "b/c"), step_job_id(None, "a/b/c")}) == 3
