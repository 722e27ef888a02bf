"""Expected durations: the owner of ``duration_samples``.

A task type's expected duration starts as its configured default (``durations.<type>``) and
is learned, per (type, config name), from the durations of the runs that ended ``ok``
(recorded by ``slots.release`` in the transaction that frees the slot) and from durations
recorded by hand (``schedule record``). Only the newest ``schedule.samples`` of each key are
kept; from ``schedule.min_samples`` on, the estimate replaces the default.

The estimate (``robust``) is the median of the samples left after a fence in log space:
a sample x is dropped when |ln x - median(ln)| > max(3 x 1.4826 x MAD(ln), ln 4), MAD being
the median absolute deviation of the logs. Durations are skewed and multiplicative (a run
twice as long is as likely as one half as long), so distances are measured as ratios; a run
that crashed early with exit code 0, or one that hung for days before someone ended it,
must not drag the estimate. A mean moves without bound with one such run; the median does
not, and the fence keeps it from drifting towards a cluster of them once they are a
minority. 1.4826 x MAD estimates the standard deviation of normal data, so 3 of them is the
usual three-sigma cut; the ln 4 floor keeps every sample within a factor of 4 of the median,
so identical samples (MAD 0) do not make every slightly different one an outlier.
"""

from __future__ import annotations

import math

from ringrift_coord import inputs

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Tx

__all__ = [
    "MAX_SECONDS",
    "SOURCES",
    "Expected",
    "check_seconds",
    "forget",
    "lookup",
    "lookup_many",
    "record",
    "robust",
]

MAX_SECONDS = inputs.MAX_SECONDS  # about 31 years: the longest duration anything takes
SOURCES = ("run", "register", "manual", "api")
_MAD_SIGMA = 1.4826  # MAD x 1.4826 estimates the standard deviation of normal data
_FENCE_SIGMAS = 3.0
_MIN_FENCE = math.log(4.0)  # never drop a sample within a factor of 4 of the median


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def robust(samples: Sequence[float]) -> tuple[float, int]:
    """(the estimate, how many samples it used): the median of the positive ``samples``
    left after dropping those farther than the log-space MAD fence from the median of the
    logs (see the module's docstring). ``samples`` must not be empty."""
    values = [float(x) for x in samples if x > 0 and math.isfinite(x)]
    if not values:
        raise ValueError("no positive finite duration to estimate from")
    logs = [math.log(x) for x in values]
    center = _median(logs)
    mad = _median([abs(v - center) for v in logs])
    fence = max(_FENCE_SIGMAS * _MAD_SIGMA * mad, _MIN_FENCE)
    fence += 1e-9  # a sample right at the fence (4x the median: log rounding decides) stays
    kept = [x for x, v in zip(values, logs, strict=True) if abs(v - center) <= fence]
    return _median(kept), len(kept)


class Expected:
    """An expected duration: ``seconds`` (None: nothing known), ``source`` (``learned``,
    ``default`` or ``none``), ``samples`` (kept for the key), ``used`` (of them, inside the
    fence; 0 unless learned), ``needed`` (``schedule.min_samples``)."""

    __slots__ = ("seconds", "source", "samples", "used", "needed", "default_seconds")

    def __init__(
        self,
        seconds: float | None,
        source: str,
        samples: int,
        used: int,
        needed: int,
        default_seconds: float | None,
    ) -> None:
        self.seconds, self.source = seconds, source
        self.samples, self.used, self.needed = samples, used, needed
        self.default_seconds = default_seconds

    def to_dict(self) -> dict[str, object]:
        return {
            "expected_seconds": None if self.seconds is None else round(self.seconds, 3),
            "source": self.source,
            "samples": self.samples,
            "used": self.used,
            "needed": self.needed,
            "default_seconds": self.default_seconds,
        }

    def __repr__(self) -> str:
        return f"Expected({self.seconds!r}, {self.source!r}, samples={self.samples})"


def check_seconds(value: float, field: str = "seconds") -> float:
    """A recorded duration: positive, finite, at most 1e9 s."""
    from ringrift_coord.errors import UsageError

    if not 0 < value < float("inf"):  # also refuses nan
        raise UsageError(f"{value:g} is not a duration: it must be more than 0", field=field)
    if value > MAX_SECONDS:
        raise UsageError(f"{value:g} is more than 1e9 seconds (about 31 years)", field=field)
    return float(value)


def _estimate(
    settings: Settings, task_type: str, seconds: list[float]
) -> Expected:  # seconds: the key's kept samples
    needed = int(settings.get("schedule.min_samples"))
    default = settings.duration(task_type)
    if seconds and len(seconds) >= needed:
        value, used = robust(seconds)
        return Expected(value, "learned", len(seconds), used, needed, default)
    if default is not None:
        return Expected(float(default), "default", len(seconds), 0, needed, default)
    return Expected(None, "none", len(seconds), 0, needed, None)


def lookup(tx: Tx, settings: Settings, task_type: str, config_name: str | None) -> Expected:
    """The expected duration of (type, config name); no config name is the key (type, '')."""
    return lookup_many(tx, settings, [(task_type, config_name)])[(task_type, config_name or "")]


def lookup_many(
    tx: Tx, settings: Settings, keys: Iterable[tuple[str, str | None]]
) -> dict[tuple[str, str], Expected]:
    """The expected durations of several (type, config name) keys, read in one query; the
    result is keyed by (type, config name or '')."""
    wanted = sorted({(t, c or "") for t, c in keys})
    if not wanted:
        return {}
    found: dict[tuple[str, str], list[float]] = {key: [] for key in wanted}
    where = " OR ".join("(task_type = ? AND config_name = ?)" for _ in wanted)
    args = [part for key in wanted for part in key]
    for row in tx.query(
        f"SELECT task_type, config_name, seconds FROM duration_samples WHERE {where}", args
    ):
        found[(row["task_type"], row["config_name"])].append(float(row["seconds"]))
    return {key: _estimate(settings, key[0], found[key]) for key in wanted}


def record(
    tx: Tx,
    settings: Settings,
    task_type: str,
    config_name: str | None,
    seconds: float,
    now: float,
    source: str,
    task_id: str | None = None,
) -> None:
    """Add one duration of (type, config name) and keep only the newest ``schedule.samples``
    of that key."""
    check_seconds(seconds)
    config = config_name or ""
    tx.execute(
        "INSERT INTO duration_samples (task_type, config_name, seconds, at, source, task_id) "
        "VALUES (?,?,?,?,?,?)",
        (task_type, config, float(seconds), now, source, task_id),
    )
    keep = int(settings.get("schedule.samples"))
    tx.execute(
        "DELETE FROM duration_samples WHERE task_type = ? AND config_name = ? AND id NOT IN "
        "(SELECT id FROM duration_samples WHERE task_type = ? AND config_name = ? "
        "ORDER BY at DESC, id DESC LIMIT ?)",
        (task_type, config, task_type, config, keep),
    )


def forget(tx: Tx, task_type: str, config_name: str | None, all_configs: bool = False) -> int:
    """Delete the samples of (type, config name), or of every config of the type with
    ``all_configs``; how many were deleted. The key goes back to its default."""
    if all_configs:
        return tx.execute("DELETE FROM duration_samples WHERE task_type = ?", (task_type,))
    return tx.execute(
        "DELETE FROM duration_samples WHERE task_type = ? AND config_name = ?",
        (task_type, config_name or ""),
    )


def samples(tx: Tx, task_type: str, config_name: str | None) -> list[dict[str, object]]:
    """The kept samples of a key, newest first (seconds, at, source, task_id)."""
    return [
        dict(row)
        for row in tx.query(
            "SELECT seconds, at, source, task_id FROM duration_samples WHERE task_type = ? "
            "AND config_name = ? ORDER BY at DESC, id DESC",
            (task_type, config_name or ""),
        )
    ]
