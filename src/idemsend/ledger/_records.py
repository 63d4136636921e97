"""What a ledger record is, written once for every backend (Memory, Redis, Postgres).

Each backend keeps records in its own form (a Python object, a packed Redis string, a
table row), but they all agree on these, which live here:

* the **answer and state tables**: ``SETTLE_RESULTS`` (what a settlement answers, by
  name or by its number in the Redis scripts) and ``STATES`` (a record's state);
* the **done record's response**: ``encode_response`` writes it as compact JSON (the
  same bytes ``json.dumps(response, separators=(",", ":"))`` makes, which older
  workers in a rolling deploy read), ``decode_response`` reads it back, and
  ``Recorded`` is the typed view of what the engine records (id, status, body);
* the **decoding** of what a store answered into the protocol's types:
  ``done`` (a claim that met a done record), ``ledger_record`` (``get``),
  ``settle_result``, with ``malformed`` for a record that cannot be read;
* the **conflict rule** a claim applies to an existing record (``conflicts``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Done, LedgerRecord, LedgerUnavailableError, RecordState, SettleResult

__all__ = [
    "SETTLE_RESULTS",
    "STATES",
    "Recorded",
    "conflicts",
    "decode_response",
    "done",
    "encode_response",
    "ledger_record",
    "malformed",
    "settle_result",
]

#: What a settlement answers. A store answers a result by its name (PostgreSQL) or by its
#: number, its place here counted from 1 (the Redis scripts: OK, RECREATED, MISSING,
#: SUPERSEDED = 1, 2, 3, 4).
SETTLE_RESULTS: tuple[SettleResult, ...] = ("ok", "recreated", "missing", "superseded")

#: A record's state by the name every store keeps it under.
STATES: dict[str, RecordState] = {"in_flight": "in_flight", "done": "done", "fatal": "fatal"}

_SETTLE_ANSWERS: dict[object, SettleResult] = {
    **{name: name for name in SETTLE_RESULTS},
    **{number: name for number, name in enumerate(SETTLE_RESULTS, 1)},
}


def settle_result(reply: object) -> SettleResult:
    """The ``SettleResult`` a store answered (its name, or its number in ``SETTLE_RESULTS``
    counted from 1); ``LedgerUnavailableError`` for anything else."""
    try:
        answer = _SETTLE_ANSWERS.get(reply)
    except TypeError:  # unhashable: a list, a dict
        answer = None
    if answer is None:
        raise LedgerUnavailableError(f"unexpected ledger answer {reply!r}")
    return answer


# The C encoder json.dumps itself uses, called straight: json.dumps(x, separators=...) makes
# a JSONEncoder and its encoder for every call (None without the C speedups).
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_ascii: Any = json.encoder.encode_basestring_ascii


def encode_response(response: Mapping[str, Any]) -> str:
    """A done record's response as it is stored: ``json.dumps(response, separators=(",",
    ":"))``, the same text (ASCII, keys in the mapping's order) and the same errors
    (``TypeError`` for what is not JSON, ``ValueError`` for a circular structure), for half
    the CPU. The text must not change: older workers read records newer ones wrote."""
    if _c_make_encoder is None:  # pragma: no cover
        return json.dumps(response, separators=(",", ":"))
    encode = _c_make_encoder({}, _not_json, _ascii, None, ":", ",", False, False, True)
    return "".join(encode(response, 0))


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def decode_response(text: str | bytes) -> Any:
    """A stored response (``encode_response``'s text) as the mapping it was; ``ValueError``
    when it is not JSON."""
    return json.loads(text)


def conflicts(recorded_job_id: str, recorded_fingerprint: str, job_id: str, fingerprint: str) -> bool:
    """Whether a claim by ``job_id`` with ``fingerprint`` conflicts with the record there: the
    key is recorded for another job with another body. A recorded fingerprint ``""`` (a done
    record written anew after the store lost the original) never conflicts."""
    return bool(recorded_fingerprint) and recorded_job_id != job_id and recorded_fingerprint != fingerprint


def done(response: str | bytes, fingerprint: str) -> Done:
    """The ``Done`` a claim answers for a done record whose stored response is ``response``."""
    return Done(decode_response(response), fingerprint)


def ledger_record(
    key: str, state: str, *, job_id: str, fingerprint: str, first_sent_at: float, response: str | bytes | None,
    code: str | None = None, message: str | None = None, lease_until: float | None = None,
) -> LedgerRecord:
    """The ``LedgerRecord`` of a stored record (``get``). ``state`` is checked against
    ``STATES``; ``response`` is the stored JSON (``None`` when there is none) and is decoded
    here; ``lease_until`` is kept only while in flight. ``ValueError`` for an unknown state
    or a response that is not JSON (the caller wraps it with ``malformed``)."""
    known = STATES.get(state)
    if known is None:
        raise ValueError(f"no such state {state!r}")
    return LedgerRecord(
        key=key, state=known, job_id=job_id, fingerprint=fingerprint, first_sent_at=first_sent_at,
        response=decode_response(response) if response is not None else None,
        code=code, message=message, lease_until=lease_until if known == "in_flight" else None,
    )


def malformed(key: str, exc: BaseException | str) -> LedgerUnavailableError:
    """The store failure a record that cannot be read is (``get``, a claim)."""
    return LedgerUnavailableError(f"malformed ledger record for key {key!r}: {exc}")


@dataclass(frozen=True, slots=True)
class Recorded:
    """The typed view of the response the engine records when a send completes: the
    provider's ``id`` (``None`` when it gave none), the HTTP ``status``, and its parsed
    response ``body`` when that was small (else ``None``; see ``Done``).

    A ledger stores whatever JSON mapping ``complete`` is given, and ``Done.response`` and
    ``LedgerRecord.response`` stay that mapping (older workers read its JSON, and a
    ledger of your own may be handed any mapping); ``Recorded.of`` reads it, and
    ``as_response`` writes the mapping the engine records, key for key and in order, so
    the stored JSON is byte for byte what it was."""

    id: str | None
    status: int = 200
    body: Any = None

    @classmethod
    def of(cls, response: Mapping[str, Any]) -> Recorded:
        """``response`` (a done record's mapping) typed: ``id`` (``None`` when absent),
        ``status`` (200 when absent), the ``response`` entry as ``body``. ``ValueError`` or
        ``TypeError`` for a status that is not a number."""
        return cls(response.get("id"), int(response.get("status", 200)), response.get("response"))

    def as_response(self) -> dict[str, Any]:
        """The mapping for ``Ledger.complete``: ``{"id", "status", "response"}``, in that order."""
        return {"id": self.id, "status": self.status, "response": self.body}
