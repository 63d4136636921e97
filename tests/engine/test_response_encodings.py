"""A credential echoed in an answer is redacted whatever the answer's encoding.

``json.loads`` reads UTF-16 and UTF-32 (with or without a BOM) as well as UTF-8, so a
provider (or a proxy) answering in UTF-16 is parsed; its bytes hold the API key in a form
no UTF-8 search finds. A real HTTP server here echoes the ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from idemsend import Engine, Job, RetryableError
from idemsend.ledger import MemoryLedger
from tests._serving import serving

pytestmark = pytest.mark.anyio

API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-8-sig"]


async def _echo(request: web.Request) -> web.Response:
    encoding = request.match_info["encoding"]
    auth = request.headers["Authorization"]
    body = json.dumps({"id": "em_1", "echo": auth, "key": auth.split()[1], "note": "clé"}, ensure_ascii=False)
    return web.Response(body=body.encode(encoding), headers={"Content-Type": f"application/json; charset={encoding}"})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/emails/{encoding}", _echo)
    async with serving(app) as base:
        yield f"{base}/emails"


def _texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [text for r in caplog.records for text in (r.getMessage(), repr(r.__dict__))]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_key_echoed_in_any_json_encoding_is_redacted(
    server: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ledger = MemoryLedger()
    async with Engine(f"{server}/{encoding}", key="w:{job_id}", api_key=API_KEY, ledger=ledger) as engine:
        result = await engine.send(Job("j1"), {"to": ["ada@example.com"]})
        record = await ledger.get("w:j1")
    assert result.id == "em_1" and result.response is not None
    assert result.response == {"id": "em_1", "echo": "[redacted]", "key": "[redacted]", "note": "clé"}
    assert record is not None and record.state == "done"
    texts = [repr(result), json.dumps(result.response, ensure_ascii=False), repr(record), *_texts(caplog)]
    assert not [t for t in texts if API_KEY in t], [t for t in texts if API_KEY in t]


async def test_a_latin_1_answer_is_not_parsed_so_nothing_of_it_is_kept(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``charset=`` in Content-Type is not honoured (JSON is UTF-8, -16 or -32): a latin-1
    answer with a non-ASCII character is no JSON, so no part of it reaches a result or record."""
    caplog.set_level(logging.DEBUG)
    async with Engine(f"{server}/latin-1", key="w:{job_id}", api_key=API_KEY, retry=0) as engine:
        with pytest.raises(RetryableError) as caught:  # a 2xx that confirms no id
            await engine.send(Job("j1"), {"to": ["ada@example.com"]})
    texts = [str(caught.value), caught.value.detail, *_texts(caplog)]
    assert not [t for t in texts if API_KEY in t], [t for t in texts if API_KEY in t]
