"""The outcome model and the classifiers that map an HTTP response onto it.

Every classifier returns one of four outcomes:

| outcome        | meaning                                         | the engine                      |
|----------------|-------------------------------------------------|---------------------------------|
| ``Sent``       | accepted (first time, or a replay), with an id  | returns a ``SendResult``        |
| ``InFlight``   | the same key is being processed                 | waits ~500 ms with jitter       |
| ``Retry``      | 429, 408, 5xx, a 2xx that confirms nothing      | backs off, then RetryableError  |
| ``Fatal``      | mismatch, other 4xx, a replayed failure; setup  | FatalError / MismatchError;     |
|                | errors and redirects with ``scope="engine"``    | ``engine``: not recorded        |

A classifier only sees a response; network errors and timeouts are ``Retry`` by the
engine's own rule (the send may have happened; the same key makes a retry safe).

Rules every preset shares (``docs/providers.md`` has the tables and the sources):

* **Redirects** (any 3xx) are ``Fatal("REDIRECT", ..., scope="engine")``: the engine never
  follows a redirect for a send, so the URL is wrong. The message names the ``Location``
  without userinfo, query string or fragment.
* **Setup errors** (401, 403, 404, 405, 407) are ``Fatal(code, ..., scope="engine")``: the
  credentials or the endpoint are wrong, not the job, so nothing is recorded for the key.
* **A 2xx without a usable id** is ``Retry`` for the presets whose provider always answers
  a send with an id (an HTML page from a proxy, an empty body): nothing confirms the send.
* **A replayed failure** (a non-2xx with ``Idempotent-Replayed: true``) is
  ``Fatal(..., scope="key")``: the provider stored it for the key and replays it for every
  retry with the same key, so retrying can never succeed.
* **Retry-After** is finite and clamped to ``[0, MAX_RETRY_AFTER]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ._errors import MISMATCH

__all__ = [
    "MAX_RETRY_AFTER",
    "MISMATCH",
    "Fatal",
    "HTTPResponse",
    "IETFDraft",
    "InFlight",
    "Outcome",
    "Resend",
    "ResultClassifier",
    "Retry",
    "Sendoka",
    "Sent",
    "Stripe",
    "parse_retry_after",
]

#: The longest delay idemsend will take from a provider; longer asks are clamped.
#: (Seconds. A ``Retry-After`` of a day would otherwise park a job, or a worker, for a day.)
MAX_RETRY_AFTER = 3600.0

# A header value longer than this is not a delay or a date; only its start is read.
_MAX_HEADER_CHARS = 64
# RFC 9110 delta-seconds, leniently: a sign, a fraction or an exponent, or inf/nan.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.ASCII | re.IGNORECASE)
_MAX_LOCATION_CHARS = 300


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """What a classifier sees of a response: status, headers and the parsed JSON body
    (``json`` is ``None`` when the body is empty or not JSON)."""

    status: int
    headers: Mapping[str, str]
    json: Any


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider accepted the send: ``id`` is its id for it (``None`` only where the
    preset allows a 2xx without one), ``replayed`` whether this answer is a replay."""

    id: str | None
    replayed: bool = False


_IN_FLIGHT = "the same key is being processed"


@dataclass(frozen=True, slots=True)
class InFlight:
    """The provider is still processing an earlier request with the same key; the engine
    waits briefly and asks again with the same key."""

    message: str = _IN_FLIGHT


@dataclass(frozen=True, slots=True)
class Retry:
    """The outcome is not known or not final yet: send again later with the same key.
    ``after`` is the delay the provider asked for (seconds, finite, clamped), or ``None``."""

    after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Fatal:
    """The send can never succeed as it is: never retry it.

    ``scope`` says what is final:

    * ``"key"`` (default): final for this idempotency key, and the engine records it in
      its ledger (a mismatch, a validation error, a failure the provider stored for the key);
    * ``"engine"``: the engine's setup is wrong (a stale API key, a wrong URL, a redirect).
      The engine raises a fatal error but records nothing against the key, so the same job
      can run again once the setup is fixed. Only given when the provider did not run the
      request.
    """

    code: str
    message: str
    scope: Literal["key", "engine"] = "key"


Outcome = Sent | InFlight | Retry | Fatal


@runtime_checkable
class ResultClassifier(Protocol):
    """Anything with ``classify(response) -> Outcome`` classifies provider responses."""

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer."""
        ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    Always finite and within ``[0, MAX_RETRY_AFTER]``: a negative delay or a date in the
    past is 0, ``Infinity``, ``1e308`` or a date centuries away is ``MAX_RETRY_AFTER``.
    ``nan`` and anything that is neither a number nor an HTTP date are ``None``. Only the
    first 64 characters of the header are read.
    """
    if not value:
        return None
    value = str(value)[:_MAX_HEADER_CHARS].strip()
    if not value:
        return None
    if _NUMBER.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# -- reading responses -----------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _first_text(body: Any, *paths: tuple[str, ...]) -> str | None:
    """The first non-empty string found at one of ``paths`` in ``body``."""
    for path in paths:
        value = _get(body, *path)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,100}", re.ASCII)


def _code(body: Any, *paths: tuple[str, ...]) -> str | None:
    """The first error code found at one of ``paths``: an identifier, not prose or a URI."""
    for path in paths:
        value = _get(body, *path)
        if isinstance(value, str) and _CODE.fullmatch(value) and "//" not in value:
            return value
    return None


# Where error messages live in the shapes providers and proxies use: problem+json
# (detail, title), {"message"}, {"error": "text"}, {"error": {"message"}}.
_MESSAGE_PATHS: tuple[tuple[str, ...], ...] = (("detail",), ("title",), ("message",), ("error",), ("error", "message"))


def _message(body: Any, *own: tuple[str, ...]) -> str:
    """The preset's own message fields first, then whichever common field is present."""
    return _first_text(body, *own, *_MESSAGE_PATHS) or ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, case-insensitively even for a plain dict."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == lowered:
                value = candidate
                break
    return None if value is None else str(value)


def _replayed(headers: Mapping[str, str]) -> bool:
    return (_header(headers, "Idempotent-Replayed") or "").strip().lower() == "true"


def _usable_id(body: Any) -> str | None:
    """The body's ``id`` when it is a non-empty string or an integer, else None."""
    value = _get(body, "id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _safe_location(value: str | None) -> str | None:
    """A ``Location`` fit for an error message: no userinfo, query string or fragment
    (any may carry a credential), no control characters, bounded length."""
    if value is None:
        return None
    value = "".join(ch for ch in str(value)[:2048] if ch.isprintable()).strip()
    if not value:
        return None
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(an unreadable URL)"
    netloc = ""
    if host:
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
    if not parts.netloc and "@" in parts.path.split("/", 1)[0]:
        return "[redacted]"  # "https:user:pw@host": userinfo that urlsplit did not see as such
    safe = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if len(safe) > _MAX_LOCATION_CHARS:
        safe = safe[:_MAX_LOCATION_CHARS] + "..."
    return safe


# -- the rules every preset shares -----------------------------------------------------

_SETUP_HINTS = {
    401: "the provider refused the credentials: check the API key",
    403: "the credentials may not do this: check the API key and the account",
    404: "no such endpoint: check the URL",
    405: "the endpoint does not take this request: check the URL",
    407: "a proxy between the engine and the provider wants credentials",
}


def _before(response: HTTPResponse, *, require_id: bool) -> Outcome | None:
    """The shared rules for 2xx and 3xx (and 1xx), or None for a 4xx/5xx."""
    status = response.status
    if 200 <= status < 300:
        sent_id = _usable_id(response.json)
        if sent_id is None and require_id:
            return Retry(None, f"HTTP {status} without an id in the body: nothing confirms the send")
        return Sent(sent_id, _replayed(response.headers))
    if 300 <= status < 400:
        location = _safe_location(_header(response.headers, "Location"))
        where = f"with Location {location}" if location else "without a Location header"
        return Fatal(
            "REDIRECT",
            f"the provider answered {status} {where}; the engine never follows a redirect for a send: fix the URL",
            scope="engine",
        )
    if status < 200:
        return Retry(None, f"HTTP {status} is not a final answer: nothing confirms the send")
    return None


def _after(response: HTTPResponse, code: str | None, message: str) -> Outcome:
    """The shared rules for a 4xx/5xx the preset did not settle itself.

    ``code`` is the provider's own error code (None when the body has none), ``message``
    the provider's message ("" when none).
    """
    status = response.status
    said = message or f"HTTP {status}"
    if _replayed(response.headers):
        return Fatal(
            code or "PROVIDER_ERROR_REPLAYED",
            f"the provider stored this failure (HTTP {status}: {said}) for the key and replays it"
            " for every retry with the same key, so retrying can never succeed",
        )
    hint = _SETUP_HINTS.get(status)
    if hint is not None:
        text = f"{message} (HTTP {status}: {hint})" if message else f"HTTP {status}: {hint}"
        return Fatal(code or f"HTTP_{status}", text, scope="engine")
    if status == 429 or status == 408 or status >= 500:
        return Retry(parse_retry_after(_header(response.headers, "Retry-After")), f"HTTP {status}")
    return Fatal(code or f"HTTP_{status}", said)


# -- presets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sendoka:
    """The Sendoka contract (``provider-idempotency-contract.txt``).

    2xx with an ``id`` is sent (``Idempotent-Replayed: true`` marks a replay); 2xx without
    one is ``Retry``. ``IDEMPOTENCY_IN_FLIGHT`` is in flight; ``IDEMPOTENCY_MISMATCH`` is
    fatal; a 409 with neither code is ``Retry`` (the contract's 409s are only those two).
    The codes are read from ``error.code`` or a top-level ``code``. Everything else follows
    the shared rules (redirects, setup errors, replayed failures, 429/408/5xx).
    """

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring for the table)."""
        early = _before(response, require_id=True)
        if early is not None:
            return early
        body = response.json
        code = _code(body, ("error", "code"), ("code",))
        message = _message(body, ("error", "message"))
        if code == "IDEMPOTENCY_IN_FLIGHT":
            return InFlight(message or _IN_FLIGHT)
        if code == MISMATCH:
            return Fatal(MISMATCH, message or "same key, different body")
        if response.status == 409 and not _replayed(response.headers):
            return Retry(None, f"HTTP 409 without a known code ({message or 'no message'}): the key's state is unknown")
        return _after(response, code, message)


_KEY_MISSING = re.compile(r"missing|required|requires|absent|not present", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class IETFDraft:
    """The IETF ``Idempotency-Key`` header draft (draft-ietf-httpapi-idempotency-key-header).

    409 is in flight ("a request is outstanding"), 422 is a key reused with a different
    payload, a 400 that names the idempotency key as missing is ``IDEMPOTENCY_KEY_MISSING``
    with ``scope="engine"`` (the header does not reach the provider: the engine's
    ``idempotency_header`` or a proxy is wrong, and nothing ran). Messages come from
    problem+json (``detail``, ``title``) or ``message``, ``error``, ``error.message``.
    The draft does not require an id in a 2xx, so one without is ``Sent(None)`` unless
    ``require_id=True``. Everything else follows the shared rules.
    """

    require_id: bool = False

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring for the table)."""
        early = _before(response, require_id=self.require_id)
        if early is not None:
            return early
        status, body = response.status, response.json
        message = _message(body)
        if status == 409:
            return InFlight(message or _IN_FLIGHT)
        if status == 422:
            return Fatal(MISMATCH, message or "idempotency key reused with a different payload")
        if status == 400 and not _replayed(response.headers):
            texts = " ".join(_first_text(body, path) or "" for path in (*_MESSAGE_PATHS, ("type",)))
            if "idempoten" in texts.lower() and _KEY_MISSING.search(texts):
                return Fatal(
                    "IDEMPOTENCY_KEY_MISSING",
                    f"{message or 'HTTP 400'} (the Idempotency-Key header did not reach the provider:"
                    " check the engine's idempotency_header and any proxy in between)",
                    scope="engine",
                )
        return _after(response, None, message)


@dataclass(frozen=True, slots=True)
class Stripe:
    """Stripe (API v1): ``{"error": {"type", "code", "message"}}``.

    409 ``idempotency_key_in_use`` (or a 409 ``idempotency_error``) is in flight; any other
    ``idempotency_error`` is a parameter mismatch; any other 409 ("conflicts with another
    request") and 424 (an external dependency failed) are ``Retry``. A 2xx without an
    ``id`` is ``Retry``. Codes come from ``error.code``, then a top-level ``code``, then
    ``error.type``. Stripe stores the first answer for a key, 500s included, and replays
    it with ``Idempotent-Replayed: true``: a replayed failure is final for the key.
    """

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring for the table)."""
        early = _before(response, require_id=True)
        if early is not None:
            return early
        status, body = response.status, response.json
        kind = _code(body, ("error", "type"))
        code = _code(body, ("error", "code"), ("code",))
        message = _message(body, ("error", "message"))
        if code == "idempotency_key_in_use" or (status == 409 and kind == "idempotency_error"):
            return InFlight(message or _IN_FLIGHT)
        if kind == "idempotency_error":
            return Fatal(MISMATCH, message or "idempotency key reused with different parameters")
        if status in (409, 424) and not _replayed(response.headers):
            return Retry(parse_retry_after(_header(response.headers, "Retry-After")), f"HTTP {status}")
        return _after(response, code or kind, message)


@dataclass(frozen=True, slots=True)
class Resend:
    """Resend: ``{"statusCode", "name", "message"}``.

    409 ``concurrent_idempotent_requests`` is in flight; 409 ``invalid_idempotent_request``
    is a payload mismatch; any other 409 is ``Retry``. A 2xx without an ``id`` is ``Retry``
    (for ``POST /emails``; the batch endpoint answers ``{"data": [...]}``). ``validation_error``
    with "API key is invalid" (Resend answers 400 or 401 for it) is a setup error.
    Codes come from ``name``, then ``error.name``. Everything else follows the shared rules.
    """

    def classify(self, response: HTTPResponse) -> Outcome:
        """The outcome of one HTTP answer (see the class docstring for the table)."""
        early = _before(response, require_id=True)
        if early is not None:
            return early
        status, body = response.status, response.json
        name = _code(body, ("name",), ("error", "name"))
        message = _message(body, ("message",), ("error", "message"))
        if name == "concurrent_idempotent_requests":
            return InFlight(message or _IN_FLIGHT)
        if name == "invalid_idempotent_request":
            return Fatal(MISMATCH, message or "same idempotency key, different payload")
        replayed = _replayed(response.headers)
        if status == 409 and not replayed:
            return Retry(None, f"HTTP 409 without a known name ({message or 'no message'}): the key's state is unknown")
        if name == "validation_error" and re.search(r"\bapi key\b", message, re.IGNORECASE) and not replayed:
            return Fatal(name, f"{message} (HTTP {status}: {_SETUP_HINTS[401]})", scope="engine")
        return _after(response, name, message)
