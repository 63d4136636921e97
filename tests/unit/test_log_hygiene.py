"""No raw idempotency key in a log message at WARNING or above (issue 18 item 8).

Keys may hold user ids (``welcome:{user_id}:{job_id}``), which is why every record
carries ``idemsend_key_hash``: a WARNING message names the key by ``key_ref`` instead.
Two checks: every logging call in the source at WARNING or above (a scan of the syntax
tree, so a new call cannot slip past), and the settle warnings as a send really logs them.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from idemsend import Engine, Job
from idemsend._log import key_hash, key_ref
from idemsend.ledger import MemoryLedger, SettleResult
from idemsend.testing import MockProvider

SRC = Path(__file__).resolve().parents[2] / "src" / "idemsend"
LEVELS = {"warning", "error", "critical", "exception"}
#: Calls that turn a key into something safe to log.
SAFE = {"fields", "key_hash", "key_ref", "_unkeyed"}


def _key_names(node: ast.AST) -> list[str]:
    """Names of keys (``key``, ``*_key``, ``.key``) used in ``node`` outside a SAFE call."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SAFE:
        return []
    found = []
    if isinstance(node, ast.Name) and (node.id == "key" or node.id.endswith("_key")):
        found.append(node.id)
    if isinstance(node, ast.Attribute) and (node.attr == "key" or node.attr.endswith("_key")):
        found.append(node.attr)
    for child in ast.iter_child_nodes(node):
        found += _key_names(child)
    return found


def _unsafe_log_calls(source: str) -> list[tuple[int, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
        ):
            names = [name for arg in node.args for name in _key_names(arg)]
            if names:
                out.append((node.lineno, names))
    return out


def test_the_scan_catches_a_raw_key_and_passes_a_hashed_one() -> None:
    """The scan itself: it must flag the form issue 18 found and accept the fixed ones."""
    assert _unsafe_log_calls('log.warning("could not %s key %s", op, key, extra=fields(key))') == [(1, ["key"])]
    assert _unsafe_log_calls('log.error(f"lost {record.key}")') == [(1, ["key"])]
    assert _unsafe_log_calls('log.warning("could not %s %s", op, key_ref(key), extra=fields(key))') == []
    assert _unsafe_log_calls('log.debug("claim %s", key)') == []  # DEBUG may hold the raw key


def test_no_warning_or_above_in_the_source_logs_a_raw_key() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {names}"
        for path in sorted(SRC.rglob("*.py"))
        for line, names in _unsafe_log_calls(path.read_text())
    ]
    assert offenders == [], "log calls at WARNING+ that put a raw key in the message: " + "; ".join(offenders)


class _ForgetfulMemoryLedger(MemoryLedger):
    """A MemoryLedger whose record vanishes before ``complete``, as after a store
    restart without persistence: the engine then logs its "recreated" warning."""

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        self._flight.pop(key, None)
        self._settled.pop(key, None)
        return await super().complete(key=key, token=token, response=response)


@pytest.mark.anyio
async def test_a_settle_warning_names_the_key_by_its_hash(caplog: pytest.LogCaptureFixture) -> None:
    user_key = "welcome:ada@example.com:j1"
    ledger = _ForgetfulMemoryLedger()
    async with MockProvider() as provider, Engine(
        provider.emails_url, key="welcome:{email}:{job_id}", api_key=provider.api_key, ledger=ledger
    ) as engine:
        with caplog.at_level(logging.WARNING, logger="idemsend"):
            result = await engine.send(Job("j1", {"email": "ada@example.com"}), {"to": "ada@example.com"})
    assert result.key == user_key and provider.sends_for(user_key) == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("recorded again" in r.getMessage() for r in warnings), [r.getMessage() for r in warnings]
    for record in warnings:
        assert user_key not in record.getMessage() and "ada@example.com" not in record.getMessage()
        assert key_ref(user_key) in record.getMessage()
        assert getattr(record, "idemsend_key_hash", None) == key_hash(user_key)


def test_each_failing_hook_is_warned_about_once_even_when_a_dead_one_had_its_id() -> None:
    """Hooks are told apart by identity, not by ``id()``: a new hook (CPython often gives it
    the id of one just freed) gets its own WARNING; the same hook failing again is DEBUG."""
    from idemsend._hooks import _hook_failed

    class Hook:
        pass

    class SlottedHook:
        __slots__ = ()

    levels: list[int] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            levels.append(record.levelno)  # not the record: its traceback would keep the hook alive

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("idemsend.engine")
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # pytest's handlers keep records, whose args hold the hook
    try:
        for kind in (Hook, SlottedHook):
            for _ in range(20):
                hook = kind()
                try:
                    raise RuntimeError("exporter down")
                except RuntimeError:
                    _hook_failed(hook, "on_try")
                    _hook_failed(hook, "on_try")
                del hook
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    assert levels == [logging.WARNING, logging.DEBUG] * 40
