"""What a completed send keeps in each ledger's store, in its own process; prints one JSON line.

  python memory.py redis    --sends 100000 [--redis URL]   (a throwaway Redis when no URL)
  python memory.py memory   --sends 100000
  python memory.py postgres --sends 20000 [--dsn DSN]      (needs asyncpg; a throwaway server when no DSN)
  python memory.py dynamodb --sends 2000 [--endpoint URL]  (needs idemsend[dynamodb] and moto[server]:
                                                           moto's server when no endpoint; nox -s dynamodb's venv)
  python memory.py sqlite   --sends 100000                 (a throwaway file)

Each run makes ``--sends`` completed sends the way the engine does (claim, then complete
with the record the engine writes: id, status and the provider's response, here the
MockProvider's 66-byte answer), with the benchmark's key and job id shapes, and reports:

* redis: ``INFO memory`` used_memory before and after, per send (what the server holds:
  keys, values, TTLs, hash-table slots, allocator rounding), the keys per send, and
  ``MEMORY USAGE`` of one send's keys (Redis's own estimate of them, less than the above).
* memory: tracemalloc's bytes still allocated per send.
* postgres: ``pg_total_relation_size`` of the ledger's tables (rows, indexes, TOAST) per
  send, as written and after ``VACUUM FULL`` (live rows only).
* dynamodb: the items' size as DynamoDB counts it for storage and write units (attribute
  names and values in UTF-8, numbers by their digits; ``dynamo_item_bytes``) per send, read
  back with a Scan, plus the 100 bytes per item DynamoDB adds for storage; and the requests
  per completed send (the ledger's ``calls``), each a write of at most 1 KB here: one write
  unit each (a write's units are its larger item, before or after, in 1 KB steps).
* sqlite: the file's size per send (pages in use: rows, the primary keys, the expiry
  indexes) after the WAL is checkpointed into it, as written and after ``VACUUM``; and
  the transactions (commits, one fsync each with ``synchronous=FULL``) per send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from idemsend import canonical_body, fingerprint  # noqa: E402


def send_shape(run: str, i: int) -> tuple[str, str, bytes, str, dict[str, Any]]:
    """(key, job id, payload, fingerprint, record) as clients.py's sends have them."""
    body = {"from": "welcome@example.com", "to": [f"user-{i}@example.com"], "template": "welcome",
            "variables": {"name": f"User {i}"}}
    payload = canonical_body(body)
    answer = {"id": f"em_{i:08d}", "object": "email", "to": [f"user-{i}@example.com"]}
    record = {"id": answer["id"], "status": 200, "response": answer}
    return f"welcome:user-{i}:{run}-{i}", f"{run}-{i}", payload, fingerprint(payload), record


async def fill(ledger: Any, run: str, sends: int, chunk: int = 500) -> None:
    async def one(i: int) -> None:
        key, job, payload, fp, record = send_shape(run, i)
        token = f"{run}-tok-{i}"
        await ledger.claim(key=key, job_id=job, payload=payload, fingerprint=fp, token=token, lease=30)
        assert await ledger.complete(key=key, token=token, response=record) == "ok"

    for start in range(0, sends, chunk):
        await asyncio.gather(*(one(i) for i in range(start, min(sends, start + chunk))))


async def redis_bytes(args: argparse.Namespace) -> dict[str, Any]:
    from idemsend.ledger import RedisLedger
    from idemsend.testing import RedisServer

    server = None if args.redis else RedisServer().start()
    url = args.redis or server.url  # type: ignore[union-attr]
    try:
        ledger = RedisLedger.from_url(url, prefix="idemsend")
        client = ledger.client
        await client.ping()
        keys0, mem0 = await client.dbsize(), (await client.info("memory"))["used_memory"]
        run = uuid.uuid4().hex[:10]
        await fill(ledger, run, args.sends)
        keys1, mem1 = await client.dbsize(), (await client.info("memory"))["used_memory"]
        key, job, *_ = send_shape(run, 7)
        usage = (await client.memory_usage(ledger.record_key(key))) + (await client.memory_usage(ledger.job_key(job)))
        await ledger.aclose()
    finally:
        if server is not None:
            server.cleanup()
    return {"ledger": "redis", "sends": args.sends, "bytes_per_send": (mem1 - mem0) / args.sends,
            "keys_per_send": (keys1 - keys0) / args.sends, "memory_usage_per_send": usage}


async def memory_bytes(args: argparse.Namespace) -> dict[str, Any]:
    import tracemalloc

    from idemsend.ledger import MemoryLedger

    ledger = MemoryLedger(max_records=args.sends + 1)
    run = uuid.uuid4().hex[:10]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await fill(ledger, run, args.sends)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"ledger": "memory", "sends": args.sends, "bytes_per_send": (after - before) / args.sends}


async def postgres_bytes(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from idemsend.ledger import PostgresLedger
    from idemsend.testing import PostgresServer

    server = None if args.dsn else PostgresServer().start()
    dsn = args.dsn or server.dsn  # type: ignore[union-attr]
    table = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        ledger = PostgresLedger.from_url(dsn, table=table, create_table=True)
        await ledger.start()
        await fill(ledger, uuid.uuid4().hex[:10], args.sends, chunk=200)
        await ledger.aclose()
        con = await asyncpg.connect(dsn)
        try:
            size = "SELECT pg_total_relation_size($1::regclass) + pg_total_relation_size($2::regclass)"
            written = await con.fetchval(size, table, f"{table}_jobs")
            await con.execute(f"VACUUM FULL {table}")
            await con.execute(f"VACUUM FULL {table}_jobs")
            live = await con.fetchval(size, table, f"{table}_jobs")
            await con.execute(f"DROP TABLE {table}, {table}_jobs")
        finally:
            await con.close()
    finally:
        if server is not None:
            server.cleanup()
    return {"ledger": "postgres", "sends": args.sends, "bytes_per_send": live / args.sends,
            "bytes_per_send_as_written": written / args.sends}


def dynamo_item_bytes(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB counts it: each attribute's name (UTF-8) plus its value:
    a string's UTF-8 bytes, a binary's bytes, a number's significant digits / 2 + 1."""
    total = 0
    for name, value in item.items():
        total += len(name.encode())
        [(kind, raw)] = value.items()
        if kind == "S":
            total += len(raw.encode())
        elif kind == "B":
            total += len(raw)
        elif kind == "N":
            digits = raw.lstrip("-").replace(".", "").lstrip("0").rstrip("0") or "0"
            total += (len(digits) + 1) // 2 + 1
        else:  # pragma: no cover - the ledger writes only S, B and N
            raise ValueError(f"unsized attribute type {kind}")
    return total


async def dynamodb_bytes(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from aiobotocore.session import get_session

    from idemsend.ledger import DynamoDBLedger

    moto = None
    if not args.endpoint:
        sys.path.insert(0, str(HERE.parent))
        from harness.queues.sqs import CREDENTIALS, MotoServer

        for name, value in (("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"]),
                            ("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])):
            os.environ.setdefault(name, value)
        moto = MotoServer().start()
    endpoint = args.endpoint or moto.url  # type: ignore[union-attr]
    table = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        ledger = DynamoDBLedger(table, region="us-east-1", endpoint_url=endpoint, create_table=True)
        await ledger.start()
        before = sum(ledger.calls.values())
        await fill(ledger, uuid.uuid4().hex[:10], args.sends, chunk=50)
        calls = {op: n for op, n in ledger.calls.items()}
        requests = sum(calls.values()) - before
        await ledger.aclose()
        sizes: list[int] = []
        async with get_session().create_client("dynamodb", region_name="us-east-1", endpoint_url=endpoint) as db:
            async for page in db.get_paginator("scan").paginate(TableName=table):
                sizes.extend(dynamo_item_bytes(item) for item in page.get("Items", []))
            await db.delete_table(TableName=table)
    finally:
        if moto is not None:
            moto.stop()
    return {"ledger": "dynamodb", "sends": args.sends, "bytes_per_send": sum(sizes) / args.sends,
            "stored_bytes_per_send": (sum(sizes) + 100 * len(sizes)) / args.sends,
            "items_per_send": len(sizes) / args.sends, "largest_item": max(sizes),
            "requests_per_send": requests / args.sends, "calls": calls}


async def sqlite_bytes(args: argparse.Namespace) -> dict[str, Any]:
    import sqlite3
    import tempfile

    from idemsend.ledger import SQLiteLedger

    with tempfile.TemporaryDirectory(prefix="idemsend-bench-") as tmp:
        path = str(Path(tmp) / "ledger.db")
        ledger = SQLiteLedger(path, sweep_interval=0)
        await ledger.start()
        await fill(ledger, uuid.uuid4().hex[:10], args.sends)
        transactions = ledger.transactions
        await ledger.aclose()
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

            def used() -> int:
                pages = con.execute("PRAGMA page_count").fetchone()[0]
                free = con.execute("PRAGMA freelist_count").fetchone()[0]
                return int((pages - free) * con.execute("PRAGMA page_size").fetchone()[0])

            written = used()
            con.execute("VACUUM")
            live = used()
        finally:
            con.close()
    return {"ledger": "sqlite", "sends": args.sends, "bytes_per_send": live / args.sends,
            "bytes_per_send_as_written": written / args.sends, "transactions_per_send": transactions / args.sends}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ledger", choices=["redis", "memory", "postgres", "dynamodb", "sqlite"])
    ap.add_argument("--sends", type=int, default=100_000)
    ap.add_argument("--redis", default="")
    ap.add_argument("--dsn", default="")
    ap.add_argument("--endpoint", default="", help="dynamodb: the endpoint (moto's server is started when none)")
    args = ap.parse_args()
    runner = {"redis": redis_bytes, "memory": memory_bytes, "postgres": postgres_bytes,
              "dynamodb": dynamodb_bytes, "sqlite": sqlite_bytes}[args.ledger]
    print(json.dumps(asyncio.run(runner(args))), flush=True)


if __name__ == "__main__":
    main()
