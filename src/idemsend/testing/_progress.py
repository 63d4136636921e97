"""A progress bar for long runs: the ``idemsend demo`` command, the benchmarks and the chaos
run of a checkout (``benchmarks/``, ``harness/``), which import it as ``idemsend.testing.Progress``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on a terminal; a line every 10% elsewhere.

    ``Progress(total, label)`` writes to ``stream`` (stderr by default); with ``enabled=False``
    it only counts (``done``). Call ``advance()`` as work completes and ``close()`` once at the end.
    """

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total, self.label, self.stream, self.enabled = max(total, 1), label, stream, enabled
        self.tty = stream.isatty()
        self.done = 0
        self._last_decile = -1
        self._last_draw = 0.0
        self._start = time.monotonic()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more done and redraw: at most every 50 ms on a terminal, else at each 10%."""
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw > 0.05 or self.done >= self.total:
                self._last_draw = now
                filled = int(30 * self.done / self.total)
                rate = self.done / max(now - self._start, 1e-9)
                self.stream.write(
                    f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} ({rate:,.0f}/s)"
                )
                self.stream.flush()
        else:
            decile = 10 * self.done // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
                self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal (nothing elsewhere)."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
