"""The MockProvider implements the contract exactly (checked with raw aiohttp, not the engine)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from idemsend.testing import Faults, MockProvider

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer test-api-key"}


async def post(
    p: MockProvider, body: Any, key: str | None = "k1", headers: dict[str, str] | None = None, path: str = ""
) -> tuple[int, dict[str, str], Any]:
    h = {**AUTH, **(headers or {})}
    if key is not None:
        h["Idempotency-Key"] = key
    async with aiohttp.ClientSession() as s, s.post(p.emails_url + path, data=json.dumps(body), headers=h) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_first_call_sends_and_replay_returns_stored(mock_provider: MockProvider) -> None:
    s1, h1, b1 = await post(mock_provider, {"to": ["a"]})
    s2, h2, b2 = await post(mock_provider, {"to": ["a"]})
    assert (s1, s2) == (200, 200)
    assert b1 == b2 and b1["id"].startswith("em_")
    assert "Idempotent-Replayed" not in h1 and h2["Idempotent-Replayed"] == "true"
    assert mock_provider.sends == 1 and mock_provider.stats.replays == 1


async def test_same_key_different_body_is_mismatch(mock_provider: MockProvider) -> None:
    await post(mock_provider, {"to": ["a"]})
    status, _, body = await post(mock_provider, {"to": ["b"]})
    assert status == 409 and body["error"]["code"] == "IDEMPOTENCY_MISMATCH"
    assert mock_provider.sends == 1


async def test_same_key_while_processing_is_in_flight() -> None:
    async with MockProvider(processing_delay=0.3) as p:
        first = asyncio.ensure_future(post(p, {"to": ["a"]}))
        await asyncio.sleep(0.05)
        status, _, body = await post(p, {"to": ["a"]})
        assert status == 409 and body["error"]["code"] == "IDEMPOTENCY_IN_FLIGHT"
        assert (await first)[0] == 200
    assert p.sends == 1


async def test_window_expiry_forgets_the_key() -> None:
    now = [1000.0]
    async with MockProvider(clock=lambda: now[0]) as p:
        await post(p, {"to": ["a"]})
        now[0] += 24 * 3600 - 1
        await post(p, {"to": ["a"]})
        assert p.sends == 1
        now[0] += 1
        await post(p, {"to": ["a"]})
        assert p.sends == 2
        assert p.double_sends() == {"k1": 2}


async def test_auth_required(mock_provider: MockProvider) -> None:
    async with aiohttp.ClientSession() as s, s.post(mock_provider.emails_url, json={"to": []}) as resp:
        assert resp.status == 401
    status, _, _ = await post(mock_provider, {"to": []}, headers={"Authorization": "Bearer nope"})
    assert status == 401 and mock_provider.sends == 0


async def test_bad_bodies_and_keys(mock_provider: MockProvider) -> None:
    async with aiohttp.ClientSession() as s, s.post(mock_provider.emails_url, data=b"{", headers=AUTH) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "INVALID_JSON"
    assert (await post(mock_provider, [1, 2]))[0] == 422
    assert (await post(mock_provider, {"to": []}, key="x" * 256))[0] == 400
    assert mock_provider.sends == 0


async def test_a_refused_body_is_still_an_arrival_of_its_key(mock_provider: MockProvider) -> None:
    """Per-key request counts include what the provider refuses for its body (a 422 for a
    non-object, a 400 for bad JSON); only a request that fails authentication is not one."""
    assert (await post(mock_provider, [1, 2], key="k-list"))[0] == 422
    async with aiohttp.ClientSession() as s, s.post(
        mock_provider.emails_url, data=b"{", headers={**AUTH, "Idempotency-Key": "k-json"}
    ) as resp:
        assert resp.status == 400
    assert (await post(mock_provider, {"to": []}, key="k-auth", headers={"Authorization": "Bearer nope"}))[0] == 401
    assert {key: len(times) for key, times in mock_provider.arrivals.items()} == {"k-list": 1, "k-json": 1}
    assert mock_provider.stats.requests == 3 and mock_provider.sends == 0


async def test_batch_rejects_keys_and_accepts_lists(mock_provider: MockProvider) -> None:
    status, _, body = await post(mock_provider, [{"to": ["a"]}], path="/batch")
    assert status == 400 and body["error"]["code"] == "IDEMPOTENCY_NOT_SUPPORTED"
    status, _, body = await post(mock_provider, [{"to": ["a"]}, {"to": ["b"]}], key=None, path="/batch")
    assert status == 200 and len(body["data"]) == 2
    assert mock_provider.sends == 2


async def test_scripted_faults(mock_provider: MockProvider) -> None:
    mock_provider.faults.retry_after = 7
    mock_provider.script("5xx", "429", "in_flight", None)
    assert (await post(mock_provider, {"to": []}))[0] == 503
    status, headers, _ = await post(mock_provider, {"to": []})
    assert status == 429 and headers["Retry-After"] == "7"
    assert (await post(mock_provider, {"to": []}))[0] == 409
    assert (await post(mock_provider, {"to": []}))[0] == 200
    assert mock_provider.sends == 1
    assert dict(mock_provider.stats.faults) == {"5xx": 1, "429": 1, "in_flight": 1}
    with pytest.raises(ValueError, match="unknown fault"):
        mock_provider.script("explode")


async def test_lost_response_commits_then_drops(mock_provider: MockProvider) -> None:
    mock_provider.script("lost", key="k1")
    with pytest.raises(aiohttp.ClientError):
        await post(mock_provider, {"to": ["a"]})
    assert mock_provider.sends == 1
    status, headers, _ = await post(mock_provider, {"to": ["a"]})
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert mock_provider.sends == 1


async def test_fault_rates_are_drawn() -> None:
    async with MockProvider(faults=Faults(rate_5xx=0.5), seed=3) as p:
        statuses = [(await post(p, {"n": i}, key=f"k{i}"))[0] for i in range(60)]
    assert 10 < statuses.count(503) < 50
    assert statuses.count(200) == p.sends


def test_fault_rates_validated() -> None:
    with pytest.raises(ValueError):
        Faults(rate_5xx=0.7, rate_lost=0.7)


async def test_stats_endpoint(mock_provider: MockProvider) -> None:
    await post(mock_provider, {"to": ["a"]})
    async with aiohttp.ClientSession() as s, s.get(mock_provider.url + "/_mock/stats") as resp:
        stats = await resp.json()
    assert stats["sends"] == 1 and stats["sends_by_key"] == {"k1": 1}
