"""Deliver signed messages to the webhook the way QStash does: `python deliver.py --jobs 3`.

With QSTASH_JOB_ID_FROM=body (as the webhook), each message carries its id as "job_id".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid

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
        message_id = f"msg_{uuid.uuid4().hex}"
        body = {"to": [f"user-{i}@example.com"], "template": "welcome"}
        message: dict[str, object] = {"data": {"user_id": f"user-{i}"}, "body": body}
        if os.environ.get("QSTASH_JOB_ID_FROM") == "body":
            message["job_id"] = message_id
        delivery = await deliverer.deliver(message, message_id=message_id)
        print(delivery.message_id, delivery.state, delivery.last.status, delivery.last.body)


if __name__ == "__main__":
    asyncio.run(main())
