"""A QStash webhook that sends through idemsend: `python app.py --port 8080`.

Environment:

* QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY (required).
* QSTASH_ENDPOINT_URL (required): the public URL QStash calls, exactly as configured in
  QStash; every token's subject (``sub``) must equal it, so a token signed for another
  endpoint of the account (staging, another route) is refused. Set
  QSTASH_URL_FROM_REQUEST=1 instead only behind a proxy that sets the Host header itself:
  the URL is then built from the request, and a client that chooses its Host can present
  a token signed for another endpoint.
* QSTASH_REPLAY_GUARD_URL: a redis:// URL where every webhook process remembers each
  token's ``jti`` (a captured delivery replayed with a fresh Upstash-Message-Id is
  refused with 401). Unset: the guard is kept in IDEMSEND_LEDGER_URL's store (Redis or
  PostgreSQL); without a ledger the handler refuses to start in header mode, since a
  guard in this process's memory forgets at every restart (QSTASH_JOB_ID_FROM=body
  needs no guard).
* QSTASH_JOB_ID_FROM: ``header`` (default, Upstash-Message-Id) or ``body`` (the signed
  message's ``"job_id"`` field; no header is trusted, so replays are the same job).
* QSTASH_CLOCK_TOLERANCE (seconds, default 5), and the IDEMSEND_* variables of
  idemsend.adapters.engine_from_env.

See docs/qstash-security.md for the threats these settings answer.
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web

from idemsend import ConfigError
from idemsend.adapters import engine_from_env
from idemsend.adapters.qstash import QStashHandler, RedisReplayGuard

PATH = "/qstash/welcome"


def make_app() -> web.Application:
    url = os.environ.get("QSTASH_ENDPOINT_URL") or None
    url_from_request = os.environ.get("QSTASH_URL_FROM_REQUEST", "") in ("1", "true", "yes")
    if url is None and not url_from_request:
        raise ConfigError(
            "QSTASH_ENDPOINT_URL is not set: the public URL QStash calls (each token's subject must equal it);"
            " set QSTASH_URL_FROM_REQUEST=1 instead only behind a proxy that sets the Host header"
        )
    job_id_from = os.environ.get("QSTASH_JOB_ID_FROM", "header")
    if job_id_from not in ("header", "body"):
        raise ConfigError(f"QSTASH_JOB_ID_FROM must be 'header' or 'body', got {job_id_from!r}")
    guard_url = os.environ.get("QSTASH_REPLAY_GUARD_URL")
    guard = RedisReplayGuard.from_url(guard_url) if guard_url else None
    handler = QStashHandler(
        engine_from_env,  # started when the app starts, closed with it
        current_signing_key=os.environ["QSTASH_CURRENT_SIGNING_KEY"],
        next_signing_key=os.environ["QSTASH_NEXT_SIGNING_KEY"],
        url=url,
        url_from_request=url_from_request,
        clock_tolerance=int(os.environ.get("QSTASH_CLOCK_TOLERANCE", "5")),
        job_id_from="body" if job_id_from == "body" else "header",
        replay_guard=guard,  # None: kept in the ledger's store (header mode)
    )
    app = handler.aiohttp_app(PATH)
    if guard is not None:

        async def close_guard(_app: web.Application) -> None:
            await guard.aclose()

        app.on_cleanup.append(close_guard)
    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=lambda *_: print("listening", flush=True))
