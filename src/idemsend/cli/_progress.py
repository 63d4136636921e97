"""The demo's progress bar: ``idemsend.testing.Progress`` (one copy, in the wheel, shared with
the checkout's benchmarks and chaos run)."""

from __future__ import annotations

from ..testing._progress import Progress

__all__ = ["Progress"]
