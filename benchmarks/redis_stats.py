"""What Redis did during a benchmark: CPU seconds (``INFO cpu``) and commands executed
(``INFO commandstats``: those a client sent and those a script ran), summed over every
server given (the primaries of a Cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Commands the measuring itself (and the server's housekeeping) runs: not the workload's.
_OWN = {"info", "config|resetstat", "config|get", "ping", "cluster|slots", "cluster|shards", "cluster|nodes",
        "command", "command|docs", "client|setinfo", "hello", "select", "script|load", "memory|usage", "dbsize"}


@dataclass
class Snapshot:
    cpu: float = 0.0  # used_cpu_sys + used_cpu_user, seconds
    calls: dict[str, int] = field(default_factory=dict)

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        calls = {k: v - earlier.calls.get(k, 0) for k, v in self.calls.items()}
        return Snapshot(self.cpu - earlier.cpu, {k: v for k, v in calls.items() if v})

    @property
    def commands(self) -> int:
        """Every command executed, scripts' own included."""
        return sum(self.calls.values())

    @property
    def scripts(self) -> int:
        """EVAL/EVALSHA/FCALL calls: what a client sent to run a script."""
        return sum(v for k, v in self.calls.items() if k in ("evalsha", "eval", "fcall", "evalsha_ro", "eval_ro"))


def clients_for(urls: list[str]) -> list[Any]:
    import redis

    return [redis.Redis.from_url(u) for u in urls]


def snapshot(clients: list[Any]) -> Snapshot:
    total = Snapshot()
    for client in clients:
        cpu = client.info("cpu")
        total.cpu += float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        for name, stats in client.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            if command not in _OWN:
                total.calls[command] = total.calls.get(command, 0) + int(stats["calls"])
    return total


