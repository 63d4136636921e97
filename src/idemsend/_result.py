"""What a send returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._hooks import TryInfo

__all__ = ["SendResult"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """The result of a completed send.

    ``replayed`` is true when this call did not cause the send itself: the provider
    answered with its stored response, another coroutine of this engine sent it
    (single-flight), or the ledger already held the completed send (``from_ledger``).
    ``attempts`` counts the HTTP requests this call made (0 when answered without one);
    ``tries`` says what each one got.
    """

    key: str
    id: str | None
    status: int
    response: Any
    replayed: bool
    attempts: int
    fingerprint: str
    job_id: str
    from_ledger: bool = False
    #: This call's HTTP tries, one frozen ``TryInfo`` each, in order (empty when it made none).
    tries: tuple[TryInfo, ...] = field(default=(), repr=False)
    #: The provider answered a replay where none was expected: on the first send of the key
    #: (a fresh ledger claim, or the queue's first delivery without a ledger) and before any
    #: try of this call may have run. Another job, or another system, used this key before
    #: (or the ledger lost this job's record of an earlier send: it cannot tell the two apart):
    #: do not treat this result as a fresh success (grant nothing twice). Logged at WARNING.
    unexpected_replay: bool = False
