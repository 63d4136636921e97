"""The ``Ledger`` protocol itself: what a ledger must have for ``Engine`` to take it."""

from __future__ import annotations

from typing import Any

import pytest

from idemsend import ConfigError, Engine
from idemsend.ledger import DEFAULT_RETENTION, Ledger, MemoryLedger


class _NoRetention:
    """Every method of the protocol, but no ``retention``."""

    async def start(self) -> None: ...
    async def claim(self, **kw: Any) -> Any: ...
    async def complete(self, **kw: Any) -> Any: ...
    async def fail(self, **kw: Any) -> Any: ...
    async def renew(self, **kw: Any) -> Any: ...
    async def release(self, **kw: Any) -> Any: ...
    async def clear(self, key: str, *, force: bool = False) -> bool: ...
    async def get(self, key: str) -> Any: ...
    async def aclose(self) -> None: ...


def test_retention_is_part_of_the_protocol() -> None:
    assert "retention" in Ledger.__annotations__
    assert isinstance(MemoryLedger(), Ledger) and MemoryLedger().retention == DEFAULT_RETENTION
    assert not isinstance(_NoRetention(), Ledger)


def test_the_engine_reads_retention_from_the_protocol() -> None:
    with pytest.raises(ConfigError, match=r"must implement idemsend\.ledger\.Ledger"):
        Engine("https://example.com/v1/emails", key="k:{job_id}", ledger=_NoRetention())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="less than the provider window"):
        Engine("https://example.com/v1/emails", key="k:{job_id}", ledger=MemoryLedger(retention=60))
