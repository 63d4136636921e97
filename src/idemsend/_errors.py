"""The one exception tree of idemsend, grouped by what the caller can do about it.

```
IdemsendError
├── RetryableError(retry_after)      run the job again later (the queue's retry)
├── FatalError(code)                 never retry this job
│   ├── KeyDerivationError           the key could not be derived or is invalid
│   │   └── InvalidJobIdError        the job id is empty, too long or not storable text
│   ├── UnstableKeyError             a retry derived a different key for the same job
│   ├── StaleReplayError             unknown outcome older than the provider window
│   ├── MismatchError                same key, different body (IDEMPOTENCY_MISMATCH)
│   ├── InvalidBodyError             the body cannot be serialised canonically
│   └── SetupError                   the provider refused the engine (credentials, URL), not the job
├── ConfigError                      wrong setup, raised at construction
└── MissingExtraError (ImportError)  an optional extra is not installed
```

Third-party errors (aiohttp, redis, arq, rq, qstash) are translated where they are
caught and chained with ``from``. No error text ever contains the API key.

Every error says whether the job **may have been sent** (``error.maybe_sent``): True
when a request for its key may have reached the provider and run, in this call or in an
earlier delivery the engine knows of (a ledger record left in flight, a queue attempt
after the first), whatever the last answer was; False only when nothing can have run.
Its text says so too, so a queue that records ``str(error)`` never reports a job unsent
that may have been sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._hooks import TryInfo

__all__ = [
    "MISMATCH",
    "BackendError",
    "ConfigError",
    "FatalError",
    "IdemsendError",
    "InvalidBodyError",
    "InvalidJobIdError",
    "KeyDerivationError",
    "MismatchError",
    "MissingExtraError",
    "RetryReason",
    "RetryableError",
    "SetupError",
    "StaleReplayError",
    "UnstableKeyError",
]

#: The outcome code every classifier uses for "same key, different body".
MISMATCH = "IDEMPOTENCY_MISMATCH"


def _restore(cls: type[IdemsendError], args: tuple[object, ...], state: dict[str, object]) -> IdemsendError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class IdemsendError(Exception):
    """Base class of every error idemsend raises on purpose."""

    #: Whether a request for this job's key may have run at the provider (see the module
    #: docstring). False for errors raised before any request could leave.
    maybe_sent: bool = False
    #: The HTTP tries of this call that led to the error, one frozen ``TryInfo`` each, in
    #: order; empty for an error raised before any try (or answered from the ledger).
    tries: tuple[TryInfo, ...] = ()

    def __init__(self, message: str, *, key: str | None = None, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.maybe_sent = maybe_sent

    def __reduce__(self) -> tuple[object, ...]:
        # Queues pickle job errors (arq stores them as results): keep code, retry_after...
        return (_restore, (type(self), self.args, self.__dict__))


#: Why a send is to be retried, as one word (``RetryableError.reason``):
#:
#: * ``provider``: the provider's answers were not final (a 5xx, a 429, a 2xx without an id);
#: * ``transport``: no HTTP answer (a refused connection, a timeout, a reset);
#: * ``rate_limit``: this engine's own rate limit (or a 429's pause) kept the request back;
#: * ``in_flight``: the provider still processes the key; ``busy``: another worker holds it;
#: * ``ledger``: the ledger could not be reached; ``ledger_config``: its store is unfit;
#: * ``interrupted``: the send this call joined was cancelled;
#: * ``retryable``: raised by other code (a custom classifier or adapter).
RetryReason = Literal[
    "provider", "transport", "rate_limit", "in_flight", "busy", "ledger", "ledger_config", "interrupted", "retryable",
]


class RetryableError(IdemsendError):
    """The send did not complete; the queue should run the job again later.

    ``retry_after`` is the delay in seconds the provider (or the engine's backoff)
    asks for, or ``None`` when the queue's own backoff is fine. Retrying with the same
    job is safe: the key is the same, so the provider de-duplicates.

    ``reason`` says why in one word (``RetryReason``: what code branches on); ``detail``
    says it in words, redacted (the last answer, ``"HTTP 503"``, or the transport's or the
    store's error): what a person reads. Neither holds the key.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        key: str | None = None,
        reason: RetryReason = "retryable",
        detail: str = "",
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message, key=key, maybe_sent=maybe_sent)
        self.retry_after = retry_after
        self.reason: RetryReason = reason
        self.detail = detail


class FatalError(IdemsendError):
    """The job can never succeed as it is; do not retry it. ``code`` says why.

    ``detail`` is the bare reason (the provider's message, without the code and key that
    ``str(error)`` adds): what the ledger records, so a replayed fatal reads the same.
    """

    default_code = "FATAL"

    def __init__(
        self, message: str, *, code: str | None = None, key: str | None = None, detail: str | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message, key=key, maybe_sent=maybe_sent)
        self.code = code or self.default_code
        self.detail = message if detail is None else detail


class KeyDerivationError(FatalError):
    """The key template could not be filled, or the key is not a valid key."""

    default_code = "KEY_DERIVATION"


class InvalidJobIdError(KeyDerivationError):
    """The job id cannot be stored by every ledger: empty, over ``MAX_JOB_ID_BYTES``
    UTF-8 bytes, holding a NUL or a lone surrogate. Fails that job alone."""

    default_code = "INVALID_JOB_ID"


class UnstableKeyError(FatalError):
    """A later attempt of a job derived a different key than its first attempt.

    That is the "timestamp or attempt number in the key" mistake: sending would
    double-send, so nothing is sent.
    """

    default_code = "UNSTABLE_KEY"

    def __init__(self, message: str, *, key: str, recorded_key: str) -> None:
        # the job was first recorded under another key: a send under that key may have run
        super().__init__(message, key=key, maybe_sent=True)
        self.recorded_key = recorded_key


class StaleReplayError(FatalError):
    """An earlier attempt's outcome is unknown and the provider has forgotten its key.

    Resending would risk a double send, so the job stops here for a person to look at.
    ``first_sent_at`` is the Unix time of the first attempt.
    """

    default_code = "STALE_REPLAY"

    def __init__(self, message: str, *, key: str, first_sent_at: float) -> None:
        super().__init__(message, key=key, maybe_sent=True)  # an unknown outcome, by definition
        self.first_sent_at = first_sent_at


class MismatchError(FatalError):
    """The provider (or the ledger) holds this key for a different body."""

    default_code = MISMATCH


class InvalidBodyError(FatalError):
    """The body is not JSON-serialisable (or not bytes), so it cannot be sent."""

    default_code = "INVALID_BODY"


class SetupError(FatalError):
    """The provider refused the engine, not the job: a stale or wrong API key (401, 403,
    407), a wrong endpoint (404, 405) or a redirect (the engine never follows one).

    Fatal for this try, so a queue stops retrying a job that cannot work until a person
    fixes the setup; but it is **not** recorded against the key in the ledger, so the same
    job runs normally once the setup is fixed and the job is enqueued again.
    """

    default_code = "SETUP"


class ConfigError(IdemsendError, ValueError):
    """The engine, ledger or adapter was set up wrongly. Raised at construction."""


class BackendError(IdemsendError):
    """A part idemsend talks to failed to answer: the transport (``TransportError``: no
    HTTP answer) or the ledger's store (``LedgerUnavailableError``). Raised by those parts;
    the engine never lets one out of ``send``: it turns it into a ``RetryableError``
    (reason ``transport`` or ``ledger``) or, after a send, logs it."""


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"idemsend.{extra} needs the {module!r} package: pip install 'idemsend[{extra}]'",
            name=module,
        )
        self.extra = extra


#: What a fatal error's detail ends with when a request for the key may have run before
#: the fatal answer (kept in the ledger's fatal record, so a replay of it says so too).
MAY_HAVE_RUN = "an earlier try may have run at the provider: the job may have been sent"


def with_sent_note(detail: str, maybe_sent: bool) -> str:
    """``detail``, ending with ``MAY_HAVE_RUN`` when ``maybe_sent`` (once)."""
    if not maybe_sent or detail.endswith(MAY_HAVE_RUN):
        return detail
    return f"{detail}; {MAY_HAVE_RUN}"


def fatal_error(
    code: str, detail: str, key: str, *, setup: bool = False, recorded: bool = False, maybe_sent: bool = False
) -> FatalError:
    """The error for a fatal outcome of ``key``; ``detail`` is the bare reason (what the
    ledger keeps), ``setup`` makes it a ``SetupError``, ``recorded`` says it was answered
    from the ledger, ``maybe_sent`` that a request for the key may have run before (the
    detail then says so). A recorded detail that says so, a recorded mismatch (the key
    ran with another body) and a recorded stale replay are ``maybe_sent`` too."""
    maybe_sent = maybe_sent or code in (MISMATCH, StaleReplayError.default_code) or detail.endswith(MAY_HAVE_RUN)
    detail = with_sent_note(detail, maybe_sent and code not in (MISMATCH, StaleReplayError.default_code))
    where = " (recorded in the ledger)" if recorded else ""
    if code == MISMATCH:
        return MismatchError(f"{detail} (key {key!r}){where}", key=key, detail=detail, maybe_sent=True)
    cls = SetupError if setup else FatalError
    return cls(f"{code}: {detail} (key {key!r}){where}", code=code, key=key, detail=detail, maybe_sent=maybe_sent)
