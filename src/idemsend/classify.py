"""Result classifiers and the outcome model (see ``idemsend._classify``)."""

from ._classify import (
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
