"""How the ledger reaches its database: a pool it was given, or one it makes from a DSN on
first use; one statement on one connection; store failures in words without the password.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from ..._errors import ConfigError
from ..._redact import safe_url
from .._base import LedgerUnavailableError

__all__ = ["OWN_PARAMS", "Connections", "flag", "pool_options", "split_dsn"]

log = logging.getLogger("idemsend.ledger")

T = TypeVar("T")

# What asyncpg raises, before sending anything, on a pooled connection whose server went
# away while it sat idle (the server's goodbye left it mid-state, or it noticed the close).
_NOT_SENT = ("cannot switch to state", "connection is closed")

#: The DSN query parameters that are the ledger's own (``from_url`` takes them out).
OWN_PARAMS = ("table", "create_table", "statement_cache_size")


class Connections:
    """The ledger's pool: ``pool`` (given, or made from ``dsn`` with ``options`` on first
    use, and then closed by ``close``), ``timeout`` for a connection and a statement, and
    ``statements``, how many were sent (one round trip each). ``table`` is named in the
    hint for a missing table."""

    def __init__(self, pool: Any, *, table: str, timeout: float) -> None:
        self.pool: Any = pool
        self.table = table
        self.timeout = timeout
        self.dsn: str | None = None
        self.options: dict[str, Any] = {}
        self.closed = False
        #: Statements sent so far (one round trip each): what group commit saves, measured.
        self.statements = 0
        self._lock = asyncio.Lock()

    def fail(self, exc: BaseException, doing: str = "") -> LedgerUnavailableError:
        """A store failure as ``LedgerUnavailableError``, with nothing of the DSN's password."""
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)):
            text = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0]} (behind PgBouncer in transaction or statement"
                " mode? Add ?statement_cache_size=0 to the ledger's DSN)"
            )
        elif isinstance(exc, asyncpg.UndefinedTableError):
            text += (
                f" (the ledger table {self.table} is missing: create it with `await ledger.migrate()` or"
                " `idemsend migrate --postgres DSN`)"
            )
        if self.dsn is not None:
            from .._url import _scrub

            text = _scrub(self.dsn, text)
        return LedgerUnavailableError(f"{doing}{text}")

    async def get_pool(self) -> Any:
        """The pool, made on the first call when the ledger makes its own."""
        if self.pool is not None:
            return self.pool
        if self.closed:
            raise LedgerUnavailableError("the ledger is closed")
        async with self._lock:
            if self.pool is None:
                if self.closed:
                    raise LedgerUnavailableError("the ledger is closed")
                try:
                    self.pool = await asyncpg.create_pool(self.dsn, **self.options)
                except Exception as exc:  # a store failure, or a DSN asyncpg cannot parse
                    raise self.fail(exc, "could not reach the ledger's PostgreSQL: ") from exc
        return self.pool

    async def on_connection(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(connection)`` on a connection of the pool. A connection the server
        dropped while it sat idle in the pool (a restart, a failover) fails before anything
        is sent: it is closed and ``work`` tried on another one. Other store failures
        raise as they are (a statement cut off mid-way may or may not have taken effect,
        so it is never sent twice)."""
        pool = await self.get_pool()
        tries = int(pool.get_max_size()) + 1
        for attempt in range(tries):
            async with pool.acquire(timeout=self.timeout) as con:
                try:
                    return await work(con)
                except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
                    if attempt == tries - 1 or not str(exc).startswith(_NOT_SENT):
                        raise
                    con.terminate()
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """One statement (one round trip); store failures raise as they are."""

        async def fetch(con: Any) -> list[Any]:
            self.statements += 1
            rows: list[Any] = await con.fetch(sql, *args, timeout=self.timeout)
            return rows

        return await self.on_connection(fetch)

    async def close(self) -> None:
        """Close the pool if it was made here (a given one stays open); afterwards nothing
        is made again. A second call does nothing."""
        if self.dsn is not None and not self.closed:
            self.closed = True
            pool, self.pool = self.pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), self.timeout)
                except BaseException:  # a dead server, a timeout, a cancellation: cut the connections
                    pool.terminate()
                    if not isinstance(exc := sys.exc_info()[1], Exception):
                        raise
                    log.debug("idemsend: the ledger's pool did not close cleanly: %s", self.fail(exc))
        self.closed = True


async def _no_reset(connection: Any) -> None:
    """The pool's reset: nothing to undo (see ``pool_options``)."""
    return None


def pool_options(dsn: str, *, pool_size: int, statement_cache_size: int, timeout: float) -> dict[str, Any]:
    """The ``asyncpg.create_pool`` options for a pool the ledger makes for ``dsn`` (the DSN
    without the ledger's own parameters)."""
    options: dict[str, Any] = {
        "min_size": 0, "max_size": pool_size, "statement_cache_size": statement_cache_size,
        "timeout": timeout, "command_timeout": timeout,
        "server_settings": {"application_name": "idemsend-ledger"},
    }
    if "reset" in inspect.signature(asyncpg.create_pool).parameters:
        # The ledger leaves no session state (no SET, no temp table, no LISTEN, no
        # advisory lock), so the default reset query, a round trip at every release,
        # has nothing to do. (asyncpg < 0.30 has no `reset`: it runs the query.)
        options["reset"] = _no_reset
    if "application_name" in urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query):
        del options["server_settings"]
    return options


def split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without the ledger's own query parameters, and those parameters."""
    if not isinstance(dsn, str) or "://" not in dsn:
        raise ConfigError("the Postgres ledger needs a postgresql:// DSN")
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"not a postgresql:// DSN: {safe_url(dsn)}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    parts.port  # noqa: B018 - a port that is not a number raises ValueError here, not at the first call
    own = {k: v for k, v in query if k in OWN_PARAMS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in OWN_PARAMS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), own


def flag(value: str, name: str, dsn: str) -> bool:
    """A DSN parameter ``name`` as a boolean (``true``/``false``, ``1``/``0``, ...), or ``ConfigError``."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} in the ledger DSN {safe_url(dsn)} must be true or false, got {value!r}")
