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
