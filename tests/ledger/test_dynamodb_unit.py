"""The DynamoDBLedger's pure parts, row by row without a table: an item as a record, the
decisions on a refused write, the requests' conditions, the table checks, the clock skew,
the ``dynamodb://`` URL, and ``idemsend migrate --dynamodb`` against moto."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest

from idemsend import ConfigError
from idemsend.ledger import Busy, Claimed, Conflict, Done, Failed, LedgerUnavailableError, ledger_from_url

from ._dynamodb import HAVE_DYNAMODB, NO_DYNAMODB, REGION, client

pytestmark = [pytest.mark.dynamodb, pytest.mark.skipif(not HAVE_DYNAMODB, reason=NO_DYNAMODB)]

NOW = 1_800_000_000.0


def item(**attrs: Any) -> dict[str, Any]:
    """A record item in DynamoDB's wire form, in flight under ``t1`` by default."""
    base: dict[str, Any] = {
        "pk": {"S": "p#r#k"}, "st": {"S": "in_flight"}, "job": {"S": "j1"}, "fp": {"S": "F1"},
        "body": {"B": b"P1"}, "first": {"N": str(NOW - 5)}, "tok": {"S": "t1"}, "ft": {"S": "t1"},
        "lease": {"N": str(NOW + 25)}, "exp": {"N": str(NOW + 100)},
    }
    for name, value in attrs.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def read(**attrs: Any) -> Any:
    from idemsend.ledger._dynamodb._items import Item

    return Item.of(item(**attrs))


def claim(raw: Any, *, job_id: str = "j1", fingerprint: str = "F1", token: str = "t2") -> Any:
    from idemsend.ledger._dynamodb._items import claim_answer

    return claim_answer(raw, job_id=job_id, fingerprint=fingerprint, token=token, now=NOW)


# -- an item as a record --------------------------------------------------------------------


def test_an_item_reads_as_its_record() -> None:
    rec = read().record("k")
    assert rec.state == "in_flight" and rec.job_id == "j1" and rec.fingerprint == "F1"
    assert rec.first_sent_at == NOW - 5 and rec.lease_until == NOW + 25 and rec.response is None


@pytest.mark.parametrize("attrs", [
    {"st": {"S": "weird"}}, {"st": None}, {"first": None}, {"exp": None}, {"exp": {"N": "soon"}},
    {"st": {"N": "1"}},
], ids=["unknown-state", "no-state", "no-first", "no-expiry", "expiry-not-a-number", "state-not-a-string"])
def test_an_item_that_is_not_a_record_is_refused(attrs: dict[str, Any]) -> None:
    from idemsend.ledger._dynamodb._items import Item

    with pytest.raises((KeyError, ValueError, TypeError)):
        Item.of(item(**attrs))


# -- what a refused claim answers -------------------------------------------------------------


def test_no_item_or_an_expired_one_lets_the_fresh_write_go_again() -> None:
    assert claim(None) is None
    assert claim(read(exp={"N": str(NOW)})) is None  # expired at now: absent, whatever the sweep did


def test_the_order_conflict_done_failed_busy() -> None:
    assert claim(read(st={"S": "done"}, resp={"S": '{"id":"x"}'}), job_id="j2", fingerprint="F2") == Conflict("F1")
    assert claim(read(st={"S": "done"}, resp={"S": '{"id":"x"}'}), job_id="j2") == Done({"id": "x"}, "F1")
    assert claim(read(st={"S": "fatal"}, code={"S": "C"}, msg={"S": "m"})) == Failed("C", "m")
    busy = claim(read())
    assert isinstance(busy, Busy) and busy.retry_after == 25


def test_a_record_written_anew_never_conflicts() -> None:
    answer = claim(read(st={"S": "done"}, fp={"S": ""}, job={"S": ""}, resp={"S": "{}"}), job_id="j9",
                   fingerprint="F9")
    assert answer == Done({}, "")


def test_the_same_token_unchanged_is_its_own_fresh_claim_else_a_resume() -> None:
    from idemsend.ledger._dynamodb._items import Resume

    mine = claim(read(), token="t1")
    assert isinstance(mine, Claimed) and mine.fresh and mine.payload == b"P1" and mine.age == 5
    # the same token with another body (it claims again, not a lost reply): a resume
    assert isinstance(claim(read(), token="t1", fingerprint="F2"), Resume)
    # a record this token took over (not made fresh): a resume
    assert isinstance(claim(read(ft={"S": "t0"}), token="t1"), Resume)
    # a lease run out, or released: a resume by another token
    assert isinstance(claim(read(lease={"N": str(NOW)})), Resume)
    assert isinstance(claim(read(tok=None, rel={"S": "t1"})), Resume)


# -- what a refused settlement answers -------------------------------------------------------


@pytest.mark.parametrize(("op", "attrs", "extra", "expected"), [
    ("renew", None, {}, "missing"),
    ("renew", {"exp": {"N": str(NOW - 1)}}, {}, "missing"),
    ("renew", {"tok": {"S": "other"}}, {}, "superseded"),
    ("complete", {"st": {"S": "done"}, "resp": {"S": "R"}}, {"response": "R"}, "ok"),
    ("complete", {"st": {"S": "done"}, "resp": {"S": "R"}}, {"response": "other"}, "superseded"),
    ("complete", {"st": {"S": "done"}, "resp": {"S": "R"}, "tok": {"S": "x"}}, {"response": "R"}, "superseded"),
    ("fail", {"st": {"S": "fatal"}, "code": {"S": "C"}, "msg": {"S": "m"}}, {"code": "C", "message": "m"}, "ok"),
    ("fail", {"st": {"S": "fatal"}, "code": {"S": "C"}, "msg": {"S": "m"}}, {"code": "D", "message": "m"},
     "superseded"),
    ("release", {"tok": None, "rel": {"S": "t1"}}, {}, "ok"),
    ("release", {"tok": None, "rel": {"S": "t0"}}, {}, "superseded"),
    ("forget", {"tok": {"S": "other"}}, {}, "superseded"),
])
def test_a_refused_settlement(op: str, attrs: dict[str, Any] | None, extra: dict[str, Any], expected: str) -> None:
    from idemsend.ledger._dynamodb._items import settle_answer

    raw = None if attrs is None else read(**attrs)
    assert settle_answer(raw, op=op, token="t1", now=NOW, **extra) == expected


# -- the requests ---------------------------------------------------------------------------


def test_every_write_checks_the_items_own_expiry_and_answers_the_item_when_refused() -> None:
    from idemsend.ledger._dynamodb import _expressions as ex

    common = {"key": "k", "now": NOW}
    requests = {
        "claim": ex.claim_fresh("t", "p", job_id="j", payload=b"x", fingerprint="f", token="a", lease=30,
                                retention=60, **common),
        "resume": ex.resume("t", "p", token="a", lease=30, seen_token="b", seen_lease=NOW, seen_first=NOW, **common),
        "complete": ex.complete("t", "p", token="a", response="{}", retention=60, **common),
        "complete_anew": ex.complete_anew("t", "p", token="a", response="{}", retention=60, **common),
        "fail": ex.fail("t", "p", token="a", code="C", message="m", retention=60, **common),
        "renew": ex.renew("t", "p", token="a", lease=30, **common),
        "release": ex.release("t", "p", token="a", **common),
        "forget": ex.release_forget("t", "p", token="a", **common),
    }
    for name, request in requests.items():
        assert "exp" in request["ConditionExpression"], name
        assert request["ExpressionAttributeValues"][":now"] == {"N": repr(NOW)}, name
        assert request["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD", name
    for name in ("complete", "fail", "renew", "release", "forget"):  # the token in the condition
        assert "tok = :tok" in requests[name]["ConditionExpression"], name
    assert requests["claim"]["Item"]["ttl"] == {"N": str(int(NOW) + 60)}
    assert requests["claim"]["Item"]["exp"] == {"N": repr(NOW + 60)}


def test_clear_spares_the_unsafe_codes_unless_forced() -> None:
    from idemsend.ledger._dynamodb import _expressions as ex

    safe = ex.clear("t", "p", key="k", force=False, now=NOW)
    assert "NOT code IN" in safe["ConditionExpression"]
    assert {v["S"] for k, v in safe["ExpressionAttributeValues"].items() if k.startswith(":u")} == {
        "STALE_REPLAY", "IDEMPOTENCY_MISMATCH"}
    assert "code" not in ex.clear("t", "p", key="k", force=True, now=NOW)["ConditionExpression"]


# -- the table and the clock ----------------------------------------------------------------


def test_table_problems() -> None:
    from idemsend.ledger._dynamodb._schema import create_request, table_problems

    good = create_request("t")
    on = {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    assert table_problems("t", good, on) == []
    assert table_problems("t", good, {"TimeToLiveStatus": "ENABLING", "AttributeName": "ttl"}) == []
    [ttl] = table_problems("t", good, {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires"})
    assert "not ENABLED on 'ttl'" in ttl and "on 'expires'" in ttl
    numeric = {**good, "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "N"}]}
    [key] = table_problems("t", numeric, on)
    assert "pk HASH (N)" in key


@pytest.mark.parametrize(("sent", "received", "theirs", "skew"), [
    (100.2, 100.4, 100.0, 0.0),    # inside the second the header names
    (100.9, 101.3, 100.0, 0.0),    # the round trip spans the header's second
    (130.0, 130.1, 100.0, 29.0),   # 29 s ahead at least
    (70.0, 70.2, 100.0, -29.8),    # behind
    (1.0, 2.0, None, None),        # no header
])
def test_clock_skew(sent: float, received: float, theirs: float | None, skew: float | None) -> None:
    from idemsend.ledger._dynamodb._fitness import clock_skew

    got = clock_skew(sent, received, theirs)
    assert got == (None if skew is None else pytest.approx(skew))


def test_skew_over_the_bound_is_a_caution_and_never_a_refusal() -> None:
    from idemsend.ledger import judge
    from idemsend.ledger._dynamodb._fitness import store_facts
    from idemsend.ledger._dynamodb._schema import create_request

    on_demand = {**create_request("t"), "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"}}
    assert judge(store_facts("t", on_demand, skew=1.5, max_skew=2)).warnings == ()
    verdict = judge(store_facts("t", on_demand, skew=-30, max_skew=2))
    assert verdict.fit and [w.code for w in verdict.warnings] == ["clock_skew"]
    assert "-30 s off" in verdict.warnings[0].message


# -- the URL --------------------------------------------------------------------------------


def test_a_dynamodb_url_names_table_region_endpoint() -> None:
    from idemsend.ledger import DynamoDBLedger

    ledger = ledger_from_url("dynamodb://My.Table-1?region=eu-west-1&endpoint_url=http://127.0.0.1:4566"
                             "&create_table=true", prefix="app")
    assert isinstance(ledger, DynamoDBLedger)
    assert ledger.table == "My.Table-1" and ledger.prefix == "app" and ledger.create_table
    assert ledger.db.region == "eu-west-1" and ledger.db.endpoint_url == "http://127.0.0.1:4566"
    plain = ledger_from_url("dynamodb://ledger", retention=3600.0)
    assert isinstance(plain, DynamoDBLedger) and plain.db.endpoint_url is None and plain.retention == 3600


@pytest.mark.parametrize(("url", "message"), [
    ("dynamodb://", "not a DynamoDB table name"),
    ("dynamodb://ab", "not a DynamoDB table name"),
    ("dynamodb://t a b", "not a DynamoDB table name"),
    ("dynamodb://key:secret@table", "dynamodb://TABLE?region"),
    ("dynamodb://table/path", "dynamodb://TABLE?region"),
    ("dynamodb://table?regoin=x", "unknown dynamodb:// URL parameter(s) regoin"),
    ("dynamodb://table?create_table=perhaps", "create_table in a dynamodb:// URL is true or false"),
])
def test_a_bad_dynamodb_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")) as info:
        ledger_from_url(url)
    assert "secret" not in str(info.value)


def test_a_prefix_with_the_separator_is_refused() -> None:
    with pytest.raises(ConfigError, match="without '#'"):
        ledger_from_url("dynamodb://table", prefix="a#b")


# -- idemsend migrate --dynamodb ------------------------------------------------------------


async def idemsend(*args: str) -> tuple[int, str, str]:
    """``python -m idemsend.cli ARGS``: its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "idemsend.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.dynamodb
@pytest.mark.anyio
async def test_idemsend_migrate_makes_the_table_and_inspect_reads_it(moto_url: str) -> None:
    table = f"t-{uuid.uuid4().hex[:12]}"
    url = f"dynamodb://{table}?region={REGION}&endpoint_url={moto_url}"
    status, out, err = await idemsend("migrate", "--dynamodb", url)
    assert status == 0 and "DynamoDBLedger: migrated" in out, err
    status, out, err = await idemsend("migrate", "--dynamodb", url)
    assert status == 0, err  # a table already there is kept
    async with client(moto_url) as db:
        ttl = (await db.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
        ledger = ledger_from_url(url)
        try:
            await ledger.start()
            await ledger.claim(key="k", job_id="j", payload=b"{}", fingerprint="f", token="t", lease=30)
        finally:
            await ledger.aclose()
        status, out, err = await idemsend("inspect", "k", "--dynamodb", url)
        assert status == 0 and '"state": "in_flight"' in out, err
        await db.delete_table(TableName=table)


@pytest.mark.dynamodb
@pytest.mark.anyio
async def test_a_malformed_item_is_a_store_failure(moto_url: str) -> None:
    table = f"t-{uuid.uuid4().hex[:12]}"
    ledger: Any = ledger_from_url(f"dynamodb://{table}?region={REGION}&endpoint_url={moto_url}", create_table=True)
    try:
        await ledger.start()
        async with client(moto_url) as db:
            await db.put_item(TableName=table, Item={"pk": {"S": "idemsend#r#k"}, "st": {"S": "??"}})
            with pytest.raises(LedgerUnavailableError, match="malformed ledger record for key 'k'"):
                await ledger.get("k")
            with pytest.raises(LedgerUnavailableError, match="malformed ledger record for key 'k'"):
                await ledger.claim(key="k", job_id="j", payload=b"{}", fingerprint="f", token="t", lease=30)
            await db.delete_table(TableName=table)
    finally:
        await ledger.aclose()
