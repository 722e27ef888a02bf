"""The optimizer's PID controller: how much to change the self-play rate this run.

Pure: no store, no clock, no I/O. ``step(cfg, state, measurement, now)`` takes the controller's
previous state (a JSON-able dict as stored, possibly missing or garbage), one utilization
measurement in percent and the current time, and returns the output, the new state and the
figures behind it.

The output is the fraction by which to change the rate this run (positive: scale up), within
``±max_step``; the caller multiplies the rate by ``1 + output`` (``scaled_rate``). So the rate
itself accumulates the output, and every figure is relative to the rate the cluster has now.

- **Error** ``e = setpoint − measurement`` in percentage points (setpoint: the optimal target).
- **Per-run gains.** The gains are per run of ``interval`` seconds: ``dt_runs = dt / interval``,
  capped at ``MAX_RUNS`` so one late run does not count as many. Output =
  ``(Kp·e + Ki·I − Kd·ΔM/dt_runs) / 100``; the integral ``I`` accumulates ``e·dt_runs``.
- **Derivative on the measurement**, not on the error: moving the setpoint gives no kick. Over
  less than ``MIN_DERIVATIVE_RUNS`` of a run the change is taken over that much, so two runs
  seconds apart do not turn noise into a large step.
- **Gain scheduling** (when enabled): ``|e| > 20`` → gains × 1.5; ``|e| < 5`` → × 0.5.
- **Anti-windup**: ``I`` is clamped so that ``Ki·I/100`` stays within ``±max_step``; it is not
  integrated further while the output is saturated in the error's direction, nor while the
  measurement is already moving towards the setpoint (the rate integrates the output, so
  integrating a shrinking error as well only piles up overshoot); and an integral that opposes
  the present error (history from the other side of the setpoint) is halved each run, so the
  output leaves saturation within a few runs when the error flips.
- **Dead band**: while the measurement is inside the target range ``[band_min, band_max]`` the
  output is 0 and the integral decays (× 0.5 per run) — with hysteresis: a controller that was
  acting outside the range (``settling``) goes on acting inside it until the measurement (and
  the ``observed`` reading, when the measurement is a forecast blend) is within the inner band,
  halfway between each edge and the setpoint (65-75 % for 60-80 % around 70 %). Without it the
  rate would stop just inside an edge, where reading noise soon takes it out again.
- **EMA smoothing**: ``u_s = α·u + (1 − α)·u_s,prev`` with ``α = smoothing``; the smoothed
  output never carries across a change of direction (a scale-up never continues once the
  controller asks for a scale-down), and it restarts at 0 after the dead band.
- **Bounded step**: the output is within ``±max_step``.
- **Bumpless start**: with no state (or a garbage one), after a gap longer than ``max_gap``, or
  when the clock stepped back, the controller starts afresh: integral 0, no derivative, the
  smoothed output from 0; only the proportional part acts.
- **Hold**: a missing or non-finite measurement (or time) gives output 0 and leaves the state
  as it was; the next run then sees the whole time since the last measurement (and restarts
  when that is longer than ``max_gap``).

Measurements are clamped to 0..100 %; every stored figure is finite.
"""

from __future__ import annotations

import math
from typing import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings

STATE_VERSION = 1
MAX_RUNS = 2.0  # one late run integrates at most this many runs
MIN_DERIVATIVE_RUNS = 0.2  # the derivative is taken over at least this much of a run
BIG_ERROR, BIG_FACTOR = 20.0, 1.5  # |e| above: gains × BIG_FACTOR
SMALL_ERROR, SMALL_FACTOR = 5.0, 0.5  # |e| below: gains × SMALL_FACTOR
BAND_DECAY = 0.5  # the integral kept per run inside the dead band
OPPOSED_DECAY = 0.5  # ... and per run while it opposes the present error
INNER = 0.5  # settling ends this far from the setpoint, as a share of the way to the band's edge
RESOURCES = ("cpu", "gpu")


def _finite(value: Any) -> float | None:
    """``value`` as a finite float; None for anything else (bools, strings, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


class PIDConfig:
    """The controller's gains and limits (``inner``: see ``inner_band``). Values are made
    safe rather than refused (config validation is the settings' job): a non-finite or
    negative gain acts as 0, ``max_step``, ``smoothing`` and ``inner`` are kept within 0..1, a
    non-positive ``interval`` acts as 1 second."""

    __slots__ = (
        "kp",
        "ki",
        "kd",
        "gain_scheduling",
        "setpoint",
        "band_min",
        "band_max",
        "max_step",
        "smoothing",
        "interval",
        "max_gap",
        "inner",
    )

    def __init__(
        self,
        *,
        kp: float,
        ki: float,
        kd: float,
        gain_scheduling: bool,
        setpoint: float,
        band_min: float,
        band_max: float,
        max_step: float,
        smoothing: float,
        interval: float,
        max_gap: float,
        inner: float = INNER,
    ) -> None:
        self.kp = max(0.0, _finite(kp) or 0.0)
        self.ki = max(0.0, _finite(ki) or 0.0)
        self.kd = max(0.0, _finite(kd) or 0.0)
        self.gain_scheduling = bool(gain_scheduling)
        self.setpoint = _clamp(_finite(setpoint) or 0.0, 0.0, 100.0)
        self.band_min = _clamp(_finite(band_min) or 0.0, 0.0, 100.0)
        self.band_max = _clamp(_finite(band_max) or 0.0, 0.0, 100.0)
        self.max_step = _clamp(_finite(max_step) or 0.0, 0.0, 1.0)
        smoothing_value = _finite(smoothing)
        self.smoothing = 1.0 if smoothing_value is None else _clamp(smoothing_value, 0.0, 1.0)
        interval_value = _finite(interval) or 0.0
        self.interval = interval_value if interval_value > 0 else 1.0
        self.max_gap = max(0.0, _finite(max_gap) or 0.0)
        inner_value = _finite(inner)
        self.inner = INNER if inner_value is None else _clamp(inner_value, 0.0, 1.0)

    @classmethod
    def from_settings(cls, settings: Settings, resource: str) -> PIDConfig:
        """The controller for ``resource`` (``cpu`` or ``gpu``): the gains from
        ``resource_targets.pid``, the setpoint and band from ``resource_targets``, the step,
        smoothing and timing from ``optimizer``."""
        if resource not in RESOURCES:
            raise ValueError(f"resource must be one of {', '.join(RESOURCES)}: {resource!r}")
        targets = settings.get("resource_targets")
        pid = targets["pid"]
        opt = settings.get("optimizer")
        return cls(
            kp=pid["kp"],
            ki=pid["ki"],
            kd=pid["kd"],
            gain_scheduling=pid["gain_scheduling"],
            setpoint=targets[f"{resource}_target"],
            band_min=targets[f"{resource}_min"],
            band_max=targets[f"{resource}_max"],
            max_step=opt["max_step"],
            smoothing=opt["smoothing"],
            interval=opt["interval"],
            max_gap=opt["max_gap"],
        )

    def inner_band(self) -> tuple[float, float]:
        """Where settling ends: ``inner`` of the way from the setpoint to each edge of the band
        (halfway by default; 1: the band itself, i.e. no hysteresis)."""
        low = self.setpoint - (self.setpoint - self.band_min) * self.inner
        high = self.setpoint + (self.band_max - self.setpoint) * self.inner
        return max(self.band_min, min(low, high)), min(self.band_max, max(low, high))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Prev(NamedTuple):
    """The stored state's figures."""

    at: float
    measurement: float
    integral: float
    smoothed: float
    settling: bool


def _read_state(state: Any) -> _Prev | None:
    """The stored state, or None when there is none or it cannot be trusted (a key missing, a
    string, NaN, ...): the controller then starts afresh."""
    if not isinstance(state, dict):
        return None
    found = [_finite(state.get(key)) for key in ("at", "measurement", "integral", "smoothed")]
    if any(value is None for value in found):
        return None
    at, measurement, integral, smoothed = (float(value or 0.0) for value in found)
    settling = state.get("settling") is True
    return _Prev(at, _clamp(measurement, 0.0, 100.0), integral, smoothed, settling)


def _state(prev: _Prev) -> dict[str, Any]:
    return {"v": STATE_VERSION, **prev._asdict()}


def _gain_factor(cfg: PIDConfig, error: float) -> float:
    if not cfg.gain_scheduling:
        return 1.0
    if abs(error) > BIG_ERROR:
        return BIG_FACTOR
    if abs(error) < SMALL_ERROR:
        return SMALL_FACTOR
    return 1.0


def step(
    cfg: PIDConfig,
    state: dict[str, Any],
    measurement: float | None,
    now: float,
    *,
    observed: float | None = None,
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """One run of the controller → ``(output, new_state, detail)``.

    ``output``: the fraction to change the rate by this run, within ``±max_step`` (positive:
    scale up). ``new_state``: the JSON-able state to store for the next run. ``detail``: the
    figures for display: ``measurement`` (as used), ``setpoint``, ``error``, ``p``, ``i``,
    ``d`` (each term as a fraction of the rate), ``raw`` (their sum), ``smoothed``,
    ``output``, ``integral``, ``gain_factor``, ``dt_runs``, ``in_band``, ``restarted`` with
    ``restart_reason`` (``first run``, ``state unreadable``, ``gap 1234s > max_gap``,
    ``clock stepped back``), ``settling`` (acting inside the band until the inner band) and
    ``held`` (why the controller held: ``no measurement`` / ``no time``, or None).

    ``observed``: the reading itself when ``measurement`` is a forecast blend (``trend.blend``);
    settling ends only when both are inside the inner band.
    """
    prev = _read_state(state)
    m = _finite(measurement)
    t = _finite(now)
    detail: dict[str, Any] = {
        "measurement": None,
        "setpoint": cfg.setpoint,
        "band": [cfg.band_min, cfg.band_max],
        "error": None,
        "p": None,
        "i": None,
        "d": None,
        "raw": None,
        "smoothed": None,
        "output": 0.0,
        "integral": None if prev is None else prev.integral,
        "gain_factor": None,
        "dt_runs": None,
        "in_band": None,
        "settling": None,
        "restarted": False,
        "restart_reason": None,
        "held": None,
    }
    if m is None or t is None:
        detail["held"] = "no measurement" if m is None else "no time"
        kept = {} if prev is None else _state(prev)
        return 0.0, kept, detail

    m = _clamp(m, 0.0, 100.0)
    restart: str | None = None
    dt = 0.0
    if prev is None:
        restart = "first run" if not state else "state unreadable"
    else:
        dt = t - prev.at
        if dt < 0:
            restart = "clock stepped back"
        elif dt > cfg.max_gap:
            restart = f"gap {dt:.0f}s > max_gap" if dt < 1e12 else "gap > max_gap"
    dt_runs = 0.0 if restart else min(dt / cfg.interval, MAX_RUNS)
    last = None if restart else prev  # what this run continues from
    integral = 0.0 if last is None else last.integral
    prev_smoothed = 0.0 if last is None else last.smoothed

    error = cfg.setpoint - m
    factor = _gain_factor(cfg, error)
    kp, ki, kd = cfg.kp * factor, cfg.ki * factor, cfg.kd * factor
    limit = cfg.max_step * 100.0 / cfg.ki if cfg.ki > 0 else 0.0  # |I| bound (base Ki)

    def i_term(value: float) -> float:
        return _clamp(ki * value / 100.0, -cfg.max_step, cfg.max_step)

    p = kp * error / 100.0
    d = 0.0
    if last is not None and dt_runs > 0:
        d = -kd * (m - last.measurement) / max(dt_runs, MIN_DERIVATIVE_RUNS) / 100.0
    in_band = cfg.band_min <= m <= cfg.band_max
    inner_min, inner_max = cfg.inner_band()
    was_settling = last is not None and last.settling
    seen = _finite(observed)
    seen = m if seen is None else _clamp(seen, 0.0, 100.0)
    settled = inner_min <= m <= inner_max and inner_min <= seen <= inner_max
    settling = not in_band or (was_settling and not settled)
    if not settling:
        integral = _clamp(integral * BAND_DECAY**dt_runs, -limit, limit)
        raw = p + i_term(integral) + d
        smoothed = 0.0
    else:
        if integral * error < 0:
            integral *= OPPOSED_DECAY**dt_runs
        integral = _clamp(integral, -limit, limit)
        # the rate's last change is already moving the measurement towards the setpoint:
        # integrating more would only pile up overshoot (the rate itself integrates)
        approaching = last is not None and (m - last.measurement) * error > 0
        grown = integral if approaching else _clamp(integral + error * dt_runs, -limit, limit)
        raw = p + i_term(grown) + d
        if abs(raw) > cfg.max_step and raw * error > 0 and abs(grown) > abs(integral):
            raw = p + i_term(integral) + d  # saturated: integrate no further that way
        else:
            integral = grown
        bounded = _clamp(raw, -cfg.max_step, cfg.max_step)
        if bounded * prev_smoothed < 0:
            prev_smoothed = 0.0  # never carry a push the other way
        smoothed = cfg.smoothing * bounded + (1.0 - cfg.smoothing) * prev_smoothed
    output = _clamp(smoothed, -cfg.max_step, cfg.max_step)
    detail.update(
        measurement=m,
        error=error,
        p=p,
        i=i_term(integral),
        d=d,
        raw=raw,
        smoothed=smoothed,
        output=output,
        integral=integral,
        gain_factor=factor,
        dt_runs=dt_runs,
        in_band=in_band,
        settling=settling,
        restarted=restart is not None,
        restart_reason=restart,
    )
    return output, _state(_Prev(t, m, integral, output, settling)), detail


def scaled_rate(rate: float, output: float, *, rate_min: float, rate_max: float) -> float:
    """The rate after one run: ``rate × (1 + output)`` within ``rate_min``..``rate_max``."""
    return _clamp(rate * (1.0 + output), rate_min, rate_max)
