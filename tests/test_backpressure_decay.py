"""Backpressure recovers with time, not only with successes (``backpressure.recovery_half_life``).

The store keeps the factor a job left and when; the factor in force is worked out when read,
so time alone restores a node's spawn rate with no process running. The clock is stepped.
"""

from __future__ import annotations

import json
import os

import pytest

from ringrift_coord import feedback, reports, safeguards
from ringrift_coord.clock import ManualClock
from ringrift_coord.task_coordinator import Holder, TaskCoordinator

ENGINES = ("sqlite", "postgres")

CONFIG = """
rate_limits: {sync: {per_minute: 60, burst: 1}}
backpressure: {decrease: 0.5, increase: 0.1, min_factor: 0.1, recovery_half_life: 600}
circuit_breaker: {failure_threshold: 50}
"""


def _factor_now(ctx, node: str = "n1") -> float:
    rows = [r for r in reports.limits(ctx)["backpressure"] if r["node"] == node]
    return rows[0]["factor"] if rows else 1.0


def test_the_factor_decays_toward_one_with_time_alone(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock)
    for _ in range(3):
        state = safeguards.record_failure(ctx, "sync", "n1", "exit code 1")
    assert state["backpressure"] == pytest.approx(0.125)
    assert _factor_now(ctx) == pytest.approx(0.125)
    denied = TaskCoordinator(ctx).check("sync", "n1")
    assert [r.rule for r in denied.reasons] == []  # the burst token is still there
    # one half-life: the gap to 1 (0.875) halves
    clock.advance(600)
    assert _factor_now(ctx) == pytest.approx(1 - 0.875 / 2, abs=1e-4)
    listing = reports.breaker_list(ctx, "n1")
    assert listing["backpressure"][0]["factor"] == pytest.approx(0.5625, abs=1e-4)
    assert listing["backpressure"][0]["stored_factor"] == pytest.approx(0.125)
    # admission uses the factor in force: spend the token, then the refusal names the rate
    assert TaskCoordinator(ctx).acquire("sync", "n1", holder=Holder(pid=os.getpid())).allowed
    (rate,) = [r for r in TaskCoordinator(ctx).check("sync", "n1").reasons if r.rule == "rate"]
    assert rate.details["backpressure"] == pytest.approx(0.562, abs=1e-3)
    assert rate.details["per_minute"] == pytest.approx(60 * 0.5625, abs=0.01)
    # the message rounds the slowed rate for people (33.7/min, not 33.7498/min); details don't
    shown = f"{rate.details['per_minute']:.3g}"
    assert f"exhausted ({shown}/min, burst 1)" in rate.message, rate.message
    assert rate.details["per_minute"] != float(shown)
    # a failure now halves the factor in force (not the stored one) and restarts the decay
    state = safeguards.record_failure(ctx, "sync", "n1", "exit code 1")
    assert state["backpressure"] == pytest.approx(0.28125, abs=1e-4)
    clock.advance(1200)  # two half-lives: a quarter of the gap is left
    assert _factor_now(ctx) == pytest.approx(1 - 0.71875 / 4, abs=1e-4)
    # long enough and it is whole again: no longer listed, full rate
    clock.advance(600 * 12)
    assert _factor_now(ctx) == 1.0
    assert reports.limits(ctx)["backpressure"] == []
    with ctx.store.read() as tx:
        assert feedback.rate_factor(tx, ctx.settings, "n1", tx.now()) == 1.0


def test_a_success_adds_to_what_time_gave_back(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock)
    safeguards.record_failure(ctx, "sync", "n1", "boom")  # 0.5
    clock.advance(600)  # 0.75
    state = safeguards.record_success(ctx, "sync", "n1")
    assert state["backpressure"] == pytest.approx(0.85, abs=1e-4)


def test_half_life_zero_means_only_successes_restore(engine_db) -> None:
    clock = ManualClock()
    config = CONFIG.replace("recovery_half_life: 600", "recovery_half_life: 0")
    ctx = engine_db.context(config, clock)
    safeguards.record_failure(ctx, "sync", "n1", "boom")
    clock.advance(86400 * 30)
    assert _factor_now(ctx) == 0.5


def test_limits_shows_the_setting_and_breakers_list_the_factor(coord) -> None:
    coord.write_config("backpressure: {recovery_half_life: 900}\n")
    doc = json.loads(coord("limits", "--json").stdout)
    values = {v["key"]: v["value"] for v in doc["values"]}
    assert values["backpressure.recovery_half_life"] == 900
    text = coord("limits").stdout
    assert "backpressure.recovery_half_life" in text and "900" in text
    assert coord("breakers", "record-failure", "--type", "sync", "--node", "n1").returncode == 0
    listing = coord("breakers", "list")
    assert listing.returncode == 0, listing.stderr
    assert "backpressure" in listing.stdout and "×0.50" in listing.stdout
    limits = json.loads(coord("limits", "--json").stdout)
    (row,) = limits["backpressure"]
    assert row["node"] == "n1" and 0.5 <= row["factor"] < 0.51 and row["stored_factor"] == 0.5


@pytest.mark.parametrize(
    ("rate", "shown"),
    [
        (1.40108, "1.4"),
        (33.75, "33.8"),
        (999.4, "999"),
        (999.5, "1000"),  # (3 significant digits would say 1e+03)
        (1200.4, "1200"),
        (0.0001234, "0.000123"),
        (0.00001, "0.00001"),  # (1e-05)
        (1.23456e-7, "0.000000123"),  # (never 0 for a rate that is not)
        (1e-7, "0.0000001"),
    ],
)
def test_a_refusal_says_its_rate_for_people_never_as_an_exponent(rate: float, shown: str) -> None:
    from ringrift_coord.rules import _rounded

    assert _rounded(rate) == shown
