"""Injectable time. Core code takes a ``Clock`` so tests step time instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """Wall clock (``time``, seconds since the epoch) and ``monotonic`` time."""

    def time(self) -> float:
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError


class SystemClock(Clock):
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock(Clock):
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += max(0.0, seconds)


SYSTEM_CLOCK = SystemClock()
