from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    from idemsend.testing import RedisClusterServers

    with RedisClusterServers(3) as cluster:
        yield cluster.url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they need, from the fixtures they use: ``-m "not redis"`` runs
    what needs no Redis, ``-m "not cluster"`` skips the Cluster."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        # fixtures parametrized by store ("memory", "redis", "cluster") ask for it at run time
        params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec is not None else set()
        if "cluster_url" in names or "cluster" in params:
            item.add_marker(pytest.mark.cluster)
        if names & {"redis_url", "cluster_url"} or params & {"redis", "cluster"}:
            item.add_marker(pytest.mark.redis)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import sys

    module = sys.modules.get("tests.adapters.test_conformance")
    if module is not None and module.RESULTS:
        terminalreporter.write_sep("=", "conformance: scenario x adapter")
        terminalreporter.write_line(module.conformance_table())
        # Queues whose dependencies clash run in their own environments (noxfile.py); each
        # leaves its columns here, and `python -m harness.conformance DIR` prints one table.
        out = os.environ.get("IDEMSEND_CONFORMANCE_DIR")
        if out:
            adapters = sorted({a for row in module.RESULTS.values() for a in row})
            path = Path(out) / f"conformance-{'-'.join(adapters)}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            module.dump_results(str(path))
