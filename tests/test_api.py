"""The public front: exports, typing marker, missing extras, CLI."""

from __future__ import annotations

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


def test_py_typed_ships() -> None:
    assert (Path(idemsend.__file__).parent / "py.typed").exists()


@pytest.mark.parametrize(
    ("module", "extra", "blocked"),
    [
        ("idemsend.ledger._redis", "redis", "redis"),
        ("idemsend.adapters.arq", "arq", "arq"),
        ("idemsend.adapters.rq", "rq", "rq"),
        ("idemsend.adapters.qstash", "qstash", "qstash"),
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
    assert rows["double sends"] == "0" and rows["lost jobs"] == "0"
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
    assert "{demo,mock-provider,inspect,clear}" in build_parser().format_help()
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
