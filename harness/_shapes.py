"""The provider shapes the chaos run can meet (``--provider``): how the in-process
MockProvider is set up, and what the workers' environment says so their Engine speaks it.

* ``header``: the key in ``Idempotency-Key`` (the Sendoka contract; today's default);
* ``body``: the key in the JSON body's ``idempotency_key`` (Square-style), no header;
* ``standard-webhooks``: a Standard Webhooks receiver: the key in ``webhook-id``, every try
  signed afresh, the MockProvider verifying each signature (and refusing stale ones) as a
  receiver does, answering 204 without a body.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SHAPES", "Shape", "shape"]


@dataclass(frozen=True)
class Shape:
    """One provider shape: the MockProvider's options and the workers' environment."""

    name: str
    mock: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _webhooks() -> Shape:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    return Shape(
        "standard-webhooks",
        {"key_header": "webhook-id", "signing_secret": secret, "dialect": "standard-webhooks"},
        {"IDEMSEND_PROVIDER": "standard-webhooks", "IDEMSEND_WEBHOOK_SECRET": secret},
    )


SHAPES = ("header", "body", "standard-webhooks")


def shape(name: str) -> Shape:
    """The shape called ``name`` (a fresh secret for each signed run)."""
    if name == "header":
        return Shape("header")
    if name == "body":
        return Shape("body", {"key_field": "idempotency_key"}, {"IDEMSEND_KEY_FIELD": "idempotency_key"})
    if name == "standard-webhooks":
        return _webhooks()
    raise ValueError(f"unknown provider shape {name!r}; known: {', '.join(SHAPES)}")
