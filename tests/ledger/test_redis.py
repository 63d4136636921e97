"""RedisLedger on its own: what start() checks, how calls are batched (round trips),
scripts loaded again after the server lost them, TTLs, Cluster specifics, and the
inspect CLI.

The state machine it shares with every ledger is tests/ledger/test_contract.py."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
import time
import uuid
from typing import Any

import pytest

from idemsend import ConfigError, Engine, Job, RetryableError, RetryPolicy
from idemsend._body import fingerprint
from idemsend.ledger import Claimed, Done, Ledger, LedgerUnavailableError, RedisLedger
from idemsend.testing import MockProvider, RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]  # every test here talks to a Redis

P1 = b'{"to":["a"]}'
F1 = fingerprint(P1)
KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"], "name": "Ada"}


def engine_for(p: MockProvider, ledger: Ledger | None, **kw: Any) -> Engine:
    kw.setdefault("retry", RetryPolicy(backoff=0.01))
    return Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger, **kw)


def redis_ledger(request: pytest.FixtureRequest, flavour: str, **options: Any) -> RedisLedger:
    """A RedisLedger with a prefix of its own, on the session's Redis or Cluster."""
    if flavour == "redis":
        return RedisLedger.from_url(request.getfixturevalue("redis_url"), prefix=uuid.uuid4().hex, **options)
    return RedisLedger.from_url(
        request.getfixturevalue("cluster_url"), prefix=uuid.uuid4().hex, cluster=True, **options
    )


# -- records in Redis: TTLs, a FLUSHALL -----------------------------------------------------


def test_the_ledger_script_has_no_test_only_operation() -> None:
    """Moving a record's first-sent time back is for tests: tests/ledger/_redis_backdate.py
    runs a script of its own; the one every worker loads has no such operation."""
    from idemsend.ledger._redis._lua import OPS, SCRIPT

    assert "backdate" not in OPS and "backdate" not in SCRIPT.lower()


@pytest.mark.parametrize("flavour", ["redis", "cluster"])
async def test_records_expire_after_the_retention(flavour: str, request: pytest.FixtureRequest) -> None:
    ledger = redis_ledger(request, flavour, retention=30)
    try:
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=5)
        assert 29_000 < await ledger.client.pttl(ledger.record_key("k")) <= 30_000
        assert 29_000 < await ledger.client.pttl(ledger.job_key("j")) <= 30_000
        await ledger.complete(key="k", token="t", response={"id": "x"})
        assert 29_000 < await ledger.client.pttl(ledger.record_key("k")) <= 30_000
        await ledger.claim(key="f", job_id="jf", payload=P1, fingerprint=F1, token="t", lease=5)
        await ledger.fail(key="f", token="t", code="X", message="y")
        assert 29_000 < await ledger.client.pttl(ledger.record_key("f")) <= 30_000
        # the frozen body and the lease go once settled: the done record is the first-sent
        # time, job id, fingerprint and response only
        done = await ledger.client.get(ledger.record_key("k"))
        assert done.startswith(b"D") and P1 not in done and done.endswith(b'{"id":"x"}')
        assert (await ledger.get("k")) is not None and (await ledger.get("k")).lease_until is None  # type: ignore[union-attr]
    finally:
        await ledger.aclose()


async def test_flushall_then_complete_recreates_and_a_late_worker_is_superseded() -> None:
    with RedisServer() as server:
        ledger = RedisLedger.from_url(server.url, prefix="p")
        try:
            await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
            await ledger.client.flushall()  # what a restart without persistence leaves
            assert await ledger.complete(key="k", token="tok-a", response={"id": "em_1"}) == "recreated"
            record = await ledger.get("k")
            assert record is not None and record.state == "done" and record.response == {"id": "em_1"}
            assert 0 < await ledger.client.pttl(ledger.record_key("k")) <= ledger.retention * 1000
            again = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30)
            assert again == Done({"id": "em_1"}, "")

            # the lease runs out, another worker claims: the first one is superseded
            await ledger.claim(key="k2", job_id="j2", payload=P1, fingerprint=F1, token="tok-a", lease=0.2)
            await asyncio.sleep(0.3)
            taken = await ledger.claim(key="k2", job_id="j2", payload=P1, fingerprint=F1, token="tok-b", lease=30)
            assert isinstance(taken, Claimed)
            before = await ledger.client.get(ledger.record_key("k2"))
            assert await ledger.complete(key="k2", token="tok-a", response={"id": "late"}) == "superseded"
            assert await ledger.client.get(ledger.record_key("k2")) == before
        finally:
            await ledger.aclose()


@pytest.mark.parametrize("flavour", ["redis", "cluster"])
async def test_a_malformed_record_is_a_store_failure(flavour: str, request: pytest.FixtureRequest) -> None:
    """Only LedgerUnavailableError escapes: a record that is not one the scripts wrote
    (another program's hash at the key) is not a ValueError or a state outside the Literal."""
    ledger = redis_ledger(request, flavour)
    try:
        await ledger.client.hset(ledger.record_key("weird"), mapping={"st": "odd", "first": "1"})
        with pytest.raises(LedgerUnavailableError, match="malformed ledger record"):
            await ledger.get("weird")
        await ledger.client.hset(ledger.record_key("bad-json"), mapping={"st": "done", "first": "1", "resp": "{"})
        with pytest.raises(LedgerUnavailableError, match="malformed"):
            await ledger.get("bad-json")
    finally:
        await ledger.aclose()


# -- records written by an earlier version (hashes) -------------------------------------------


@pytest.mark.parametrize("flavour", ["redis", "cluster"])
async def test_records_an_earlier_version_wrote_as_hashes_are_honoured(
    flavour: str, request: pytest.FixtureRequest
) -> None:
    """An upgrade must not forget what the ledger held: a done hash still answers Done (no
    second send), an in-flight hash resumes with its frozen body, and settling rewrites it."""
    ledger = redis_ledger(request, flavour)
    client = ledger.client
    try:
        now = int(time.time() * 1000)
        await client.hset(ledger.record_key("done"), mapping={
            "st": "done", "job": "j1", "fp": F1, "first": str(now), "tok": "", "resp": '{"id":"em_1","status":200}'})
        await client.hset(ledger.record_key("flight"), mapping={
            "st": "in_flight", "job": "j2", "fp": F1, "body": P1, "first": str(now - 5000), "tok": "old",
            "lease": str(now - 1000)})
        await client.hset(ledger.record_key("fatal"), mapping={
            "st": "fatal", "job": "j3", "fp": F1, "first": str(now), "tok": "", "code": "X", "msg": "no"})
        assert await ledger.claim(key="done", job_id="j1", payload=b"{}", fingerprint="other", token="t",
                                  lease=30) == Done({"id": "em_1", "status": 200}, F1)
        resumed = await ledger.claim(key="flight", job_id="j2", payload=b"{}", fingerprint="other", token="t",
                                     lease=30)
        assert isinstance(resumed, Claimed) and not resumed.fresh and resumed.payload == P1
        assert resumed.fingerprint == F1 and 4 < resumed.age < 60
        assert await ledger.complete(key="flight", token="t", response={"id": "em_2"}) == "ok"
        record = await ledger.get("flight")
        assert record is not None and record.state == "done" and record.job_id == "j2"
        assert record.response == {"id": "em_2"}
        assert await client.type(ledger.record_key("flight")) in (b"string", "string")
        fatal = await ledger.get("fatal")
        assert fatal is not None and fatal.state == "fatal" and fatal.code == "X" and fatal.message == "no"
        assert await ledger.clear("fatal")
    finally:
        await ledger.aclose()


async def test_a_foreign_value_at_a_record_key_fails_that_call_alone(redis_url: str) -> None:
    """Another program's string at a ledger key is a store failure for its own calls;
    the other calls of the same batch go on."""
    ledger = RedisLedger.from_url(redis_url, prefix=uuid.uuid4().hex)
    try:
        await ledger.client.set(ledger.record_key("odd"), b"not a record")
        results = await asyncio.gather(
            ledger.claim(key="odd", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30),
            ledger.complete(key="odd", token="t", response={"id": "x"}),
            ledger.claim(key="fine", job_id="j2", payload=P1, fingerprint=F1, token="t", lease=30),
            return_exceptions=True,
        )
        assert isinstance(results[0], LedgerUnavailableError) and "malformed" in str(results[0])
        assert results[1] == "superseded"  # not this token's in-flight record: left as it is
        assert isinstance(results[2], Claimed) and results[2].fresh
        assert await ledger.client.get(ledger.record_key("odd")) == b"not a record"
        with pytest.raises(LedgerUnavailableError, match="malformed"):
            await ledger.get("odd")
    finally:
        await ledger.aclose()


# -- scripts: loaded again when the server lost them ------------------------------------------


@pytest.mark.parametrize("flavour", ["redis", "cluster"])
async def test_scripts_are_loaded_again_after_script_flush(flavour: str, request: pytest.FixtureRequest) -> None:
    """A restarted or new server (or SCRIPT FLUSH) answers NOSCRIPT: the ledger loads its
    scripts and runs those calls again; the callers see nothing of it."""
    ledger = redis_ledger(request, flavour)
    try:
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed)
        await ledger.client.script_flush()
        results = await asyncio.gather(
            ledger.complete(key="k", token="t", response={"id": "em_1"}),
            ledger.claim(key="k2", job_id="j2", payload=P1, fingerprint=F1, token="t", lease=30),
        )
        assert results[0] == "ok" and isinstance(results[1], Claimed)
        await ledger.client.script_flush()
        assert await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30) == (
            Done({"id": "em_1"}, F1)
        )
    finally:
        await ledger.aclose()


async def test_scripts_are_loaded_again_after_a_restart() -> None:
    with RedisServer(appendonly=True) as server:
        ledger = RedisLedger.from_url(server.url, socket_timeout=2)
        try:
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            server.stop()
            server.start()  # the record persisted (AOF), the scripts did not
            assert await ledger.renew(key="k", token="t", lease=30) == "ok"
            assert await ledger.complete(key="k", token="t", response={"id": "em_1"}) == "ok"
        finally:
            await ledger.aclose()


# -- start(): is the Redis fit to be a ledger? ----------------------------------------------

LEDGER_LOG = "idemsend.ledger"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl"])
async def test_start_refuses_a_redis_that_evicts(policy: str) -> None:
    with RedisServer(appendonly=True, extra=["--maxmemory-policy", policy, "--maxmemory", "100mb"]) as server:
        ledger = RedisLedger.from_url(server.url)
        with pytest.raises(ConfigError) as info:
            await ledger.start()
        text = str(info.value)
        assert f"maxmemory-policy {policy}" in text and "noeviction" in text and "allow_eviction=True" in text
        assert "double send" in text and "maxmemory 104857600" in text and f"127.0.0.1:{server.port}" in text
        # refused: not marked checked, so a fixed server passes the next start()
        await ledger.client.config_set("maxmemory-policy", "noeviction")
        await ledger.start()
        await ledger.aclose()


async def test_engine_start_fails_on_a_redis_that_evicts() -> None:
    with RedisServer(appendonly=True, extra=["--maxmemory-policy", "allkeys-lru"]) as server:
        async with MockProvider() as p:
            with pytest.raises(ConfigError, match="maxmemory-policy allkeys-lru"):
                async with engine_for(p, RedisLedger.from_url(server.url)):
                    pass
            assert p.stats.requests == 0


async def test_start_with_allow_eviction_warns(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(appendonly=True, extra=["--maxmemory-policy", "allkeys-lru"]) as server:
        ledger = RedisLedger.from_url(server.url, allow_eviction=True)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    [warning] = [r for r in caplog.records if r.name == LEDGER_LOG]
    assert warning.levelno == logging.WARNING
    assert "maxmemory-policy allkeys-lru" in warning.getMessage() and "allow_eviction=True" in warning.getMessage()
    assert "double send" in warning.getMessage()


async def test_start_warns_when_redis_persists_nothing_and_checks_once(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as server:  # --save "" and appendonly no: a restart forgets everything
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
            await ledger.start()  # idempotent: checked once
        await ledger.aclose()
    [warning] = [r for r in caplog.records if r.name == LEDGER_LOG]
    text = warning.getMessage()
    assert "persists nothing" in text and "appendonly no" in text and "save ''" in text
    assert "restart" in text and "double send" in text


@pytest.mark.parametrize(
    "extra", [["--appendonly", "yes"], ["--save", "3600 1"]], ids=["aof", "rdb"]
)
async def test_start_is_quiet_for_a_persistent_noeviction_redis(
    extra: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(extra=extra) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG] == []


async def test_start_falls_back_to_info_where_config_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    """Managed Redis often disables CONFIG: INFO memory/persistence answers instead."""
    no_config = ["--rename-command", "CONFIG", ""]
    with RedisServer(extra=[*no_config, "--maxmemory-policy", "volatile-lru"]) as server:
        ledger = RedisLedger.from_url(server.url)
        with pytest.raises(ConfigError, match=r"maxmemory-policy volatile-lru .*read with INFO"):
            await ledger.start()
        await ledger.aclose()
    with RedisServer(extra=no_config) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    [warning] = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert "persists nothing" in warning and "aof_enabled:0" in warning and "no RDB snapshot" in warning
    caplog.clear()
    with RedisServer(appendonly=True, extra=no_config) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG] == []


async def test_start_warns_when_neither_config_nor_info_answers(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(extra=["--rename-command", "CONFIG", "", "--rename-command", "INFO", ""]) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        # the ledger itself still works
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed)
        await ledger.aclose()
    [warning] = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert "could not check Redis" in warning and "CONFIG GET" in warning and "INFO" in warning
    assert "noeviction" in warning and "appendonly" in warning


async def test_start_reads_the_server_version_and_refuses_one_older_than_7() -> None:
    """The scripts use SET ... NX GET (Redis 7.0): an older server is named with its version
    in a ConfigError at start, not left to fail every claim with "syntax error". No Redis 6
    runs here, so the judgement is checked on the facts start() read (the version read is
    checked against this machine's real server)."""
    from idemsend.ledger import judge
    from idemsend.ledger._redis._fitness import ServerFacts, read_servers, store_facts

    with RedisServer() as server:
        ledger = RedisLedger.from_url(server.url)
        try:
            [facts] = await read_servers(ledger.client, cluster=False)
            assert facts.version is not None and facts.version.split(".")[0].isdigit()
            assert judge(store_facts([facts])).fit  # this machine's Redis (7.x) is accepted
            old = ServerFacts("10.0.0.5:6379", policy="noeviction", persisted=True, version="6.2.14")
            with pytest.raises(ConfigError, match=r"Redis 7\.0 or newer.*10\.0\.0\.5:6379 runs Redis 6\.2\.14"):
                judge(store_facts([facts, old])).enforce()
        finally:
            await ledger.aclose()


async def test_start_on_an_unreachable_redis_raises_ledger_unavailable() -> None:
    ledger = RedisLedger.from_url("redis://127.0.0.1:1/0", socket_timeout=1)
    with pytest.raises(LedgerUnavailableError, match="could not check"):
        await ledger.start()
    await ledger.aclose()


async def test_start_checks_every_cluster_primary(cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import redis.asyncio.cluster as rc

    admin = rc.RedisCluster.from_url(cluster_url)
    await admin.initialize()
    primaries = admin.get_primaries()
    assert len(primaries) == 3
    last = max(primaries, key=lambda n: n.port)  # not necessarily the node of the URL
    await admin.config_set("maxmemory-policy", "allkeys-lru", target_nodes=last)
    try:
        ledger = RedisLedger.from_url(cluster_url, cluster=True)
        with pytest.raises(ConfigError) as info:
            await ledger.start()
        await ledger.aclose()
        assert f"{last.name} has maxmemory-policy allkeys-lru" in str(info.value)
        assert str(info.value).count("has maxmemory-policy") == 1
        allowed = RedisLedger.from_url(cluster_url, cluster=True, allow_eviction=True)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await allowed.start()
        await allowed.aclose()
    finally:
        await admin.config_set("maxmemory-policy", "noeviction", target_nodes=last)
        await admin.aclose()
    messages = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert any("maxmemory-policy allkeys-lru" in m for m in messages)
    [persistence] = [m for m in messages if "persists nothing" in m]
    assert all(node.name in persistence for node in primaries)  # every primary was asked


# -- batches and round trips ---------------------------------------------------------------


async def test_round_trips_per_send(redis_url: str) -> None:
    batches: list[int] = []
    async with MockProvider() as p:
        led = RedisLedger.from_url(redis_url, prefix=uuid.uuid4().hex, on_batch=batches.append)
        async with engine_for(p, led) as e:
            for i in range(10):
                await e.send(Job(f"s{i}", {"user_id": "u"}), BODY)
            sequential = len(batches)
            batches.clear()
            results = await e.send_many([(Job(f"c{i}", {"user_id": "u"}), BODY) for i in range(100)])
        assert all(not isinstance(r, Exception) for r in results)
    assert sequential <= 20  # at most two round trips per send
    assert len(batches) <= 10  # 100 concurrent sends share batches
    assert sum(batches) == 200  # claim (with the job map) + complete, each send


async def test_cluster_claims_take_one_batch_of_two_scripts(cluster_url: str) -> None:
    """On Cluster the job map and the record live in different slots: two scripts, sent
    together in one pipeline (one batch), then one for the completion."""
    batches: list[int] = []
    ledger = RedisLedger.from_url(cluster_url, prefix=uuid.uuid4().hex, cluster=True, on_batch=batches.append)
    try:
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert batches == [2]
        await ledger.complete(key="k", token="t", response={"id": "x"})
        assert batches == [2, 1]
    finally:
        await ledger.aclose()


async def test_calls_fail_as_ledger_unavailable_when_redis_is_gone() -> None:
    """Every caller of a batch that met a dead server gets LedgerUnavailableError; none waits."""
    with RedisServer() as server:
        ledger = RedisLedger.from_url(server.url, socket_timeout=1)
        try:
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
            server.stop()
            results = await asyncio.wait_for(asyncio.gather(
                *(ledger.claim(key=f"k{i}", job_id=f"j{i}", payload=P1, fingerprint=F1, token="t", lease=30)
                  for i in range(20)),
                ledger.complete(key="k", token="t", response={"id": "x"}),
                return_exceptions=True,
            ), 30)
            assert all(isinstance(r, LedgerUnavailableError) for r in results), results
            with pytest.raises(LedgerUnavailableError):
                await ledger.get("k")
        finally:
            await ledger.aclose()


# -- the engine over RedisLedger -----------------------------------------------------------------


async def test_ledger_unreachable_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    async with MockProvider() as p:
        # unreachable at start: the engine still starts (a worker may boot during an outage),
        # sends fail closed, and the server check runs once the ledger answers
        server = RedisServer(appendonly=True, extra=["--maxmemory-policy", "allkeys-lru"])
        with caplog.at_level(logging.WARNING):
            async with engine_for(p, RedisLedger.from_url(server.url, socket_timeout=1)) as e:
                with pytest.raises(RetryableError) as down:
                    await e.send(Job("j0", {"user_id": "u1"}), BODY)
                assert down.value.reason == "ledger" and down.value.retry_after is None
                server.start()
                try:
                    with pytest.raises(RetryableError, match="maxmemory-policy allkeys-lru") as unfit:
                        await e.send(Job("j0", {"user_id": "u1"}), BODY)
                    assert unfit.value.reason == "ledger_config"
                finally:
                    server.cleanup()
        assert any("could not be checked at start" in r.getMessage() for r in caplog.records)
        # unreachable after start: every send fails closed, retryable
        with RedisServer(appendonly=True) as server:
            async with engine_for(p, RedisLedger.from_url(server.url, socket_timeout=1)) as e:
                server.stop()
                with pytest.raises(RetryableError) as info:
                    await e.send(Job("j1", {"user_id": "u1"}), BODY)
        assert info.value.reason == "ledger" and "nothing was sent" in str(info.value)
        assert p.stats.requests == 0


async def test_inspect_cli_prints_a_record(redis_url: str) -> None:
    prefix = uuid.uuid4().hex
    async with MockProvider() as p, engine_for(p, RedisLedger.from_url(redis_url, prefix=prefix)) as e:
        sent = await e.send(Job("j1", {"user_id": "u1"}), BODY)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idemsend.cli", "inspect", "welcome:u1:j1", "--redis", redis_url, "--prefix", prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    shown = json.loads(out)
    assert shown["state"] == "done" and shown["provider_id"] == sent.id
    assert shown["fingerprint"] == sent.fingerprint and shown["job_id"] == "j1"
    first = datetime.datetime.fromisoformat(shown["first_sent_at"].replace("Z", "+00:00"))
    assert abs(first.timestamp() - time.time()) < 60
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idemsend.cli", "inspect", "nope", "--redis", redis_url, "--prefix", prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"no record" in err


async def test_a_timed_out_call_is_not_sent_again(redis_url: str) -> None:
    """Only a connection the server closed is retried (once); a call that timed out may
    still run on the server, and repeating it would double every slow call's wait. Through
    a proxy that passes the handshake and then swallows every reply, the claim goes out once."""
    from urllib.parse import urlsplit

    target = urlsplit(redis_url)
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)

        mine: list[bytes] = []  # this connection's commands

        async def upstream() -> None:
            while data := await reader.read(65536):
                seen.append(data)
                mine.append(data)
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if b"EVALSHA" not in b"".join(mine).upper():  # the handshake's answers pass
                    writer.write(data)
                    await writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            up_writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ledger = RedisLedger.from_url(f"redis://127.0.0.1:{port}{target.path or '/0'}", socket_timeout=0.5,
                                  prefix=uuid.uuid4().hex)
    try:
        with pytest.raises(LedgerUnavailableError, match="Timeout"):
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert b"".join(seen).upper().count(b"EVALSHA") == 1
    finally:
        await ledger.aclose()
        server.close()
