"""RQ job functions for the end-to-end benchmark (imported by the SimpleWorker by path)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from rq import get_current_job

from idemsend.adapters import engine_from_env
from idemsend.adapters.rq import RQAdapter

idem = RQAdapter(engine_from_env)
_client = httpx.Client()  # the plain job's pooled client, as a user would keep one


def raw_send(data: dict[str, Any], body: dict[str, Any]) -> Any:
    job = get_current_job()
    assert job is not None
    headers = {"Authorization": f"Bearer {os.environ['IDEMSEND_API_KEY']}", "Content-Type": "application/json",
               "Idempotency-Key": f"welcome:{data['user_id']}:{job.id}"}
    r = _client.post(os.environ["IDEMSEND_URL"], content=json.dumps(body), headers=headers)
    return r.json()["id"]


def adapter_send(data: dict[str, Any], body: dict[str, Any]) -> Any:
    return idem.send(data, body)


def close() -> None:
    _client.close()
    idem.close()
