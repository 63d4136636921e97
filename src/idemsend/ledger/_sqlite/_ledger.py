"""SQLiteLedger: the ledger in a SQLite file, for the workers of one host; see the package docstring."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..._errors import ConfigError
from ..._keys import validate_job_id
from ..._log import fields
from .._base import DEFAULT_RETENTION, ClaimResult, LedgerRecord, LedgerUnavailableError, SettleResult
from .._fitness import judge
from .._group import GroupCommit
from .._records import encode_response
from ._decide import Op
from ._fitness import store_facts
from ._open import check_path, prepare
from ._schema import DEFAULT_TABLE, Tables
from ._store import Store, unavailable

__all__ = ["SQLiteLedger"]

log = logging.getLogger("idemsend.ledger")

T = TypeVar("T")

#: Connections a forked child inherited: kept referenced, never closed (closing SQLite's
#: handle in the child could touch the parent's file state), never used.
_INHERITED: list[object] = []
# What SQLite text cannot take from Python: an unpaired surrogate (UTF-8 cannot encode it).
_UNSTORABLE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    return text if text.isascii() else _UNSTORABLE.sub("\ufffd", text)


class SQLiteLedger:
    """A ledger in a SQLite file, shared by every worker process on one host (stdlib ``sqlite3``).

    ``SQLiteLedger(path)``: the file (made on first use, in a directory that must exist;
    ``":memory:"`` for one process's throwaway ledger). Options:

    * ``table``: the records table (lower-case letters, digits, ``_``); the job map is
      ``<table>_jobs``. Made on first use.
    * ``retention`` (seconds): how long a record lives after it was claimed, completed or failed.
    * ``timeout`` (seconds): SQLite's busy timeout, how long a call waits for another
      connection's write lock before it fails with ``LedgerUnavailableError``.
    * ``synchronous``: ``"full"`` (the default: a commit is on disk before the call
      answers, so a power loss keeps it) or ``"normal"`` (faster; a process crash loses
      nothing, a power loss can lose the last commits, and ``start()`` warns).
    * ``allow_network_fs``: accept a file on NFS, SMB, sshfs and the like (refused by
      default: SQLite's locks are not reliable there) with a WARNING.
    * ``sweep_interval`` (seconds, 0 for never), ``sweep_batch``: the background deletion of
      expired rows (expired rows are never answered as live meanwhile).
    * ``group_commit``: concurrent calls share one transaction (default); ``False``: one
      transaction per call. ``on_batch(size)``: called as each batch goes out.

    Every call runs in the ledger's own thread, in a ``BEGIN IMMEDIATE`` transaction with
    the calls queued meanwhile. Times are SQLite's clock (``julianday('now')``, the host's),
    the same for every process on the host. Keys are at most ``max_key_length`` characters.
    """

    #: The longest key this ledger stores: the longest a ``Provider`` allows (SQLite itself takes far more).
    max_key_length = 65_536

    def __init__(
        self, path: str | os.PathLike[str], *, table: str = DEFAULT_TABLE, retention: float = DEFAULT_RETENTION,
        timeout: float = 5.0, synchronous: str = "full", allow_network_fs: bool = False,
        sweep_interval: float = 60.0, sweep_batch: int = 500, group_commit: bool = True,
        on_batch: Callable[[int], object] | None = None,
    ) -> None:
        path = os.fspath(path)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ConfigError(f"the SQLite ledger's path must be a non-empty file path, got {path!r}")
        if path.startswith("file:"):
            raise ConfigError(f"give the SQLite ledger a file path, not a URI: {path!r}")
        tables = Tables.of(table)
        if not retention > 0:
            raise ConfigError(f"retention must be > 0, got {retention!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if not isinstance(synchronous, str) or synchronous.lower() not in ("full", "normal", "extra"):
            raise ConfigError(
                f"synchronous must be 'full' or 'normal' (or 'extra'), got {synchronous!r}: 'off' can corrupt the"
                " ledger in an operating-system crash"
            )
        if isinstance(sweep_batch, bool) or not isinstance(sweep_batch, int) or sweep_batch < 1:
            raise ConfigError(f"sweep_batch must be an int >= 1, got {sweep_batch!r}")
        if not sweep_interval >= 0:
            raise ConfigError(f"sweep_interval must be >= 0 (0: no background sweep), got {sweep_interval!r}")
        self.path = path if path == ":memory:" else os.path.abspath(path)
        self.table = table
        self.jobs_table = tables.jobs_table
        self.retention = float(retention)
        self.timeout = float(timeout)
        self.synchronous = synchronous.lower()
        self.allow_network_fs = allow_network_fs
        self.sweep_interval = float(sweep_interval)
        self.sweep_batch = sweep_batch
        self.group_commit = group_commit
        self._tables = tables
        self._store = Store(self.path, tables, timeout=self.timeout, synchronous=self.synchronous,
                            retention=self.retention)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idemsend-sqlite")
        self._pid = os.getpid()
        self._on_batch = on_batch
        self._group = self._new_group()
        self._start_lock = asyncio.Lock()
        self._checked = False
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None

    def _new_group(self) -> GroupCommit[Op, Any]:
        return GroupCommit(
            self._execute, max_batch=512 if self.group_commit else 1, max_pipelines=1, on_batch=self._on_batch,
            error=lambda exc: unavailable(exc, self.path),
        )

    def __repr__(self) -> str:
        return f"<SQLiteLedger path={self.path!r} table={self.table!r} retention={self.retention:g}s>"

    @property
    def transactions(self) -> int:
        """Transactions committed so far (one per batch of calls): what group commit saves, measured."""
        return self._store.transactions

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise LedgerUnavailableError(f"the SQLite ledger at {self.path} is closed")
        if os.getpid() != self._pid:
            self._after_fork()
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _after_fork(self) -> None:
        """In a child forked from a process that used this ledger (RQ's work horse, a
        prefork pool): the parent's thread does not exist here, and its SQLite connection
        must not be used (SQLite's rule), so both are replaced; the inherited connection is
        kept aside, unused and unclosed."""
        if self._store.con is not None:
            _INHERITED.append(self._store.con)
            self._store.con = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idemsend-sqlite")
        self._pid = os.getpid()
        self._sweeper = None  # a task of the parent's event loop, which is not running here
        self._group = self._new_group()  # a batch the parent had in flight is not this process's

    async def _execute(self, ops: Sequence[Op]) -> list[Any]:
        return await self._in_thread(self._store.run, ops)

    # -- start and sweep -------------------------------------------------------------------

    async def start(self) -> None:
        """Check once that the file is fit to be a ledger, and make its tables; see ``Ledger.start``.

        * the directory is missing, not writable (or on a read-only filesystem), or the
          file is not readable and writable: ``ConfigError``, naming the path.
        * the file is on a network filesystem (NFS, SMB/CIFS, sshfs..., read from
          ``/proc/mounts``): ``ConfigError``, unless ``allow_network_fs=True`` (a WARNING).
        * the file is not a SQLite database, or holds a table of the ledger's name that is
          not the ledger's: ``ConfigError``.
        * SQLite older than 3.24: ``ConfigError``; ``synchronous=normal``: a WARNING (a
          power loss can lose the last commits); WAL refused by the filesystem: a WARNING.
        * the file is locked past the busy timeout: ``LedgerUnavailableError``; call it again.

        The other calls call it first when it has not run. It also starts the background
        sweep of expired rows (``sweep_interval``)."""
        if self._checked:
            return
        async with self._start_lock:
            if self._checked:
                return
            network = await self._in_thread(check_path, self.path, self.allow_network_fs)
            version, journal, sync = await self._in_thread(prepare, self._store)
            judge(store_facts(self.path, version=version, journal_mode=journal, synchronous=sync,
                              network=network)).enforce()
            self._checked = True
            if self.sweep_interval > 0 and self._sweeper is None and not self._closed:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(),
                                                                       name="idemsend-ledger-sweep")

    async def sweep(self, *, batch: int | None = None, max_batches: int | None = None) -> int:
        """Delete expired records and job notes, ``batch`` rows (default ``sweep_batch``)
        of each table per transaction, until none is left or ``max_batches`` transactions
        ran; answers how many rows went. Store failures raise ``LedgerUnavailableError``."""
        size = self.sweep_batch if batch is None else batch
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"batch must be an int >= 1, got {size!r}")
        await self.start()
        total, runs = 0, 0
        while max_batches is None or runs < max_batches:
            deleted = await self._in_thread(self._store.sweep, size)
            total, runs = total + deleted, runs + 1
            if deleted < size:
                break
            await asyncio.sleep(0)  # let the ledger's own calls go first
        return total

    async def _sweep_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.sweep_interval * random.uniform(0.5, 1.5))
            try:
                await self.sweep()
            except LedgerUnavailableError as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("idemsend: the ledger's sweep of expired records failed (%d in a row): %s",
                                failures, exc, extra=fields(code="unavailable", op="sweep"))
            else:
                failures = 0

    # -- the state machine -------------------------------------------------------------------

    async def _call(self, kind: str, key: str, *args: Any) -> Any:
        if os.getpid() != self._pid:
            self._after_fork()
        if not self._checked:
            await self.start()
        return await self._group.submit(Op(kind, _clean(key), args))

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``: one transaction (shared with the calls queued meanwhile)."""
        validate_job_id(job_id)  # one rule for every ledger, before anything is batched
        result: ClaimResult = await self._call(
            "claim", key, job_id, bytes(payload), _clean(fingerprint), _clean(token), float(lease)
        )
        return result

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = encode_response(response)  # before the store is asked: TypeError for what is not JSON
        result: SettleResult = await self._call("complete", key, _clean(token), body)
        return result

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        result: SettleResult = await self._call("fail", key, _clean(token), _clean(code), _clean(message))
        return result

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        result: SettleResult = await self._call("renew", key, _clean(token), float(lease))
        return result

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``: ``forget`` deletes the record and its job id's note."""
        result: SettleResult = await self._call("release", key, _clean(token), bool(forget))
        return result

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``: the state (and code) is checked and the row deleted in one transaction."""
        result: bool = await self._call("clear", key, bool(force))
        return result

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``: one read (no write lock; WAL lets it run beside a writer)."""
        if not self._checked:
            await self.start()
        return await self._in_thread(self._store.get, _clean(key))

    async def aclose(self) -> None:
        """Wait for the calls already made, stop the sweep, close the file. A second call does nothing."""
        if self._closed:
            return
        await self._group.drain()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.get_loop() is asyncio.get_running_loop():
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        # (a sweeper of an event loop that has ended ended with it)
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._store.close)
        except RuntimeError:  # the interpreter is exiting: its executors take no more work
            self._store.close()  # the ledger's thread is done by now: close here
        self._thread.shutdown(wait=False)

