"""Canonical body bytes and their fingerprint.

A body is serialised once, canonically (sorted keys, no insignificant whitespace), so
a retry sends the same bytes and the provider's body-hash check sees the same body.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ._errors import InvalidBodyError

__all__ = ["canonical_body", "fingerprint"]


def canonical_body(body: Any) -> bytes:
    """Serialise ``body`` canonically. ``bytes`` are taken as already serialised."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidBodyError(f"the body cannot be sent as JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidBodyError("the body cannot be sent as JSON: it is nested too deeply") from exc
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") has no UTF-8 form
        raise InvalidBodyError(f"the body cannot be sent as JSON: {exc.reason} at {exc.start}") from exc


def fingerprint(payload: bytes) -> str:
    """The sha256 of the payload, hex: what travels beside the key and in the ledger."""
    return hashlib.sha256(payload).hexdigest()
