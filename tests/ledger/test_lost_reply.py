"""A Redis reply lost after the command ran, and the client sending it again.

RedisLedger.from_url sends a command once more when its connection fails (a restart the
client had not seen), so a command whose reply was lost after Redis applied it runs
twice. Each operation must recognise its own earlier write: a retried claim is still the
fresh claim it made, a retried complete or fail is "ok", a retried ``idemsend clear``
cleared the record. Through ``LostReplyProxy`` (tests/ledger/_lost_reply.py), between
the ledger and a real redis-server, which loses one reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from idemsend import Engine, Job, SetupError
from idemsend._body import fingerprint
from idemsend.ledger import Claimed, LedgerRecord, LedgerUnavailableError, RedisLedger
from idemsend.ledger._redis._lua import CODES as _CODES
from idemsend.testing import MockProvider

from ._lost_reply import Loss, LostReplyProxy, evalsha_plan
from ._redis_backdate import backdate_key

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

P1 = b'{"to":["a"]}'
F1 = fingerprint(P1)


def lose(*ops: str) -> Loss:
    """Lose the reply of the first ledger EVALSHA running exactly these operations."""
    plan = "".join(_CODES[op] for op in ops).encode()
    return Loss(lambda args: evalsha_plan(args) == plan)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def through(proxy: LostReplyProxy) -> RedisLedger:
    return RedisLedger.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix=uuid.uuid4().hex)


@contextlib.asynccontextmanager
async def cluster_through(cluster_url: str, loss: Loss) -> AsyncIterator[RedisLedger]:
    """A RedisLedger on the Cluster at ``cluster_url`` with a proxy in front of every node
    (the client's node addresses remapped to them), losing the reply ``loss`` picks."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    seed = Redis.from_url(cluster_url)
    try:
        ports = {int(slot[2][1]) for slot in await seed.execute_command("CLUSTER", "SLOTS")}
    finally:
        await seed.aclose()
    async with contextlib.AsyncExitStack() as stack:
        proxies = {port: await stack.enter_async_context(LostReplyProxy(port, loss)) for port in ports}

        def remap(address: tuple[str, int]) -> tuple[str, int]:
            return ("127.0.0.1", proxies[address[1]].port) if address[1] in proxies else address

        client = RedisCluster(host="127.0.0.1", port=proxies[port_of(cluster_url)].port, address_remap=remap)
        ledger = RedisLedger(client, prefix=uuid.uuid4().hex)
        try:
            yield ledger
        finally:
            await ledger.aclose()
            await client.aclose()


async def test_a_claim_whose_reply_was_lost_is_still_fresh(redis_url: str) -> None:
    """The claim made the record; its reply was lost and the client claimed again with the
    same token and body: that is the same fresh claim, not an earlier attempt resumed."""
    loss = lose("claim_with_job")
    async with LostReplyProxy(port_of(redis_url), loss) as proxy:
        ledger = through(proxy)
        try:
            claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            assert loss.dropped.is_set() and loss.ran == 2  # lost once, sent again
            assert isinstance(claim, Claimed) and claim.fresh, claim
            assert claim.payload == P1 and claim.fingerprint == F1 and claim.age == 0
        finally:
            await ledger.aclose()


async def test_a_lost_claim_reply_then_a_401_leaves_nothing_to_go_stale(redis_url: str) -> None:
    """End to end: the claim's reply is lost once, the provider refuses the stale API key
    (401: nothing ran). The record of that fresh claim is forgotten, so the job enqueued
    again a day later (the key fixed) is sent as a fresh job, not stopped as a stale
    unknown outcome."""
    prefix, key, job = uuid.uuid4().hex, "welcome:u1:job-1", Job("job-1", {"user_id": "u1"})
    body = {"to": ["ada@example.com"]}
    async with MockProvider(api_key="the-right-key") as p:
        loss = lose("claim_with_job")
        async with LostReplyProxy(port_of(redis_url), loss) as proxy:
            lossy = RedisLedger.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
            async with Engine(p.emails_url, key="welcome:{user_id}:{job_id}", api_key="stale-key",
                              ledger=lossy) as e:
                with pytest.raises(SetupError):
                    await e.send(job, body)
            assert loss.dropped.is_set() and loss.ran == 2
        assert p.stats.requests == 1 and p.sends == 0
        ledger = RedisLedger.from_url(redis_url, prefix=prefix)
        await backdate_key(ledger, key, 25 * 3600, end_lease=True)  # a day later (if anything is left)
        async with Engine(p.emails_url, key="welcome:{user_id}:{job_id}", api_key="the-right-key",
                          ledger=ledger) as e:
            result = await e.send(job, body)
        assert result.id is not None and not result.replayed and p.sends == 1


async def test_a_resumed_claim_whose_reply_was_lost_is_still_a_resume(redis_url: str) -> None:
    """The other side: a claim that resumed an earlier attempt (its body frozen, maybe sent)
    and was sent again is still that resume, never mistaken for a fresh claim."""
    loss = lose("claim_with_job")
    async with LostReplyProxy(port_of(redis_url), loss) as proxy:
        ledger = through(proxy)
        direct = RedisLedger.from_url(redis_url, prefix=ledger.prefix)
        try:
            first = await direct.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t1", lease=30)
            assert isinstance(first, Claimed) and first.fresh
            assert await direct.release(key="k", token="t1") == "ok"  # an unknown outcome
            claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
            assert loss.dropped.is_set() and loss.ran == 2
            assert isinstance(claim, Claimed) and not claim.fresh, claim
            assert claim.first_sent_at == first.first_sent_at
        finally:
            await ledger.aclose()
            await direct.aclose()


async def test_a_cluster_claim_whose_reply_was_lost_is_fresh_or_unavailable(cluster_url: str) -> None:
    """On Cluster the claim's script is one command of a pipeline, and redis-py (5.0 to 8.2
    at least) does not send a pipeline's command again after its reply was lost: the claim
    fails, the ledger unavailable (nothing is sent; the claim's record waits out its lease
    like a worker's that died). Sent again (by hand here, as a client that retries would),
    it is the same fresh claim: the script is the one plain Redis runs."""
    loss = lose("claim")
    async with cluster_through(cluster_url, loss) as ledger:
        try:
            claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        except LedgerUnavailableError:
            assert loss.ran == 1
            # sent again by hand, as a client that retries would: the same fresh claim
            claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        else:
            assert loss.ran == 2
        assert loss.dropped.is_set()
        assert isinstance(claim, Claimed) and claim.fresh, claim


# -- settlements: complete and fail --------------------------------------------------------


async def test_a_complete_whose_reply_was_lost_is_ok(redis_url: str) -> None:
    """The complete made the record done; sent again, it finds its own done record: "ok",
    not "superseded" (which the engine logs as a WARNING about another worker)."""
    loss = lose("complete")
    async with LostReplyProxy(port_of(redis_url), loss) as proxy:
        ledger = through(proxy)
        try:
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            assert await ledger.complete(key="k", token="t", response={"id": "em_1", "status": 200}) == "ok"
            assert loss.dropped.is_set() and loss.ran == 2
            assert await ledger.get("k") == LedgerRecord(
                key="k", state="done", job_id="j", fingerprint=F1,
                first_sent_at=(await ledger.get("k")).first_sent_at,  # type: ignore[union-attr]
                response={"id": "em_1", "status": 200},
            )
            # another response still finds the record someone else's: superseded, untouched
            assert await ledger.complete(key="k", token="t", response={"id": "em_2"}) == "superseded"
        finally:
            await ledger.aclose()


async def test_a_complete_that_recreated_the_record_and_lost_its_reply_says_recreated(redis_url: str) -> None:
    """The store had lost the record, so complete wrote it anew; sent again after its reply
    was lost, it still says so ("recreated", logged as such), not "superseded"."""
    loss = lose("complete")
    async with LostReplyProxy(port_of(redis_url), loss) as proxy:
        ledger = through(proxy)
        try:
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            await ledger.client.delete(ledger.record_key("k"))  # lost (a restart without persistence)
            assert await ledger.complete(key="k", token="t", response={"id": "em_1"}) == "recreated"
            assert loss.dropped.is_set() and loss.ran == 2
        finally:
            await ledger.aclose()


async def test_a_fail_whose_reply_was_lost_is_ok(redis_url: str) -> None:
    """The same for fail: sent again, it finds its own fatal record (same code, same
    message): "ok"; a fail with another code still finds it settled: "superseded"."""
    loss = lose("fail")
    async with LostReplyProxy(port_of(redis_url), loss) as proxy:
        ledger = through(proxy)
        try:
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            assert await ledger.fail(key="k", token="t", code="VALIDATION_ERROR", message="no to") == "ok"
            assert loss.dropped.is_set() and loss.ran == 2
            record = await ledger.get("k")
            assert record is not None and (record.state, record.code, record.message) == (
                "fatal", "VALIDATION_ERROR", "no to")
            assert await ledger.fail(key="k", token="t", code="OTHER", message="no to") == "superseded"
        finally:
            await ledger.aclose()


async def test_a_send_whose_complete_reply_was_lost_logs_no_superseded_warning(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: the send went out and was recorded done; the complete's reply was lost
    and sent again. No WARNING about the complete says the record became another worker's
    (the start's warning about a Redis without persistence may come), and a redelivery
    is answered from the ledger."""
    loss = lose("complete")
    job, body = Job("job-1", {"user_id": "u1"}), {"to": ["ada@example.com"]}
    async with MockProvider() as p, LostReplyProxy(port_of(redis_url), loss) as proxy:
        engine = Engine(p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=through(proxy))
        async with engine as e:
            with caplog.at_level(logging.WARNING, logger="idemsend"):
                sent = await e.send(job, body)
            assert loss.dropped.is_set() and loss.ran == 2
            again = await e.send(job, body)
    assert again.replayed and again.from_ledger and again.id == sent.id and p.sends == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
              and getattr(r, "idemsend_op", "") == "complete"]
    assert warned == []


# -- idemsend clear ------------------------------------------------------------------------


async def test_idemsend_clear_whose_reply_was_lost_says_it_cleared(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``idemsend clear`` removed the fatal record; its reply was lost and the command sent
    again found nothing to clear. The record is gone, so the command says it cleared it
    (exit 0), not "nothing was cleared"."""
    from idemsend.cli import main

    loss = lose("clear")
    async with LostReplyProxy(port_of(redis_url), loss) as proxy:
        direct = RedisLedger.from_url(redis_url, prefix=uuid.uuid4().hex)
        try:
            await direct.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            assert await direct.fail(key="k", token="t", code="VALIDATION_ERROR", message="no to") == "ok"
            clear = ["clear", "k", "--redis", f"redis://127.0.0.1:{proxy.port}/0", "--prefix", direct.prefix]
            status = await asyncio.to_thread(main, clear)  # the CLI runs its own event loop
            out, err = capsys.readouterr()
            assert loss.dropped.is_set() and loss.ran == 2
            assert (status, err) == (0, ""), (status, out, err)
            assert "cleared the fatal record of key 'k' (VALIDATION_ERROR: no to)" in out
            assert await direct.get("k") is None
        finally:
            await direct.aclose()
