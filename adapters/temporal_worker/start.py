"""Start welcome-email workflows for the Temporal worker: `python start.py --jobs 10`."""

from __future__ import annotations

import argparse
import asyncio
import os

from temporalio.client import Client
from workflows import SendEmail

SETTINGS = {"start_to_close": 600, "heartbeat": 30, "retry_base": 1.0, "retry_cap": 300.0, "max_tries": 10}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    args = ap.parse_args()
    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"))
    for i in range(args.jobs):
        job = {"data": {"user_id": f"user-{i}"}, "body": {"to": [f"user-{i}@example.com"], "template": "welcome"},
               "settings": SETTINGS}
        handle = await client.start_workflow(
            SendEmail.run, job, id=f"welcome-user-{i}", task_queue=os.environ.get("TEMPORAL_TASK_QUEUE", "emails"),
        )
        print("started", handle.id)


if __name__ == "__main__":
    asyncio.run(main())
