"""A transport of the user's that fails with something other than ``TransportError`` (a bug,
a library's own exception) after its request may have left. The engine cannot know whether
the provider ran it, so the try counts as one that may have run: the error reaches the
caller as it is, the ledger keeps the key's record (never forgets it), and the redelivery
resends the same bytes with the same key, which the provider answers as a replay."""

from __future__ import annotations

import pytest

from idemsend import Engine, Job, RawResponse, TransportRequest
from idemsend._transport import AiohttpTransport
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider

pytestmark = pytest.mark.anyio

BODY = {"to": ["ada@example.com"], "template": "welcome"}


class BuggyAfterSending(AiohttpTransport):
    """Sends for real, then raises a plain ``RuntimeError`` on the first request."""

    def __init__(self) -> None:
        super().__init__(timeout=10)
        self.posts = 0

    async def post(self, request: TransportRequest) -> RawResponse:
        self.posts += 1
        response = await super().post(request)
        if self.posts == 1:
            raise RuntimeError("the user's transport broke after the request left")
        return response


async def test_a_foreign_error_after_the_request_left_keeps_the_record_and_the_redelivery_replays(
    mock_provider: MockProvider,
) -> None:
    ledger = MemoryLedger()
    transport = BuggyAfterSending()
    async with Engine(mock_provider.emails_url, key="welcome:{job_id}", api_key=mock_provider.api_key,
                      ledger=ledger, transport=transport) as engine:
        with pytest.raises(RuntimeError, match="broke after the request left"):
            await engine.send(Job("j1", {}), BODY)
        record = await ledger.get("welcome:j1")
        assert record is not None, "a try that may have run must not be forgotten"
        assert record.state == "in_flight"
        assert mock_provider.sends_for("welcome:j1") == 1
        # The queue redelivers: same key, same frozen bytes, and the provider replays.
        again = await engine.send(Job("j1", {}), BODY)
    assert again.replayed and not again.from_ledger
    assert mock_provider.sends_for("welcome:j1") == 1
    assert transport.posts == 2
