"""Send welcome-email jobs to the SQS queue: `python enqueue.py --jobs 10`.

`--create NAME` makes the queue first (`--fifo` for a FIFO queue, `--dlq` with a dead-letter
queue after `--max-receives` receives) and prints its URL; otherwise SQS_QUEUE_URL names it.
SQS_ENDPOINT_URL points at moto or LocalStack (unset: AWS). Each job carries its own id in
the `idemsend-job-id` attribute, so sending a job twice is still one job.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid

import boto3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--create", metavar="NAME", help="create this queue first and print its URL")
    ap.add_argument("--fifo", action="store_true", help="with --create: a FIFO queue (NAME gets .fifo)")
    ap.add_argument("--dlq", action="store_true", help="with --create: a dead-letter queue and redrive policy")
    ap.add_argument("--max-receives", type=int, default=5, help="with --dlq: maxReceiveCount")
    ap.add_argument("--visibility", type=int, default=30, help="with --create: VisibilityTimeout")
    args = ap.parse_args()
    sqs = boto3.client(
        "sqs", endpoint_url=os.environ.get("SQS_ENDPOINT_URL") or None,
        region_name=os.environ.get("SQS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    if args.create:
        queue_url = create(sqs, args)
        print("queue", queue_url)
    else:
        queue_url = os.environ["SQS_QUEUE_URL"]
    fifo = queue_url.endswith(".fifo")
    for i in range(args.jobs):
        job_id = uuid.uuid4().hex
        extra = {"MessageGroupId": f"user-{i % 3}", "MessageDeduplicationId": job_id} if fifo else {}
        answer = sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps({"data": {"user_id": f"user-{i}"},
                                    "body": {"to": [f"user-{i}@example.com"], "template": "welcome"}}),
            MessageAttributes={"idemsend-job-id": {"DataType": "String", "StringValue": job_id}},
            **extra,
        )
        print("enqueued", job_id, "message", answer["MessageId"])


def create(sqs: object, args: argparse.Namespace) -> str:
    name = args.create + (".fifo" if args.fifo and not args.create.endswith(".fifo") else "")
    attributes = {"VisibilityTimeout": str(args.visibility)}
    if args.fifo:
        attributes["FifoQueue"] = "true"
    if args.dlq:
        dlq_name = name.removesuffix(".fifo") + "-dlq" + (".fifo" if args.fifo else "")
        dlq_attributes = {"FifoQueue": "true"} if args.fifo else {}
        dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes=dlq_attributes)["QueueUrl"]  # type: ignore[attr-defined]
        arn = sqs.get_queue_attributes(  # type: ignore[attr-defined]
            QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": args.max_receives})
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
