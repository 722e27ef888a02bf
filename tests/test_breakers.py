"""Circuit breakers per (node, task type).

Two layers:

* the pure ``Breaker`` state machine against an independent reference model, with random
  sequences of admissions, trial and non-trial outcomes and clock steps (back, forward, huge);
* the real CLI (``run``, ``can-spawn``, ``unregister``, ``breakers ...``) on SQLite and
  PostgreSQL, with a 2-second recovery timeout.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Coord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringrift_coord.breakers import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerConfig

ENGINES = ("sqlite", "postgres")

T0 = 1_700_000_000.0  # a realistic epoch; every step below is a multiple of 1/4: exact floats


# =========================================================================== reference model


class Model:
    """What the breaker is meant to do, written from the specification, not from the code.

    * CLOSED → OPEN when the failures since the last close that lie inside ``window`` reach
      ``failure_threshold`` (one that had left the window when a later failure came stays
      forgotten, even if the clock steps back).
    * OPEN → HALF_OPEN once ``recovery_timeout`` has passed; the move happens when a spawn
      comes through (until then outcomes see an open breaker), but a reader already sees
      HALF_OPEN.
    * HALF_OPEN admits a trial while fewer than ``half_open_trials`` trials run (trials left
      over from an earlier half-open period count: never more than the cap at once);
      ``success_threshold`` trial successes close it; a failed trial reopens it. Outcomes of
      non-trial tasks change nothing but the failure record.
    * A clock stepped back past the opening: a reader sees at most one recovery timeout from
      the new now; the first spawn that comes through re-bases the wait there for good.
    """

    def __init__(self, cfg: dict[str, float], now: float) -> None:
        self.F, self.W = cfg["failure_threshold"], cfg["window"]
        self.T, self.H, self.S = (
            cfg["recovery_timeout"],
            cfg["half_open_trials"],
            cfg["success_threshold"],
        )
        self.phase = CLOSED
        self.opened: float | None = None
        self.retry: float | None = None
        self.fails: list[float] = []  # failure times since the last close
        self.trials = 0  # trial tasks still running
        self.successes = 0

    def effective(self, now: float) -> tuple[str, float | None]:
        if self.phase != OPEN:
            return self.phase, None
        assert self.opened is not None and self.retry is not None
        retry = self.retry if now >= self.opened else min(self.retry, now + self.T)
        return (HALF_OPEN, None) if now >= retry else (OPEN, retry)

    def admit(self, now: float) -> tuple[bool, bool]:
        if self.phase == OPEN:
            assert self.opened is not None and self.retry is not None
            if now < self.opened:
                self.opened, self.retry = now, min(self.retry, now + self.T)
            if now < self.retry:
                return False, False
            self.phase, self.successes = HALF_OPEN, 0
        if self.phase == CLOSED:
            return True, False
        if self.trials < self.H:
            self.trials += 1
            return True, True
        return False, False

    def outcome(self, now: float, ok: bool, trial: bool) -> None:
        if trial:
            self.trials -= 1
        if ok:
            if trial and self.phase == HALF_OPEN:
                self.successes += 1
                if self.successes >= self.S:
                    self.phase, self.opened, self.retry = CLOSED, None, None
                    self.fails, self.successes = [], 0
            return
        # a failure already out of the window when a later one comes is forgotten for good,
        # even if the clock then steps back far enough to bring it inside again
        self.fails = [at for at in self.fails if at >= now - self.W] + [now]
        in_window = len(self.fails)
        if (self.phase == CLOSED and in_window >= self.F) or (trial and self.phase == HALF_OPEN):
            self.phase, self.opened, self.retry = OPEN, now, now + self.T
            self.successes = 0


# =========================================================================== properties

configs = st.fixed_dictionaries(
    {
        "failure_threshold": st.integers(1, 4),
        "window": st.sampled_from([0.5, 1.0, 5.0, 60.0, 600.0]),
        "recovery_timeout": st.sampled_from([0.25, 1.0, 2.0, 30.0, 300.0]),
        "half_open_trials": st.integers(1, 3),
        "success_threshold": st.integers(1, 3),
    }
)
clock_steps = st.one_of(
    st.integers(-40, 40).map(lambda k: k / 4),  # around the timeouts, back and forward
    st.integers(-(10**6), 10**6).map(float),
    st.sampled_from([-1e9, -86400.0, -300.25, 300.25, 86400.0, 1e9]),  # huge jumps
)
operation = (
    st.one_of(  # admissions and failures weigh more: they are what reach the interesting states
        st.just(("admit",)),
        st.just(("admit",)),
        st.just(("admit",)),
        st.tuples(st.just("trial_ok"), st.integers(0, 5)),
        st.tuples(st.just("trial_fail"), st.integers(0, 5)),
        st.just(("fail",)),
        st.just(("fail",)),
        st.just(("ok",)),
        st.tuples(st.just("step"), clock_steps),
        # steps in units of the recovery timeout, so that random sequences reach half-open
        st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 1.0, 2.0])),
    )
)
# lengths drawn evenly up to 100 (plain st.lists stays short: few would reach half-open)
operations = st.integers(0, 100).flatmap(lambda n: st.lists(operation, min_size=n, max_size=n))


def slots(breaker: Breaker) -> dict[str, object]:
    return {name: copy.deepcopy(getattr(breaker, name)) for name in Breaker.__slots__}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg_values=configs, ops=operations)
def test_breaker_follows_the_reference_model(cfg_values, ops) -> None:
    cfg = BreakerConfig(**cfg_values)
    now = T0
    breaker, model = Breaker("n1", "training", now), Model(cfg_values, now)
    running_trials = 0  # trial tasks admitted and not yet ended, counted by this test
    for op in ops:
        kind = op[0]
        if kind == "admit":
            allowed, trial, retry_after = breaker.admit(now, cfg)
            assert (allowed, trial) == model.admit(now), op
            if retry_after is not None:
                assert 0 < retry_after <= cfg.recovery_timeout
            if trial:
                running_trials += 1
                assert running_trials <= cfg.half_open_trials, "more concurrent trials than allowed"
        elif kind in ("trial_ok", "trial_fail"):
            if running_trials == 0:
                continue
            running_trials -= 1
            ok = kind == "trial_ok"
            breaker.record(now, cfg, ok=ok, trial=True, reason=None if ok else "exit code 1")
            model.outcome(now, ok, True)
        elif kind in ("ok", "fail"):
            ok = kind == "ok"
            breaker.record(now, cfg, ok=ok, trial=False, reason=None if ok else "exit code 2")
            model.outcome(now, ok, False)
        elif kind == "wait":
            now += cfg.recovery_timeout * op[1]
        else:
            now += op[1]

        # reading changes nothing, however often it is done
        before = slots(breaker)
        views = [breaker.view(now, cfg) for _ in range(3)]
        breaker.to_dict(now, cfg)
        breaker.recent_failures(now, cfg)
        assert slots(breaker) == before, "view/to_dict changed the breaker"
        assert views[0] == views[1] == views[2]

        state, retry_at = views[0]
        assert (state, retry_at) == model.effective(now), (op, slots(breaker))
        assert breaker.trials_in_flight == running_trials == model.trials
        if retry_at is not None:
            assert 0 < retry_at - now <= cfg.recovery_timeout
            retry_after = breaker.to_dict(now, cfg)["retry_after"]
            assert 0 < retry_after <= cfg.recovery_timeout


@settings(max_examples=150, deadline=None)
@given(
    cfg_values=configs,
    jump=st.sampled_from([0.0, 0.25, 1.0, 86400.0, 1e9]),
    extra_successes=st.integers(0, 3),
)
def test_jump_past_retry_needs_the_trial(cfg_values, jump, extra_successes) -> None:
    """However far the clock jumps, an open breaker goes HALF_OPEN and never straight to
    CLOSED: non-trial successes do not close it; only trials do."""
    cfg = BreakerConfig(**cfg_values)
    now = T0
    breaker = Breaker("n1", "selfplay", now)
    for _ in range(cfg.failure_threshold):
        breaker.record(now, cfg, ok=False, trial=False, reason="exit code 3")
    assert breaker.view(now, cfg) == (OPEN, now + cfg.recovery_timeout)
    now += cfg.recovery_timeout + jump
    assert breaker.view(now, cfg) == (HALF_OPEN, None)
    for _ in range(extra_successes):
        breaker.record(now, cfg, ok=True, trial=False)
        assert breaker.view(now, cfg)[0] == HALF_OPEN
    for _ in range(cfg.success_threshold):
        assert breaker.admit(now, cfg)[:2] == (True, True)
        assert breaker.view(now, cfg)[0] == HALF_OPEN
        breaker.record(now, cfg, ok=True, trial=True)
    assert breaker.view(now, cfg) == (CLOSED, None)


@settings(max_examples=150, deadline=None)
@given(
    cfg_values=configs,
    back=st.sampled_from([0.25, 1.0, 3600.0, 1e9]),
    later=st.integers(0, 8).map(lambda k: k / 4),
)
def test_step_back_rebases_to_one_timeout(cfg_values, back, later) -> None:
    cfg = BreakerConfig(**cfg_values)
    now = T0
    breaker = Breaker("n1", "training", now)
    for _ in range(cfg.failure_threshold):
        breaker.record(now, cfg, ok=False, trial=False, reason="exit code 3")
    opened = now
    now = opened - back  # the store's clock stepped back
    state, retry_at = breaker.view(now, cfg)
    assert state == OPEN and retry_at is not None and retry_at - now <= cfg.recovery_timeout
    allowed, _, retry_after = breaker.admit(now, cfg)  # the first spawn re-bases for good
    assert not allowed and retry_after is not None and retry_after <= cfg.recovery_timeout
    rebased = breaker.retry_at
    assert rebased is not None and rebased - now <= cfg.recovery_timeout
    now += later
    expected = (HALF_OPEN, None) if now >= rebased else (OPEN, rebased)
    assert breaker.view(now, cfg) == expected


def test_trials_of_an_earlier_half_open_period_count_against_the_cap() -> None:
    """Found by the model: a trial still running when the breaker reopened must not let a
    later half-open period admit more trials than the cap allows at once."""
    cfg = BreakerConfig(
        failure_threshold=1,
        window=600,
        recovery_timeout=10,
        half_open_trials=2,
        success_threshold=2,
    )
    now = T0
    b = Breaker("n1", "training", now)
    b.record(now, cfg, ok=False, trial=False, reason="x")
    now += 10
    assert b.admit(now, cfg)[:2] == (True, True)  # trial A
    assert b.admit(now, cfg)[:2] == (True, True)  # trial B
    b.record(now, cfg, ok=False, trial=True, reason="A failed")  # reopens; B still runs
    now += 10
    assert b.admit(now, cfg)[:2] == (True, True)  # trial C (B and C run)
    assert b.admit(now, cfg)[:2] == (False, False)  # a third at once: no
    b.record(now, cfg, ok=True, trial=True)  # B ends
    assert b.admit(now, cfg)[:2] == (True, True)  # now D may run beside C


# =========================================================================== store clock


def test_store_clock_stepped_back_rebases_the_open_breaker(tmp_path: Path) -> None:
    """The re-base is kept by the admission transaction: otherwise every later reading would
    slide the retry time along with the clock, and the breaker would stay open for the whole
    size of the step."""
    import os

    from ringrift_coord import breakers, feedback
    from ringrift_coord.clock import ManualClock
    from ringrift_coord.config import load_settings
    from ringrift_coord.context import Context
    from ringrift_coord.statedir import ensure_state_dir
    from ringrift_coord.store.sqlite import SQLiteStore
    from ringrift_coord.task_coordinator import TaskCoordinator

    (tmp_path / "c.yaml").write_text(config_text(2))
    state = ensure_state_dir(str(tmp_path / "state"))
    clock = ManualClock(T0)
    ctx = Context(
        settings=load_settings(
            str(tmp_path / "c.yaml"), env={"RINGRIFT_COORD_SET": "resources.live_host=false"}
        ),
        state_dir=state,
        store=SQLiteStore(os.path.join(state, "tasks.db"), clock=clock),
        clock=clock,
        env={"USER": "tester"},
    )
    coord = TaskCoordinator(ctx)
    with ctx.store.write() as tx:
        for _ in range(3):
            feedback.record_manual(
                tx, ctx.settings, "n1", "evaluation", tx.now(), ok=False, reason="exit code 3"
            )
    decision = coord.check("evaluation", "n1")
    assert not decision.allowed and decision.retry_after == 2
    clock.advance(-3600)  # the store's clock steps back an hour
    decision = coord.check("evaluation", "n1")
    assert not decision.allowed and decision.retry_after == 2
    clock.advance(1)
    assert coord.check("evaluation", "n1").retry_after == 1  # not 2 again: the wait is kept
    with ctx.store.read() as tx:  # and reading shows the same, without writing
        row = breakers.load(tx, "n1", "evaluation", tx.now()).to_dict(
            tx.now(), BreakerConfig.from_settings(ctx.settings)
        )
    assert row["state"] == OPEN and row["retry_after"] == 1
    clock.advance(1)
    assert coord.check("evaluation", "n1").allowed  # half-open: the trial may run
    ctx.close()


# =========================================================================== CLI

CONFIG = """\
circuit_breaker: {{failure_threshold: 3, window: 600, recovery_timeout: {timeout},
                  half_open_trials: 1, success_threshold: 1}}
task_limits: {{evaluation: {{per_node: 8, cluster: 100}}}}
rate_limits: {{evaluation: {{per_minute: null}}}}
"""
# Long enough that a breaker the CLI tests open stays open while they look at it, however
# slow the machine; where a test needs the timeout to pass, the failure that opens the
# breaker gets a short one with --set (the wait is fixed when it opens).
TIMEOUT = 600
SHORT = ("--set", "circuit_breaker.recovery_timeout=0.5")


def config_text(timeout: float) -> str:
    return CONFIG.format(timeout=timeout)


def config(coord: Coord) -> str:
    return config_text(TIMEOUT)


def cli_json(coord: Coord, *args: str, code: int = 0) -> object:
    done = coord("--json", *args)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def breaker_of(coord: Coord, node: str, ttype: str) -> dict[str, object] | None:
    doc = cli_json(coord, "breakers", "list")
    assert isinstance(doc, dict)
    rows = doc["breakers"]
    found = [r for r in rows if r["node"] == node and r["task_type"] == ttype]
    return found[0] if found else None


def sleep_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()) + 0.05)


def wait_file(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_breaker_lifecycle_through_the_cli(coord: Coord, tmp_path: Path) -> None:
    coord.write_config(config(coord))
    # three failing jobs of one type on one node open that breaker, and only that one
    for args in (("sh", "-c", "exit 3"), ("sh", "-c", "exit 3"), ("sh", "-c", "kill -9 $$")):
        done = coord("run", "evaluation", "--node", "n1", "--", *args)
        assert done.returncode in (3, 137), done.stderr
    timeout = TIMEOUT
    denied = cli_json(coord, "can-spawn", "evaluation", "--node", "n1", code=1)
    assert isinstance(denied, dict) and denied["allowed"] is False
    rules = [r for r in denied["reasons"] if r["rule"] == "breaker"]
    assert len(rules) == 1 and rules[0]["used"] == 3 and rules[0]["limit"] == 3
    assert 0 < denied["retry_after"] <= timeout and 0 < rules[0]["retry_after"] <= timeout
    assert "killed by SIGKILL" in rules[0]["message"]
    assert coord("can-spawn", "evaluation", "--node", "n2").returncode == 0  # other node
    assert coord("can-spawn", "gauntlet", "--node", "n1").returncode == 0  # other type
    line = coord("can-spawn", "evaluation", "--node", "n1")  # still open after those two
    assert line.returncode == 1 and "circuit breaker" in line.stderr
    assert len(line.stderr.strip().splitlines()) == 1
    row = breaker_of(coord, "n1", "evaluation")
    assert row is not None and row["state"] == "open" and row["failures"] == 3
    assert row["last_reason"].startswith("killed by SIGKILL") and row["opened_at"] is not None
    assert isinstance(row["retry_at"], float)

    assert row["retry_at"] - row["opened_at"] == pytest.approx(timeout, abs=1e-6)

    # open it again, now with a short recovery timeout, and let that pass: reading then
    # shows half-open and writes nothing
    done = coord("breakers", "reset", "--node", "n1", "--type", "evaluation")
    assert done.returncode == 0, done.stderr
    row = cli_json(
        coord,
        *SHORT,
        "--set",
        "circuit_breaker.failure_threshold=1",
        "breakers",
        "record-failure",
        "--node",
        "n1",
        "--type",
        "evaluation",
    )
    assert isinstance(row, dict) and row["state"] == "open"
    assert row["retry_at"] - row["opened_at"] == pytest.approx(0.5, abs=2e-3)  # to the ms
    sleep_until(row["retry_at"])
    row = breaker_of(coord, "n1", "evaluation")
    assert row is not None and row["state"] == "half_open" and row["stored_state"] == "open"

    # one trial runs; a second one at the same time is denied; the trial's success closes it
    started, release = tmp_path / "started", tmp_path / "release"
    trial = coord.popen(
        "run",
        "evaluation",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done",
    )
    try:
        wait_file(started, trial)
        second = coord("run", "evaluation", "--node", "n1", "--", "true")
        assert second.returncode == 75 and "half-open" in second.stderr, second.stderr
    finally:
        release.touch()
        out, err = trial.communicate(timeout=30)
    assert trial.returncode == 0, err
    row = breaker_of(coord, "n1", "evaluation")
    assert row is not None and row["state"] == "closed" and row["failures"] == 0

    # a script opens it with record-failure x3; a failed trial reopens it
    for _ in range(2):
        done = coord(
            "breakers",
            "record-failure",
            "--node",
            "n1",
            "--type",
            "evaluation",
            "--reason",
            "disk full",
        )
        assert done.returncode == 0 and "closed" in done.stdout, done.stderr
    # (this one opens it; --set gives it a short wait: the wait is fixed when it opens)
    row = cli_json(
        coord,
        *SHORT,
        "breakers",
        "record-failure",
        "--node",
        "n1",
        "--type",
        "evaluation",
        "--reason",
        "disk full",
    )
    assert isinstance(row, dict)
    assert row["state"] == "open" and row["failures"] == 3 and row["last_reason"] == "disk full"
    first_opened = row["opened_at"]
    sleep_until(row["retry_at"])
    assert coord("run", "evaluation", "--node", "n1", "--", "sh", "-c", "exit 4").returncode == 4
    row = breaker_of(coord, "n1", "evaluation")
    assert row is not None and row["state"] == "open" and row["last_reason"] == "exit code 4"
    assert row["opened_at"] > first_opened

    # reset by hand reopens the way at once
    done = coord("breakers", "reset", "--node", "n1", "--type", "evaluation")
    assert done.returncode == 0 and "evaluation on n1" in done.stdout
    assert coord("can-spawn", "evaluation", "--node", "n1").returncode == 0


def test_unregister_feeds_the_breaker(coord: Coord) -> None:
    import os

    coord.write_config(config(coord))
    pid = str(os.getpid())
    endings = (
        ("--exit-code", "1"),
        ("--status", "failed"),
        ("--status", "killed", "--reason", "killed by SIGTERM"),
    )
    for ending in endings:
        reg = cli_json(coord, "register", "evaluation", "--node", "n3", "--pid", pid)
        assert isinstance(reg, dict)
        done = coord("unregister", reg["task_id"], *ending)
        assert done.returncode == 0, done.stderr
        if ending[0] == "--exit-code":
            row = breaker_of(coord, "n3", "evaluation")
            assert row is not None and row["last_reason"] == "exit code 1"
            assert row["failures"] == 1 and row["state"] == "closed"
    row = breaker_of(coord, "n3", "evaluation")
    assert row is not None and row["state"] == "open" and row["failures"] == 3
    assert row["last_reason"] == "killed by SIGTERM"
    denied = coord("register", "evaluation", "--node", "n3", "--pid", pid)
    assert denied.returncode == 1 and "circuit breaker" in denied.stderr


def test_a_command_that_cannot_start_is_no_failure_of_the_node(coord: Coord) -> None:
    """Three typos (exit 127) and a file that is not executable (126) are ``spawn_failed``:
    the breaker stays closed, the node's rate keeps its factor 1, and ``breakers list``
    counts them apart."""
    coord.write_config(config(coord).replace("per_minute: null", "per_minute: 600, burst: 50"))
    script = coord.tmp / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    for argv in (["pyhton", "train.py"], ["pyhton"], ["/no/such/dir/x"], [str(script)]):
        done = coord("run", "evaluation", "--node", "n4", "--", *argv)
        assert done.returncode in (126, 127), (argv, done.stderr)
    row = breaker_of(coord, "n4", "evaluation")
    assert row is not None
    assert (row["state"], row["failures"], row["spawn_failures"]) == ("closed", 0, 4)
    assert coord("can-spawn", "evaluation", "--node", "n4").returncode == 0
    caps = cli_json(coord, "limits")
    assert isinstance(caps, dict) and caps["backpressure"] == []
    # a real failure still counts, and the two counters stay apart
    assert coord("run", "evaluation", "--node", "n4", "--", "sh", "-c", "exit 3").returncode == 3
    row = breaker_of(coord, "n4", "evaluation")
    assert row is not None and (row["failures"], row["spawn_failures"]) == (1, 4)
    table = coord("breakers", "list")
    assert table.returncode == 0 and "spawn failures" in table.stdout.replace("\n", " ")


def test_breakers_reset_of_a_node_gives_it_its_full_rate_back(coord: Coord) -> None:
    import os

    # no recovery with time here: the factors stay exactly what the failures left
    coord.write_config(config(coord) + "backpressure: {recovery_half_life: 0}\n")
    pid = str(os.getpid())
    for node in ("n5", "n6"):
        for _ in range(2):  # two failures: the breaker stays closed, the rate is halved twice
            reg = cli_json(coord, "register", "evaluation", "--node", node, "--pid", pid)
            assert isinstance(reg, dict)
            assert coord("unregister", reg["task_id"], "--exit-code", "1").returncode == 0
    factors = cli_json(coord, "limits")
    assert isinstance(factors, dict)
    assert {(b["node"], b["factor"]) for b in factors["backpressure"]} == {
        ("n5", 0.25),
        ("n6", 0.25),
    }
    # a type alone names no node: the nodes keep their backpressure
    by_type = cli_json(coord, "breakers", "reset", "--type", "evaluation")
    assert isinstance(by_type, dict) and by_type["backpressure_reset"] == []
    done = coord("breakers", "reset", "--node", "n5")
    assert done.returncode == 0, done.stderr
    assert "full spawn rate back on n5 (backpressure was x0.25)" in done.stdout
    after = cli_json(coord, "limits")
    assert isinstance(after, dict)
    assert [(b["node"], b["factor"]) for b in after["backpressure"]] == [("n6", 0.25)]
    everything = cli_json(coord, "breakers", "reset", "--all")
    assert isinstance(everything, dict)
    assert [(b["node"], b["factor"]) for b in everything["backpressure_reset"]] == [("n6", 0.25)]
    final = cli_json(coord, "limits")
    assert isinstance(final, dict) and final["backpressure"] == []


def test_reset_selectors_and_list_table(coord: Coord) -> None:
    coord.write_config(config(coord))
    for node, ttype in (("a", "evaluation"), ("a", "gauntlet"), ("b", "evaluation"), ("c", "sync")):
        done = coord("breakers", "record-failure", "--node", node, "--type", ttype)
        assert done.returncode == 0, done.stderr
    table = coord("breakers")  # the default subcommand: the Rich table
    assert table.returncode == 0, table.stderr
    for word in ("node", "state", "closed", "gauntlet", "failure recorded by a script"):
        assert word in table.stdout
    done = coord("breakers", "reset", "--node", "a")
    assert done.returncode == 0 and done.stdout.startswith("reset ")
    assert sum(line.startswith("reset ") for line in done.stdout.splitlines()) == 2, done.stdout
    result = cli_json(coord, "breakers", "reset", "--type", "evaluation")
    assert isinstance(result, dict)
    assert [(r["node"], r["task_type"]) for r in result["reset"]] == [("b", "evaluation")]
    done = coord("breakers", "reset", "--all")
    assert done.returncode == 0 and "sync on c" in done.stdout
    assert cli_json(coord, "breakers", "list")["breakers"] == []  # type: ignore[index]


# =========================================================================== bad input


@pytest.mark.parametrize(
    "args",
    [
        ("breakers", "reset"),
        ("breakers", "reset", "--type", "nosuchtype"),
        ("breakers", "reset", "--all", "--node", "n1"),
        ("breakers", "list", "--type", "nosuchtype"),
        ("breakers", "record-failure", "--node", "n1", "--type", "nosuchtype"),
        ("breakers", "record-failure", "--node", "n1"),
        ("breakers", "record-success", "--type", "evaluation", "--node", ""),
        ("breakers", "record-failure", "--type", "evaluation", "--reason", "two\nlines"),
        ("breakers", "frobnicate"),
    ],
    ids=lambda a: " ".join(a[1:]) or "none",
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    coord = Coord(tmp_path)  # engine-independent: SQLite only
    done = coord(*args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringrift-coord: error:"), done.stderr
