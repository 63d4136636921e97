"""How a batch of ledger operations reaches Redis (``GroupCommit``'s executor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from .._base import LedgerUnavailableError
from ._lua import JOB, SCRIPT, SHA

__all__ = ["Executor", "Op", "unavailable"]

#: One operation: its code, its keys, its arguments.
Op = tuple[str, tuple[str, ...], tuple[Any, ...]]


class Executor:
    """Runs one GroupCommit batch of operations: on plain Redis one EVALSHA of the script
    (one command, one reply), on Cluster one pipeline of EVALSHAs, one per operation
    (redis-py sends each to its key's node). A server that lost the script (restarted, new,
    SCRIPT FLUSH) answers NOSCRIPT: the script is loaded and those calls run again."""

    def __init__(self, client: Any, *, one_call: bool, retention_ms: str) -> None:
        self.client = client
        self.one_call = one_call
        self.retention_ms = retention_ms

    async def __call__(self, ops: Sequence[Op]) -> list[Any]:
        results = await self._execute(ops)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self.client.script_load(SCRIPT)
            again = await self._execute([ops[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results

    async def _execute(self, ops: Sequence[Op]) -> list[Any]:
        if self.one_call:
            keys: list[Any] = []
            argv: list[Any] = []
            for _, op_keys, args in ops:
                keys += op_keys
                argv += args
            plan = "".join([op[0] for op in ops])
            try:
                reply = await self.client.execute_command(
                    "EVALSHA", SHA, len(keys), *keys, self.retention_ms, plan, *argv
                )
            except NoScriptError as exc:
                return [exc] * len(ops)
            return list(reply)
        pipe = self.client.pipeline(transaction=False)
        for code, op_keys, args in ops:
            if code == JOB:  # the job map needs no script: SET NX GET answers the key noted first
                # get=True: redis-py's SET callback passes the old value through as it is
                pipe.execute_command("SET", op_keys[0], args[0], "NX", "GET", "PX", self.retention_ms, get=True)
                continue
            # execute_command, not evalsha(): redis-py 5 blocks the evalsha method on
            # cluster pipelines, though one-slot scripts route to one node just fine.
            pipe.execute_command("EVALSHA", SHA, len(op_keys), *op_keys, self.retention_ms, code, *args)
        # a script answers a list of one reply (or failed as a whole: an exception); the job
        # map answers the key noted before, or None when this one was noted now
        replies = await pipe.execute(raise_on_error=False)
        return [
            (args[0] if r is None else r) if code == JOB else r[0] if isinstance(r, list) else r
            for (code, _, args), r in zip(ops, replies, strict=True)
        ]


def unavailable(exc: BaseException) -> LedgerUnavailableError:
    """A batch's store failure, as every caller in it gets it."""
    return LedgerUnavailableError(f"{type(exc).__name__}: {exc}")
