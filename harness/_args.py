"""argparse types for the harness's commands (``python -m harness.chaos``).

The installed ``idemsend`` command validates its own options the same way, with the same
messages; the two stay separate so the checkout's tooling imports no private module of
the wheel.
"""

from __future__ import annotations

import argparse

__all__ = ["positive", "rate"]


def rate(text: str) -> float:
    """A share between 0 and 1 (``--dup-rate 0.3``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive(text: str) -> int:
    """A whole number of at least 1 (``--jobs 10000``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value
