"""Per-try signing: a ``Signer`` adds headers to each HTTP try, made from the frozen body,
the key and the try, with the time taken at that try.

The body is serialised once and never changes between tries (every try and every worker
sends the same bytes); what a signature adds is made fresh for each try, because a
receiver refuses a timestamp older than its tolerance (Standard Webhooks: 5 minutes), so
a retry that reused the first try's signature would be refused, and one that re-signed
under a new id would be a duplicate.

``StandardWebhooksSigner`` implements the Standard Webhooks spec (``webhook-id`` is the
key, the same on every try; ``webhook-timestamp`` and ``webhook-signature``, ``v1,`` +
base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``, are per try). Secrets come in the
spec's ``whsec_<base64>`` form; several (a rotation) give one signature each,
space-separated.

A signer's secrets and its signatures never appear in a log line, error, repr, result or
ledger record: the engine adds the secrets to its redactor, and each try's signature
headers to the redactor of that try's answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._errors import ConfigError, IdemsendError

__all__ = [
    "MIN_SECRET_BYTES", "SignRequest", "Signer", "StandardWebhooksSigner", "merge_signed", "parse_whsec", "sign_try",
]

#: The spec: a secret is "randomly generated, between 24 bytes (192 bits) and 64 bytes".
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
_PREFIX = "whsec_"


@dataclass(frozen=True, slots=True, repr=False)
class SignRequest:
    """What a signer signs for one try: the key, the frozen body bytes and the try's number
    (1 for the first)."""

    key: str
    body: bytes
    try_number: int

    def __repr__(self) -> str:
        return f"<SignRequest try={self.try_number} body={len(self.body)} bytes>"


@runtime_checkable
class Signer(Protocol):
    """Adds headers to each try. ``headers(request)`` is called once per try, just before
    the request leaves (take the time there); ``secrets`` are the values that must never
    appear in any text the engine makes (the engine redacts them)."""

    @property
    def secrets(self) -> tuple[str, ...]:
        """The signer's secrets, as the user gave them."""
        ...

    def headers(self, request: SignRequest) -> Mapping[str, str]:
        """The headers for this try (each value a single line)."""
        ...


def parse_whsec(secret: object) -> bytes:
    """The key bytes of a Standard Webhooks secret ``whsec_<base64>``, or ``ConfigError``
    saying what is wrong (never quoting the secret)."""
    if not isinstance(secret, str):
        raise ConfigError(f"a Standard Webhooks secret must be a 'whsec_<base64>' string, got {type(secret).__name__}")
    if not secret.startswith(_PREFIX):
        raise ConfigError("a Standard Webhooks secret must start with 'whsec_' followed by base64 (whsec_<base64>)")
    encoded = secret[len(_PREFIX):]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"the Standard Webhooks secret after 'whsec_' is not valid base64 ({len(encoded)} characters)"
        ) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"the Standard Webhooks secret decodes to {len(key)} bytes; the spec asks for"
            f" {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}"
        )
    return key


class StandardWebhooksSigner:
    """Signs each try the Standard Webhooks way (see the module docstring).

    ``secrets``: one or more ``whsec_<base64>`` secrets (more than one while a secret is
    rotated: the receiver accepts any matching signature). ``clock``: seconds since the
    epoch, read once per try (``time.time``)."""

    __slots__ = ("_clock", "_keys", "_secrets")

    def __init__(self, secrets: str | Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        given = (secrets,) if isinstance(secrets, str) else tuple(secrets)
        if not given:
            raise ConfigError("standard_webhooks needs at least one 'whsec_<base64>' secret")
        self._keys = tuple(parse_whsec(s) for s in given)
        self._secrets: tuple[str, ...] = given
        self._clock = clock

    def __repr__(self) -> str:
        return f"<StandardWebhooksSigner {len(self._keys)} secret{'s' if len(self._keys) > 1 else ''} [redacted]>"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secrets as given, and their base64 part (what a receiver might echo)."""
        return self._secrets + tuple(s[len(_PREFIX):] for s in self._secrets)

    def headers(self, request: SignRequest) -> dict[str, str]:
        """``webhook-id`` (the key), ``webhook-timestamp`` (now, whole seconds) and
        ``webhook-signature`` (one ``v1,<base64>`` per secret, space-separated)."""
        timestamp = str(int(self._clock()))
        signed = f"{request.key}.{timestamp}.".encode() + request.body
        signatures = " ".join(
            "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in self._keys
        )
        return {"webhook-id": request.key, "webhook-timestamp": timestamp, "webhook-signature": signatures}


def sign_try(signer: Signer, key: str, body: bytes, try_number: int) -> dict[str, str]:
    """The headers ``signer`` gives try ``try_number``, checked: names and values single-line
    strings. A signer that raises is a ``ConfigError`` naming its class (its own text is
    not quoted: it may hold a secret)."""
    try:
        given = signer.headers(SignRequest(key, body, try_number))
    except IdemsendError:
        raise
    except Exception as exc:
        raise ConfigError(f"the signer {type(signer).__name__} failed: {type(exc).__name__}") from exc
    headers: dict[str, str] = {}
    for name, value in dict(given).items():
        if not isinstance(name, str) or not isinstance(value, str) or any(c in name + value for c in "\r\n\0"):
            raise ConfigError(f"the signer {type(signer).__name__} gave a header that is not a single-line string")
        headers[name] = value
    return headers


def merge_signed(
    headers: Mapping[str, str], signed: Mapping[str, str], *, key_header: str | None, key: str
) -> dict[str, str]:
    """``headers`` with a try's signed headers in: a signed header replaces one of the same
    name in any case (never two of one name on the wire). A signer may repeat the key header
    with the key, never with another value: that would send the try under another key
    (``ConfigError``)."""
    wanted = {name.lower() for name in signed}
    if key_header is not None and key_header.lower() in wanted:
        given = next(v for n, v in signed.items() if n.lower() == key_header.lower())
        if given != key:
            raise ConfigError(f"the signer sets {key_header} to another value than the job's key: refused")
    merged = {name: value for name, value in headers.items() if name.lower() not in wanted}
    merged.update(signed)
    return merged
