"""pytest fixtures shipped with idemsend (registered through the ``pytest11`` entry point).

``mock_provider``: a started MockProvider (async fixture; run tests under anyio).
``redis_url``: ``$REDIS_URL``, else a throwaway redis-server for the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ._mock import MockProvider
from ._redis_server import redis_url_or_start


@pytest.fixture
async def mock_provider() -> AsyncIterator[MockProvider]:
    async with MockProvider() as provider:
        yield provider


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url, server = redis_url_or_start()
    try:
        yield url
    finally:
        if server is not None:
            server.cleanup()
