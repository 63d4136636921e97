"""Which replay guard a ``QStashHandler`` uses when it is not given one (a pure decision:
it makes guard objects, but does no I/O), and ``GuardSlot``, the guard over the handler's
life (chosen, started, asked, closed).

* ``job_id_from="body"``: none is needed (a replay is the same job).
* the engine's ledger keeps its records in Redis, PostgreSQL or SQLite: a guard in that
  store (``RedisReplayGuard.for_ledger``, ``PostgresReplayGuard.for_ledger``,
  ``SQLiteReplayGuard.for_ledger``), so a token's
  ``jti`` outlives a restart and is seen by every process using the ledger.
* otherwise (a ``MemoryLedger``, no ledger, a ledger of another kind): refused with
  ``ConfigError``, since a guard in process memory forgets every token at a restart (a
  deploy), after which a captured delivery is accepted again under a fresh message id;
  unless ``allow_volatile_replay_guard=True`` says that one process serves the endpoint
  and is never restarted within a token's lifetime. The handler then uses an
  ``InMemoryReplayGuard`` and logs a WARNING at start.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any

from ..._errors import ConfigError
from .._webhook import Response, error_response
from ._guards import InMemoryReplayGuard, RedisReplayGuard, SignatureReplayGuard
from ._message import short

__all__ = ["GuardChoice", "GuardSlot", "choose_replay_guard", "durable_guard_for"]

log = logging.getLogger("idemsend.qstash")


@dataclass(frozen=True, slots=True)
class GuardChoice:
    """The guard a handler uses: ``guard`` (None: no guard, ``job_id_from="body"``);
    ``owned`` when the handler made it (it starts and closes it); ``volatile`` when it is
    the in-memory default (warned about at start)."""

    guard: SignatureReplayGuard | None
    owned: bool = False
    volatile: bool = False


def durable_guard_for(ledger: Any) -> SignatureReplayGuard | None:
    """A guard kept in ``ledger``'s store, sharing its client or pool: for a
    ``RedisLedger`` (plain or Cluster), a ``PostgresLedger`` or a ``SQLiteLedger``; None for
    any other ledger."""
    # Look the ledger classes up only if their modules are loaded: a ledger of that class
    # exists only then, and importing them would need their extras.
    redis_ledgers = sys.modules.get("idemsend.ledger._redis")
    if redis_ledgers is not None and isinstance(ledger, redis_ledgers.RedisLedger):
        return RedisReplayGuard.for_ledger(ledger)
    postgres_ledgers = sys.modules.get("idemsend.ledger._postgres")
    if postgres_ledgers is not None and isinstance(ledger, postgres_ledgers.PostgresLedger):
        from ._pg_guard import PostgresReplayGuard

        return PostgresReplayGuard.for_ledger(ledger)
    sqlite_ledgers = sys.modules.get("idemsend.ledger._sqlite")
    if sqlite_ledgers is not None and isinstance(ledger, sqlite_ledgers.SQLiteLedger):
        from ._sqlite_guard import SQLiteReplayGuard

        return SQLiteReplayGuard.for_ledger(ledger)
    return None


def choose_replay_guard(
    *, given: SignatureReplayGuard | None, job_id_from: str, ledger: Any, allow_volatile: bool
) -> GuardChoice:
    """The guard to use; ``ConfigError`` when only a volatile one is possible and
    ``allow_volatile`` is not set (see the module docstring)."""
    if given is not None:
        return GuardChoice(given)
    if job_id_from == "body":
        return GuardChoice(None)
    durable = durable_guard_for(ledger)
    if durable is not None:
        return GuardChoice(durable, owned=True)
    if allow_volatile:
        return GuardChoice(InMemoryReplayGuard(), owned=True, volatile=True)
    kind = "no ledger" if ledger is None else f"a {type(ledger).__name__}"
    raise ConfigError(
        f"QStashHandler has no durable replay guard: its engine has {kind}, and a guard in process memory"
        " forgets every token at a restart, after which a captured delivery is accepted again under a fresh"
        " Upstash-Message-Id (a second send). Use a Redis, PostgreSQL or SQLite ledger (the guard then"
        " lives in its store), pass replay_guard=RedisReplayGuard.from_url(...),"
        " PostgresReplayGuard.from_url(...) or SQLiteReplayGuard(path), or"
        ' take the job id from the signed body (job_id_from="body"). For one process that is never restarted'
        " within a token's lifetime, pass allow_volatile_replay_guard=True (or"
        " replay_guard=InMemoryReplayGuard()). See docs/qstash-security.md"
    )


class GuardSlot:
    """A handler's replay guard over its life: the one given, or the one chosen (by
    ``choose_replay_guard``) once the engine's ledger is known; started (a guard with a
    ``start()``, e.g. to check its table) and, if the handler made it, closed with the
    handler. ``ready`` is False until ``start`` ran: a delivery must not pass before."""

    def __init__(self, given: SignatureReplayGuard | None, *, job_id_from: str, allow_volatile: bool) -> None:
        self.given = given
        self.job_id_from = job_id_from
        self.allow_volatile = allow_volatile
        self.choice: GuardChoice | None = None
        self.ready = False

    @property
    def guard(self) -> SignatureReplayGuard | None:
        """The guard in use (the given one until a choice is made)."""
        return self.choice.guard if self.choice is not None else self.given

    def choose(self, ledger: Any) -> GuardChoice:
        """Choose once (``ConfigError`` when no durable guard is possible and not allowed)."""
        if self.choice is None:
            self.choice = choose_replay_guard(
                given=self.given, job_id_from=self.job_id_from, ledger=ledger, allow_volatile=self.allow_volatile
            )
        return self.choice

    async def start(self, ledger: Any) -> None:
        """Choose, start a guard the handler made, warn about a volatile one; idempotent."""
        if self.ready:
            return
        choice = self.choose(ledger)
        start = getattr(choice.guard, "start", None) if choice.owned else None
        if start is not None:
            await start()
        if choice.volatile:
            log.warning(
                "idemsend: qstash replay guard in process memory (allow_volatile_replay_guard=True): a restart"
                " forgets every token, and a delivery captured before it can then be replayed under a fresh"
                " Upstash-Message-Id; safe only for one process never restarted within a token's lifetime"
            )
        self.ready = True

    async def check(self, jti: str, job_id: str, expires_at: float, *, timeout: float) -> Response | None:
        """None when the delivery may go on, else the answer: 401 ``REPLAYED_SIGNATURE``
        (``jti`` came first with another job id), 503 ``REPLAY_GUARD_UNAVAILABLE`` (the
        guard failed, took over ``timeout`` seconds, or is not ready: it fails closed)."""
        guard = self.guard
        if guard is None:
            if self.job_id_from == "header" or not self.ready:  # never fail open
                return error_response(503, "REPLAY_GUARD_UNAVAILABLE", "the replay guard is not ready; nothing sent")
            return None
        try:
            async with asyncio.timeout(timeout):
                first = await guard.remember(jti, job_id, expires_at)
        except Exception as exc:  # fail closed: without the guard's answer a replay cannot be ruled out
            log.warning("idemsend: qstash replay guard unavailable, refusing the delivery: %r", exc)
            return error_response(
                503, "REPLAY_GUARD_UNAVAILABLE",
                f"the replay guard could not answer ({type(exc).__name__}); nothing was sent",
                None,  # no Retry-After: QStash's own backoff spreads the retries over the outage
            )
        if first != job_id:
            log.warning(
                "idemsend: qstash token %s replayed: it first came with job %s, now with %s; refused",
                jti, short(first), short(job_id),
            )
            return error_response(
                401, "REPLAYED_SIGNATURE",
                "this signature was already used for another message id; a signature is good for one message",
            )
        return None

    async def aclose(self) -> None:
        """Close a guard the handler made; a later ``start`` chooses again."""
        choice, self.choice, self.ready = self.choice, None, False
        if choice is not None and choice.owned:
            close = getattr(choice.guard, "aclose", None)
            if close is not None:
                await close()
