"""Peak hours: the daily windows during which long tasks do not start, and the verdict on a
task of a given expected duration at a given time.

Pure: every function takes the time (seconds since the epoch) and the settings' values; only
``verdict_at`` reads the store (for the expected duration, ``_expected_seconds``).

A window is ``start``-``end`` ("HH:MM") in ``timezone``, every day; ``end`` before ``start``
wraps midnight (22:00-06:00 ends the next morning). Each day's window is computed in local
time and converted to UTC, so a window in a zone with daylight saving time stays at the
same local hours across the change (it is an hour shorter or longer in UTC on those nights
when it spans the change). A local time that does not exist (in the hour skipped in spring)
is the moment of the change (02:30 is 03:00 after it), so a window that starts in the skipped
hour starts when it ends, and one wholly inside it does not happen that night; a time that
occurs twice (in autumn) is its first occurrence.

The verdict for a task expected to run ``d`` seconds, asked at ``t``: inside a window, no
(retry at its end). Outside: yes when ``t + d`` is at or before the next window's start (retry
at that window's end otherwise), except when ``d`` is longer than the whole off-peak gap
``t`` is in (from the previous window's end to the next one's start): such a task can never
fit, so it may start at any off-peak time. A type without an expected duration: yes outside
a window.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Tx

__all__ = ["PeakHours", "Verdict", "verdict", "verdict_at"]


def zone(name: str) -> tzinfo:
    """The time zone ``name`` (UTC without loading the time-zone database)."""
    if name.upper() in ("UTC", "ETC/UTC", "Z"):
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class PeakHours:
    """The configured window: ``start``/``end`` as "HH:MM" in ``timezone``."""

    __slots__ = ("start", "end", "timezone", "tz", "_start", "_end")

    def __init__(self, start: str, end: str, timezone: str = "UTC") -> None:
        self.start, self.end, self.timezone = start, end, timezone
        self.tz = zone(timezone)
        self._start, self._end = _minutes(start), _minutes(end)
        if self._start == self._end:
            raise ValueError(f"a peak window needs two different times, got {start}-{end}")

    @classmethod
    def from_settings(cls, settings: Settings) -> PeakHours:
        peak = settings.get("peak_hours")
        return cls(peak["start"], peak["end"], peak["timezone"])

    @property
    def wraps(self) -> bool:
        """True when the window runs past midnight (22:00-06:00)."""
        return self._end < self._start

    def _at(self, day: date, minutes: int) -> float:
        """Local ``day`` at ``minutes`` past midnight as epoch seconds. A time that occurs
        twice (autumn) is its first occurrence; one the change to daylight saving time skips
        (spring) is the moment of the change, the first that is at or past it."""
        hour, minute = divmod(minutes, 60)
        wall = datetime(day.year, day.month, day.day, hour, minute)
        early = wall.replace(tzinfo=self.tz).timestamp()  # fold 0: the offset before
        if datetime.fromtimestamp(early, self.tz).replace(tzinfo=None) == wall:
            return early
        late = wall.replace(tzinfo=self.tz, fold=1).timestamp()  # skipped: the offset after
        low, high = min(early, late), max(early, late)  # the change lies between them
        while high - low > 1:
            mid = (low + high) // 2
            if datetime.fromtimestamp(mid, self.tz).replace(tzinfo=None) >= wall:
                high = mid
            else:
                low = mid
        return high

    def window_of(self, day: date) -> tuple[float, float]:
        """The window that starts on local day ``day``: (start, end) in epoch seconds; empty
        (end == start) when it lies wholly inside the hour a change to daylight saving time
        skips."""
        start = self._at(day, self._start)
        end_day = day + timedelta(days=1) if self.wraps else day
        return start, max(start, self._at(end_day, self._end))

    def windows(self, t: float, before: int = 2, after: int = 2) -> list[tuple[float, float]]:
        """The windows of the local days around ``t``, in order (overlaps merged)."""
        today = datetime.fromtimestamp(t, self.tz).date()
        found: list[tuple[float, float]] = []
        for offset in range(-before, after + 1):
            start, end = self.window_of(today + timedelta(days=offset))
            if end <= start:
                continue  # no window that day
            if found and start <= found[-1][1]:
                found[-1] = (found[-1][0], max(found[-1][1], end))
            else:
                found.append((start, end))
        return found

    def in_peak(self, t: float) -> bool:
        """True when ``t`` is inside a window (its start included, its end not)."""
        return any(start <= t < end for start, end in self.windows(t, 1, 1))

    def next_window(self, t: float) -> tuple[float, float]:
        """The window containing ``t``, else the next one to start."""
        for start, end in self.windows(t):
            if end > t:
                return start, end
        raise AssertionError("a window starts every day")  # pragma: no cover

    def previous_end(self, t: float) -> float:
        """The end of the last window that ended at or before ``t``."""
        ends = [end for _, end in self.windows(t) if end <= t]
        return ends[-1]

    def show(self, t: float, now: float | None = None) -> str:
        """``t`` as a time of day in the peak zone, and in UTC when that differs; with the
        date when it is not the day of ``now`` (in that zone)."""
        local = datetime.fromtimestamp(t, self.tz)
        same_day = now is not None and datetime.fromtimestamp(now, self.tz).date() == local.date()
        # seconds when they are not 0: 14:00:01 must not read as 14:00, the window's start
        clock = "%H:%M:%S" if local.second or local.microsecond else "%H:%M"
        text = local.strftime(f"{clock} %Z" if same_day else f"%Y-%m-%d {clock} %Z")
        if local.utcoffset() != timedelta(0):
            text += f" ({datetime.fromtimestamp(t, UTC).strftime(clock)} UTC)"
        return text

    def label(self) -> str:
        """The window as configured: "14:00-22:00 UTC"."""
        return f"{self.start}-{self.end} {self.timezone}"


class Verdict:
    """Whether a task may start at ``now``; ``retry_at`` is when to ask again (None: allowed).

    ``peak_start``/``peak_end``: the window that blocks it, or (allowed) the next window."""

    __slots__ = (
        "allowed",
        "reason",
        "now",
        "expected_seconds",
        "expected_finish",
        "peak_start",
        "peak_end",
        "retry_at",
        "in_peak",
        "timezone",
        "task_type",
        "config_name",
        "retry_shown",
    )

    def __init__(
        self,
        *,
        allowed: bool,
        reason: str,
        now: float,
        expected_seconds: float | None,
        expected_finish: float | None,
        peak_start: float,
        peak_end: float,
        retry_at: float | None,
        in_peak: bool,
        timezone: str,
    ) -> None:
        self.allowed, self.reason, self.now = allowed, reason, now
        self.expected_seconds, self.expected_finish = expected_seconds, expected_finish
        self.peak_start, self.peak_end, self.retry_at = peak_start, peak_end, retry_at
        self.in_peak, self.timezone = in_peak, timezone
        self.task_type: str | None = None
        self.config_name: str | None = None
        self.retry_shown: str | None = None  # retry_at as a time of day in the zone (and UTC)

    @property
    def retry_after(self) -> float | None:
        """Seconds from ``now`` to ``retry_at`` (None: allowed)."""
        return None if self.retry_at is None else round(max(0.0, self.retry_at - self.now), 3)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: moments in epoch seconds, as every moment of the JSON schema (and
        as the peak_hours rule's details); ``now`` as ISO 8601, as ``can-spawn --now``."""
        return {
            "task_type": self.task_type,
            "config_name": self.config_name,
            "allowed": self.allowed,
            "reason": self.reason,
            "expected_seconds": self.expected_seconds,
            "expected_finish": self.expected_finish,
            "peak_start": self.peak_start,
            "peak_end": self.peak_end,
            "in_peak": self.in_peak,
            "retry_after": self.retry_after,
            "timezone": self.timezone,
            "now": iso(self.now),
        }

    def __repr__(self) -> str:
        return f"Verdict(allowed={self.allowed!r}, reason={self.reason!r})"


def iso(t: float | None) -> str | None:
    """``t`` as ISO 8601 in UTC (``2026-12-01T14:00:00Z``)."""
    if t is None:
        return None
    moment = datetime.fromtimestamp(t, UTC)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _human(seconds: float) -> str:
    from ringrift_coord.durations import human

    return human(seconds)


def verdict(
    peak: PeakHours, now: float, expected: float | None, task_type: str = "the task"
) -> Verdict:
    """May a task expected to run ``expected`` seconds (None: unknown) start at ``now``?"""
    found = _verdict(peak, now, expected, task_type)
    if found.retry_at is not None:
        found.retry_shown = peak.show(found.retry_at, now)
    return found


def _verdict(peak: PeakHours, now: float, expected: float | None, task_type: str) -> Verdict:
    start, end = peak.next_window(now)
    inside = start <= now
    finish = None if expected is None else now + expected
    window = f"peak hours {peak.label()}"
    fields: dict[str, Any] = {
        "now": now,
        "expected_seconds": expected,
        "expected_finish": finish,
        "peak_start": start,
        "peak_end": end,
        "in_peak": inside,
        "timezone": peak.timezone,
    }
    if inside:
        return Verdict(
            allowed=False,
            reason=f"{task_type} does not start during {window} (until {peak.show(end, now)})",
            retry_at=end,
            **fields,
        )
    if finish is None or finish <= start:
        if finish is None:
            why = "no expected duration; the next peak window starts at"
        else:
            why = f"expected to finish at {peak.show(finish, now)}, before the peak window at"
        return Verdict(
            allowed=True,
            reason=f"{task_type} may start: {why} {peak.show(start, now)}",
            retry_at=None,
            **fields,
        )
    assert expected is not None
    gap = start - peak.previous_end(now)
    if expected > gap:
        return Verdict(
            allowed=True,
            reason=f"{task_type} expected to run ~{_human(expected)}, longer than the whole "
            f"off-peak gap ({_human(gap)}): it may start at any off-peak time",
            retry_at=None,
            **fields,
        )
    return Verdict(
        allowed=False,
        reason=f"{task_type} expected to run ~{_human(expected)}, until "
        f"{peak.show(finish, now)}, into {window} (from {peak.show(start, now)})",
        retry_at=end,
        **fields,
    )


def _expected_seconds(
    tx: Tx | None, settings: Settings, task_type: str, config_name: str | None
) -> float | None:
    """The expected duration of (type, config): learned from its successful runs
    (``schedule.expected``), else the type's default; without a store, the default. The one
    place peak hours ask."""
    if tx is None:
        return settings.duration(task_type)
    from ringrift_coord.schedule import expected

    return expected.lookup(tx, settings, task_type, config_name).seconds


def verdict_at(
    tx: Tx | None,
    settings: Settings,
    task_type: str,
    config_name: str | None,
    now: float,
) -> Verdict:
    """The verdict for (type, config) at ``now`` with its expected duration."""
    peak = PeakHours.from_settings(settings)
    found = verdict(peak, now, _expected_seconds(tx, settings, task_type, config_name), task_type)
    found.task_type, found.config_name = task_type, config_name
    return found
