"""The utilization trend (``optimizer/trend.py``): the least-squares forecast, its confidence,
the samples it leaves out, and the blend the PID controller acts on. Pure: time is a number.
"""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord.optimizer.trend import blend, forecast

NOW = 1_700_000_000.0
DEFAULTS = {"window": 1800.0, "horizon": 300.0, "min_samples": 3}


def line(n: int, *, slope_per_min: float, at_now: float, every: float = 60.0) -> list:
    """``n`` samples ``every`` seconds apart ending at NOW, on a straight line."""
    return [(NOW - k * every, at_now - slope_per_min * k * every / 60.0) for k in range(n)]


def test_a_straight_line_is_forecast_exactly_with_full_confidence() -> None:
    fc = forecast(line(10, slope_per_min=0.5, at_now=50.0), NOW, **DEFAULTS)
    assert fc["slope_per_min"] == pytest.approx(0.5)
    assert fc["value"] == pytest.approx(50.0 + 0.5 * 5)  # 5 minutes ahead
    assert fc["r2"] == pytest.approx(1.0)
    assert fc["confidence"] == pytest.approx(1.0)
    assert fc["samples"] == 10
    falling = forecast(line(10, slope_per_min=-2.0, at_now=60.0), NOW, **DEFAULTS)
    assert falling["value"] == pytest.approx(50.0) and falling["slope_per_min"] == -2.0


@pytest.mark.parametrize(("n", "confidence"), [(3, 0.5), (4, 4 / 6), (6, 1.0), (9, 1.0)])
def test_confidence_grows_with_the_samples_up_to_twice_min_samples(
    n: int, confidence: float
) -> None:
    fc = forecast(line(n, slope_per_min=1.0, at_now=40.0), NOW, **DEFAULTS)
    assert fc["r2"] == pytest.approx(1.0)
    assert fc["confidence"] == pytest.approx(confidence)


def test_confidence_is_r2_times_the_sample_factor_for_a_noisy_trend() -> None:
    rnd = random.Random(7)
    samples = [(at, v + rnd.gauss(0, 3)) for at, v in line(12, slope_per_min=0.5, at_now=60.0)]
    fc = forecast(samples, NOW, **DEFAULTS)
    assert 0.0 < fc["r2"] < 1.0
    assert fc["confidence"] == pytest.approx(fc["r2"])  # 12 ≥ 2 × 3 samples
    scattered = [(NOW - k * 60, 50 + (10 if k % 2 else -10)) for k in range(12)]
    assert forecast(scattered, NOW, **DEFAULTS)["confidence"] < 0.05


def test_fewer_than_min_samples_give_no_forecast() -> None:
    fc = forecast(line(2, slope_per_min=1.0, at_now=50.0), NOW, **DEFAULTS)
    assert fc == {"value": None, "slope_per_min": None, "confidence": 0.0, "samples": 2, "r2": None}
    assert forecast([], NOW, **DEFAULTS)["samples"] == 0


def test_samples_at_one_moment_give_no_forecast() -> None:
    fc = forecast([(NOW, 40.0), (NOW, 60.0), (NOW, 50.0)], NOW, **DEFAULTS)
    assert fc["value"] is None and fc["confidence"] == 0.0 and fc["samples"] == 3


def test_equal_values_fit_a_flat_line_perfectly() -> None:
    fc = forecast(line(5, slope_per_min=0.0, at_now=42.0), NOW, **DEFAULTS)
    assert fc["r2"] == 1.0 and fc["slope_per_min"] == 0.0 and fc["value"] == 42.0
    assert fc["confidence"] == pytest.approx(5 / 6)


def test_only_the_window_counts_and_bad_samples_are_left_out() -> None:
    recent = line(5, slope_per_min=1.0, at_now=50.0)
    old = [(NOW - 4000.0, 0.0), (NOW - 1801.0, 100.0)]  # outside the 1800 s window
    bad = [(NOW - 30, math.nan), (NOW - 90, math.inf), (math.nan, 50.0), (NOW + 60, 99.0)]
    fc = forecast(recent + old + bad, NOW, **DEFAULTS)
    assert fc["samples"] == 5
    assert fc["value"] == pytest.approx(55.0)
    assert forecast(recent + [(NOW - 1800.0, 20.0)], NOW, **DEFAULTS)["samples"] == 6


def test_sample_order_does_not_matter() -> None:
    samples = line(8, slope_per_min=0.7, at_now=30.0)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    assert forecast(shuffled, NOW, **DEFAULTS) == pytest.approx(forecast(samples, NOW, **DEFAULTS))


def test_forecast_is_clamped_to_0_100() -> None:
    up = forecast(line(6, slope_per_min=5.0, at_now=95.0), NOW, **DEFAULTS)
    assert up["value"] == 100.0 and up["slope_per_min"] == pytest.approx(5.0)
    down = forecast(line(6, slope_per_min=-5.0, at_now=10.0), NOW, **DEFAULTS)
    assert down["value"] == 0.0


def test_horizon_and_min_samples_are_honoured() -> None:
    samples = line(4, slope_per_min=1.0, at_now=50.0)
    assert forecast(samples, NOW, window=1800, horizon=600, min_samples=3)["value"] == 60.0
    assert forecast(samples, NOW, window=1800, horizon=0, min_samples=3)["value"] == 50.0
    assert forecast(samples, NOW, window=1800, horizon=300, min_samples=5)["value"] is None
    assert forecast(samples, NOW, window=1800, horizon=300, min_samples=0)["confidence"] == 1.0


def test_blend_moves_the_measurement_towards_the_forecast_by_its_confidence() -> None:
    assert blend(60.0, {"value": 80.0, "confidence": 0.5}) == 70.0
    assert blend(60.0, {"value": 80.0, "confidence": 1.0}) == 80.0
    assert blend(60.0, {"value": 80.0, "confidence": 0.0}) == 60.0
    assert blend(60.0, {"value": None, "confidence": 0.0}) == 60.0
    assert blend(60.0, {}) == 60.0
    assert blend(60.0, {"value": 80.0, "confidence": 7.0}) == 80.0  # confidence within 0..1
    assert blend(99.0, {"value": 150.0, "confidence": 1.0}) == 100.0
    assert blend(5.0, {"value": -40.0, "confidence": 1.0}) == 0.0
    fc = forecast(line(6, slope_per_min=1.0, at_now=50.0), NOW, **DEFAULTS)
    assert blend(50.0, fc) == pytest.approx(55.0)
    assert math.isnan(blend(math.nan, fc))  # the controller holds on it


# --------------------------------------------------------------------------- properties

VALUES = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-50, 150)
TIMES = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(NOW - 4000, NOW + 100)
    | st.sampled_from([NOW, NOW - 60, NOW - 1800])
)


@settings(max_examples=400, deadline=None)
@given(
    samples=st.lists(st.tuples(TIMES, VALUES), max_size=30),
    window=st.floats(0, 1e5) | st.just(math.inf),
    horizon=st.floats(0, 1e4),
    min_samples=st.integers(0, 10),
    measured=st.floats(-10, 110),
)
def test_any_samples_give_a_bounded_forecast(
    samples: list[tuple[float, float]],
    window: float,
    horizon: float,
    min_samples: int,
    measured: float,
) -> None:
    fc = forecast(samples, NOW, window=window, horizon=horizon, min_samples=min_samples)
    json.dumps(fc, allow_nan=False)
    assert 0.0 <= fc["confidence"] <= 1.0
    assert fc["value"] is None or 0.0 <= fc["value"] <= 100.0
    assert fc["r2"] is None or 0.0 <= fc["r2"] <= 1.0
    if fc["samples"] < max(min_samples, 2):
        assert fc["value"] is None and fc["confidence"] == 0.0
    mixed = blend(measured, fc)
    if fc["value"] is None:
        assert mixed == measured
    else:
        assert 0.0 <= mixed <= 100.0
