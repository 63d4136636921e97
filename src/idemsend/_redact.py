"""Keeping credentials out of every text idemsend produces.

The engine knows its credentials (the API key, every header whose name says it carries
one, the password and query values of the URL). A provider may echo one back (a debug
endpoint that reflects ``Authorization``, an error message quoting the token), so
responses are scrubbed as bytes before they are parsed (and, when the bytes cannot show
every form, string by string after parsing, as for a UTF-16 answer): nothing derived from
a response (a ``SendResult``, a ledger record, a log line, an error) can carry a credential.

A credential is found in every spelling a URL gives it too: on the wire and in aiohttp's
own error text a query value is percent-encoded (``s3cr%2Bt`` for ``s3cr+t``), and an
echo may encode it again, in lowercase hex, or with ``+`` for a space.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from yarl import URL

__all__ = ["REDACTED", "Redactor", "is_secret_header", "is_utf8_json", "safe_url", "url_spelling"]

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
# "%" once, or encoded again ("%25" + "2B" for "%2B"), any number of times
_PERCENT = "%(?:25)*"


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
    anything parses them), and, when a secret is short, the body has JSON escapes that
    could spell a secret in another form (``\\u002B``) or is not UTF-8 (UTF-16, UTF-32),
    in every string of the parsed tree: after decoding, whatever the encoding.
    """

    __slots__ = ("_bytes", "_given", "_plus", "_short", "_texts", "_url_bytes", "_url_text")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._given = tuple(secrets)
        values: set[str] = set()
        for secret in self._given:
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
        # Every secret in every URL spelling, longest first. Only a "%" (or a "+" for a space)
        # can spell a secret in a form the plain replacements above miss.
        self._plus = any(" " in v for v in texts)
        self._url_text = re.compile("|".join(url_spelling(v) for v in texts)) if texts else None
        raw = [url_spelling(v, in_bytes=True).encode("ascii") for v in texts if len(v) >= _MIN_RAW]
        self._url_bytes = re.compile(b"|".join(raw)) if raw else None

    @classmethod
    def for_request(
        cls, url: str, headers: Mapping[str, str], *, idempotency_header: str = "Idempotency-Key",
        extra: Iterable[str] = (),
    ) -> Redactor:
        """The credentials of one endpoint: secret headers' values, the URL's user and
        password (and the Basic header aiohttp makes of them) and its query values, and
        ``extra`` (a signer's secrets)."""
        secrets = [v for k, v in headers.items() if is_secret_header(k, idempotency_header=idempotency_header)]
        secrets.extend(extra)
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
            secrets.extend(parsed.query.values())  # decoded as a form: "+" is a space
            # and decoded as they were written ("a+b" may reach the provider as "a+b")
            secrets.extend(unquote(pair.partition("=")[2]) for pair in parsed.raw_query_string.split("&"))
        return cls(secrets)

    def adding(self, secrets: Iterable[str]) -> Redactor:
        """This redactor and ``secrets`` too (one try's signatures)."""
        return Redactor((*self._given, *secrets))

    def __bool__(self) -> bool:
        return bool(self._texts)

    def text(self, text: str) -> str:
        """``text`` with every credential replaced."""
        for secret in self._texts:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if self._url_text is not None and ("%" in text or (self._plus and "+" in text)):
            text = self._url_text.sub(REDACTED, text)
        return text

    def body(self, raw: bytes) -> bytes:
        """Response bytes with every long credential replaced (before they are parsed)."""
        for secret in self._bytes:
            if secret in raw:
                raw = raw.replace(secret, _REDACTED_JSON)
        if self._url_bytes is not None and (b"%" in raw or (self._plus and b"+" in raw)):
            raw = self._url_bytes.sub(_REDACTED_JSON, raw)
        return raw

    def needs_tree(self, raw: bytes) -> bool:
        """Whether the parsed body must be scrubbed string by string too: a short secret,
        an escape in the raw bytes that could spell a secret in a form not replaced, or a
        body that is not UTF-8 (``json.loads`` reads UTF-16 and UTF-32 too, and the raw
        scrub looks for UTF-8 bytes only)."""
        return self._short or b"\\" in raw or not is_utf8_json(raw)

    def tree(self, value: Any) -> Any:
        """A parsed JSON value with every credential replaced in its strings (and keys)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.tree(v) for k, v in value.items()}
        return value


def is_utf8_json(raw: bytes) -> bool:
    """Whether ``json.loads`` reads ``raw`` as UTF-8 (with or without a BOM), not as
    UTF-16 or UTF-32 (which it tells by a BOM or the NUL bytes around the first characters)."""
    return json.detect_encoding(raw) in ("utf-8", "utf-8-sig")


def url_spelling(value: str, *, in_bytes: bool = False) -> str:
    """A regular expression matching ``value`` in every spelling a URL component gives it:
    each character as itself or percent-encoded (its UTF-8 bytes, hex in either case, the
    ``%`` itself encoded again any number of times), a space also as ``+`` (and ``%2B``).
    ``in_bytes``: for a ``bytes`` pattern over a JSON document (ASCII only; ``/`` may be
    ``\\/`` there)."""
    parts = []
    for char in value:
        data = char.encode("utf-8", "surrogatepass")
        literal = re.escape(char) if char.isascii() or not in_bytes else "".join(f"\\x{b:02x}" for b in data)
        options = [literal, "".join(_PERCENT + _hex(b) for b in data)]
        if char == " ":
            options += [r"\+", _PERCENT + "2[bB]"]
        elif char == "/" and in_bytes:
            options.append(r"\\/")
        parts.append(f"(?:{'|'.join(options)})")
    return "".join(parts)


def _hex(byte: int) -> str:
    """``byte`` as two hex digits, each letter in either case: ``2[bB]``."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")


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
