"""idemsend: safe outbound sends from at-least-once queue workers.

``async with Engine(url, key="welcome:{user_id}:{job_id}", api_key=...) as engine:``
``result = await engine.send(Job(id, data), body)``
"""

from importlib import metadata as _metadata

from ._body import canonical_body, fingerprint
from ._config import InFlightWait, Limits, Provider, RetryPolicy
from ._engine import Engine
from ._errors import (
    BackendError,
    ConfigError,
    FatalError,
    IdemsendError,
    InvalidBodyError,
    InvalidJobIdError,
    KeyDerivationError,
    MismatchError,
    MissingExtraError,
    RetryableError,
    RetryReason,
    SetupError,
    StaleReplayError,
    UnstableKeyError,
)
from ._hooks import Hook, LedgerInfo, Observer, OutcomeInfo, SendInfo, SendObserver, TryInfo, WaitInfo
from ._keys import MAX_JOB_ID_BYTES, Job, KeyDeriver, Template, validate_job_id, validate_key
from ._result import SendResult
from ._signing import Signer, SignRequest, StandardWebhooksSigner
from ._transport import AiohttpTransport, RawResponse, Transport, TransportError, TransportRequest

__all__ = [
    "MAX_JOB_ID_BYTES",
    "AiohttpTransport",
    "BackendError",
    "ConfigError",
    "Engine",
    "FatalError",
    "Hook",
    "IdemsendError",
    "InFlightWait",
    "InvalidBodyError",
    "InvalidJobIdError",
    "Job",
    "KeyDerivationError",
    "KeyDeriver",
    "LedgerInfo",
    "Limits",
    "MismatchError",
    "MissingExtraError",
    "Observer",
    "OutcomeInfo",
    "Provider",
    "RawResponse",
    "RetryPolicy",
    "RetryReason",
    "RetryableError",
    "SendInfo",
    "SendObserver",
    "SendResult",
    "SetupError",
    "SignRequest",
    "Signer",
    "StaleReplayError",
    "StandardWebhooksSigner",
    "Template",
    "Transport",
    "TransportError",
    "TransportRequest",
    "TryInfo",
    "UnstableKeyError",
    "WaitInfo",
    "canonical_body",
    "fingerprint",
    "validate_job_id",
    "validate_key",
]

try:
    __version__: str = _metadata.version("idemsend")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
