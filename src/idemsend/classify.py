"""Result classifiers and the outcome model (see ``idemsend._classify``).

``Sent | InFlight | Retry | Fatal`` and the presets ``Sendoka``, ``IETFDraft``, ``Stripe``,
``Resend``, ``StandardWebhooks``, ``Square``, ``Plaid``, ``Brevo``, ``Adyen``, ``PayPal``,
``Checkout``, ``GoCardless``, ``Increase`` and ``SparkPost``; ``docs/providers.md`` lists
what each maps to what, with its sources.
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
from ._presets import (
    Adyen,
    Brevo,
    Checkout,
    GoCardless,
    Increase,
    PayPal,
    Plaid,
    SparkPost,
    Square,
    StandardWebhooks,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "MISMATCH",
    "Adyen",
    "Brevo",
    "Checkout",
    "Fatal",
    "GoCardless",
    "HTTPResponse",
    "IETFDraft",
    "InFlight",
    "Increase",
    "Outcome",
    "PayPal",
    "Plaid",
    "Resend",
    "ResultClassifier",
    "Retry",
    "Sendoka",
    "Sent",
    "SparkPost",
    "Square",
    "StandardWebhooks",
    "Stripe",
    "parse_retry_after",
]
