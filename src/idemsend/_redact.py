"""Keeping credentials out of every text idemsend produces.

The engine knows its credentials (the API key, every header whose name says it carries
one, the password and query values of the URL). A provider may echo one back (a debug
endpoint that reflects ``Authorization``, an error message quoting the token), so
responses are scrubbed as bytes before they are parsed: nothing derived from a response
(a ``SendResult``, a ledger record, a log line, an error) can carry a credential.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from yarl import URL

__all__ = ["REDACTED", "Redactor", "is_secret_header", "safe_url"]

REDACTED = "[redacted]"
_REDACTED_JSON = REDACTED.encode()
# Header names that carry credentials: Authorization, X-Api-Key, X-Postmark-Server-Token,
# Cookie, X-Signature, ... The idempotency key header is the one "key" that is not secret.
_SECRET_NAME = re.compile(r"auth|token|secret|passw|key|signature|cookie|credential|session", re.IGNORECASE)
_SCHEMES = ("Bearer ", "Basic ", "Token ")
# Shorter values are not credentials, and replacing them would garble ordinary text.
_MIN_SECRET = 4


def is_secret_header(name: str, *, idempotency_header: str = "Idempotency-Key") -> bool:
    """Whether a request header named ``name`` carries a credential."""
    return name.lower() != idempotency_header.lower() and _SECRET_NAME.search(name) is not None


def safe_url(url: str) -> str:
    """``url`` without userinfo and query string, for reprs, logs and errors."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "<unparsable url>"
    if not parsed.is_absolute():
        return str(parsed.with_query(None).with_fragment(None))
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


class Redactor:
    """Replaces known credentials with ``[redacted]`` in text and in response bytes."""

    __slots__ = ("_bytes", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        values: set[str] = set()
        for secret in secrets:
            values.add(secret)
            for scheme in _SCHEMES:
                if secret.startswith(scheme):
                    values.add(secret[len(scheme) :].strip())
        texts = sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)
        forms: set[bytes] = set()
        for value in texts:
            # as the value can appear inside a JSON document: raw, escaped, "/" escaped
            escaped = json.dumps(value)[1:-1]
            forms.update(
                (value.encode(), escaped.encode(), escaped.replace("/", "\\/").encode(),
                 json.dumps(value, ensure_ascii=False)[1:-1].encode())
            )
        self._texts = tuple(texts)
        self._bytes = tuple(sorted(forms, key=len, reverse=True))

    @classmethod
    def for_request(
        cls, url: str, headers: Mapping[str, str], *, idempotency_header: str = "Idempotency-Key"
    ) -> Redactor:
        """The credentials of one endpoint: secret headers' values, the URL's password and
        query values."""
        secrets = [v for k, v in headers.items() if is_secret_header(k, idempotency_header=idempotency_header)]
        try:
            parsed = URL(url)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            if parsed.password:
                secrets.append(parsed.password)
            secrets.extend(parsed.query.values())
        return cls(secrets)

    def __bool__(self) -> bool:
        return bool(self._texts)

    def text(self, text: str) -> str:
        """``text`` with every credential replaced."""
        for secret in self._texts:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def body(self, raw: bytes) -> bytes:
        """Response bytes with every credential replaced (before they are parsed)."""
        for secret in self._bytes:
            if secret in raw:
                raw = raw.replace(secret, _REDACTED_JSON)
        return raw
