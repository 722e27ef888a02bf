"""Peak hours: the windows (any zone, over midnight, across daylight-saving changes), the
can-start verdict (with properties over random windows, zones, times and durations), the rule
``peak_hours`` in ``can-spawn``, ``register`` and ``run`` on both engines, ``schedule
can-start``, ``can-spawn --now`` as a read-only what-if, and nothing of it on the hot path
while ``peak_hours.enforce`` is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Coord, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord.cli import main, parser
from ringrift_coord.clock import ManualClock
from ringrift_coord.duration_scheduler import DurationScheduler
from ringrift_coord.inputs import instant
from ringrift_coord.schedule.peak import PeakHours, iso, verdict
from ringrift_coord.task_coordinator import Holder, TaskCoordinator

ENGINES = ("sqlite", "postgres")
HOUR = 3600.0
TRAINING, CMAES = 4 * HOUR, 8 * HOUR  # the shipped defaults


def at(text: str) -> float:
    return instant(text, "now")


# --------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize(
    ("when", "expected", "allowed", "retry"),
    [
        ("2026-12-01T09:00", TRAINING, True, None),  # done at 13:00, before 14:00
        ("2026-12-01T12:00", TRAINING, False, "2026-12-01T22:00"),  # would run into it
        ("2026-12-01T23:00", TRAINING, True, None),  # after it
        ("2026-12-01T07:00", CMAES, False, "2026-12-01T22:00"),  # 15:00: into it
        ("2026-12-01T10:00", TRAINING, True, None),  # done at 14:00 sharp: allowed
        ("2026-12-01T14:00", TRAINING, False, "2026-12-01T22:00"),  # inside (its start)
        ("2026-12-01T21:59", 60.0, False, "2026-12-01T22:00"),  # inside
        ("2026-12-01T22:00", TRAINING, True, None),  # its end is not in it
        ("2026-12-01T12:00", None, True, None),  # no expected duration: off-peak is enough
    ],
)
def test_default_window_utc(when: str, expected: float | None, allowed: bool, retry) -> None:
    found = verdict(PeakHours("14:00", "22:00", "UTC"), at(when), expected, "training")
    assert found.allowed is allowed, found.reason
    assert found.retry_at == (None if retry is None else at(retry))
    if not allowed:
        assert found.retry_after == found.retry_at - at(when)


def test_refusal_says_the_expected_finish_the_window_and_when_to_retry() -> None:
    found = verdict(
        PeakHours("14:00", "22:00", "UTC"), at("2026-12-01T12:00"), TRAINING, "training"
    )
    assert found.reason == (
        "training expected to run ~4 h, until 16:00 UTC, into peak hours 14:00-22:00 UTC "
        "(from 14:00 UTC)"
    )
    assert found.to_dict() == {
        "task_type": None,
        "config_name": None,
        "allowed": False,
        "reason": found.reason,
        "expected_seconds": TRAINING,
        "expected_finish": at("2026-12-01T16:00"),  # moments: epoch seconds, as everywhere
        "peak_start": at("2026-12-01T14:00"),
        "peak_end": at("2026-12-01T22:00"),
        "in_peak": False,
        "retry_after": 10 * HOUR,
        "timezone": "UTC",
        "now": "2026-12-01T12:00:00Z",
    }
    assert found.retry_shown == "22:00 UTC"


def test_window_over_midnight() -> None:
    night = PeakHours("22:00", "06:00", "UTC")
    assert night.wraps
    assert night.in_peak(at("2026-12-01T23:00")) and night.in_peak(at("2026-12-02T05:59"))
    assert night.in_peak(at("2026-12-01T22:00")) and not night.in_peak(at("2026-12-02T06:00"))
    assert not night.in_peak(at("2026-12-01T12:00"))
    assert night.next_window(at("2026-12-02T03:00")) == (
        at("2026-12-01T22:00"),
        at("2026-12-02T06:00"),
    )
    inside = verdict(night, at("2026-12-02T03:00"), TRAINING, "training")
    assert not inside.allowed and inside.in_peak and inside.retry_at == at("2026-12-02T06:00")
    late = verdict(night, at("2026-12-01T19:00"), TRAINING, "training")  # 23:00: into it
    assert not late.allowed and late.retry_at == at("2026-12-02T06:00")
    assert verdict(night, at("2026-12-01T17:00"), TRAINING, "training").allowed  # done 21:00
    assert verdict(night, at("2026-12-02T06:00"), TRAINING, "training").allowed


def test_window_in_another_zone_shows_local_time_and_utc() -> None:
    berlin = PeakHours("14:00", "22:00", "Europe/Berlin")  # 13:00-21:00 UTC in winter
    assert berlin.next_window(at("2026-12-01T09:00")) == (
        at("2026-12-01T13:00"),
        at("2026-12-01T21:00"),
    )
    assert verdict(berlin, at("2026-12-01T09:00"), TRAINING, "training").allowed  # 14:00 sharp
    late = verdict(berlin, at("2026-12-01T09:30"), TRAINING, "training")
    assert not late.allowed
    assert "until 14:30 CET (13:30 UTC)" in late.reason
    assert "peak hours 14:00-22:00 Europe/Berlin" in late.reason
    assert late.retry_shown == "22:00 CET (21:00 UTC)"
    summer = berlin.next_window(at("2026-07-01T09:00"))  # CEST: 12:00-20:00 UTC
    assert summer == (at("2026-07-01T12:00"), at("2026-07-01T20:00"))
    kolkata = PeakHours("14:00", "22:00", "Asia/Kolkata")  # +05:30, no DST
    assert kolkata.next_window(at("2026-12-01T00:00"))[0] == at("2026-12-01T08:30")


def test_daylight_saving_changes_in_berlin() -> None:
    night = PeakHours("22:00", "06:00", "Europe/Berlin")
    # spring forward (29 March 2026, 02:00 CET -> 03:00 CEST): 22:00 CET to 06:00 CEST, 7 h
    spring = night.next_window(at("2026-03-28T12:00"))
    assert spring == (at("2026-03-28T21:00"), at("2026-03-29T04:00"))
    # fall back (25 October 2026, 03:00 CEST -> 02:00 CET): 22:00 CEST to 06:00 CET, 9 h
    autumn = night.next_window(at("2026-10-24T12:00"))
    assert autumn == (at("2026-10-24T20:00"), at("2026-10-25T05:00"))
    # the nights around keep their local hours: 8 h each
    assert night.next_window(at("2026-03-30T12:00")) == (
        at("2026-03-30T20:00"),
        at("2026-03-31T04:00"),
    )
    assert night.next_window(at("2026-10-25T12:00")) == (
        at("2026-10-25T21:00"),
        at("2026-10-26T05:00"),
    )
    # a window starting in the skipped hour: 02:30 does not exist; it starts at the change
    # (03:00 CEST = 01:00 UTC), and 03:05 CEST is inside it
    skipped = PeakHours("02:30", "04:00", "Europe/Berlin")
    assert skipped.next_window(at("2026-03-29T00:00")) == (
        at("2026-03-29T01:00"),
        at("2026-03-29T02:00"),
    )
    short = PeakHours("02:30", "03:30", "Europe/Berlin")
    assert short.next_window(at("2026-03-29T00:00")) == (
        at("2026-03-29T01:00"),
        at("2026-03-29T01:30"),
    )
    assert short.in_peak(at("2026-03-29T01:05"))
    # a window wholly inside the skipped hour does not happen that night (never inverted,
    # never moved past it)
    for start, end in (("02:30", "03:00"), ("02:15", "02:45")):
        inside = PeakHours(start, end, "Europe/Berlin")
        nxt = inside.next_window(at("2026-03-29T00:00"))
        assert nxt[0] > at("2026-03-29T12:00") and nxt[1] - nxt[0] in (1800, 1800.0), nxt
        assert not inside.in_peak(at("2026-03-29T01:20"))
    # a window ending in the repeated hour: its first occurrence (02:30 CEST)
    repeated = PeakHours("01:00", "02:30", "Europe/Berlin")
    assert repeated.next_window(at("2026-10-24T22:00")) == (
        at("2026-10-24T23:00"),
        at("2026-10-25T00:30"),
    )
    # the verdict across the change: training at 20:00 UTC (21:00 CET) runs into 22:00 CET
    found = verdict(night, at("2026-03-28T20:00"), TRAINING, "training")
    assert not found.allowed and found.retry_at == at("2026-03-29T04:00")
    assert found.retry_shown == "2026-03-29 06:00 CEST (04:00 UTC)"


def test_longer_than_the_whole_gap_starts_at_any_off_peak_time() -> None:
    long_peak = PeakHours("06:00", "23:00", "UTC")  # off-peak: 7 h
    assert verdict(long_peak, at("2026-12-01T23:30"), CMAES, "cmaes").allowed
    assert verdict(long_peak, at("2026-12-02T05:00"), CMAES, "cmaes").allowed
    assert not verdict(long_peak, at("2026-12-02T07:00"), CMAES, "cmaes").allowed  # inside
    assert not verdict(long_peak, at("2026-12-02T05:00"), TRAINING, "training").allowed


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
MINUTES = st.integers(0, 24 * 60 - 1)


@st.composite
def windows(draw: st.DrawFn) -> PeakHours:
    start = draw(MINUTES)
    end = draw(MINUTES.filter(lambda m: m != start))
    hhmm = [f"{m // 60:02d}:{m % 60:02d}" for m in (start, end)]
    return PeakHours(hhmm[0], hhmm[1], draw(st.sampled_from(ZONES)))


@settings(max_examples=400, deadline=None)
@given(
    peak=windows(),
    t=st.floats(at("2020-01-01T00:00"), at("2030-12-31T00:00")),
    d=st.one_of(st.none(), st.floats(0, 3 * 86400)),
)
def test_verdict_properties(peak: PeakHours, t: float, d: float | None) -> None:
    found = verdict(peak, t, d, "training")
    inside = peak.in_peak(t)
    assert found.in_peak is inside
    if inside:
        assert not found.allowed  # never inside a window
    if found.retry_at is not None:
        assert found.retry_at >= t  # never before t
        assert not peak.in_peak(found.retry_at)  # the end of a window is outside it
    assert found.allowed is (found.retry_at is None)
    if inside or d is None:
        assert found.allowed is not inside
        return
    start, _ = peak.next_window(t)
    gap = start - peak.previous_end(t)
    if d <= gap:
        # allowed: [t, t + d] overlaps no window; refused: it would
        overlaps = any(s < t + d and e > t for s, e in peak.windows(t, 1, 5))
        assert found.allowed is not overlaps, (found.reason, iso(t), d)
    else:
        assert found.allowed  # can never fit: any off-peak time


# --------------------------------------------------------------------------- the API


def test_duration_scheduler_can_start_before_peak(engine_db) -> None:
    clock = ManualClock(at("2026-12-01T09:00"))
    sched = DurationScheduler(engine_db.context(clock=clock))
    assert sched.can_start_before_peak("training")  # by the store's clock: 09:00
    assert not sched.can_start_before_peak("training", "sq8", now=at("2026-12-01T12:00"))
    assert sched.can_start_before_peak("training", now=at("2026-12-01T23:00"))
    assert not sched.can_start_before_peak("cmaes", now=at("2026-12-01T07:00"))
    clock.advance(3 * HOUR)  # 12:00
    found = sched.peak_verdict("training", "sq8")
    assert not found.allowed and found.retry_after == 10 * HOUR
    assert found.task_type == "training" and found.config_name == "sq8"
    assert sched.can_start_before_peak("selfplay")  # 1 h: done by 13:00


ENFORCED = "peak_hours: {enforce: true}\n"


def test_rule_refuses_admission_inside_the_window_and_allows_after(engine_db) -> None:
    clock = ManualClock(at("2026-12-01T15:00"))
    coord = TaskCoordinator(engine_db.context(ENFORCED, clock=clock))
    holder = Holder(pid=os.getpid())
    refused = coord.acquire("training", "n1", holder=holder, source="register")
    assert not refused.allowed
    (reason,) = refused.reasons
    assert reason.rule == "peak_hours"
    assert refused.retry_after == 7 * HOUR  # to the window's end, 22:00
    assert reason.details["peak_end"] == at("2026-12-01T22:00")
    assert reason.details["expected_seconds"] == TRAINING and reason.details["in_peak"]
    assert coord.acquire("selfplay", "n1", holder=holder).allowed  # not a peak type
    clock.advance(7 * HOUR)  # 22:00
    assert coord.acquire("training", "n1", holder=holder, source="register").allowed
    logged = coord.decisions(limit=10)
    assert any(r["rule"] == "peak_hours" for d in logged for r in d["rules"])


def test_rule_is_off_unless_enforced(engine_db) -> None:
    clock = ManualClock(at("2026-12-01T15:00"))
    coord = TaskCoordinator(engine_db.context("{}\n", clock=clock))
    assert coord.check("training", "n1").allowed
    types_only = "peak_hours: {enforce: true, task_types: [cmaes]}\n"
    coord = TaskCoordinator(engine_db.context(types_only, clock=clock))
    assert coord.check("training", "n1").allowed
    assert [r.rule for r in coord.check("cmaes", "n1").reasons] == ["peak_hours"]


# --------------------------------------------------------------------------- commands


MUST_SHOW = [
    ("training", "2026-12-01T09:00", 0),
    ("training", "2026-12-01T12:00", 1),
    ("training", "2026-12-01T23:00", 0),
    ("cmaes", "2026-12-01T07:00", 1),
]


def test_schedule_can_start_must_show(coord: Coord) -> None:
    for ttype, when, code in MUST_SHOW:
        done = coord("schedule", "can-start", ttype, "--now", when)
        assert done.returncode == code, (ttype, when, done.stderr)
        if code:
            assert "retry at 22:00 UTC" in done.stderr and "into peak hours" in done.stderr
            assert done.stdout == ""
        else:
            assert done.stdout.startswith("yes: ") and done.stderr == ""
        doc = json.loads(coord("--json", "schedule", "can-start", ttype, "--now", when).stdout)
        assert doc["allowed"] is (code == 0) and doc["now"] == when + ":00Z"
        assert doc["timezone"] == "UTC" and doc["in_peak"] is False


def test_can_spawn_what_if_must_show(coord: Coord) -> None:
    for ttype, when, code in MUST_SHOW:
        argv = ("--set", "peak_hours.enforce=true", "--json", "can-spawn", ttype, "--now", when)
        done = coord(*argv, "--node", "n1")
        assert done.returncode == code, (ttype, when, done.stderr)
        doc = json.loads(done.stdout)
        assert doc["what_if"] is True and doc["now"] == when + ":00Z"
        assert doc["allowed"] is (code == 0)
        assert [r["rule"] for r in doc["reasons"]] == ([] if code == 0 else ["peak_hours"])
        if code:
            assert doc["retry_after"] == at("2026-12-01T22:00") - at(when)
    # not enforced: the same times are all allowed
    for ttype, when, _ in MUST_SHOW:
        assert coord("can-spawn", ttype, "--node", "n1", "--now", when).returncode == 0


def test_peak_hours_ask_the_learned_duration(coord: Coord) -> None:
    """At 12:00 a 4 h training runs into the 14:00 window; one that has learned to take an
    hour (three recorded runs) fits, in can-start and in admission; other configs do not."""
    for seconds in ("55m", "1h", "65m"):
        recorded = coord(
            "schedule", "record", "training", "--config-name", "fast", "--seconds", seconds
        )
        assert recorded.returncode == 0, recorded.stderr
    when = ("--now", "2026-12-01T12:00")
    fast = ("--config-name", "fast")
    assert coord("schedule", "can-start", "training", *fast, *when).returncode == 0
    assert coord("schedule", "can-start", "training", *when).returncode == 1
    assert (
        coord("schedule", "can-start", "training", "--config-name", "slow", *when).returncode == 1
    )
    enforce = (
        "--set",
        "peak_hours.enforce=true",
        "--json",
        "can-spawn",
        "training",
        "--node",
        "n1",
    )
    doc = json.loads(coord(*enforce, *fast, *when).stdout)
    assert doc["allowed"] is True, doc
    doc = json.loads(coord(*enforce, "--config-name", "slow", *when).stdout)
    assert [r["rule"] for r in doc["reasons"]] == ["peak_hours"]
    assert doc["reasons"][0]["details"]["expected_seconds"] == 14400


def test_can_start_wrapped_window_in_another_zone(coord: Coord) -> None:
    zone = ("--set", "peak_hours.timezone=America/New_York")
    window = ("--set", "peak_hours.start=22:00", "--set", "peak_hours.end=06:00")
    done = coord(*zone, *window, "schedule", "can-start", "training", "--now", "2026-12-01T23:30")
    assert done.returncode == 1  # 18:30 EST: until 22:30 EST, into the window
    assert "until 22:30 EST (03:30 UTC)" in done.stderr
    assert "retry at 2026-12-02 06:00 EST (11:00 UTC)" in done.stderr
    doc = json.loads(
        coord(
            *zone,
            *window,
            "--json",
            "schedule",
            "can-start",
            "training",
            "--now",
            "2026-12-02T05:00",
        ).stdout
    )  # midnight EST: inside
    assert doc["in_peak"] is True and doc["peak_end"] == at("2026-12-02T11:00")
    assert doc["retry_after"] == 6 * HOUR and doc["timezone"] == "America/New_York"
    ok = coord(*zone, *window, "schedule", "can-start", "training", "--now", "2026-12-01T12:00")
    assert ok.returncode == 0, ok.stderr  # 07:00 EST, done by 11:00 EST


def window_around_now(hours_before: float, hours_after: float) -> list[str]:
    """--set options for a UTC window from ``hours_before`` ago to ``hours_after`` ahead."""
    now = datetime.now(UTC)
    start = (now - timedelta(hours=hours_before)).strftime("%H:%M")
    end = (now + timedelta(hours=hours_after)).strftime("%H:%M")
    return ["--set", "peak_hours.enforce=true", "--set", f"peak_hours.start={start}",
            "--set", f"peak_hours.end={end}"]  # fmt: skip


def test_register_run_and_can_spawn_see_the_rule(coord: Coord) -> None:
    window = window_around_now(2, 3)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        reg = coord(*window, "--json", "register", "training", "--node", "n1", "--pid",
                    str(holder.pid))  # fmt: skip
        assert reg.returncode == 1, reg.stderr
        doc = json.loads(reg.stdout)
        (reason,) = doc["reasons"]
        assert reason["rule"] == "peak_hours" and reason["details"]["in_peak"] is True
        # retry_after: the time to the window's end, 3 h ahead (to the minute)
        assert 3 * HOUR - 120 <= doc["retry_after"] <= 3 * HOUR
        text = coord(*window, "register", "training", "--node", "n1", "--pid", str(holder.pid))
        assert text.returncode == 1 and "does not start during peak hours" in text.stderr
        run = coord(*window, "run", "training", "--node", "n1", "--", "true")
        assert run.returncode == 75 and "peak hours" in run.stderr
        spawn = coord(*window, "can-spawn", "training", "--node", "n1")
        assert spawn.returncode == 1 and "peak hours" in spawn.stderr
        # a type not in peak_hours.task_types is not held back
        ok = coord(*window, "register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert ok.returncode == 0, ok.stderr
        # the window over, well ahead: allowed again
        later = window_around_now(-5, -6)
        run_ok = coord(*later, "run", "training", "--node", "n1", "--", "true")
        assert run_ok.returncode == 0, run_ok.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_waiter_held_back_by_peak_hours_blocks_no_task_that_fits(coord: Coord) -> None:
    """A `run --wait` that peak hours refuse (4 h into a window 2 h ahead) holds no place in
    line: a shorter task of the same type that fits before the window may still start."""
    window = window_around_now(-2, 5)
    for _ in range(3):
        assert coord("schedule", "record", "training", "--config-name", "short",
                     "--seconds", "10m").returncode == 0  # fmt: skip
    waiter = coord.popen(*window, "run", "training", "--node", "n1", "--wait", "--", "true")
    try:

        def asked() -> bool:
            doc = json.loads(coord("--json", "decisions", "--type", "training").stdout)
            return any(d["action"] == "run" for d in doc["decisions"])

        wait_for(asked, 30, "the waiter's first refusal")
        short = (*window, "can-spawn", "training", "--node", "n1", "--config-name", "short")
        wait_for(lambda: coord(*short).returncode == 0, 30, "the short task to be allowed")
        assert waiter.poll() is None  # still waiting for the window to end
        queued = json.loads(
            coord(*window, "--json", "can-spawn", "training", "--node", "n1").stdout
        )
        assert [r["rule"] for r in queued["reasons"]] == ["peak_hours"]  # not node_limit
    finally:
        waiter.kill()
        waiter.wait()


def test_can_spawn_now_is_read_only(coord: Coord) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    task = coord("register", "training", "--node", "n1", "--pid", str(gone.pid)).stdout.strip()
    gone.kill()
    gone.wait()
    before = json.loads(coord("--json", "decisions").stdout)["decisions"]
    what_if = coord("--json", "can-spawn", "training", "--node", "n1", "--now", "2030-01-01T00:00")
    assert what_if.returncode == 1  # per-node limit 1: the task still counts (not reaped)
    doc = json.loads(what_if.stdout)
    assert doc["what_if"] is True and doc["now"] == "2030-01-01T00:00:00Z"
    assert [r["rule"] for r in doc["reasons"]] == ["node_limit"]
    after = json.loads(coord("--json", "decisions").stdout)["decisions"]
    assert after == before  # nothing logged
    tasks = json.loads(coord("--json", "tasks").stdout)["tasks"]
    assert [t["task_id"] for t in tasks] == [task]  # nothing reaped
    text = coord("can-spawn", "selfplay", "--node", "n1", "--now", "2030-01-01T02:00+02:00")
    assert text.returncode == 0
    assert text.stdout == "what if at 2030-01-01T00:00:00Z: allowed: selfplay on n1\n"
    # a halt that lapses: in force now, gone in the what-if after it
    assert coord("halt", "--type", "cmaes", "--reason", "r", "--ttl", "600").returncode == 0
    assert coord("can-spawn", "cmaes", "--node", "n1").returncode == 1
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert coord("can-spawn", "cmaes", "--node", "n1", "--now", soon).returncode == 0


@pytest.mark.parametrize("typer_side", [False, True])
def test_bad_now_is_a_usage_error_on_both_parsers(
    typer_side: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if typer_side:
        monkeypatch.setattr(parser, "parse", lambda argv: None)
    assert main.run_cli(["can-spawn", "training", "--now", "noon"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "ringrift-coord: error: option --now: 'noon' is not an ISO 8601 time like "
        "2026-12-01T12:00 (UTC) or 2026-12-01T12:00+02:00\n"
    )


def test_bad_now_of_can_start(coord: Coord) -> None:
    done = coord("schedule", "can-start", "training", "--now", "tomorrow")
    assert done.returncode == 2
    assert done.stderr.startswith("ringrift-coord: error: option --now: 'tomorrow' is not")


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59", "0001-01-01T00:00", "0001-01-01T00:00+01:00", "1969-12-31"]
)
def test_a_now_out_of_range_is_a_usage_error(coord: Coord, when: str) -> None:
    """Times datetime cannot carry a day's windows or a finish for: one line, exit 2."""
    enforce = ("--set", "peak_hours.enforce=true")
    for argv in (
        ("schedule", "can-start", "training", "--now", when),
        (*enforce, "can-spawn", "training", "--node", "n1", "--now", when),
        ("schedule", "stale", "--now", when),
    ):
        done = coord(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr == (
            f"ringrift-coord: error: option --now: {when!r} is outside the times this tool "
            "answers for (1970 to 9000)\n"
        )


# --------------------------------------------------------------------------- hot path


def imported(coord: Coord, *argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ringrift_coord", *argv],
        env=coord.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    return set(lines)


@pytest.mark.parametrize("enforce", ["false", "true"])
def test_nothing_new_on_the_hot_path_unless_enforced(coord: Coord, enforce: str) -> None:
    """With peak_hours.enforce off, can-spawn, register and run do not import the peak
    module (nor zoneinfo, on SQLite); on, admission of a long type does (a UTC window
    without the time-zone database)."""
    flag = ("--set", f"peak_hours.enforce={enforce}")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = [
            ("can-spawn", "training", "--node", "n1"),
            ("register", "training", "--node", "n1", "--pid", str(holder.pid)),
            ("run", "training", "--node", "n2", "--", "true"),
        ]
        for argv in runs:
            modules = imported(coord, *flag, *argv)
            assert "ringrift_coord.rules" in modules, argv
            if coord.engine == "sqlite":  # psycopg imports zoneinfo itself
                assert "zoneinfo" not in modules, argv
            assert ("ringrift_coord.schedule.peak" in modules) is (enforce == "true"), argv
    finally:
        holder.kill()
        holder.wait()
