"""Predictive scaling: a straight line fitted to recent utilization samples, and how much to
trust it.

Pure: no store, no clock. ``forecast`` fits a least-squares line to the samples of the last
``window`` seconds and reads it ``horizon`` seconds ahead; its confidence is the fit's R²
scaled down while there are few samples (``R² × min(1, n / (2 × min_samples))``), and 0 with
fewer than ``min_samples`` samples or all of them at one moment. ``blend`` moves a measurement
towards the forecast by that confidence: what the PID controller then acts on.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _percent(value: float) -> float:
    return min(100.0, max(0.0, value))


def forecast(
    samples: list[tuple[float, float]],
    now: float,
    *,
    window: float,
    horizon: float,
    min_samples: int,
) -> dict[str, Any]:
    """The utilization forecast at ``now + horizon`` from ``samples`` (``(at, value)`` pairs
    in any order).

    Samples with a non-finite time or value, older than ``now − window`` or later than ``now``
    are left out; values are taken as percentages (clamped to 0..100). Returns ``value`` (the
    forecast, clamped to 0..100, or None), ``slope_per_min`` (percentage points per minute,
    or None), ``confidence`` (0..1), ``samples`` (how many were used) and ``r2`` (the fit's
    R², 1 when every value is equal: a flat line fits perfectly; None without a fit)."""
    t_now = _finite(now)
    span = _finite(window)
    ahead = _finite(horizon) or 0.0
    used: list[tuple[float, float]] = []
    if t_now is not None:
        oldest = t_now - span if span is not None else -math.inf
        for at, value in samples:
            a, v = _finite(at), _finite(value)
            if a is not None and v is not None and oldest <= a <= t_now:
                used.append(((a - t_now) / 60.0, _percent(v)))  # minutes before now
    n = len(used)
    none: dict[str, Any] = {
        "value": None,
        "slope_per_min": None,
        "confidence": 0.0,
        "samples": n,
        "r2": None,
    }
    if n < max(1, min_samples) or n < 2:
        return none
    try:
        mean_x = math.fsum(x for x, _ in used) / n
        mean_y = math.fsum(y for _, y in used) / n
        sxx = math.fsum((x - mean_x) ** 2 for x, _ in used)
        sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in used)
        syy = math.fsum((y - mean_y) ** 2 for _, y in used)
    except OverflowError:
        return none  # times too far apart to fit
    if not sxx > 0 or not all(math.isfinite(s) for s in (sxx, sxy, syy)):
        return none  # every sample at one moment
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    value = intercept + slope * ahead / 60.0
    if syy > 0:
        r2 = min(1.0, max(0.0, slope * (sxy / syy)))
    else:
        r2 = 1.0  # every value equal: the flat line fits perfectly
    if not all(math.isfinite(f) for f in (slope, value, r2)):
        return none
    confidence = r2 * min(1.0, n / (2.0 * min_samples)) if min_samples > 0 else r2
    return {
        "value": _percent(value),
        "slope_per_min": slope,
        "confidence": min(1.0, max(0.0, confidence)),
        "samples": n,
        "r2": r2,
    }


def blend(measured: float, fc: dict[str, Any]) -> float:
    """``measured`` moved towards the forecast by its confidence, clamped to 0..100; the
    measurement as it is without a forecast (a non-finite one is returned unchanged, for the
    controller to hold on)."""
    m = _finite(measured)
    if m is None:
        return measured
    value = _finite(fc.get("value"))
    confidence = _finite(fc.get("confidence"))
    if value is None or confidence is None:
        return m
    weight = min(1.0, max(0.0, confidence))
    return _percent(m + weight * (value - m))
