"""A ``SendFailed`` through a real Redis result backend, read back by a process that never
imported ``idemsend.adapters.celery`` (a web app calling ``AsyncResult``): with the pickle
serializer it is the real error (pickle imports its module), ``code`` and ``maybe_sent``
included; with JSON (Celery's default) Celery only uses exception classes already imported,
so it is an exception Celery makes up with the same name and the same arguments (message,
code, retryable, maybe_sent), and the real class once the reader imports the adapter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

pytest.importorskip("celery", reason="Celery is not installed here: it is tested in its own environment, nox -s celery")

from celery import Celery

from idemsend.adapters.celery import SendFailed

pytestmark = pytest.mark.redis

READER = textwrap.dedent("""
    import json, sys
    from celery import Celery
    url, serializer, task_id, imports = sys.argv[1:]
    if imports == "yes":
        import idemsend.adapters.celery  # noqa: F401
    before = "idemsend.adapters.celery" in sys.modules
    app = Celery("reader", backend=url, result_serializer=serializer, result_accept_content=["json", "pickle"])
    error = app.AsyncResult(task_id).result
    print(json.dumps({
        "imported_before": before, "module": type(error).__module__, "type": type(error).__name__,
        "args": list(error.args), "code": getattr(error, "code", None),
        "maybe_sent": getattr(error, "maybe_sent", None), "retryable": getattr(error, "retryable", None),
        "str": str(error),
    }))
    app.backend.client.close()
""")


def store_and_read(redis_url: str, serializer: str, imports: bool) -> dict[str, object]:
    app = Celery("writer", backend=redis_url, result_serializer=serializer, result_accept_content=["json", "pickle"],
                 set_as_current=False)
    task_id = f"results-{uuid.uuid4().hex[:8]}"
    error = SendFailed("HTTP 503 (may have been sent)", "HTTP 503", True, True)
    try:
        app.backend.mark_as_failure(task_id, error)  # what the worker does when the task raises
    finally:
        app.backend.client.close()
    done = subprocess.run(
        [sys.executable, "-c", READER, redis_url, serializer, task_id, "yes" if imports else "no"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    read: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert read["imported_before"] is imports
    return read


def test_with_pickle_a_reader_that_never_imported_the_adapter_gets_the_real_error(redis_url: str) -> None:
    read = store_and_read(redis_url, "pickle", imports=False)
    assert (read["module"], read["type"]) == ("idemsend.adapters.celery", "SendFailed")
    assert read["code"] == "HTTP 503" and read["retryable"] is True and read["maybe_sent"] is True
    assert read["str"] == "HTTP 503 (may have been sent)"


def test_with_json_a_reader_that_never_imported_the_adapter_gets_the_arguments(redis_url: str) -> None:
    read = store_and_read(redis_url, "json", imports=False)
    assert read["type"] == "SendFailed" and read["module"] != "idemsend.adapters.celery"  # Celery made it up
    assert read["args"] == ["HTTP 503 (may have been sent)", "HTTP 503", True, True]
    assert read["code"] is None  # as the docs say: read args[1], or import the adapter


def test_with_json_a_reader_that_imported_the_adapter_gets_the_real_error(redis_url: str) -> None:
    read = store_and_read(redis_url, "json", imports=True)
    assert (read["module"], read["type"]) == ("idemsend.adapters.celery", "SendFailed")
    assert read["code"] == "HTTP 503" and read["retryable"] is True and read["maybe_sent"] is True
