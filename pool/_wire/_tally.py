"""Aggregated logging: one line per event kind per interval, with a count and an example.

A pool sees events per frame and per book (a rejected frame, a failing handler, a book going live); logged
one line each, a bad upstream at 20,000 frames a second writes 20,000 lines a second. Both sides tally
instead: the first occurrence after a quiet interval is released at once (so a lone problem shows without
delay), and the rest of that interval's occurrences are released together, as one entry with their count
and the fields of the first.
"""

from __future__ import annotations

import math
import time

from ._protocol import LogTally

__all__ = ["LOG_INTERVAL", "Tally"]

# The shortest time between two entries of one event kind. Lower shows more detail sooner and writes more
# lines under a flood; one second is what a person reading a log can follow.
LOG_INTERVAL = 1.0


class Tally:
    """Counts log events by name and releases them at most once per `LOG_INTERVAL` each.

    Not thread-safe: each owner (a worker's loop, the parent's event loop) keeps its own.
    """

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        self._pending: dict[str, LogTally] = {}
        self._last_release = -interval  # so the first event is released at once

    def __bool__(self) -> bool:
        return bool(self._pending)

    def note(self, event: str, level: str, count: int = 1, /, **example: str | int | float | None) -> None:
        """Count ``count`` occurrences of ``event``; the first one since the last release is the example."""
        entry = self._pending.get(event)
        if entry is None:
            self._pending[event] = LogTally(event, level, count, example)
        else:
            entry.count += count

    def due_in(self, now: float | None = None) -> float:
        """Seconds until `release` gives something (0.0 if it would now; infinity if nothing is pending)."""
        if not self._pending:
            return math.inf
        now = time.monotonic() if now is None else now
        return max(0.0, self._last_release + self._interval - now)

    def release(self, now: float | None = None, *, force: bool = False) -> list[LogTally]:
        """The entries that are due (all pending ones, at most once per interval; every one with ``force``)."""
        now = time.monotonic() if now is None else now
        if not self._pending or (not force and now - self._last_release < self._interval):
            return []
        entries = list(self._pending.values())
        self._pending.clear()
        self._last_release = now
        return entries
