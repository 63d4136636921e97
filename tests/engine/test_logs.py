"""Log records carry their facts as structured fields, and the happy path logs nothing at
INFO or above."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from idemsend import Engine, Job, RawResponse, TransportRequest
from idemsend._log import key_hash
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockTransport

pytestmark = pytest.mark.anyio


def ok(request: TransportRequest) -> RawResponse:
    return RawResponse(200, {}, json.dumps({"id": "em_1"}).encode())


async def test_the_happy_path_logs_nothing_at_info_or_above(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "idemsend")
    async with Engine("https://api.example.com/x", key="k:{job_id}", transport=MockTransport(ok),
                      ledger=MemoryLedger()) as e:
        await asyncio.gather(*(e.send(Job(f"j{i}"), {"n": i}) for i in range(20)))
        await e.send(Job("j1"), {"n": 1})  # a replay from the ledger
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    debug = [r for r in caplog.records if r.name == "idemsend.engine"]
    assert debug and all(r.__dict__["idemsend_key_hash"] == key_hash(f"k:{r.__dict__['idemsend_job_id']}")
                         for r in debug)


async def test_a_warning_carries_key_hash_job_id_and_code(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "idemsend")
    async with Engine("https://api.example.com/x", key="k:{job_id}", transport=MockTransport(ok),
                      ledger=MemoryLedger()) as e:
        await e.send(Job("j1"), {"name": "Ada"})
        await e.send(Job("j1"), {"name": "Ada L."})  # drifted: answered from the ledger, logged
    [record] = [r for r in caplog.records if "body changed" in r.getMessage()]
    assert record.name == "idemsend.engine" and record.levelno == logging.WARNING
    facts = {k: v for k, v in record.__dict__.items() if k.startswith("idemsend_")}
    assert facts == {"idemsend_key_hash": key_hash("k:j1"), "idemsend_job_id": "j1", "idemsend_code": "BODY_DRIFT"}
