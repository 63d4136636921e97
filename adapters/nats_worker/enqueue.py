"""Publish welcome-email jobs to the JetStream stream: `python enqueue.py --jobs 10`.

`--create` adds the stream first (NATS_STREAM, on subject NATS_SUBJECT, file storage). Each job
carries its own id in the `Nats-Msg-Id` header, so publishing a job twice is still
one job: JetStream drops the second inside its duplicate window, and the ledger answers it after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid

import nats


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--create", action="store_true", help="add the stream first")
    args = ap.parse_args()
    stream, subject = os.environ["NATS_STREAM"], os.environ.get("NATS_SUBJECT", "emails.welcome")
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    if args.create:
        await js.add_stream(name=stream, subjects=[subject])
    for i in range(args.jobs):
        job_id = uuid.uuid4().hex
        payload = {"data": {"user_id": f"user-{i}"}, "body": {"to": [f"user-{i}@example.com"], "template": "welcome"}}
        ack = await js.publish(subject, json.dumps(payload).encode(), headers={"Nats-Msg-Id": job_id})
        print("enqueued", job_id, "seq", ack.seq)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
