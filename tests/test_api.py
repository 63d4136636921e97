"""The public front: exports, typing marker, missing extras, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import idemsend
import idemsend.classify
import idemsend.ledger
import idemsend.testing

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [idemsend, idemsend.classify, idemsend.ledger, idemsend.testing])
def test_all_is_sorted_and_exported(module: object) -> None:
    names = list(module.__all__)  # type: ignore[attr-defined]
    # isort style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions
    assert names == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    for name in names:
        assert getattr(module, name) is not None, name


def test_public_names_are_the_contract() -> None:
    for name in [
        "Engine", "Job", "Template", "KeyDeriver", "SendResult", "IdemsendError", "RetryableError",
        "FatalError", "KeyDerivationError", "MismatchError", "ConfigError", "UnstableKeyError", "StaleReplayError",
    ]:
        assert name in idemsend.__all__
    assert issubclass(idemsend.MismatchError, idemsend.FatalError)
    assert issubclass(idemsend.UnstableKeyError, idemsend.FatalError)
    assert issubclass(idemsend.StaleReplayError, idemsend.FatalError)
    assert issubclass(idemsend.RetryableError, idemsend.IdemsendError)
    assert issubclass(idemsend.ConfigError, idemsend.IdemsendError)


def test_the_backends_errors_are_one_branch_of_the_error_tree() -> None:
    from idemsend.ledger import LedgerUnavailableError

    assert issubclass(idemsend.BackendError, idemsend.IdemsendError)
    assert issubclass(idemsend.TransportError, idemsend.BackendError)
    assert issubclass(LedgerUnavailableError, idemsend.BackendError)
    assert not issubclass(idemsend.BackendError, (idemsend.RetryableError, idemsend.FatalError))
    # whether it may have run follows the transport error's kind
    assert not idemsend.TransportError("refused", kind="connect").maybe_sent
    assert idemsend.TransportError("timed out", kind="timeout").maybe_sent


def test_py_typed_ships() -> None:
    assert (Path(idemsend.__file__).parent / "py.typed").exists()


@pytest.mark.parametrize(
    ("module", "extra", "blocked"),
    [
        ("idemsend.ledger._redis", "redis", "redis"),
        ("idemsend.adapters.arq", "arq", "arq"),
        ("idemsend.adapters.rq", "rq", "rq"),
        ("idemsend.adapters.qstash", "qstash", "qstash"),
        ("idemsend.contrib.otel", "otel", "opentelemetry"),
    ],
)
def test_missing_extra_names_the_pip_command(module: str, extra: str, blocked: str) -> None:
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
try:
    import {module}
except ImportError as exc:
    from idemsend import MissingExtraError
    assert isinstance(exc, MissingExtraError), type(exc)
    print(exc)
else:
    raise SystemExit("imported without {blocked}")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"pip install 'idemsend[{extra}]'" in out.stdout


def test_demo_cli_runs_and_reports() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "idemsend.cli", "demo", "--jobs", "300", "--dup-rate", "0.3",
         "--fault-rate", "0.2", "--seed", "7"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in out.stdout.splitlines() if line.startswith("| ") and "what" not in line
    }
    assert rows["jobs"] == "300"
    assert rows["provider sends"] == "300"
    assert rows["double sends"] == "0" and rows["lost jobs (never sent)"] == "0"
    assert rows["unconfirmed jobs (still retrying at the deadline)"] == "0"
    assert int(rows["duplicates delivered"]) > 30
    assert "demo: 300/300" in out.stderr  # progress output


def test_demo_cli_rejects_bad_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "idemsend.cli", "demo", "--dup-rate", "2"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "between 0 and 1" in out.stderr


def test_cli_commands_are_the_installed_ones() -> None:
    from idemsend.cli import build_parser, main

    assert callable(main)  # [project.scripts] idemsend = "idemsend.cli:main"
    help_text = build_parser().format_help()
    for command in ("demo", "mock-provider", "inspect", "clear", "migrate"):
        assert command in help_text
    assert "`" not in help_text and "bench" not in help_text and "chaos" not in help_text
    out = subprocess.run(
        [sys.executable, "-m", "idemsend.cli", "chaos"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "invalid choice: 'chaos'" in out.stderr  # it lives in harness/ now


def test_the_wheel_ships_no_checkout_tooling() -> None:
    package = Path(idemsend.__file__).parent
    assert not (package / "_chaos.py").exists() and not (package / "_demo.py").exists()
    assert (package / "cli" / "_demo.py").exists() and (package / "cli" / "_progress.py").exists()


@pytest.mark.anyio
async def test_clear_cli_keeps_a_record_whose_send_may_have_run_unless_forced(redis_url: str) -> None:
    import asyncio
    import uuid

    import aiohttp

    from idemsend import Engine, Job, MismatchError
    from idemsend.cli import main
    from idemsend.ledger import RedisLedger
    from idemsend.testing import MockProvider

    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    async with MockProvider() as provider:
        headers = {"Authorization": f"Bearer {provider.api_key}", "Idempotency-Key": "welcome:u1:j1"}
        async with aiohttp.ClientSession() as s, s.post(provider.emails_url, json={"other": 1}, headers=headers):
            pass  # the key ran with another body
        engine = Engine(provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key,
                        ledger=RedisLedger.from_url(redis_url, prefix=prefix))
        async with engine:
            with pytest.raises(MismatchError):
                await engine.send(Job("j1", {"user_id": "u1"}), {"to": ["a@example.com"]})
    clear = ["clear", "welcome:u1:j1", "--redis", redis_url, "--prefix", prefix]
    assert await asyncio.to_thread(main, clear) == 1  # refused: the key ran with another body
    assert await asyncio.to_thread(main, [*clear, "--force"]) == 0
    assert await asyncio.to_thread(main, clear) == 1  # nothing left to clear


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "idemsend.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_cli_version_and_option_help() -> None:
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"idemsend {idemsend.__version__}"
    assert idemsend.__version__ != "0+unknown"
    demo_help = _cli("demo", "--help").stdout
    assert "(default: 500)" in demo_help and "jobs to send" in demo_help
    mock_help = _cli("mock-provider", "--help").stdout
    assert "(default: test-api-key)" in mock_help and "--accept-any-key" in mock_help


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (("mock-provider", "--rate-5xx", "0.6", "--rate-lost", "0.6"), 2, "add up to 1.2"),
        (("mock-provider", "--port", "70000"), 2, "port number"),
        (("demo", "--jobs", "x"), 2, "whole number"),
        (("inspect", "k", "--ledger", "foo://x"), 2, "unknown ledger URL scheme 'foo'"),
        (("inspect", "k", "--redis", "redis://127.0.0.1:1/0"), 1, "cannot reach the ledger"),
        (("inspect", "k", "--ledger", "sqlite:////nonexistent-dir-idemsend/l.db"), 2, "does not exist"),
        (("inspect", "k"), 2, "one of the arguments --ledger --redis --postgres --dynamodb is required"),
    ],
)
def test_cli_answers_ordinary_mistakes_in_one_line(args: tuple[str, ...], status: int, needle: str) -> None:
    out = _cli(*args)
    assert out.returncode == status, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_inspect_reads_a_sqlite_ledger(tmp_path: Path) -> None:
    import asyncio

    from idemsend.ledger import SQLiteLedger

    async def record() -> None:
        ledger = SQLiteLedger(tmp_path / "ledger.db")
        await ledger.claim(key="k1", job_id="j1", payload=b"{}", fingerprint="fp", token="t", lease=30)
        assert await ledger.complete(key="k1", token="t", response={"id": "em_1", "status": 200}) == "ok"
        await ledger.aclose()

    asyncio.run(record())
    out = _cli("inspect", "k1", "--ledger", f"sqlite:///{tmp_path}/ledger.db")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["state"] == "done" and shown["provider_id"] == "em_1" and shown["job_id"] == "j1"


def test_mock_provider_on_a_port_in_use_says_so() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _cli("mock-provider", "--port", str(port))
    assert out.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_with_every_request_faulted_ends_with_a_clear_verdict() -> None:
    out = _cli("demo", "--fault-rate", "1", "--jobs", "5", "--quiet", "--seed", "3", timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "never confirmed" in out.stdout and "| double sends" in out.stdout


def test_a_missing_extra_is_one_line(tmp_path: Path) -> None:
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from idemsend.cli import main
sys.exit(main(["inspect", "k", "--redis", "redis://127.0.0.1:6379/0"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "pip install 'idemsend[redis]'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.anyio
async def test_inspect_prints_times_as_iso_and_the_answer_flat(redis_url: str) -> None:
    import asyncio
    import json
    import uuid

    from idemsend import Engine, Job
    from idemsend.ledger import RedisLedger
    from idemsend.testing import MockProvider

    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    async with MockProvider() as provider:
        ledger = RedisLedger.from_url(redis_url, prefix=prefix)
        async with Engine(provider.emails_url, key="k:{job_id}", api_key=provider.api_key, ledger=ledger) as e:
            sent = await e.send(Job("j1"), {"to": ["a@example.com"]})
    out = await asyncio.to_thread(_cli, "inspect", "k:j1", "--redis", redis_url, "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["state"] == "done" and view["provider_id"] == sent.id and view["provider_status"] == 200
    assert view["first_sent_at"].endswith("Z") and "T" in view["first_sent_at"]
    assert view["provider_response"]["id"] == sent.id and "response" not in view["provider_response"]
