"""End-to-end and scale runs, each in its own process; prints one JSON line.

  python e2e.py arq    --variant adapter|ledger|raw --jobs N --url URL --redis URL
  python e2e.py rq     --variant adapter|ledger|raw --jobs N --url URL --redis URL
  python e2e.py qstash --variant adapter|raw --jobs N --url URL [--concurrency C]
  python e2e.py scale  --url SLOW_PROVIDER_URL --sends 10000

"raw" is the plain job a user writes without idemsend (the same keyed POST); "adapter"
is the idemsend adapter without a ledger; "ledger" adds a RedisLedger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from clients import API_KEY  # noqa: E402

SIGNING, NEXT = "sig_bench_" + "k" * 32, "sig_bench_next_" + "n" * 32


def env_for(args: argparse.Namespace, ledger: bool) -> None:
    os.environ["IDEMSEND_URL"] = args.url
    os.environ["IDEMSEND_API_KEY"] = API_KEY
    os.environ["IDEMSEND_MAX_IN_FLIGHT"] = "200"
    if ledger:
        os.environ["IDEMSEND_LEDGER_URL"] = args.redis
        os.environ["IDEMSEND_LEDGER_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}"


# -- arq ---------------------------------------------------------------------------------------


async def run_arq(args: argparse.Namespace) -> dict[str, Any]:
    from arq import Worker, create_pool
    from arq.connections import RedisSettings
    from arq.worker import func

    from idemsend.adapters import engine_from_env
    from idemsend.adapters.arq import ArqAdapter

    env_for(args, args.variant == "ledger")
    queue = f"bench:{uuid.uuid4().hex[:8]}"
    settings = RedisSettings.from_dsn(args.redis)
    idem = ArqAdapter(engine_from_env)

    async def raw_job(ctx: dict[str, Any], data: dict[str, Any], body: dict[str, Any]) -> Any:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json",
                   "Idempotency-Key": f"welcome:{data['user_id']}:{ctx['job_id']}"}
        async with ctx["session"].post(args.url, data=json.dumps(body), headers=headers) as r:
            return (await r.json())["id"]

    async def adapter_job(ctx: dict[str, Any], data: dict[str, Any], body: dict[str, Any]) -> Any:
        return await idem.send(ctx, data, body)

    async def startup(ctx: dict[str, Any]) -> None:
        if args.variant == "raw":
            ctx["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        else:
            await idem.on_startup(ctx)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if args.variant == "raw":
            await ctx["session"].close()
        else:
            await idem.on_shutdown(ctx)

    pool = await create_pool(settings)
    for i in range(args.jobs):
        await pool.enqueue_job("send", {"user_id": f"u{i}"}, {"to": [f"u{i}@example.com"]}, _queue_name=queue)
    job = func(raw_job if args.variant == "raw" else adapter_job, name="send")
    worker = Worker(
        functions=[job], redis_settings=settings, queue_name=queue, burst=True, max_jobs=100, poll_delay=0.01,
        on_startup=startup, on_shutdown=shutdown, handle_signals=False, keep_result=0,
    )
    start, cpu = time.perf_counter(), time.process_time()
    await worker.main()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done, failed = worker.jobs_complete, worker.jobs_failed
    await worker.close()
    await pool.aclose()
    return {"queue": "arq", "variant": args.variant, "jobs": args.jobs, "completed": done, "failed": failed,
            "jobs_per_s": done / elapsed, "cpu_s_per_1000": 1000 * cpu / max(done, 1)}


# -- RQ ----------------------------------------------------------------------------------------


def run_rq(args: argparse.Namespace) -> dict[str, Any]:
    from redis import Redis
    from rq import Queue, SimpleWorker

    env_for(args, args.variant == "ledger")
    sys.path.insert(0, str(HERE))
    import e2e_rq_jobs

    connection = Redis.from_url(args.redis)
    queue = Queue(f"bench-{uuid.uuid4().hex[:8]}", connection=connection)
    fn = e2e_rq_jobs.raw_send if args.variant == "raw" else e2e_rq_jobs.adapter_send
    for i in range(args.jobs):
        queue.enqueue(fn, {"user_id": f"u{i}"}, {"to": [f"u{i}@example.com"]}, result_ttl=600)
    worker = SimpleWorker([queue], connection=connection)
    start, cpu = time.perf_counter(), time.process_time()
    worker.work(burst=True, logging_level="WARNING")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done, failed = queue.finished_job_registry.count, queue.failed_job_registry.count
    e2e_rq_jobs.close()
    return {"queue": "rq", "variant": args.variant, "jobs": args.jobs, "completed": done,
            "failed": failed, "jobs_per_s": done / elapsed, "cpu_s_per_1000": 1000 * cpu / max(done, 1)}


# -- QStash ------------------------------------------------------------------------------------


def qstash_app(variant: str, url: str) -> Any:
    from aiohttp import web
    from qstash import Receiver

    from idemsend import Engine, Limits
    from idemsend.adapters.qstash import QStashHandler

    if variant == "adapter":
        engine = Engine(url, key="welcome:{user_id}:{job_id}", api_key=API_KEY, limits=Limits(max_in_flight=200))
        handler = QStashHandler(
            lambda: engine, current_signing_key=SIGNING, next_signing_key=NEXT, url_from_request=True,
            allow_volatile_replay_guard=True,  # one process, no ledger: what the raw variant has too
        )
        return handler.aiohttp_app("/hook")

    receiver = Receiver(current_signing_key=SIGNING, next_signing_key=NEXT)

    async def plain(request: web.Request) -> web.Response:  # what a user writes by hand
        raw = await request.read()
        receiver.verify(signature=request.headers["Upstash-Signature"], body=raw.decode(), url=str(request.url))
        message = json.loads(raw)
        key = f"welcome:{message['data']['user_id']}:{request.headers['Upstash-Message-Id']}"
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", "Idempotency-Key": key}
        async with request.app["session"].post(url, data=json.dumps(message["body"]), headers=headers) as r:
            return web.json_response(await r.json(), status=r.status)

    async def session_ctx(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        yield
        await app["session"].close()

    app = web.Application()
    app.router.add_post("/hook", plain)
    app.cleanup_ctx.append(session_ctx)
    return app


async def run_qstash(args: argparse.Namespace) -> dict[str, Any]:
    from idemsend.testing import free_port
    from idemsend.testing.qstash import sign

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "qstash-server", "--variant", args.variant, "--url", args.url, "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    server.stdout.readline()
    endpoint = f"http://127.0.0.1:{port}/hook"
    run = uuid.uuid4().hex[:8]
    messages = []
    for i in range(args.jobs):  # signed before the clock starts: signing is QStash's cost, not ours
        raw = json.dumps({"data": {"user_id": f"u{i}"}, "body": {"to": [f"u{i}@example.com"]}}).encode()
        messages.append((raw, {"Upstash-Signature": sign(raw, endpoint, SIGNING), "Upstash-Message-Id": f"{run}-{i}",
                               "Content-Type": "application/json"}))
    ok = 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
            todo = iter(messages)

            async def worker() -> None:
                nonlocal ok
                for raw, headers in todo:
                    async with session.post(endpoint, data=raw, headers=headers) as r:
                        await r.read()
                        ok += r.status == 200

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        report = server.stdout.readline()  # the server's CPU seconds while it served
        server.wait(10)
    cpu = json.loads(report)["cpu_s"]
    return {"queue": "qstash", "variant": args.variant, "jobs": args.jobs, "completed": ok,
            "failed": args.jobs - ok, "jobs_per_s": ok / elapsed, "cpu_s_per_1000": 1000 * cpu / max(ok, 1)}


def serve_qstash(args: argparse.Namespace) -> None:
    from aiohttp import web

    app = qstash_app(args.variant, args.url)
    since = [0.0]

    async def started(_app: web.Application) -> None:
        since[0] = time.process_time()

    async def stopping(_app: web.Application) -> None:  # SIGTERM from run_qstash
        print(json.dumps({"cpu_s": time.process_time() - since[0]}), flush=True)

    app.on_startup.append(started)
    app.on_shutdown.append(stopping)
    web.run_app(app, host="127.0.0.1", port=args.port, print=lambda *_: print("listening", flush=True),
                access_log=None)


# -- scale -------------------------------------------------------------------------------------


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


async def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    from idemsend import Engine, Job, Limits, SendResult

    run = uuid.uuid4().hex[:8]
    limits = Limits(max_in_flight=args.sends)
    async with Engine(args.url, key="scale:{job_id}", api_key=API_KEY, limits=limits, timeout=120) as engine:
        base = rss_kb()
        peak = base
        tasks = [asyncio.ensure_future(engine.send(Job(f"{run}-{i}"), {"to": [f"u{i}@example.com"]}))
                 for i in range(args.sends)]
        stats_url = args.url.rsplit("/api/", 1)[0] + "/_mock/stats"
        provider_peak = 0
        async with aiohttp.ClientSession() as s:
            while not all(t.done() for t in tasks):
                peak = max(peak, rss_kb())
                async with s.get(stats_url) as r:
                    provider_peak = max(provider_peak, (await r.json())["max_concurrency"])
                await asyncio.sleep(0.05)
        results = [t.result() for t in tasks]
    sent = sum(isinstance(r, SendResult) for r in results)
    return {"in_flight_sends": args.sends, "sent": sent, "provider_max_concurrency": provider_peak,
            "rss_base_mb": base / 1024, "rss_peak_mb": peak / 1024,
            "kb_per_in_flight_send": (peak - base) / args.sends,
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["arq", "rq", "qstash", "qstash-server", "scale"])
    ap.add_argument("--variant", default="adapter", choices=["adapter", "ledger", "raw"])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--sends", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--url", required=True)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "qstash-server":
        serve_qstash(args)
        return
    if args.mode == "rq":
        result = run_rq(args)
    else:
        runner = {"arq": run_arq, "qstash": run_qstash, "scale": run_scale}[args.mode]
        result = asyncio.run(runner(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
