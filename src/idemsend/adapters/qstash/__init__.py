"""QStash webhook adapter (``pip install 'idemsend[qstash]'``).

Modules: ``_handler`` (``QStashHandler``: checks, then one try through the adapter kit),
``_guards`` (the guard protocol, the in-memory and Redis guards), ``_pg_guard`` (the
PostgreSQL guard), ``_guard_choice`` (which guard a handler uses when not given one),
``_message`` (reading a verified message); the aiohttp and ASGI glue is the adapters'
shared ``_webhook``. Import everything from here.

A framework-neutral handler, ``QStashHandler.handle(raw_body, headers, url)`` ->
``(status, headers, body)``, with an aiohttp route and an ASGI app on top, so it mounts
in aiohttp, Starlette or FastAPI:

```python
handler = QStashHandler(engine, current_signing_key=..., next_signing_key=...,
                        url="https://example.com/qstash/welcome")      # required
# the replay guard lives in the engine's ledger's store (Redis or PostgreSQL)
app.router.add_post("/qstash/welcome", handler.aiohttp_handler)        # aiohttp
app.mount("/qstash/welcome", handler.asgi_app())                        # Starlette / FastAPI
```

Order of checks: a body over ``max_body`` -> 413 (before it is read in full); then the
``Upstash-Signature`` JWT is verified with the official ``qstash`` SDK's ``Receiver``
(current key, then next key; issuer, expiry with ``clock_tolerance``, the endpoint
``url`` as subject, and the sha256 of the raw body), and the token must carry a ``jti``
and live no longer than ``max_token_lifetime``: missing or bad -> 401 and nothing is
sent. Only then is the message read: ``Upstash-Retried`` (the attempt, for logs; it
must be a small count), the JSON body (at most ``max_depth`` deep, no NaN, no lone
surrogates), ``parse=`` and the job id; anything wrong there -> 489. Then the replay
guard (below), then the send.

Outcomes (the adapter kit's ``JobOutcome``, see ``idemsend.adapters._kit``): sent -> 200
with the result; ``RetryableError`` -> 503, with ``Retry-After`` when the provider named a
delay (whole seconds, at most ``MAX_RETRY_AFTER``, one hour: see ``retry_after_seconds``),
else without one, so QStash's own exponential retry schedule spreads the retries over an
outage; ``FatalError`` or a message that is not what is expected -> 489 with
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
  shared by every webhook process and outlive a restart to be a defence. Without
  ``replay_guard=`` it is kept in the engine's ledger's store: ``RedisReplayGuard`` on a
  ``RedisLedger``'s client (Cluster too), ``PostgresReplayGuard`` in a table beside a
  ``PostgresLedger``'s, ``SQLiteReplayGuard`` in a table of a ``SQLiteLedger``'s file.
  With any other ledger (``MemoryLedger``, none) the handler is
  refused (``ConfigError``) unless ``allow_volatile_replay_guard=True`` (or an explicit
  ``replay_guard=InMemoryReplayGuard()``) says one process serves the endpoint and is
  never restarted within a token's lifetime; that default logs a WARNING at start. If
  the guard cannot answer, the handler fails closed: 503 without ``Retry-After``,
  nothing sent.
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

from ..._classify import MAX_RETRY_AFTER
from .._webhook import Response
from ._guard_choice import durable_guard_for
from ._guards import (
    JTI_KEY_PREFIX,
    InMemoryReplayGuard,
    RedisReplayGuard,
    ReplayGuardUnavailable,
    SignatureReplayGuard,
)
from ._handler import DEFAULT_MAX_BODY, DEFAULT_MAX_TOKEN_LIFETIME, NON_RETRYABLE_STATUS, QStashHandler
from ._message import (
    DEFAULT_MAX_DEPTH,
    MAX_MESSAGE_ID_LENGTH,
    JobIdFrom,
    Parse,
    default_job_id,
    default_parse,
    retry_after_seconds,
)
from ._pg_guard import DEFAULT_GUARD_TABLE, PostgresReplayGuard, guard_schema_sql
from ._sqlite_guard import SQLiteReplayGuard

__all__ = [
    "DEFAULT_GUARD_TABLE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "JTI_KEY_PREFIX",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_RETRY_AFTER",
    "NON_RETRYABLE_STATUS",
    "InMemoryReplayGuard",
    "JobIdFrom",
    "Parse",
    "PostgresReplayGuard",
    "QStashHandler",
    "RedisReplayGuard",
    "ReplayGuardUnavailable",
    "Response",
    "SQLiteReplayGuard",
    "SignatureReplayGuard",
    "default_job_id",
    "default_parse",
    "durable_guard_for",
    "guard_schema_sql",
    "retry_after_seconds",
]
