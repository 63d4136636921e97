"""A QStash webhook that sends through idemsend: `python app.py --port 8080`.

Environment: QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY, QSTASH_ENDPOINT_URL (the
public URL QStash calls, checked against the token's subject), and the IDEMSEND_* variables
of idemsend.adapters.engine_from_env.
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web

from idemsend.adapters import engine_from_env
from idemsend.adapters.qstash import QStashHandler

PATH = "/qstash/welcome"


def make_app() -> web.Application:
    handler = QStashHandler(
        engine_from_env,  # started on the first delivery, closed with the app
        current_signing_key=os.environ["QSTASH_CURRENT_SIGNING_KEY"],
        next_signing_key=os.environ["QSTASH_NEXT_SIGNING_KEY"],
        url=os.environ.get("QSTASH_ENDPOINT_URL"),
        clock_tolerance=int(os.environ.get("QSTASH_CLOCK_TOLERANCE", "5")),
    )
    return handler.aiohttp_app(PATH)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=lambda *_: print("listening", flush=True))
