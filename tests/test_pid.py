"""The optimizer's PID controller (``optimizer/pid.py``): each behaviour on its own, property
tests over any sequence of measurements and time steps, and closed-loop simulations of a
cluster whose utilization follows the admitted self-play jobs.

Everything here is pure: time is a number handed to ``step``, noise comes from a seeded
``random.Random``.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringrift_coord.config import apply_assignments, load_settings
from ringrift_coord.optimizer import pid
from ringrift_coord.optimizer.pid import PIDConfig, scaled_rate, step
from ringrift_coord.optimizer.trend import blend, forecast

INTERVAL = 300.0
T0 = 1_700_000_000.0


def make_cfg(**over: Any) -> PIDConfig:
    """The reference controller (the shipped defaults), with ``over`` changed."""
    values: dict[str, Any] = {
        "kp": 0.3,
        "ki": 0.05,
        "kd": 0.1,
        "gain_scheduling": True,
        "setpoint": 70.0,
        "band_min": 60.0,
        "band_max": 80.0,
        "max_step": 0.2,
        "smoothing": 0.5,
        "interval": INTERVAL,
        "max_gap": 900.0,
    }
    values.update(over)
    return PIDConfig(**values)


def run_steps(
    cfg: PIDConfig, measurements: list[float | None], start: float = T0, every: float = INTERVAL
) -> tuple[list[float], dict[str, Any], list[dict[str, Any]]]:
    """Feed ``measurements`` one run apart, the state going through JSON as the store keeps it."""
    state: dict[str, Any] = {}
    outputs, details = [], []
    for k, m in enumerate(measurements):
        out, state, detail = step(cfg, state, m, start + k * every)
        state = json.loads(json.dumps(state, allow_nan=False))
        outputs.append(out)
        details.append(detail)
    return outputs, state, details


# --------------------------------------------------------------------------- configuration


def test_from_settings_reads_the_reference_gains_targets_and_timing() -> None:
    settings = load_settings(None, env={}, use_default_file=False)
    gpu = PIDConfig.from_settings(settings, "gpu")
    assert (gpu.kp, gpu.ki, gpu.kd, gpu.gain_scheduling) == (0.3, 0.05, 0.1, True)
    assert (gpu.setpoint, gpu.band_min, gpu.band_max) == (70, 60, 80)
    assert (gpu.max_step, gpu.smoothing, gpu.interval, gpu.max_gap) == (0.2, 0.5, 300, 900)

    apply_assignments(
        settings,
        [
            "resource_targets.cpu_target=65",
            "resource_targets.cpu_min=50",
            "resource_targets.pid.kd=0.2",
            "optimizer.max_step=0.1",
        ],
        "--set",
    )
    cpu = PIDConfig.from_settings(settings, "cpu")
    assert (cpu.setpoint, cpu.band_min, cpu.band_max, cpu.kd, cpu.max_step) == (
        65,
        50,
        80,
        0.2,
        0.1,
    )
    assert PIDConfig.from_settings(settings, "gpu").setpoint == 70
    with pytest.raises(ValueError, match="cpu, gpu"):
        PIDConfig.from_settings(settings, "disk")


def test_config_makes_nonsense_safe_instead_of_dividing_by_it() -> None:
    cfg = make_cfg(
        kp=float("nan"), ki=-1.0, kd=float("inf"), max_step=7.0, smoothing=-2.0, interval=0.0
    )
    assert (cfg.kp, cfg.ki, cfg.kd, cfg.max_step, cfg.smoothing, cfg.interval) == (
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        1.0,
    )
    assert cfg.inner_band() == (65.0, 75.0)
    assert make_cfg(inner=1.0).inner_band() == (60.0, 80.0)
    assert make_cfg(inner=float("nan")).inner == 0.5


# --------------------------------------------------------------------------- behaviours


def test_first_run_is_bumpless_only_the_proportional_part_acts() -> None:
    cfg = make_cfg()
    out, state, detail = step(cfg, {}, 40.0, T0)
    assert detail["restarted"] is True and detail["restart_reason"] == "first run"
    assert detail["error"] == 30.0 and detail["gain_factor"] == 1.5
    assert detail["p"] == pytest.approx(0.3 * 1.5 * 30 / 100)
    assert detail["i"] == 0.0 and detail["d"] == 0.0 and detail["integral"] == 0.0
    # the smoothed output starts from 0: half the proportional step
    assert out == pytest.approx(0.5 * 0.135)
    assert state["at"] == T0 and state["measurement"] == 40.0 and state["settling"] is True


@pytest.mark.parametrize(
    ("measurement", "factor"),
    [(40.0, 1.5), (49.0, 1.5), (50.0, 1.0), (59.0, 1.0), (85.0, 1.0), (95.0, 1.5)],
)
def test_gain_scheduling_large_errors_times_1_5(measurement: float, factor: float) -> None:
    _, _, detail = step(make_cfg(), {}, measurement, T0)
    error = 70.0 - measurement
    assert detail["gain_factor"] == factor
    assert detail["p"] == pytest.approx(0.3 * factor * error / 100)


def test_gain_scheduling_small_errors_times_0_5_and_off_when_disabled() -> None:
    narrow = make_cfg(band_min=69.0, band_max=71.0)  # so |e| < 5 lies outside the band
    _, _, detail = step(narrow, {}, 66.0, T0)
    assert detail["gain_factor"] == 0.5
    assert detail["p"] == pytest.approx(0.3 * 0.5 * 4 / 100)
    for m in (40.0, 66.0):
        _, _, plain = step(make_cfg(band_min=69.0, band_max=71.0, gain_scheduling=False), {}, m, T0)
        assert plain["gain_factor"] == 1.0
        assert plain["p"] == pytest.approx(0.3 * (70 - m) / 100)


def test_dead_band_holds_and_the_integral_halves_per_run() -> None:
    cfg = make_cfg()
    state = {"at": T0, "measurement": 70.0, "integral": 80.0, "smoothed": 0.0}
    integrals = []
    for k in range(1, 4):
        out, state, detail = step(cfg, state, 76.0, T0 + k * INTERVAL)  # in band, not settling
        assert out == 0.0 and detail["in_band"] is True and detail["settling"] is False
        integrals.append(state["integral"])
    assert integrals == [40.0, 20.0, 10.0]
    # half a run decays by √0.5
    _, half, _ = step(cfg, state, 70.0, T0 + 3.5 * INTERVAL)
    assert half["integral"] == pytest.approx(10.0 * math.sqrt(0.5))


def test_dead_band_with_hysteresis_settles_into_the_inner_band() -> None:
    """Coming from below, the controller goes on acting inside the band until the measurement
    reaches the inner band (65-75 %), then holds anywhere inside 60-80 %."""
    cfg = make_cfg()
    outs, _, details = run_steps(cfg, [50.0, 61.0, 63.0, 66.0, 62.0, 79.0, 81.0, 78.0, 74.0])
    assert outs[0] > 0 and details[0]["settling"] is True
    assert outs[1] > 0 and outs[2] > 0  # in band, still settling
    assert details[1]["in_band"] is True and details[1]["settling"] is True
    assert outs[3:6] == [0.0, 0.0, 0.0]  # inner band reached: holds inside 60-80
    assert outs[6] < 0  # above the band
    assert outs[7] < 0 and details[7]["settling"] is True  # back in band: settles down to 75
    assert outs[8] == 0.0
    # inner=1: no hysteresis, the plain dead band holds from the band's edge
    plain, _, _ = run_steps(make_cfg(inner=1.0), [50.0, 61.0, 63.0])
    assert plain[0] > 0 and plain[1:] == [0.0, 0.0]
    # a first run inside the band holds: nothing to settle from
    out, _, detail = step(cfg, {}, 62.0, T0)
    assert out == 0.0 and detail["settling"] is False


def test_settling_waits_for_the_observed_reading_too() -> None:
    """A forecast blend inside the inner band does not end settling while the reading itself
    is still outside it."""
    cfg = make_cfg()
    out, state, _ = step(cfg, {}, 59.0, T0)
    held, _, _ = step(cfg, state, 66.0, T0 + INTERVAL)
    assert held == 0.0
    out, state, detail = step(cfg, state, 66.0, T0 + INTERVAL, observed=61.0)
    assert out > 0 and detail["settling"] is True
    out, state, detail = step(cfg, state, 67.0, T0 + 2 * INTERVAL, observed=66.0)
    assert out == 0.0 and detail["settling"] is False


def test_anti_windup_output_leaves_saturation_within_a_few_runs_when_the_error_flips() -> None:
    """The rate at its maximum and the cluster stuck at 50 % for 50 runs: the output saturates,
    the integral stays bounded; when utilization jumps to 90 % the output turns negative
    within two runs (no run keeps scaling up at 90 %... beyond the first)."""
    cfg = make_cfg()
    outs, state, details = run_steps(cfg, [50.0] * 50 + [90.0] * 6)
    assert all(abs(o) <= 0.2 for o in outs)
    assert max(outs[:50]) == pytest.approx(0.2)  # saturated
    for d in details:
        assert abs(0.05 * d["integral"] / 100) <= 0.2 + 1e-12  # clamped
    after = outs[50:]
    flipped = next(k for k, o in enumerate(after) if o < 0)
    assert flipped <= 2, after
    assert all(o < 0 for o in after[flipped:])


def test_anti_windup_no_integration_while_saturated_in_the_errors_direction() -> None:
    """At 20 % the proportional part alone saturates the output: 30 runs there add nothing to
    the integral, so reaching the band takes no unwinding."""
    _, state, details = run_steps(make_cfg(), [20.0] * 30)
    assert all(d["integral"] == 0.0 for d in details)
    assert all(d["raw"] > 0.2 for d in details)


def test_integral_does_not_grow_while_the_measurement_approaches_the_setpoint() -> None:
    cfg = make_cfg()
    _, _, rising = run_steps(cfg, [40.0, 45.0, 50.0, 55.0])
    assert [d["integral"] for d in rising] == [0.0, 0.0, 0.0, 0.0]
    _, _, stuck = run_steps(cfg, [45.0, 45.0, 45.0])
    assert [d["integral"] for d in stuck] == [0.0, 25.0, 50.0]


def test_derivative_on_measurement_no_kick_when_the_setpoint_moves() -> None:
    low, high = make_cfg(), make_cfg(setpoint=75.0, band_min=65.0, band_max=85.0)
    _, state, _ = step(low, {}, 50.0, T0)
    _, _, moved = step(high, state, 50.0, T0 + INTERVAL)  # setpoint 70 → 75, same reading
    assert moved["d"] == 0.0
    assert moved["error"] == 25.0
    # a change of the measurement does give a derivative: against the movement
    _, _, rising = step(low, state, 54.0, T0 + INTERVAL)
    assert rising["d"] == pytest.approx(-0.1 * 1.0 * 4.0 / 100)
    _, _, falling = step(low, state, 46.0, T0 + INTERVAL)
    assert falling["d"] == pytest.approx(+0.1 * 1.5 * 4.0 / 100)


def test_derivative_over_a_short_run_is_taken_over_a_fifth_of_a_run() -> None:
    cfg = make_cfg()
    _, state, _ = step(cfg, {}, 50.0, T0)
    _, _, quick = step(cfg, state, 52.0, T0 + 3.0)  # 3 s later
    assert quick["dt_runs"] == pytest.approx(0.01)
    assert quick["d"] == pytest.approx(-0.1 * 2.0 / 0.2 / 100)


def test_bumpless_restart_after_a_gap_longer_than_max_gap() -> None:
    cfg = make_cfg()
    _, state, _ = run_steps(cfg, [45.0, 45.0, 45.0, 45.0])
    assert state["integral"] > 0 and state["smoothed"] > 0
    last = state["at"]
    out, fresh, detail = step(cfg, state, 30.0, last + 901.0)
    assert detail["restarted"] is True
    assert detail["restart_reason"] == "gap 901s > max_gap"
    assert detail["integral"] == 0.0 and detail["d"] == 0.0 and detail["dt_runs"] == 0.0
    assert out == pytest.approx(0.5 * 0.3 * 1.5 * 40 / 100)  # only P, smoothed from 0
    # exactly max_gap is no gap: integrated, but as at most two runs
    _, state, _ = run_steps(cfg, [50.0, 50.0])
    assert state["integral"] == 20.0
    _, _, late = step(cfg, state, 50.0, state["at"] + 900.0)
    assert late["restarted"] is False and late["dt_runs"] == 2.0
    assert late["integral"] == pytest.approx(20.0 + 20.0 * 2)


def test_clock_stepped_back_restarts_bumplessly() -> None:
    cfg = make_cfg()
    _, state, _ = run_steps(cfg, [45.0, 45.0, 45.0])
    out, new, detail = step(cfg, state, 45.0, state["at"] - 1.0)
    assert detail["restarted"] is True and detail["restart_reason"] == "clock stepped back"
    assert detail["integral"] == 0.0 and detail["d"] == 0.0
    assert out == pytest.approx(0.5 * 0.3 * 1.5 * 25 / 100)
    assert new["at"] == state["at"] - 1.0


def test_a_run_at_the_same_moment_integrates_nothing() -> None:
    cfg = make_cfg()
    _, state, _ = run_steps(cfg, [45.0, 45.0])
    _, again, detail = step(cfg, state, 40.0, state["at"])
    assert detail["restarted"] is False and detail["dt_runs"] == 0.0
    assert detail["d"] == 0.0 and again["integral"] == state["integral"]


def test_ema_smoothing_of_the_output() -> None:
    pure_p = {"ki": 0.0, "kd": 0.0}
    outs, _, details = run_steps(make_cfg(**pure_p), [55.0, 55.0, 55.0])
    u = 0.3 * 1.0 * 15 / 100
    assert details[0]["raw"] == pytest.approx(u)
    assert outs == pytest.approx([0.5 * u, 0.75 * u, 0.875 * u])
    unsmoothed, _, _ = run_steps(make_cfg(smoothing=1.0, **pure_p), [55.0, 55.0])
    assert unsmoothed == pytest.approx([u, u])
    heavy, _, _ = run_steps(make_cfg(smoothing=0.2, **pure_p), [55.0, 55.0])
    assert heavy == pytest.approx([0.2 * u, 0.2 * u + 0.8 * 0.2 * u])


def test_smoothing_never_carries_a_push_the_other_way() -> None:
    outs, _, _ = run_steps(make_cfg(ki=0.0, kd=0.0), [30.0, 30.0, 85.0])
    assert outs[1] > 0
    assert outs[2] == pytest.approx(0.5 * 0.3 * -15 / 100)


def test_output_is_bounded_by_max_step() -> None:
    outs, _, details = run_steps(make_cfg(smoothing=1.0), [0.0, 0.0, 100.0])
    assert outs == [0.2, 0.2, -0.2]
    assert details[0]["raw"] > 0.2
    small, _, _ = run_steps(make_cfg(smoothing=1.0, max_step=0.05), [0.0, 100.0])
    assert small == [0.05, -0.05]


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_no_measurement_holds_and_keeps_the_state(bad: float | None) -> None:
    cfg = make_cfg()
    _, state, _ = run_steps(cfg, [45.0, 45.0])
    out, kept, detail = step(cfg, state, bad, state["at"] + INTERVAL)
    assert out == 0.0 and detail["held"] == "no measurement"
    assert kept == state
    # the next measurement continues from the last real one: two runs of time
    _, _, after = step(cfg, kept, 45.0, state["at"] + 2 * INTERVAL)
    assert after["restarted"] is False and after["dt_runs"] == 2.0
    # held long enough, it restarts
    _, _, later = step(cfg, kept, 45.0, state["at"] + 4 * INTERVAL)
    assert later["restarted"] is True


def test_no_time_holds() -> None:
    out, kept, detail = step(make_cfg(), {}, 50.0, float("nan"))
    assert (out, kept, detail["held"]) == (0.0, {}, "no time")


@pytest.mark.parametrize(
    "garbage",
    [
        {"at": "yesterday", "measurement": 50, "integral": 0, "smoothed": 0},
        {"at": T0, "measurement": float("nan"), "integral": 0, "smoothed": 0},
        {"at": T0, "measurement": 50, "integral": float("inf"), "smoothed": 0},
        {"at": T0, "measurement": 50, "integral": 0},
        {"at": True, "measurement": 50, "integral": 0, "smoothed": 0},
        {"unrelated": [1, 2, 3]},
        [1, 2],
        "state",
    ],
)
def test_garbage_state_is_no_state(garbage: Any) -> None:
    out, state, detail = step(make_cfg(), garbage, 40.0, T0 + INTERVAL)
    assert detail["restarted"] is True and detail["restart_reason"] == "state unreadable"
    assert out == pytest.approx(0.5 * 0.135)
    json.dumps(state, allow_nan=False)
    json.dumps(detail, allow_nan=False)


def test_measurements_outside_0_100_are_clamped() -> None:
    _, state, detail = step(make_cfg(), {}, 250.0, T0)
    assert detail["measurement"] == 100.0 and state["measurement"] == 100.0
    _, _, detail = step(make_cfg(), {}, -5.0, T0)
    assert detail["measurement"] == 0.0 and detail["error"] == 70.0


def test_scaled_rate_moves_by_the_output_within_the_bounds() -> None:
    assert scaled_rate(1000, 0.2, rate_min=100, rate_max=5000) == pytest.approx(1200)
    assert scaled_rate(1000, -0.2, rate_min=100, rate_max=5000) == pytest.approx(800)
    assert scaled_rate(4500, 0.2, rate_min=100, rate_max=5000) == 5000
    assert scaled_rate(110, -0.2, rate_min=100, rate_max=5000) == 100


# --------------------------------------------------------------------------- properties

WILD_MEASUREMENTS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-50, max_value=150),
    st.floats(min_value=0, max_value=100),
    st.sampled_from([0.0, 55.0, 60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 100.0]),
)
TIME_STEPS = st.one_of(
    st.just(0.0),
    st.floats(min_value=-1e7, max_value=-1e-9),  # the clock steps back
    st.floats(min_value=1e-9, max_value=1.0),  # tiny
    st.floats(min_value=1.0, max_value=2000.0),
    st.floats(min_value=1e5, max_value=1e12),  # huge
    st.sampled_from([60.0, 300.0, 600.0, 900.0, 901.0]),
)
CONFIGS = st.builds(
    lambda kp, ki, kd, sched, points, step_, alpha, interval, gap: make_cfg(
        kp=kp,
        ki=ki,
        kd=kd,
        gain_scheduling=sched,
        band_min=points[0],
        setpoint=points[1],
        band_max=points[2],
        max_step=step_,
        smoothing=alpha,
        interval=interval,
        max_gap=gap,
    ),
    st.floats(0, 10),
    st.floats(0, 10),
    st.floats(0, 10),
    st.booleans(),
    st.lists(st.floats(0, 100), min_size=3, max_size=3).map(sorted),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(1, 3600),
    st.floats(0, 1e5),
) | st.just(make_cfg())


def finite_json(value: Any) -> None:
    """``value`` is JSON without NaN/inf (json.dumps refuses them with allow_nan=False)."""
    json.dumps(value, allow_nan=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=CONFIGS,
    runs=st.lists(st.tuples(WILD_MEASUREMENTS, TIME_STEPS), min_size=1, max_size=40),
    observed=st.booleans(),
)
def test_any_sequence_keeps_output_bounded_and_state_finite(
    cfg: PIDConfig, runs: list[tuple[float | None, float]], observed: bool
) -> None:
    state: dict[str, Any] = {}
    now = T0
    rate, rate_min, rate_max = 1000.0, 100.0, 5000.0
    for measurement, dt in runs:
        now += dt
        seen = None if measurement is None or not observed else measurement * 0.9
        out, state, detail = step(cfg, state, measurement, now, observed=seen)
        assert -cfg.max_step <= out <= cfg.max_step
        assert math.isfinite(out)
        finite_json(state)
        finite_json(detail)
        if state:
            assert cfg.ki * abs(state["integral"]) / 100 <= cfg.max_step + 1e-9
            assert abs(state["smoothed"]) <= cfg.max_step
            assert 0.0 <= state["measurement"] <= 100.0
        # the step bound: the rate moves by at most max_step of itself per run
        new_rate = scaled_rate(rate, out, rate_min=rate_min, rate_max=rate_max)
        assert abs(new_rate - rate) <= cfg.max_step * rate + 1e-9
        assert rate_min <= new_rate <= rate_max
        rate = new_rate
        state = json.loads(json.dumps(state))  # as stored


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers()
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
STATE_KEYS = st.sampled_from(["at", "measurement", "integral", "smoothed", "settling", "v"])


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.dictionaries(
        STATE_KEYS, JSON_VALUES | st.floats(allow_nan=True, allow_infinity=True)
    )
    | JSON_VALUES,
    measurement=WILD_MEASUREMENTS,
    now=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 2e9),
)
def test_any_stored_state_gives_a_bounded_output_and_a_clean_state(
    garbage: Any, measurement: float | None, now: float
) -> None:
    cfg = make_cfg()
    out, state, detail = step(cfg, garbage, measurement, now)
    assert -0.2 <= out <= 0.2
    finite_json(state)
    finite_json(detail)
    assert state == {} or set(state) == {
        "v",
        "at",
        "measurement",
        "integral",
        "smoothed",
        "settling",
    }


# --------------------------------------------------------------------------- closed loop

RATE_MIN, RATE_MAX = 100.0, 5000.0
CAPACITY = 240  # jobs the cluster's nodes may run at rate.max: 10 nodes × 24
FULL = 200  # jobs that make the cluster 100 % busy
BASE = 2.0  # utilization with no self-play


def plant(jobs: int) -> float:
    """The cluster's utilization with ``jobs`` self-play jobs running."""
    return min(100.0, BASE + (100.0 - BASE) * jobs / FULL)


def jobs_for(rate: float) -> int:
    return round(CAPACITY * rate / RATE_MAX)


def rate_for(utilization: float) -> float:
    return (utilization - BASE) / (100.0 - BASE) * FULL / CAPACITY * RATE_MAX


def simulate(
    start: float, seed: int, *, noise: float, lag: int, runs: int = 60, use_trend: bool = False
) -> list[float]:
    """``runs`` adjust runs; returns the readings. The rate sets the jobs
    (``round(capacity × rate / rate.max)``); a reading sees the jobs of ``lag`` runs before the
    last decision (jobs take that long to start), plus Gaussian noise of ``noise`` points."""
    rnd = random.Random(seed)
    cfg = make_cfg()
    rate = rate_for(start)
    running = [jobs_for(rate)] * (lag + 1)
    state: dict[str, Any] = {}
    readings: list[float] = []
    samples: list[tuple[float, float]] = []
    for k in range(runs):
        now = T0 + k * INTERVAL
        reading = plant(running[0]) + rnd.gauss(0.0, noise)
        readings.append(reading)
        measurement = reading
        if use_trend:
            samples.append((now, reading))
            fc = forecast(samples, now, window=1800, horizon=300, min_samples=3)
            measurement = blend(reading, fc)
        out, state, _ = step(cfg, state, measurement, now, observed=reading)
        state = json.loads(json.dumps(state, allow_nan=False))
        rate = scaled_rate(rate, out, rate_min=RATE_MIN, rate_max=RATE_MAX)
        running = [*running[1:], jobs_for(rate)]
    return readings


def settle_steps(readings: list[float]) -> int | None:
    """Runs until the first reading inside 60-80 %, when none after it leaves; else None."""
    inside = [60.0 <= r <= 80.0 for r in readings]
    if True not in inside:
        return None
    first = inside.index(True)
    return first if all(inside[first:]) else None


@pytest.mark.parametrize(
    ("lag", "use_trend"),
    [(0, False), (1, False), (1, True)],
    ids=["no-lag", "one-run-lag", "one-run-lag+trend"],
)
@pytest.mark.parametrize("start", [20.0, 98.0])
def test_closed_loop_settles_inside_the_band_and_stays(
    start: float, lag: int, use_trend: bool
) -> None:
    """From 20 % and from 98 % the loop enters 60-80 % and never leaves it over 60 runs, for
    40 seeds of reading noise (σ 1 point), without and with a one-run lag (a reading sees the
    jobs admitted two runs before). With the trend blend the PID acts on
    ``blend(reading, forecast)`` and passes the reading as ``observed``."""
    steps = []
    for seed in range(40):
        readings = simulate(start, seed, noise=1.0, lag=lag, use_trend=use_trend)
        found = settle_steps(readings)
        assert found is not None, (seed, [round(r, 1) for r in readings])
        steps.append(found)
        assert abs(readings[-1] - 70.0) <= 10.0
    print(
        f"start {start:.0f}% lag {lag} trend {use_trend}: settled in {min(steps)}-{max(steps)} runs"
    )
    assert max(steps) <= (14 if start < 50 else 6)


def test_closed_loop_without_noise_ends_inside_the_inner_band() -> None:
    for start in (20.0, 98.0):
        for lag in (0, 1):
            readings = simulate(start, 0, noise=0.0, lag=lag)
            assert settle_steps(readings) is not None
            assert all(65.0 <= r <= 75.0 for r in readings[-20:]), readings


def test_reference_constants_are_the_contract() -> None:
    assert (pid.BIG_ERROR, pid.BIG_FACTOR, pid.SMALL_ERROR, pid.SMALL_FACTOR) == (20, 1.5, 5, 0.5)
    assert pid.BAND_DECAY == 0.5
