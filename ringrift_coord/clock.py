"""Injectable time. Core code takes a ``Clock`` so tests step time instead of sleeping.

A clock offers two ways to wait, and code picks the one that says what it waits for:

- ``sleep(seconds)``: let time pass and nothing else (a poll interval, a retry back-off).
  ``ManualClock.sleep`` moves the clock forward at once: no real time passes.
- ``wait_readable(fds, timeout)``: wait for something real (a child's pidfd, a signal's
  wake-up pipe, a process group emptying) for at most ``timeout`` seconds of this clock.
  ``ManualClock.wait_readable`` looks at the fds for a moment of real time and never moves
  the clock: under a manual clock, timeouts and deadlines run out only when the test says so.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Sequence

# How long ManualClock.wait_readable looks at its fds in real time before it returns.
MANUAL_REAL_WAIT = 0.01


class Clock:
    """Wall clock (``time``, seconds since the epoch) and ``monotonic`` time."""

    def time(self) -> float:
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of this clock pass."""
        raise NotImplementedError

    def wait_readable(self, fds: Sequence[int], timeout: float) -> list[int]:
        """Wait until one of ``fds`` is readable, at most ``timeout`` seconds of this clock;
        return the readable ones (empty: the time ran out, or a signal interrupted it)."""
        raise NotImplementedError


def _select(fds: Sequence[int], timeout: float) -> list[int]:
    import select

    readable, _, _ = select.select(list(fds), [], [], max(0.0, timeout))
    return readable


class SystemClock(Clock):
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def wait_readable(self, fds: Sequence[int], timeout: float) -> list[int]:
        return _select(fds, timeout)


class ManualClock(Clock):
    """A clock tests move by hand (``advance``); ``sleep`` moves it too.

    ``slept`` records every ``sleep`` (so a test can check the intervals code waited).
    ``advance`` may be called from another thread while code under test waits.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative: a step back); monotonic time only
        ever moves forward."""
        self.now += seconds
        self.mono += max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self.advance(seconds)

    def wait_readable(self, fds: Sequence[int], timeout: float) -> list[int]:
        return _select(fds, min(max(0.0, timeout), MANUAL_REAL_WAIT))


SYSTEM_CLOCK = SystemClock()
