"""Deliver signed messages to the webhook the way QStash does: `python deliver.py --jobs 3`."""

from __future__ import annotations

import argparse
import asyncio
import os

from idemsend.testing.qstash import QStashDeliverer


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080/qstash/welcome")
    ap.add_argument("--jobs", type=int, default=3)
    args = ap.parse_args()
    deliverer = QStashDeliverer(
        args.url, signing_key=os.environ["QSTASH_CURRENT_SIGNING_KEY"],
        sign_url=os.environ.get("QSTASH_ENDPOINT_URL", args.url),
    )
    for i in range(args.jobs):
        message = {"data": {"user_id": f"user-{i}"}, "body": {"to": [f"user-{i}@example.com"], "template": "welcome"}}
        delivery = await deliverer.deliver(message)
        print(delivery.message_id, delivery.state, delivery.last.status, delivery.last.body)


if __name__ == "__main__":
    asyncio.run(main())
