"""What one send carries through the layers: the ``PreparedSend`` the engine builds once,
and the ``TryHistory`` its HTTP tries write, one frozen ``TryInfo`` per try.

``Engine.send`` derives the key, serialises the body and takes its fingerprint once, into a
frozen ``PreparedSend``; the guard and the attempt loop take that one value instead of six
loose ones. A resumed ledger claim sends the record's frozen body: ``with_body`` makes the
prepared send that carries it.

The history is append-only: a try is *opened* the moment its request may leave, and
*closed* with its ``TryInfo`` when the answer (or the transport's error) is in. Nothing in
it is changed afterwards. Whether the key may have run at the provider is derived from it:
a try still open (the send was cancelled mid-request), or any closed try whose answer does
not prove that nothing ran. That is what a fresh ledger claim is forgotten by, and what
every error says.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._hooks import TryInfo
from ._keys import Job

__all__ = ["PreparedSend", "TryHistory"]


@dataclass(frozen=True, slots=True)
class PreparedSend:
    """One ``send`` call, prepared once: the job, its validated key, the canonical body bytes
    and their fingerprint, and what the queue said (``attempt``, ``queue``: for logs, hooks
    and what an error says, never for the key)."""

    job: Job
    key: str
    payload: bytes
    fingerprint: str
    attempt: int | None = None
    queue: str | None = None

    @property
    def earlier_may_have_run(self) -> bool:
        """Whether an earlier delivery of this job may have run, as far as the queue tells:
        unless it says this is its first delivery, assume one may have (without a ledger,
        the error of a job whose answer was lost then says "may have been sent")."""
        return self.attempt is None or self.attempt > 1

    def with_body(self, payload: bytes, fingerprint: str) -> PreparedSend:
        """This send with another body (a resumed claim's frozen first bytes)."""
        if payload == self.payload and fingerprint == self.fingerprint:
            return self
        return replace(self, payload=payload, fingerprint=fingerprint)


class TryHistory:
    """The HTTP tries of one attempt, append-only (see the module docstring).

    ``earlier`` is what was known before the first try: True when an earlier delivery may
    have run (a ledger record left in flight; without a ledger, any queue attempt after the
    first)."""

    __slots__ = ("_open", "_tries", "earlier")

    def __init__(self, *, earlier: bool = False) -> None:
        self.earlier = earlier
        self._tries: list[TryInfo] = []
        self._open: int | None = None

    @property
    def tries(self) -> tuple[TryInfo, ...]:
        """Every closed try, in order."""
        return tuple(self._tries)

    @property
    def count(self) -> int:
        """Tries closed so far, and one still open."""
        return len(self._tries) + (self._open is not None)

    @property
    def next_number(self) -> int:
        """The number the next try gets (1 for the first)."""
        return len(self._tries) + 1

    def open(self) -> None:
        """The next try's request may leave now: until it is closed it may have run."""
        if self._open is not None:
            raise RuntimeError(f"try {self._open} is still open")
        self._open = self.next_number

    def close(self, info: TryInfo) -> None:
        """Write try ``info`` (its number must be the next one)."""
        if info.number != self.next_number:
            raise RuntimeError(f"try {info.number} closed where try {self.next_number} was due")
        self._open = None
        self._tries.append(info)

    @property
    def maybe_sent(self) -> bool:
        """Whether one of these tries may have run at the provider: one still open, or one
        whose answer does not prove that nothing ran."""
        return self._open is not None or any(t.may_have_run for t in self._tries)

    @property
    def may_have_run(self) -> bool:
        """Whether a request for the key may have run: in these tries or an earlier delivery."""
        return self.maybe_sent or self.earlier

    @property
    def body_size(self) -> int:
        """The last answer's body in bytes, as received (0 before any answer)."""
        return self._tries[-1].body_size if self._tries else 0
