from __future__ import annotations

from collections.abc import Iterator

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import sys

    module = sys.modules.get("tests.test_conformance")
    if module is not None and module.RESULTS:
        terminalreporter.write_sep("=", "conformance: scenario x adapter")
        terminalreporter.write_line(module.conformance_table())
