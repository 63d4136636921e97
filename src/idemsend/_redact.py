"""Keeping credentials out of every text idemsend produces.

The engine knows its credentials (the API key, every header whose name says it carries
one, the password and query values of the URL). A provider may echo one back (a debug
endpoint that reflects ``Authorization``, an error message quoting the token), so
responses are scrubbed as bytes before they are parsed: nothing derived from a response
(a ``SendResult``, a ledger record, a log line, an error) can carry a credential.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from yarl import URL

__all__ = ["REDACTED", "Redactor", "is_secret_header", "safe_url"]

REDACTED = "[redacted]"
_REDACTED_JSON = REDACTED.encode()
# Header names that carry credentials: Authorization, X-Api-Key, X-Postmark-Server-Token,
# Cookie, X-Signature, ... The idempotency key header is the one "key" that is not secret.
_SECRET_NAME = re.compile(r"auth|token|secret|passw|key|signature|cookie|credential|session", re.IGNORECASE)
# "Bearer abc", "bearer abc", "Basic dXNlcjpwdw==", "Token abc": the credential after the scheme
_SCHEME = re.compile(r"^\s*(bearer|basic|token|apikey|api-key|key)\s+(\S.*)$", re.IGNORECASE)
# Shorter values are not credentials, and replacing them would garble ordinary text.
_MIN_SECRET = 3
# Secrets at least this long are replaced in the raw response bytes; shorter ones only in
# the parsed strings (a raw "true" is JSON syntax, not a secret to cut out of it).
_MIN_RAW = 8

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
    """Replaces known credentials with ``[redacted]`` in text and in responses.

    A response is scrubbed twice over: long secrets in the raw bytes (cheap, and before
    anything parses them), and, when a secret is short or the body has JSON escapes that
    could spell a secret in another form (``\\u002B``), in every string of the parsed tree.
    """

    __slots__ = ("_bytes", "_short", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        values: set[str] = set()
        for secret in secrets:
            values.update(_forms(secret))
        texts = sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)
        forms: set[bytes] = set()
        for value in texts:
            if len(value) < _MIN_RAW:
                continue
            # as the value can appear inside a JSON document: raw, escaped, "/" escaped
            escaped = json.dumps(value)[1:-1]
            forms.update(
                (value.encode(), escaped.encode(), escaped.replace("/", "\\/").encode(),
                 json.dumps(value, ensure_ascii=False)[1:-1].encode())
            )
        self._texts = tuple(texts)
        self._short = any(len(v) < _MIN_RAW for v in texts)
        self._bytes = tuple(sorted(forms, key=len, reverse=True))

    @classmethod
    def for_request(
        cls, url: str, headers: Mapping[str, str], *, idempotency_header: str = "Idempotency-Key"
    ) -> Redactor:
        """The credentials of one endpoint: secret headers' values, the URL's user and
        password (and the Basic header aiohttp makes of them) and its query values."""
        secrets = [v for k, v in headers.items() if is_secret_header(k, idempotency_header=idempotency_header)]
        try:
            parsed = URL(url)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            if parsed.password:
                secrets.append(parsed.password)
            if parsed.user is not None:
                pair = f"{parsed.user}:{parsed.password or ''}"
                secrets += [pair, base64.b64encode(pair.encode("latin-1", "replace")).decode()]
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
        """Response bytes with every long credential replaced (before they are parsed)."""
        for secret in self._bytes:
            if secret in raw:
                raw = raw.replace(secret, _REDACTED_JSON)
        return raw

    def needs_tree(self, raw: bytes) -> bool:
        """Whether the parsed body must be scrubbed string by string too: a short secret,
        or an escape in the raw bytes that could spell a secret in a form not replaced."""
        return self._short or b"\\" in raw

    def tree(self, value: Any) -> Any:
        """A parsed JSON value with every credential replaced in its strings (and keys)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.tree(v) for k, v in value.items()}
        return value


def _forms(secret: str) -> list[str]:
    """A secret and what it contains: the credential after an auth scheme, and what a
    Basic credential decodes to (``user:password`` and the password)."""
    out = [secret, secret.strip()]
    match = _SCHEME.match(secret)
    if match:
        scheme, credential = match.group(1).lower(), match.group(2).strip()
        out.append(credential)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if decoded:
                out.append(decoded)
                out.append(decoded.partition(":")[2])
    return [v for v in out if v]
