"""Result classifiers and the outcome model (see ``idemsend._classify``).

``Sent | InFlight | Retry | Fatal`` and the presets ``Sendoka``, ``IETFDraft``, ``Stripe``
and ``Resend``; ``docs/providers.md`` lists what each maps to what, with its sources.
``MAX_RETRY_AFTER`` is the longest delay idemsend will take from a provider.
"""

from ._classify import (
    MAX_RETRY_AFTER,
    MISMATCH,
    Fatal,
    HTTPResponse,
    IETFDraft,
    InFlight,
    Outcome,
    Resend,
    ResultClassifier,
    Retry,
    Sendoka,
    Sent,
    Stripe,
    parse_retry_after,
)

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
