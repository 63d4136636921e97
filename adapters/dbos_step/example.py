"""idemsend in a DBOS step: `python example.py` (needs `pip install dbos`; SQLite, no server).

DBOS steps run at least once (recovery re-runs a step that had not recorded its result),
under the same workflow id and step id: `step_job_id(DBOS.workflow_id, DBOS.step_id)` is the
job id, so a re-run sends under the same key and is answered from the ledger or replayed by
the provider. Leave retries to `@DBOS.step(retries_allowed=True, ...)` and give the engine
`retry=0`. A worker would keep one Engine and one shared ledger (Redis or PostgreSQL), not
the per-call Engine and MemoryLedger of this example.
"""

import asyncio
import os
import tempfile

from dbos import DBOS, DBOSConfig

from idemsend import Engine, Job
from idemsend.adapters import step_job_id
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider

SETTINGS: dict[str, str] = {}
LEDGER = MemoryLedger()


@DBOS.step(retries_allowed=True, max_attempts=5)
async def send_welcome(user_id: str, email: str) -> dict:
    job = Job(step_job_id(DBOS.workflow_id, DBOS.step_id), {"user_id": user_id})
    async with Engine(SETTINGS["url"], key="welcome:{user_id}:{job_id}", api_key="key", retry=0,
                      ledger=LEDGER) as engine:
        result = await engine.send(job, {"to": [email], "template": "welcome"})
    return {"key": result.key, "replayed": result.replayed}


@DBOS.workflow()
async def welcome(user_id: str, email: str) -> dict:
    return await send_welcome(user_id, email)


async def send_again(workflow_id: str) -> dict:
    job = Job(step_job_id(workflow_id, 1), {"user_id": "u1"})
    async with Engine(SETTINGS["url"], key="welcome:{user_id}:{job_id}", api_key="key", ledger=LEDGER) as engine:
        result = await engine.send(job, {"to": ["ada@example.com"], "template": "welcome"})
    return {"key": result.key, "replayed": result.replayed}


async def main() -> None:
    async with MockProvider(api_key="key") as provider:
        SETTINGS["url"] = provider.emails_url
        db = os.path.join(tempfile.mkdtemp(), "dbos.sqlite")
        DBOS(config=DBOSConfig(name="welcome", system_database_url=f"sqlite:///{db}"))
        DBOS.launch()
        try:
            handle = await DBOS.start_workflow_async(welcome, "u1", "ada@example.com")
            result = await handle.get_result()
            assert result["key"] == f"welcome:u1:{handle.get_workflow_id()}/1"
            # the step run again under the same ids (what recovery does): the same key, no second email
            again = await send_again(handle.get_workflow_id())
            assert again["key"] == result["key"] and again["replayed"]
            assert provider.sends_for(result["key"]) == 1
            print("sent once:", result["key"])
        finally:
            DBOS.destroy()


asyncio.run(main())
