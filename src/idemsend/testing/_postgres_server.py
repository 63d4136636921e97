"""Throwaway PostgreSQL servers for tests, benchmarks and the chaos run.

The binaries (``initdb``, ``pg_ctl``) come from ``$PG_BINDIR``, else ``initdb`` on PATH,
else the newest Debian install under ``/usr/lib/postgresql/*/bin``. Each server gets a
data directory in its own temp dir (made by ``initdb`` on the first ``start``), a free
loopback port, its socket in that dir, trust authentication for the user ``postgres``.
As root, the server runs as the ``postgres`` system user (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from ._redis_server import _Throwaway, free_port

__all__ = ["PostgresServer", "find_postgres_bindir"]


def _version(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def find_postgres_bindir() -> str:
    """The directory holding ``initdb`` and ``pg_ctl``; ``FileNotFoundError`` (saying what
    to install) when there is none."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        missing = [name for name in ("initdb", "pg_ctl") if not os.path.exists(os.path.join(explicit, name))]
        if missing:
            raise FileNotFoundError(f"PG_BINDIR={explicit} has no {' or '.join(missing)}")
        return explicit
    found = shutil.which("initdb")
    if found and os.path.exists(os.path.join(os.path.dirname(found), "pg_ctl")):
        return os.path.dirname(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if candidates:
        return os.path.dirname(candidates[-1])
    raise FileNotFoundError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install Debian's postgresql package,"
        " or set PG_BINDIR to the directory that holds them"
    )


def _run_as() -> str | None:
    """The user to run the server as: ``postgres`` (or ``nobody``) when this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, with neither a postgres nor a nobody user to run PostgreSQL as")


class PostgresServer(_Throwaway):
    """A PostgreSQL server in a temp dir, for one test module, test or benchmark.

    ``stop()`` (a fast shutdown) and ``start()`` again keep the port and the data (every
    commit survives, as in production); ``kill()`` is a crash (SIGKILL to the postmaster
    and every backend; committed data survives it too, as PostgreSQL's WAL promises);
    ``cleanup()`` stops it and removes the directory. ``settings`` are extra server
    settings (``{"fsync": "off"}``)."""

    def __init__(
        self, *, port: int | None = None, bindir: str | None = None, settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir or find_postgres_bindir()
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix=f"idemsend-pg-{self.port}-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres`` (trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        """The same as ``dsn``: what ``ledger_from_url`` takes."""
        return self.dsn

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, user=self.user, cwd=self.dir,
        )

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from ``postmaster.pid``), else ``None``."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self, timeout: float = 60.0) -> Self:
        """Make the data directory the first time (``initdb``), then start the server
        (again, after ``stop`` or ``kill``: same port and data) and wait until it takes
        connections."""
        if not (self.data / "PG_VERSION").exists():
            done = self._run(
                self._bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync", timeout=timeout,
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed for a throwaway PostgreSQL: {done.stderr[-2000:]}")
        options = [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        done = self._run(
            self._bin("pg_ctl"), "start", "-D", str(self.data), "-w", "-t", str(int(timeout)), "-l", str(self.log),
            "-o", " ".join(options), timeout=timeout + 10,
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL on port {self.port} did not start: {done.stderr[-1000:]} {log}")
        return self

    def stop(self) -> None:
        """A fast shutdown (sessions are ended, every commit is kept); nothing if not running."""
        if self.pid is None:
            return
        done = self._run(self._bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", timeout=40)
        if done.returncode != 0 and self.pid is not None:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend: what a crash looks like. The next
        ``start`` recovers from the WAL."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # pg_ctl made the postmaster a session (and group) leader
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)
