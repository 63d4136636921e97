"""idemsend: safe outbound sends from at-least-once queue workers.

``async with Engine(url, key="welcome:{user_id}:{job_id}", api_key=...) as engine:``
``result = await engine.send(Job(id, data), body)``
"""

from ._engine import Engine
from ._errors import (
    ConfigError,
    FatalError,
    IdemsendError,
    InvalidBodyError,
    KeyDerivationError,
    MismatchError,
    MissingExtraError,
    RetryableError,
    SetupError,
    StaleReplayError,
    UnstableKeyError,
)
from ._keys import Job, KeyDeriver, Template, validate_key
from ._result import SendResult

__all__ = [
    "ConfigError",
    "Engine",
    "FatalError",
    "IdemsendError",
    "InvalidBodyError",
    "Job",
    "KeyDerivationError",
    "KeyDeriver",
    "MismatchError",
    "MissingExtraError",
    "RetryableError",
    "SendResult",
    "SetupError",
    "StaleReplayError",
    "Template",
    "UnstableKeyError",
    "validate_key",
]
__version__ = "0.1.0"
