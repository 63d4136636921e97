"""QStash webhook adapter (``pip install 'idemsend[qstash]'``).

A framework-neutral handler, ``QStashHandler.handle(raw_body, headers, url)`` ->
``(status, headers, body)``, with an aiohttp route and an ASGI app on top, so it mounts
in aiohttp, Starlette or FastAPI:

```python
handler = QStashHandler(engine, current_signing_key=..., next_signing_key=...,
                        url="https://example.com/qstash/welcome",      # required
                        replay_guard=RedisReplayGuard.from_url("redis://..."))
app.router.add_post("/qstash/welcome", handler.aiohttp_handler)        # aiohttp
app.mount("/qstash/welcome", handler.asgi_app())                        # Starlette / FastAPI
```

Order of checks: a body over ``max_body`` -> 413 (before it is read in full); then the
``Upstash-Signature`` JWT is verified with the official ``qstash`` SDK's ``Receiver``
(current key, then next key; issuer, expiry with ``clock_tolerance``, the endpoint
``url`` as subject, and the sha256 of the raw body), and the token must carry a ``jti``
and live no longer than ``max_token_lifetime``: missing or bad -> 401 and nothing is
sent. Only then is the message read: ``Upstash-Retried`` (the attempt, for logs; it
must be a small count), the JSON body (at most ``max_depth`` deep, no NaN, no lone surrogates), ``parse=`` and the
job id; anything wrong there -> 489. Then the replay guard (below), then the send.

Outcomes: sent -> 200 with the result; ``RetryableError`` -> 503, with ``Retry-After``
when the provider named a delay (whole seconds, at most ``MAX_RETRY_AFTER``, one hour: see
``retry_after_seconds``), else without one, so QStash's own exponential retry schedule
spreads the retries over an outage;
``FatalError`` or a message that is not what is expected -> 489 with
``Upstash-NonRetryable-Error: true`` (QStash stops retrying and sends it to the DLQ).
Input from the network never causes a 500 (QStash would retry it until its budget is
gone): signature problems are 401, message problems 489.

**What the signature covers, and replays.** The JWT signs the endpoint URL (``sub``),
the time window (``exp``/``nbf``/``iat``), a token id (``jti``) and the sha256 of the
raw body. It does **not** sign the headers, so ``Upstash-Message-Id`` (the job id by
default) is unauthenticated: whoever captures one signed delivery (a log, a proxy, a
tool that records requests) can replay it within the token's lifetime with a fresh
message id, and each fresh id would be a new job, so a new send. Two defences, pick one:

* ``job_id_from="header"`` (the default) with a ``replay_guard``: each token's ``jti``
  is remembered, with the message id it first came with, until the token expires
  (``exp`` + ``clock_tolerance``). The same ``jti`` under another message id is refused
  (401 ``REPLAYED_SIGNATURE``, nothing sent); the same ``jti`` with the same message id
  passes (a duplicate delivery, which the engine de-duplicates). The memory must be
  shared by every webhook process to be a defence: use ``RedisReplayGuard`` when more
  than one process serves the endpoint (the default, ``InMemoryReplayGuard``, covers
  one process only). If the guard cannot answer, the handler fails closed: 503 with
  ``Retry-After``, nothing sent.
* ``job_id_from="body"``: the job id is read from the signed body (``job_id=``, by
  default its ``"job_id"`` field), so the header is not trusted at all and a replay is
  the same job, which the engine de-duplicates. The producer must put a stable id in the
  message.

**The subject.** ``url=`` (the public URL QStash calls) is required, and is what the
token's ``sub`` must equal. ``url_from_request=True`` builds it from the request instead
(scheme, ``Host`` header, path): only behind a proxy that sets ``Host`` itself, since a
client choosing ``Host`` can otherwise present a token signed for another endpoint of
the same QStash account (e.g. staging). See ``docs/qstash-security.md``.

The message body is JSON ``{"data": {...}, "body": {...}}`` by default: ``data`` fills the
key template, ``body`` is what is sent. Pass ``parse=`` to read another shape.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from .._classify import MAX_RETRY_AFTER
from .._engine import Engine
from .._errors import ConfigError, FatalError, IdemsendError, MissingExtraError, RetryableError
from .._keys import Job
from ._common import build_engine, result_dict, whole_seconds

try:
    import jwt
    from aiohttp import web
    from aiohttp.web_protocol import RequestPayloadError
    from qstash import Receiver
    from qstash.errors import SignatureError
except ImportError as exc:
    raise MissingExtraError("qstash", "qstash") from exc

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "JTI_KEY_PREFIX",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_RETRY_AFTER",
    "NON_RETRYABLE_STATUS",
    "InMemoryReplayGuard",
    "QStashHandler",
    "RedisReplayGuard",
    "ReplayGuardUnavailable",
    "Response",
    "SignatureReplayGuard",
    "default_job_id",
    "default_parse",
    "retry_after_seconds",
]

log = logging.getLogger("idemsend.qstash")

#: The largest body accepted, in bytes (413 above it).
DEFAULT_MAX_BODY = 1024 * 1024
#: How deeply the JSON message may nest (arrays and objects); 489 above it.
DEFAULT_MAX_DEPTH = 64
#: The longest a token may still have to live when it arrives, in seconds (QStash's
#: tokens live 5 minutes); a token valid for longer is refused, as its ``jti`` would
#: have to be remembered for that long.
DEFAULT_MAX_TOKEN_LIFETIME = 3600.0
#: The longest job id (``Upstash-Message-Id`` or the body's id) accepted; 489 above it.
MAX_MESSAGE_ID_LENGTH = 256
#: The status that, with ``Upstash-NonRetryable-Error: true``, stops QStash's retries.
NON_RETRYABLE_STATUS = 489
#: Where ``RedisReplayGuard`` keeps each token id, by default.
JTI_KEY_PREFIX = "idemsend:qstash:jti:"

#: ``(status, headers, body)``: what ``QStashHandler.handle`` answers.
Response = tuple[int, dict[str, str], bytes]
#: ``parse=``: the parsed JSON message -> (data for the key template, body to send).
Parse = Callable[[Any], tuple[Mapping[str, Any], Any]]
#: ``job_id=`` (with ``job_id_from="body"``): the parsed JSON message -> its job id.
JobIdFrom = Callable[[Any], Any]
_JSON = {"Content-Type": "application/json"}
_MAX_SIGNATURE_LENGTH = 8192
_MAX_JTI_LENGTH = 256
_GUARD_RETRY_AFTER = 5
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_RETRIED = re.compile(r"[0-9]{1,9}")


def default_parse(payload: Any) -> tuple[Mapping[str, Any], Any]:
    """``{"data": {...}, "body": ...}`` -> (data, body)."""
    if not isinstance(payload, Mapping) or "body" not in payload:
        raise ValueError('the message must be a JSON object with "body" (and optional "data")')
    data = payload.get("data", {})
    if not isinstance(data, Mapping):
        raise ValueError('"data" must be a JSON object')
    return data, payload["body"]


def default_job_id(payload: Any) -> Any:
    """The job id of a message for ``job_id_from="body"``: its ``"job_id"`` field."""
    if not isinstance(payload, Mapping) or "job_id" not in payload:
        raise ValueError('the message must be a JSON object with "job_id" (job_id_from="body")')
    return payload["job_id"]


# -- replay guards ------------------------------------------------------------------------


class ReplayGuardUnavailable(IdemsendError):
    """A replay guard could not answer (its store is unreachable or full). The handler
    fails closed on it: 503 with ``Retry-After``, nothing sent."""


@runtime_checkable
class SignatureReplayGuard(Protocol):
    """Remembers which job id each signed token (its ``jti``) first came with.

    ``remember(jti, message_id, expires_at)`` records ``message_id`` for ``jti`` unless
    ``jti`` is already recorded, keeps it until ``expires_at`` (Unix seconds) at least,
    and returns the message id recorded first (``message_id`` itself on the first call).
    It raises when it cannot answer; the handler then refuses the delivery (503).
    Every process serving the endpoint must share one memory for it to be a defence.
    """

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new; return the one recorded first."""
        ...


class InMemoryReplayGuard:
    """A ``SignatureReplayGuard`` in this process's memory: a defence only when a single
    process serves the endpoint. Expired entries are swept on every call; at
    ``max_entries`` live entries it raises ``ReplayGuardUnavailable`` (the handler
    answers 503) rather than forget a token that is still valid."""

    def __init__(self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def sweep(self) -> None:
        """Forget the entries whose token has expired."""
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, jti = heapq.heappop(self._expiry)
            entry = self._entries.get(jti)
            if entry is not None and entry[1] == expires_at:
                del self._entries[jti]

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new; return the one recorded first."""
        self.sweep()
        entry = self._entries.get(jti)
        if entry is not None:
            return entry[0]
        if len(self._entries) >= self.max_entries:
            raise ReplayGuardUnavailable(
                f"the in-memory replay guard holds {self.max_entries} unexpired tokens; raise max_entries"
                " or use RedisReplayGuard"
            )
        self._entries[jti] = (message_id, expires_at)
        heapq.heappush(self._expiry, (expires_at, jti))
        return message_id


_REMEMBER_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return ARGV[1]
end
local first = redis.call('GET', KEYS[1])
if not first then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return ARGV[1]
end
return first
"""


class RedisReplayGuard:
    """A ``SignatureReplayGuard`` in Redis, shared by every webhook process.

    One Lua script, atomically: ``SET <prefix><jti> <message_id> NX PX <ms to expiry>``,
    then ``GET`` when the key was already there. The expiry is computed on this host's
    clock (the one that judged the token valid), at least 1 ms. ``redis`` is a
    ``redis.asyncio`` client (``Redis`` or ``RedisCluster``); ``from_url`` makes one.
    ``redis`` is imported only there, so the ``qstash`` extra does not need it.
    """

    def __init__(self, redis: Any, *, prefix: str = JTI_KEY_PREFIX, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self._clock = clock
        self._owned = False
        self._script = redis.register_script(_REMEMBER_LUA)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = JTI_KEY_PREFIX, timeout: float = 2.0, **redis_kwargs: Any
    ) -> RedisReplayGuard:
        """A guard with its own ``redis.asyncio.Redis`` client (closed by ``aclose``);
        ``timeout`` bounds connecting and each command, so an unreachable Redis fails fast."""
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise MissingExtraError("redis", "redis") from exc
        redis_kwargs.setdefault("socket_connect_timeout", timeout)
        redis_kwargs.setdefault("socket_timeout", timeout)
        guard = cls(aioredis.Redis.from_url(url, **redis_kwargs), prefix=prefix)
        guard._owned = True
        return guard

    def __repr__(self) -> str:
        return f"<RedisReplayGuard prefix={self.prefix!r}>"

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new; return the one recorded first."""
        ttl_ms = max(1, math.ceil((expires_at - self._clock()) * 1000))
        first = await self._script(keys=[self.prefix + jti], args=[message_id, ttl_ms])
        return first.decode() if isinstance(first, bytes) else str(first)

    async def aclose(self) -> None:
        """Close the Redis client if ``from_url`` made it."""
        if self._owned:
            await self.redis.aclose()


# -- responses ----------------------------------------------------------------------------


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return status, {**_JSON, **(headers or {})}, json.dumps(payload).encode()


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, {"error": {"code": code, "message": message}}, headers)


def _too_large(max_body: int) -> Response:
    return _error(413, "BODY_TOO_LARGE", f"the body is over {max_body} bytes")


def _non_retryable(code: str, message: str) -> Response:
    return _error(NON_RETRYABLE_STATUS, code, message, {"Upstash-NonRetryable-Error": "true"})


def _unauthorized(code: str, message: str) -> Response:
    return _error(401, code, message)


def retry_after_seconds(value: object) -> int | None:
    """Whole seconds for ``Retry-After`` from a ``RetryableError.retry_after``, rounded up;
    None (no header: QStash's own backoff applies) when it is missing, not a number or NaN;
    clamped to ``[0, MAX_RETRY_AFTER]`` (the project-wide ``idemsend.classify.MAX_RETRY_AFTER``,
    one hour), so ``inf`` or ``1e308`` from a custom engine or classifier cannot crash the
    handler or park a message."""
    limit = math.ceil(MAX_RETRY_AFTER)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if math.isnan(number):
        return None
    if not math.isfinite(number) or number >= limit:
        return limit
    return min(limit, whole_seconds(max(0.0, number)))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unicode_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_tree(value: Any, max_depth: int) -> str | None:
    """Why ``value`` (parsed JSON) cannot be used, or None: nested deeper than
    ``max_depth``, a non-finite number (``1e999``), or a string that is not valid Unicode
    (a lone surrogate from a ``\\ud800`` escape, which cannot be sent). Iterative, so no
    depth can overflow the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _unicode_ok(item):
                return "it has a string that is not valid Unicode (a lone surrogate)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "it has a number too large to represent"
        elif isinstance(item, dict | list):
            depth += 1
            if depth > max_depth:
                return f"it is nested more than {max_depth} deep"
            if isinstance(item, dict):
                if not all(_unicode_ok(key) for key in item):
                    return "it has a key that is not valid Unicode (a lone surrogate)"
                children: Any = item.values()
            else:
                children = item
            stack.extend((child, depth) for child in children if isinstance(child, str | float | dict | list))
    return None


def _bad_job_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"the job id must be a string, got {type(value).__name__}"
    if not value:
        return "the job id is empty"
    if len(value) > MAX_MESSAGE_ID_LENGTH:
        return f"the job id is {len(value)} characters, over the limit of {MAX_MESSAGE_ID_LENGTH}"
    if _VISIBLE_ASCII.fullmatch(value) is None:
        return "the job id has a character that is not visible ASCII"
    return None


def _short(value: str, limit: int = 80) -> str:
    """``value`` cut to ``limit`` characters, non-ASCII escaped (it may come from the network)."""
    cut = value if len(value) <= limit else value[:limit] + "..."
    return cut.encode("ascii", "backslashreplace").decode("ascii")


# -- the handler --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Message:
    payload: Any  # the parsed JSON
    data: Mapping[str, Any]
    body: Any


class QStashHandler:
    """Verifies, then sends, one QStash delivery. ``engine`` is an Engine (started by
    whoever owns it, e.g. ``aiohttp_app`` below) or a zero-argument factory.

    ``url`` is the public endpoint URL QStash calls, checked against the token's ``sub``
    (required unless ``url_from_request=True``, which trusts the request's ``Host``).
    ``job_id_from`` is ``"header"`` (``Upstash-Message-Id``, guarded by ``replay_guard``,
    an ``InMemoryReplayGuard`` when not given) or ``"body"`` (``job_id(payload)`` reads
    it from the signed JSON; ``replay_guard`` is then optional). See the module docstring.
    """

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        *,
        current_signing_key: str,
        next_signing_key: str,
        url: str | None = None,
        url_from_request: bool = False,
        clock_tolerance: int = 0,
        max_body: int = DEFAULT_MAX_BODY,
        parse: Parse = default_parse,
        job_id_from: Literal["header", "body"] = "header",
        job_id: JobIdFrom = default_job_id,
        replay_guard: SignatureReplayGuard | None = None,
        guard_timeout: float = 5.0,
        max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if not current_signing_key or not next_signing_key:
            raise ConfigError("QStashHandler needs both the current and the next signing key")
        if url is None and not url_from_request:
            raise ConfigError(
                "QStashHandler needs url=, the public endpoint URL QStash calls (what its token's 'sub' claim"
                " must equal); url_from_request=True builds it from the request's Host header instead, safe only"
                " behind a proxy that sets Host itself"
            )
        if url is not None and url_from_request:
            raise ConfigError("QStashHandler takes url= or url_from_request=True, not both")
        if url is not None:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"QStashHandler url= must be an absolute http(s) URL, got {url!r}")
        if max_body < 1:
            raise ConfigError(f"max_body must be >= 1, got {max_body}")
        if max_depth < 1:
            raise ConfigError(f"max_depth must be >= 1, got {max_depth}")
        if clock_tolerance < 0:
            raise ConfigError(f"clock_tolerance must be >= 0, got {clock_tolerance}")
        if not max_token_lifetime > 0 or not guard_timeout > 0:
            raise ConfigError("max_token_lifetime and guard_timeout must be > 0")
        if job_id_from not in ("header", "body"):
            raise ConfigError(f"job_id_from must be 'header' or 'body', got {job_id_from!r}")
        if replay_guard is not None and not isinstance(replay_guard, SignatureReplayGuard):
            raise ConfigError(
                f"replay_guard must have 'async remember(jti, message_id, expires_at)', got {replay_guard!r}"
            )
        self._engine_or_factory = engine
        self._engine: Engine | None = engine if isinstance(engine, Engine) else None
        self.receiver = Receiver(current_signing_key=current_signing_key, next_signing_key=next_signing_key)
        self.url = url
        self.url_from_request = url_from_request
        self.clock_tolerance = clock_tolerance
        self.max_body = max_body
        self.max_depth = max_depth
        self.max_token_lifetime = max_token_lifetime
        self.parse = parse
        self.job_id_from = job_id_from
        self.job_id = job_id
        self.guard_timeout = guard_timeout
        if replay_guard is None and job_id_from == "header":
            replay_guard = InMemoryReplayGuard()
        self.replay_guard = replay_guard

    def __repr__(self) -> str:  # the signing keys stay out of it
        return f"<QStashHandler url={self.url!r} job_id_from={self.job_id_from!r} max_body={self.max_body}>"

    async def engine(self) -> Engine:
        """The engine, made and started from the factory on first use."""
        if self._engine is None:
            factory = self._engine_or_factory
            assert callable(factory)
            self._engine = await build_engine(factory).start()
        return self._engine

    async def aclose(self) -> None:
        """Close a factory-made engine (an engine passed in is its owner's to close)."""
        if self._engine is not None and not isinstance(self._engine_or_factory, Engine):
            await self._engine.aclose()
        self._engine = None

    # -- checks -------------------------------------------------------------------------

    def _claims(self, raw_body: bytes, headers: Mapping[str, str], url: str | None) -> Response | dict[str, Any]:
        """The verified token's claims, or the 401 to answer with."""
        signature = _header(headers, "Upstash-Signature")
        if not signature:
            return _unauthorized("MISSING_SIGNATURE", "the Upstash-Signature header is missing")
        if len(signature) > _MAX_SIGNATURE_LENGTH:
            return _unauthorized("INVALID_SIGNATURE", f"the signature is over {_MAX_SIGNATURE_LENGTH} characters")
        subject = self.url if self.url is not None else url
        if subject is None:
            return _unauthorized("INVALID_SIGNATURE", "the request URL is unknown, so the signature cannot be checked")
        try:
            text = raw_body.decode("utf-8")
        except UnicodeDecodeError:
            return _unauthorized("INVALID_SIGNATURE", "the body is not UTF-8, so its signature cannot be checked")
        try:
            self.receiver.verify(signature=signature, body=text, url=subject, clock_tolerance=self.clock_tolerance)
            claims = jwt.decode(signature, options={"verify_signature": False})
        except Exception as exc:  # SignatureError, or the SDK tripping over odd claims (no "body": KeyError)
            detail = str(exc) if isinstance(exc, SignatureError) else f"{type(exc).__name__}: {exc}"
            return _unauthorized("INVALID_SIGNATURE", f"the signature was not accepted: {_short(detail, 200)}")
        if not isinstance(claims, dict):
            return _unauthorized("INVALID_SIGNATURE", "the signature's claims are not an object")
        jti = claims.get("jti")
        if jti is None:
            return _unauthorized("MISSING_JTI", "the signature has no jti claim, so a replay could not be detected")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH or _VISIBLE_ASCII.fullmatch(jti) is None:
            return _unauthorized("INVALID_SIGNATURE", "the signature's jti claim is not a short visible-ASCII string")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            return _unauthorized("INVALID_SIGNATURE", "the signature's exp claim is not a number")
        if exp - time.time() > self.max_token_lifetime + self.clock_tolerance:
            return _unauthorized(
                "TOKEN_LIFETIME_TOO_LONG",
                f"the signature is valid for more than {self.max_token_lifetime:g}s more (max_token_lifetime)",
            )
        return claims

    def verify(self, raw_body: bytes, headers: Mapping[str, str], url: str | None = None) -> Response | None:
        """None if the signature is good (and carries a ``jti``), else the 401 to answer with.

        ``url`` is the request's URL, used only with ``url_from_request=True``."""
        claims = self._claims(raw_body, headers, url)
        return claims if not isinstance(claims, dict) else None

    def _message(self, raw_body: bytes) -> Response | _Message:
        """The message in the verified raw body, or the 489 to answer with."""
        try:
            payload = json.loads(raw_body.decode("utf-8"), parse_constant=_reject_constant)
        except RecursionError:
            return _non_retryable("INVALID_MESSAGE", f"the message is nested more than {self.max_depth} deep")
        except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
            return _non_retryable("INVALID_MESSAGE", f"the message is not the expected JSON: {_short(str(exc), 200)}")
        problem = _check_tree(payload, self.max_depth)
        if problem is not None:
            return _non_retryable("INVALID_MESSAGE", f"the message cannot be used: {problem}")
        try:
            data, body = self.parse(payload)
        except Exception as exc:  # parse= reads a message from the network: whatever it raises is about the message
            log.info("idemsend: qstash parse= rejected a message: %s: %s", type(exc).__name__, exc)
            detail = _short(f"{type(exc).__name__}: {exc}", 200)
            return _non_retryable("INVALID_MESSAGE", f"the message is not the expected JSON: {detail}")
        if not isinstance(data, Mapping):
            return _non_retryable("INVALID_MESSAGE", f"the message's data must be an object, got {type(data).__name__}")
        return _Message(payload, data, body)

    def _job_id(self, payload: Any, headers: Mapping[str, str]) -> Response | str:
        if self.job_id_from == "body":
            try:
                job_id = self.job_id(payload)
            except Exception as exc:  # job_id= reads the message too
                return _non_retryable(
                    "MISSING_MESSAGE_ID", f"the message has no job id: {_short(f'{type(exc).__name__}: {exc}', 200)}"
                )
        else:
            job_id = _header(headers, "Upstash-Message-Id")
            if not job_id:
                return _non_retryable("MISSING_MESSAGE_ID", "the Upstash-Message-Id header is missing")
        problem = _bad_job_id(job_id)
        if problem is not None:
            return _non_retryable("INVALID_MESSAGE_ID", problem)
        assert isinstance(job_id, str)
        return job_id

    async def _guard(self, jti: str, job_id: str, expires_at: float) -> Response | None:
        guard = self.replay_guard
        if guard is None:
            return None
        try:
            async with asyncio.timeout(self.guard_timeout):
                first = await guard.remember(jti, job_id, expires_at)
        except Exception as exc:  # fail closed: without the guard's answer a replay cannot be ruled out
            log.warning("idemsend: qstash replay guard unavailable, refusing the delivery: %r", exc)
            return _error(
                503, "REPLAY_GUARD_UNAVAILABLE",
                f"the replay guard could not answer ({type(exc).__name__}); nothing was sent",
                {"Retry-After": str(_GUARD_RETRY_AFTER)},
            )
        if first != job_id:
            log.warning(
                "idemsend: qstash token %s replayed: it first came with job %s, now with %s; refused",
                jti, _short(first), _short(job_id),
            )
            return _unauthorized(
                "REPLAYED_SIGNATURE",
                "this signature was already used for another message id; a signature is good for one message",
            )
        return None

    async def handle(self, raw_body: bytes, headers: Mapping[str, str], url: str | None = None) -> Response:
        """Verify and send one delivery; ``(status, headers, body)`` to answer with.

        ``url`` is the request's full URL, needed only with ``url_from_request=True``."""
        if len(raw_body) > self.max_body:
            return _too_large(self.max_body)
        claims = self._claims(raw_body, headers, url)
        if not isinstance(claims, dict):
            return claims
        retried = _header(headers, "Upstash-Retried")
        if not retried:
            attempt = 1
        elif _RETRIED.fullmatch(retried):
            attempt = int(retried) + 1
        else:
            return _non_retryable("INVALID_HEADER", f"Upstash-Retried is not a small count: {_short(retried, 20)}")
        message = self._message(raw_body)
        if not isinstance(message, _Message):
            return message
        job_id = self._job_id(message.payload, headers)
        if not isinstance(job_id, str):
            return job_id
        refused = await self._guard(claims["jti"], job_id, float(claims["exp"]) + self.clock_tolerance)
        if refused is not None:
            return refused
        try:
            result = await (await self.engine()).send(Job(job_id, message.data), message.body, attempt=attempt)
        except RetryableError as exc:
            after = retry_after_seconds(exc.retry_after)
            return _error(503, "RETRY", str(exc), None if after is None else {"Retry-After": str(after)})
        except FatalError as exc:
            return _non_retryable(exc.code, str(exc))
        return _json(200, result_dict(result))

    # -- framework glue -----------------------------------------------------------------

    async def aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp route handler."""
        if request.content_length is not None and request.content_length > self.max_body:
            return _aiohttp_response(_too_large(self.max_body))
        # Read to the end (one read() returns only what has arrived so far), stopping as
        # soon as the body is over the limit.
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > self.max_body:
                    return _aiohttp_response(_too_large(self.max_body))
                chunks.append(chunk)
        except RequestPayloadError as exc:  # e.g. a Content-Encoding that does not decode
            why = f"the body could not be read ({type(exc).__name__}), so its signature cannot be checked"
            return _aiohttp_response(_unauthorized("UNREADABLE_BODY", why))
        url: str | None = None
        if self.url_from_request:
            try:
                url = str(request.url)
            except (UnicodeError, ValueError):  # a Host header yarl cannot make a URL of
                url = None
        return _aiohttp_response(await self.handle(b"".join(chunks), request.headers, url))

    def aiohttp_app(self, path: str = "/") -> web.Application:
        """A whole aiohttp app serving the handler at ``path``: it starts the engine when the
        app starts (so a bad configuration fails at boot, not on the first message) and
        closes a factory-made engine when it stops."""
        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(path, self.aiohttp_handler)

        async def start(_app: web.Application) -> None:
            await self.engine()

        async def close(_app: web.Application) -> None:
            await self.aclose()

        app.on_startup.append(start)
        app.on_cleanup.append(close)
        return app

    def asgi_app(self) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
        """A minimal ASGI app (mount it in Starlette or FastAPI)."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        try:
                            await self.engine()
                        except Exception as exc:  # the server reports it and does not start
                            await send({"type": "lifespan.startup.failed", "message": f"idemsend: {exc}"})
                            return
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await self.aclose()
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            if scope["type"] != "http":
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if scope.get("method") != "POST":
                status, out_headers, body = _error(405, "METHOD_NOT_ALLOWED", "QStash delivers with POST")
            else:
                chunks: list[bytes] = []
                size, too_large = 0, False
                while True:
                    message = await receive()
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        too_large = True
                    elif chunk:
                        chunks.append(chunk)
                    if not message.get("more_body"):
                        break
                if too_large:
                    status, out_headers, body = _too_large(self.max_body)
                else:
                    url = _asgi_url(scope, headers) if self.url_from_request else None
                    status, out_headers, body = await self.handle(b"".join(chunks), headers, url)
            await send({
                "type": "http.response.start", "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers.items()],
            })
            await send({"type": "http.response.body", "body": body})

        return app


def _aiohttp_response(response: Response) -> web.Response:
    status, headers, body = response
    return web.Response(status=status, headers=headers, body=body)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _asgi_url(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    host = _header(headers, "host") or "localhost"
    path = scope.get("root_path", "") + scope.get("path", "/")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{path}{'?' + query if query else ''}"
