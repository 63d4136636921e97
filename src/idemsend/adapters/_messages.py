"""The message shape every adapter reads by default, and strict JSON for network input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["default_parse", "reject_constant"]


def default_parse(payload: Any) -> tuple[Mapping[str, Any], Any]:
    """``{"data": {...}, "body": ...}`` -> (data, body), as every adapter's message reads:
    ``data`` fills the key template, ``body`` is what is sent."""
    if not isinstance(payload, Mapping) or "body" not in payload:
        raise ValueError('the message must be a JSON object with "body" (and optional "data")')
    data = payload.get("data", {})
    if not isinstance(data, Mapping):
        raise ValueError('"data" must be a JSON object')
    return data, payload["body"]


def reject_constant(name: str) -> Any:
    """``json.loads(parse_constant=)``: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")
