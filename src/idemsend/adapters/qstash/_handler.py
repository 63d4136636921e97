"""``QStashHandler``: verify a delivery, read its message, guard against replays, then one
try of the job through the adapter kit, answered in QStash's terms."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from ..._engine import Engine
from ..._errors import ConfigError, MissingExtraError
from ..._keys import Job
from .._common import check_factory
from .._holder import StartedEngine
from .._kit import GiveUp, RetryIn, Succeeded, run_job
from .._webhook import (
    ASGIApp,
    BodyTooLarge,
    Response,
    UnreadableBody,
    aiohttp_app,
    aiohttp_response,
    asgi_app,
    error_response,
    header,
    json_response,
    read_aiohttp_body,
)
from ._guard_choice import GuardSlot
from ._guards import SignatureReplayGuard
from ._message import (
    DEFAULT_MAX_DEPTH,
    VISIBLE_ASCII,
    JobIdFrom,
    Parse,
    bad_job_id,
    check_tree,
    default_job_id,
    default_parse,
    reject_constant,
    retry_after_seconds,
    short,
)

try:
    import jwt
    from aiohttp import web
    from qstash import Receiver
    from qstash.errors import SignatureError
except ImportError as exc:
    raise MissingExtraError("qstash", "qstash") from exc

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "NON_RETRYABLE_STATUS",
    "QStashHandler",
]

log = logging.getLogger("idemsend.qstash")

#: The largest body accepted, in bytes (413 above it).
DEFAULT_MAX_BODY = 1024 * 1024
#: The longest a token may still have to live when it arrives, in seconds (QStash's
#: tokens live 5 minutes); a token valid for longer is refused, as its ``jti`` would
#: have to be remembered for that long.
DEFAULT_MAX_TOKEN_LIFETIME = 3600.0
#: The status that, with ``Upstash-NonRetryable-Error: true``, stops QStash's retries.
NON_RETRYABLE_STATUS = 489

_MAX_SIGNATURE_LENGTH = 8192
_MAX_JTI_LENGTH = 256
# Webhook hosts' clocks may disagree by this much: a jti is kept this long past its
# token's expiry, so a host whose clock runs ahead cannot forget it while another host
# still accepts the token.
CLOCK_SKEW_MARGIN = 60.0
_RETRIED = re.compile(r"[0-9]{1,9}")


def _too_large(max_body: int) -> Response:
    return error_response(413, "BODY_TOO_LARGE", f"the body is over {max_body} bytes")


def _non_retryable(code: str, message: str, *, maybe_sent: bool | None = None) -> Response:
    return error_response(
        NON_RETRYABLE_STATUS, code, message, {"Upstash-NonRetryable-Error": "true"}, maybe_sent=maybe_sent
    )


def _unauthorized(code: str, message: str) -> Response:
    return error_response(401, code, message)


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
    ``job_id_from`` is ``"header"`` (``Upstash-Message-Id``, guarded by ``replay_guard``)
    or ``"body"`` (``job_id(payload)`` reads it from the signed JSON; ``replay_guard`` is
    then optional). Without ``replay_guard`` in header mode, the guard lives in the
    engine's ledger's store (Redis or PostgreSQL), so it outlives a restart; with any
    other ledger (or none) the handler refuses to be made (``ConfigError``; with an
    engine factory, when the engine is made at start) unless
    ``allow_volatile_replay_guard=True``: one process, never restarted within a token's
    lifetime, guarded in its memory (a WARNING at start). See the package docstring.
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
        allow_volatile_replay_guard: bool = False,
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
        # an Engine passed in is its owner's (started and closed by them); a factory's is ours
        self._given: Engine | None = engine if isinstance(engine, Engine) else None
        self._engines = None if isinstance(engine, Engine) else StartedEngine(check_factory(engine))
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
        self._guards = GuardSlot(replay_guard, job_id_from=job_id_from, allow_volatile=allow_volatile_replay_guard)
        self._guard_lock = asyncio.Lock()
        if self._given is not None:  # refuse now, not at start, when no durable guard can be had
            self._guards.choose(self._given.ledger)

    @property
    def replay_guard(self) -> SignatureReplayGuard | None:
        """The replay guard in use: the one given, else the one chosen once the engine (and
        so its ledger) is known: at construction for an Engine, at start for a factory."""
        return self._guards.guard

    def __repr__(self) -> str:  # the signing keys stay out of it
        return f"<QStashHandler url={self.url!r} job_id_from={self.job_id_from!r} max_body={self.max_body}>"

    async def engine(self) -> Engine:
        """The engine, made and started from the factory on first use; the replay guard
        chosen (``ConfigError`` when no durable one can be, see the class docstring) and
        started with it."""
        if self._given is not None:
            engine = self._given
        else:
            assert self._engines is not None
            # the guard is chosen before the engine starts: a refused handler starts nothing
            engine = await self._engines.start(lambda made: self._guards.choose(made.ledger))
        if not self._guards.ready:
            async with self._guard_lock:
                await self._guards.start(engine.ledger)
        return engine

    async def aclose(self) -> None:
        """Close a guard the handler made, then a factory-made engine (an engine passed in
        is its owner's to close)."""
        await self._guards.aclose()
        if self._engines is not None:
            await self._engines.close()

    # -- checks -------------------------------------------------------------------------

    def _claims(self, raw_body: bytes, headers: Mapping[str, str], url: str | None) -> Response | dict[str, Any]:
        """The verified token's claims, or the 401 to answer with."""
        signature = header(headers, "Upstash-Signature")
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
            return _unauthorized("INVALID_SIGNATURE", f"the signature was not accepted: {short(detail, 200)}")
        if not isinstance(claims, dict):
            return _unauthorized("INVALID_SIGNATURE", "the signature's claims are not an object")
        jti = claims.get("jti")
        if jti is None:
            return _unauthorized("MISSING_JTI", "the signature has no jti claim, so a replay could not be detected")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH or VISIBLE_ASCII.fullmatch(jti) is None:
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
            payload = json.loads(raw_body.decode("utf-8"), parse_constant=reject_constant)
        except RecursionError:
            return _non_retryable("INVALID_MESSAGE", f"the message is nested more than {self.max_depth} deep")
        except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
            return _non_retryable("INVALID_MESSAGE", f"the message is not the expected JSON: {short(str(exc), 200)}")
        problem = check_tree(payload, self.max_depth)
        if problem is not None:
            return _non_retryable("INVALID_MESSAGE", f"the message cannot be used: {problem}")
        try:
            data, body = self.parse(payload)
        except Exception as exc:  # parse= reads a message from the network: whatever it raises is about the message
            log.info("idemsend: qstash parse= rejected a message: %s: %s", type(exc).__name__, exc)
            detail = short(f"{type(exc).__name__}: {exc}", 200)
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
                    "MISSING_MESSAGE_ID", f"the message has no job id: {short(f'{type(exc).__name__}: {exc}', 200)}"
                )
        else:
            job_id = header(headers, "Upstash-Message-Id")
            if not job_id:
                return _non_retryable("MISSING_MESSAGE_ID", "the Upstash-Message-Id header is missing")
        problem = bad_job_id(job_id)
        if problem is not None:
            return _non_retryable("INVALID_MESSAGE_ID", problem)
        assert isinstance(job_id, str)
        return job_id

    async def handle(self, raw_body: bytes, headers: Mapping[str, str], url: str | None = None) -> Response:
        """Verify and send one delivery; ``(status, headers, body)`` to answer with.

        ``url`` is the request's full URL, needed only with ``url_from_request=True``."""
        if len(raw_body) > self.max_body:
            return _too_large(self.max_body)
        claims = self._claims(raw_body, headers, url)
        if not isinstance(claims, dict):
            return claims
        retried = header(headers, "Upstash-Retried")
        if not retried:
            attempt = 1
        elif _RETRIED.fullmatch(retried):
            attempt = int(retried) + 1
        else:
            return _non_retryable("INVALID_HEADER", f"Upstash-Retried is not a small count: {short(retried, 20)}")
        message = self._message(raw_body)
        if not isinstance(message, _Message):
            return message
        job_id = self._job_id(message.payload, headers)
        if not isinstance(job_id, str):
            return job_id
        engine = await self.engine()  # makes the engine and readies the guard on first use
        refused = await self._guards.check(
            claims["jti"], job_id, float(claims["exp"]) + self.clock_tolerance + CLOCK_SKEW_MARGIN,
            timeout=self.guard_timeout,
        )
        if refused is not None:
            return refused
        # QStash keeps its own retry budget (not signed, not ours to count): no try is the last
        outcome = await run_job(
            engine, Job(job_id, message.data), message.body,
            attempt=attempt, max_attempts=None, queue="qstash",
        )
        match outcome:
            case Succeeded(result):
                return json_response(200, result)
            case RetryIn(error=error) | GiveUp(error=error, retryable=True):
                # QStash's own exponential schedule applies unless the provider named a delay
                after = retry_after_seconds(getattr(error, "retry_after", None))
                return error_response(
                    503, "RETRY", str(error), None if after is None else {"Retry-After": str(after)},
                    maybe_sent=error.maybe_sent,
                )
            case GiveUp() as give_up:
                return _non_retryable(give_up.code, str(give_up.error), maybe_sent=give_up.maybe_sent)

    # -- framework glue -----------------------------------------------------------------

    async def aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp route handler."""
        try:
            raw = await read_aiohttp_body(request, self.max_body)
        except BodyTooLarge:
            return aiohttp_response(_too_large(self.max_body))
        except UnreadableBody as exc:
            why = f"the body could not be read ({exc}), so its signature cannot be checked"
            return aiohttp_response(_unauthorized("UNREADABLE_BODY", why))
        url: str | None = None
        if self.url_from_request:
            try:
                url = str(request.url)
            except (UnicodeError, ValueError):  # a Host header yarl cannot make a URL of
                url = None
        return aiohttp_response(await self.handle(raw, request.headers, url))

    def aiohttp_app(self, path: str = "/") -> web.Application:
        """A whole aiohttp app serving the handler at ``path``: it starts the engine when the
        app starts (so a bad configuration fails at boot, not on the first message) and
        closes a factory-made engine when it stops."""
        return aiohttp_app(
            path, self.aiohttp_handler, max_body=self.max_body, startup=self.engine, shutdown=self.aclose
        )

    def asgi_app(self) -> ASGIApp:
        """A minimal ASGI app (mount it in Starlette or FastAPI)."""
        return asgi_app(
            self.handle, max_body=self.max_body, too_large=_too_large(self.max_body),
            method_not_allowed=error_response(405, "METHOD_NOT_ALLOWED", "QStash delivers with POST"),
            url_from_request=self.url_from_request, startup=self.engine, shutdown=self.aclose,
        )
