"""The resource optimizer's feedback loop over the real store, on both engines: ``adjust``
raises or lowers the self-play rate and the per-node targets, admission enforces them (rule
``optimizer``), the dead band holds, ``--dry-run`` stores nothing, expired targets fail open,
no fresh readings hold with the reason, racing adjusts act once. Time is a ``ManualClock``
(the store's clock), stepped by the optimizer's interval instead of sleeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import Coord

from ringrift_coord import reports, resource_optimizer, safeguards
from ringrift_coord.clock import ManualClock
from ringrift_coord.optimizer import state as opt_state
from ringrift_coord.resource_optimizer import ResourceOptimizer
from ringrift_coord.task_coordinator import Holder, TaskCoordinator

ENGINES = ("sqlite", "postgres")

H100 = {"gpu_name": "H100", "gpu_count": 1, "cpus": 32, "memory_gb": 64}  # cap 24

CONFIG = """
rate_limits: {selfplay: {per_minute: null}}
store: {lease_ttl: 1000000}
thresholds: {gpu: {warning: 98, critical: 99}, cpu: {warning: 98, critical: 99}}
"""


class Loop:
    """A store on a manual clock, with the optimizer's and the coordinator's faces on it."""

    def __init__(self, engine_db: Any, config: str = CONFIG) -> None:
        self.clock = ManualClock()
        self.ctx = engine_db.context(config, self.clock)
        self.opt = ResourceOptimizer(self.ctx)
        self.coord = TaskCoordinator(self.ctx)
        self.interval = float(self.ctx.settings.get("optimizer.interval"))

    def report(self, node: str, gpu: float, cpu: float | None = None, **hw: Any) -> None:
        safeguards.store_reading(self.ctx, node, {"gpu": gpu, "cpu": cpu}, {**H100, **hw})

    def adjust(self, **kw: Any) -> dict[str, Any]:
        return self.opt.adjust(**kw)

    def step(self) -> None:
        self.clock.advance(self.interval)

    def targets(self) -> dict[str, int]:
        with self.ctx.store.read() as tx:
            return {r["node"]: r["target"] for r in opt_state.targets(tx)}

    def history(self) -> list[dict[str, Any]]:
        with self.ctx.store.read() as tx:
            return list(reversed(opt_state.history(tx, limit=1000)))

    def start(self, node: str) -> Any:
        return self.coord.acquire("selfplay", node, holder=Holder(pid=os.getpid()))

    def status(self) -> dict[str, Any]:
        return reports.status(self.ctx)["optimizer"]


def test_under_target_adjusts_raise_the_rate_and_the_targets(engine_db: Any) -> None:
    loop = Loop(engine_db)
    rates, targets = [], []
    for _ in range(4):
        for node in ("n1", "n2"):
            loop.report(node, gpu=30.0)
        done = loop.adjust()
        assert done["acted"] and done["action"] == "scale_up", done
        assert done["controlling"] == "gpu" and done["measurement"] == 30.0
        assert done["previous_rate"] < done["rate"] <= done["previous_rate"] * 1.2 + 1e-6
        rates.append(done["rate"])
        targets.append(loop.targets())
        loop.step()
    assert rates == sorted(rates) and rates[0] > 1000.0
    # the targets follow the rate: ceil(cap 24 x rate / 5000), never lower, ending higher
    for rate, found in zip(rates, targets, strict=True):
        expected = -(-24 * rate // 5000)
        assert found == {"n1": expected, "n2": expected}, (rate, found)
    assert targets[-1]["n1"] > targets[0]["n1"] >= 5
    # the history says so, and so does status
    history = loop.history()
    assert [h["action"] for h in history] == ["scale_up"] * 4
    assert [h["rate"] for h in history] == rates
    assert all(h["source"] == "adjust" and h["confidence"] > 0 for h in history)
    status = loop.status()
    assert status["rate"] == rates[-1] and status["action"] == "scale_up"
    assert status["utilization"]["gpu"] == 30.0 and status["scale_up"]["gpu"] is True
    assert status["in_range"] == {"cpu": None, "gpu": False}
    assert status["problem"] is None and status["age"] == loop.interval


def test_over_target_adjusts_lower_the_targets_and_admission_refuses(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=95.0)
    loop.report("n2", gpu=95.0)
    for _ in range(6):  # no target yet: admission does not limit self-play by the optimizer
        assert loop.start("n1").allowed
    rates = []
    for _ in range(3):
        loop.report("n1", gpu=95.0)
        loop.report("n2", gpu=95.0)
        done = loop.adjust()
        assert done["action"] == "scale_down", done
        rates.append(done["rate"])
        loop.step()
    assert rates == sorted(rates, reverse=True) and rates[0] < 1000.0
    target = loop.targets()["n1"]
    assert target == -(-24 * rates[-1] // 5000) and target < 6
    denied = loop.coord.check("selfplay", "n1")
    assert not denied.allowed
    (reason,) = denied.reasons
    assert reason.rule == "optimizer"
    assert (reason.requested, reason.used, reason.limit) == (1, 6, target)
    assert reason.details["rate"] == rates[-1] and reason.details["action"] == "scale_down"
    assert reason.details["target_age"] == loop.interval
    # the next adjust is due now (the clock moved one interval since the last): at least 5 s
    assert reason.retry_after == 5.0
    assert f"self-play target {target} on n1" in reason.message
    # another node with room under its target, and other task types, are not limited
    assert loop.start("n2").allowed
    assert loop.coord.check("training", "n1").allowed
    status = loop.status()
    assert status["action"] == "scale_down" and status["scale_down"]["gpu"] is True


def test_inside_the_dead_band_the_rate_holds(engine_db: Any) -> None:
    loop = Loop(engine_db)
    for value in (72.0, 65.0, 78.0, 70.0):
        loop.report("n1", gpu=value, cpu=50.0)
        done = loop.adjust()
        assert done["action"] == "none" and done["rate"] == 1000.0, done
        assert "inside the target 60-80%" in done["reason"]
        assert done["controller"]["output"] == 0.0
        assert loop.targets() == {"n1": 5}  # refreshed each run: ceil(24 x 1000 / 5000)
        loop.step()
    assert [h["action"] for h in loop.history()] == ["none"] * 4


def test_dry_run_changes_nothing(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=20.0)
    before = loop.adjust(dry_run=True)
    assert before["dry_run"] and not before["acted"] and before["action"] == "scale_up"
    assert before["node_targets"] == [
        {"node": "n1", "target": -(-24 * before["rate"] // 5000), "cap": 24}
    ]
    assert loop.targets() == {} and loop.history() == []
    with loop.ctx.store.read() as tx:
        assert not opt_state.load(tx, loop.ctx.settings)["stored"]
        assert opt_state.samples(tx, 0) == []
    # and a dry run right after a real adjust neither stores nor says "already adjusted"
    real = loop.adjust()
    assert real["acted"] and real["rate"] == before["rate"]
    again = loop.adjust(dry_run=True)
    assert again["dry_run"] and "already" not in again["reason"]
    assert again["reason"].endswith(
        "(a real adjust now would act not: the last one was 0 s ago, within optimizer.min_interval)"
    )
    assert len(loop.history()) == 1


def test_expired_targets_do_not_block(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=95.0)
    for _ in range(6):
        assert loop.start("n1").allowed
    loop.adjust()
    assert loop.targets()["n1"] <= 6  # over target: no room above what runs
    assert [r.rule for r in loop.coord.check("selfplay", "n1").reasons] == ["optimizer"]
    ttl = float(loop.ctx.settings.get("optimizer.state_ttl"))
    loop.clock.advance(ttl + 1)  # no adjust since: the target is old, admission fails open
    assert loop.coord.check("selfplay", "n1").allowed
    status = loop.status()
    assert [t["in_force"] for t in status["selfplay_targets"]] == [False]
    # a target from a clock far ahead is not trusted either
    loop.clock.advance(-(ttl + 1) - 3600)
    assert loop.coord.check("selfplay", "n1").allowed


def test_no_fresh_readings_hold_with_the_reason(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=30.0)
    loop.report("n2", gpu=30.0)
    first = loop.adjust()
    assert first["action"] == "scale_up"
    kept = loop.targets()
    loop.clock.advance(float(loop.ctx.settings.get("resources.max_sample_age")) + 1)
    held = loop.adjust()
    assert held["acted"] and held["action"] == "none" and held["rate"] == first["rate"]
    assert held["reason"] == "no fresh readings: 2 stale (n1, n2); holding the rate"
    assert held["confidence"] == 0.0
    assert loop.targets() == kept  # no target changed (they lapse with state_ttl)
    status = loop.status()
    assert status["reason"] == held["reason"] and status["utilization"]["stale_nodes"] == 2
    assert status["utilization"]["stale_names"] == ["n1", "n2"]
    assert loop.history()[-1]["action"] == "none"


def test_a_hold_names_at_most_five_stale_nodes(engine_db: Any) -> None:
    loop = Loop(engine_db)
    for i in range(7):
        loop.report(f"n{i}", gpu=50.0)
    loop.clock.advance(float(loop.ctx.settings.get("resources.max_sample_age")) + 1)
    held = loop.adjust()
    assert held["reason"] == (
        "no fresh readings: 7 stale (n0, n1, n2, n3, n4, +2 more); holding the rate"
    )


def test_an_adjust_within_min_interval_acts_not(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=30.0)
    first = loop.adjust()
    loop.clock.advance(float(loop.ctx.settings.get("optimizer.min_interval")) - 1)
    second = loop.adjust()
    assert not second["acted"] and second["rate"] == first["rate"]
    assert second["reason"].startswith("already adjusted 59 s ago by ")
    assert len(loop.history()) == 1
    loop.clock.advance(1)
    assert loop.adjust()["acted"]


def test_min_interval_counts_from_the_last_adjust_not_a_negotiation(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=30.0)
    assert loop.adjust()["acted"]
    loop.clock.advance(float(loop.ctx.settings.get("optimizer.min_interval")))
    with loop.ctx.store.write() as tx:  # what `rate negotiate` stores
        opt_state.set_rate(
            tx,
            loop.ctx.settings,
            rate=2000.0,
            now=tx.now(),
            source="negotiate",
            action="scale_up",
            previous_rate=1100.0,
            requestor="unified_loop",
        )
    loop.clock.advance(1)
    done = loop.adjust()
    assert done["acted"] and done["previous_rate"] == 2000.0, done
    assert [h["source"] for h in loop.history()] == ["adjust", "negotiate", "adjust"]


def test_a_long_gap_or_a_clock_step_back_restarts_the_controller(engine_db: Any) -> None:
    """The controller's state persists between runs; a gap past optimizer.max_gap is not
    integrated as if the error had lasted all that time, nor is a clock stepped back."""
    loop = Loop(engine_db)
    loop.report("n1", gpu=30.0)
    first = loop.adjust()
    assert first["controller"]["restart_reason"] == "first run"
    loop.step()
    loop.report("n1", gpu=30.0)
    second = loop.adjust()
    assert second["controller"]["restarted"] is False and second["controller"]["dt_runs"] == 1.0
    loop.clock.advance(2 * 3600)  # the timer's node was down for two hours
    loop.report("n1", gpu=30.0)
    late = loop.adjust()
    assert late["controller"]["restarted"] is True
    assert late["controller"]["restart_reason"].startswith("gap 7200s")
    assert late["controller"]["i"] == 0.0  # nothing integrated over the gap
    loop.clock.advance(-3600)  # the store's clock stepped back an hour
    loop.report("n1", gpu=30.0)
    back = loop.adjust()
    assert back["acted"] and back["controller"]["restart_reason"] == "clock stepped back"
    for done in (first, second, late, back):
        assert -0.2 <= done["controller"]["output"] <= 0.2


def test_apply_feedback_adjustment_returns_the_new_rate(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("n1", gpu=30.0, cpu=20.0)
    rate = loop.opt.apply_feedback_adjustment("unified_loop")
    (row,) = loop.history()
    assert rate > 1000.0 and row["requestor"] == "unified_loop"  # who asked; and the account:
    assert row["who"] and row["who"] != "unified_loop"
    assert loop.opt.should_scale_up("gpu") and loop.opt.should_scale_up("cpu")
    assert not loop.opt.should_scale_down("gpu")
    assert loop.opt.get_utilization_status()["rate"] == rate
    assert loop.opt.get_max_selfplay_for_node("h100", 1, "H100", 32, 64, True) == 24
    assert resource_optimizer.get_max_selfplay_for_node("3070", 1, "RTX 3070", 8, 32, True) == 4
    assert set(resource_optimizer.__all__) >= {
        "get_resource_optimizer",
        "should_scale_up",
        "should_scale_down",
        "get_utilization_status",
        "apply_feedback_adjustment",
        "get_max_selfplay_for_node",
        "negotiate_selfplay_rate",
    }
    approved = loop.opt.negotiate_selfplay_rate(rate * 2, "momentum_accelerating", "unified_loop")
    assert rate < approved <= rate * 1.25 + 1e-6  # at most optimizer.max_change per negotiation
    assert loop.history()[-1]["source"] == "negotiate"


def test_the_utilization_is_weighted_and_stale_nodes_are_left_out(engine_db: Any) -> None:
    loop = Loop(engine_db)
    loop.report("big", gpu=90.0, cpu=80.0, gpu_count=4, cpus=96)
    loop.report("small", gpu=40.0, cpu=20.0, gpu_count=1, cpus=32)
    loop.report("cpuonly", gpu=None, cpu=50.0, gpu_name=None, gpu_count=0, cpus=32)
    loop.clock.advance(500)
    loop.report("fresh", gpu=10.0, cpu=10.0, gpu_count=1, cpus=32)
    loop.clock.advance(200)  # the first three are now 700 s old: stale
    util = loop.opt.get_cluster_utilization()
    assert (util["fresh_nodes"], util["stale_nodes"]) == (1, 3)
    assert util["stale_names"] == ["big", "cpuonly", "small"]
    loop.clock.advance(-600)  # all fresh again
    util = loop.opt.get_cluster_utilization()
    assert (util["gpu_nodes"], util["cpu_nodes"], util["stale_nodes"]) == (3, 1, 0)
    assert util["gpu"] == pytest.approx((90 * 4 + 40 + 10) / 6)
    assert util["cpu"] == pytest.approx((80 * 96 + 20 * 32 + 50 * 32 + 10 * 32) / 192)


# --------------------------------------------------------------------------- the CLI


def test_cli_adjust_status_and_refusal(coord: Coord) -> None:
    def ok(*argv: str) -> dict[str, Any]:
        done = coord("--json", *argv)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    coord.write_config(CONFIG)  # the reading's 97 % GPU is not a critical one here
    ok(
        "report",
        "--node",
        "n1",
        "--gpu",
        "97",
        "--gpu-name",
        "RTX 3070",
        "--gpu-count",
        "1",
        "--cpus",
        "8",
        "--memory-gb",
        "32",
    )
    for _ in range(3):
        ok("register", "selfplay", "--node", "n1", "--pid", str(os.getpid()))
    dry = ok("adjust", "--dry-run")
    assert dry["dry_run"] and not dry["acted"] and dry["action"] == "scale_down"
    assert ok("status")["optimizer"]["stored"] is False
    never = coord("status").stdout.splitlines()
    assert "optimizer: never adjusted · gpu 97% (target 60-80%) · rate 1000/h" in never
    done = ok("adjust")
    assert done["acted"] and done["action"] == "scale_down"
    assert done["previous_rate"] == 3750.0  # the first adjust starts from the load: 3 of 4
    (target,) = done["node_targets"]
    assert target["cap"] == 4 and target["target"] == -(-4 * done["rate"] // 5000) == 3
    denied = coord("--json", "can-spawn", "selfplay", "--node", "n1")
    assert denied.returncode == 1, denied.stderr
    (reason,) = json.loads(denied.stdout)["reasons"]
    assert (reason["rule"], reason["requested"], reason["used"], reason["limit"]) == (
        "optimizer",
        1,
        3,
        3,
    )
    human = coord("can-spawn", "selfplay", "--node", "n1")
    assert "3 running + 1 requested > self-play target 3 on n1" in human.stdout + human.stderr
    shown = ok("rate", "show")  # the rate and its history: the adjust's row, its action
    assert (shown["rate"], shown["action"]) == (done["rate"], "scale_down")
    assert [(h["source"], h["action"]) for h in shown["history"]] == [("adjust", "scale_down")]
    status = ok("status")["optimizer"]
    assert status["action"] == "scale_down" and status["rate"] == done["rate"]
    assert status["utilization"]["gpu"] == 97.0
    screen = coord("status")
    (line,) = [x for x in screen.stdout.splitlines() if x.startswith("optimizer: ")]
    assert line.startswith("optimizer: gpu 97% (target 60-80%) · rate ")
    assert " · scale_down " in line and line.endswith(" ago")
    assert any("selfplay=3/32 (optimizer target 3)" in x for x in screen.stdout.splitlines())
    util = coord("utilization")
    assert util.returncode == 0 and "gpu: 97% (target 60-80%: high" in util.stdout
    again = coord("adjust")
    assert again.returncode == 0 and again.stdout.startswith("not adjusted: already adjusted")


def test_two_racing_adjust_processes_act_once(coord: Coord) -> None:
    done = coord("report", "--node", "n1", "--gpu", "30", "--gpu-count", "1", "--cpus", "8")
    assert done.returncode == 0, done.stderr
    procs = [coord.popen("--json", "adjust") for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    docs = [json.loads(out) for out, _ in outs]
    assert sorted(d["acted"] for d in docs) == [False, True], docs
    (lost,) = [d for d in docs if not d["acted"]]
    assert lost["reason"].startswith("already adjusted")
    history = coord("--json", "utilization")
    assert json.loads(history.stdout)["action"] == "scale_up"


@pytest.mark.parametrize("dry", [False, True])
def test_cli_adjust_without_readings_holds(coord: Coord, dry: bool) -> None:
    argv = ["adjust", "--dry-run"] if dry else ["adjust"]
    assert coord("tasks", "reap").returncode == 0  # a store (a dry run creates none)
    done = coord(*argv)
    assert done.returncode == 0, done.stderr
    assert "no fresh readings: no node has reported" in done.stdout


def test_utilization_shows_stored_names_as_data(coord: Coord) -> None:
    """Node names are data: never Rich markup, in every format (tsv: the node rows only)."""
    name = "evil[bold]n[/bold]"
    done = coord("report", "--node", name, "--gpu", "50", "--gpu-count", "1")
    assert done.returncode == 0, done.stderr
    for fmt in ("table", "plain", "tsv"):
        shown = coord("utilization", "--format", fmt)
        assert shown.returncode == 0, shown.stderr
        assert name in shown.stdout, (fmt, shown.stdout)
    tsv = coord("utilization", "--format", "tsv").stdout.splitlines()
    assert tsv[0].split("\t")[0] == "node" and tsv[1].split("\t")[:2] == [name, "gpu"]
    assert len(tsv) == 2
    bare = coord("utilization", "--no-header").stdout.splitlines()  # plain rows: no summary
    assert [line.split()[0] for line in bare] == [name], bare


def test_the_reference_module_functions_use_the_process_wide_optimizer(coord: Coord) -> None:
    """The reference's calls, on the context built from the environment."""
    done = coord("report", "--node", "n1", "--gpu", "30", "--gpu-count", "1", "--cpus", "8")
    assert done.returncode == 0, done.stderr
    code = (
        "import json\n"
        "from ringrift_coord.resource_optimizer import *\n"
        "rate = apply_feedback_adjustment('unified_loop')\n"
        "status = get_utilization_status()\n"
        "print(json.dumps([rate, should_scale_up('gpu'), should_scale_down('gpu'),\n"
        "    status['action'], status['updated_by'], get_resource_optimizer() is\n"
        "    get_resource_optimizer()]))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], env=coord.env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    rate, up, down, action, who, same = json.loads(ran.stdout)
    assert rate > 1000 and up is True and down is False
    assert (action, same) == ("scale_up", True) and who and who != "unified_loop"
    shown = json.loads(coord("--json", "rate", "show").stdout)["history"]
    assert [row["requestor"] for row in shown] == ["unified_loop"]  # who asked, logged


def test_a_bad_target_fails_the_optimizer_commands_only(coord: Coord) -> None:
    """RINGRIFT_TARGET_UTIL_MIN=85 (above the optimal 70): adjust and utilization exit 3
    naming the variable; status says the optimizer is not in use; admission goes on."""
    bad = {"RINGRIFT_TARGET_UTIL_MIN": "85"}
    assert coord("report", "--node", "n1", "--gpu", "30", "--gpu-count", "1").returncode == 0
    for argv in (["adjust"], ["adjust", "--dry-run"], ["utilization"]):
        done = coord(*argv, env=bad)
        assert done.returncode == 3, (argv, done.stdout, done.stderr)
        (line,) = done.stderr.splitlines()
        assert line.startswith("ringrift-coord: error: resource_targets.cpu_min: ")
        assert "env RINGRIFT_TARGET_UTIL_MIN" in line
    status = coord("--json", "status", env=bad)
    assert status.returncode == 0, status.stderr
    problem = json.loads(status.stdout)["optimizer"]["problem"]
    assert "env RINGRIFT_TARGET_UTIL_MIN" in problem
    screen = coord("status", env=bad)
    assert any(x.startswith("optimizer: not in use: ") for x in screen.stdout.splitlines())
    assert coord("can-spawn", "selfplay", "--node", "n1", env=bad).returncode == 0
    assert coord("adjust").returncode == 0  # without the bad variable it runs
    # with targets stored, a node at its target is refused by rule optimizer; while the
    # optimizer's settings are bad it is "not in use" there too: admission fails open
    (target,) = json.loads(coord("--json", "utilization").stdout)["selfplay_targets"]
    for _ in range(target["target"]):
        held = coord("register", "selfplay", "--node", "n1", "--pid", str(os.getpid()))
        assert held.returncode == 0, held.stderr
    refused = coord("--json", "can-spawn", "selfplay", "--node", "n1")
    assert [r["rule"] for r in json.loads(refused.stdout)["reasons"]] == ["optimizer"]
    allowed = coord("can-spawn", "selfplay", "--node", "n1", env=bad)
    assert allowed.returncode == 0 and "env RINGRIFT_TARGET_UTIL_MIN" in allowed.stderr


def test_the_rate_history_is_kept_as_long_as_the_decision_log(engine_db: Any) -> None:
    config = CONFIG.replace("store: {lease_ttl: 1000000}", "store: {decision_log_days: 2}")
    loop = Loop(engine_db, config)
    loop.report("n1", gpu=70.0)
    assert loop.adjust()["acted"]
    loop.clock.advance(86400.0)  # a day later: still within two days
    loop.report("n1", gpu=70.0)
    assert loop.adjust()["acted"]
    assert len(loop.history()) == 2
    loop.clock.advance(1.5 * 86400.0)  # the first row is now older than two days
    loop.report("n1", gpu=70.0)
    assert loop.adjust()["acted"]
    assert [h["at"] for h in loop.history()] == [
        loop.clock.time() - 1.5 * 86400.0,
        loop.clock.time(),
    ]


def test_the_first_adjust_starts_from_the_load_running_now(engine_db: Any) -> None:
    """Bumpless on the cluster too: a controller that never ran starts from the rate the
    running self-play implies, so its first step (inside the band: a hold) takes room from
    no node, and a hold never lowers a node's target below the jobs it runs."""
    loop = Loop(engine_db)
    loop.report("h1", gpu=70.0, cpu=60.0)  # cap 24
    loop.report("h2", gpu=70.0, cpu=60.0)
    for _ in range(10):
        assert loop.start("h1").allowed
    for _ in range(2):
        assert loop.start("h2").allowed
    done = loop.adjust()
    assert done["action"] == "none" and "inside the target 60-80%" in done["reason"], done
    assert done["previous_rate"] == done["rate"] == 5000.0 * 12 / 48  # 1250 games/h
    # ceil(24 x 1250 / 5000) = 6 on both, but h1 runs 10: a hold keeps them
    assert loop.targets() == {"h1": 10, "h2": 6}
    assert loop.coord.check("selfplay", "h2").allowed
    denied = loop.coord.check("selfplay", "h1")  # full at what it runs: no more, none cut
    assert [r.rule for r in denied.reasons] == ["optimizer"]
    # over target, the targets fall below what runs (the node drains as its jobs end)
    loop.step()
    loop.report("h1", gpu=95.0, cpu=60.0)
    loop.report("h2", gpu=95.0, cpu=60.0)
    down = loop.adjust()
    assert down["action"] == "scale_down" and "above the target 60-80%" in down["reason"]
    assert loop.targets()["h1"] < 10


def test_the_reason_places_the_reading_and_shows_the_forecast_beside_it(engine_db: Any) -> None:
    loop = Loop(engine_db)
    for value in (50.0, 58.0, 66.0, 74.0):  # rising: the trend forecasts above the band
        loop.report("n1", gpu=value)
        done = loop.adjust()
        loop.step()
    assert done["measurement"] == 74.0
    assert done["forecast"]["value"] > 80.0 and done["forecast"]["confidence"] > 0.5
    assert "gpu 74.0% (forecast " in done["reason"]
    assert "inside the target 60-80%" in done["reason"]  # the reading's place, not the blend's
    assert "measurement" not in done["controller"]  # its input has one name: "input"
    assert done["controller"]["input"] > done["measurement"]


def test_adjusts_sooner_than_the_interval_move_the_rate_by_their_share(engine_db: Any) -> None:
    """Two timers 150 s apart (or a cron every minute) do not double the loop's gain: a run
    moves the rate by the share of optimizer.interval since the last adjust."""
    loop = Loop(engine_db)

    def steps(gap: float, runs: int) -> tuple[float, float, list[float]]:
        with loop.ctx.store.write() as tx:  # a fresh optimizer on the same store
            for table in ("optimizer_state", "rate_history", "utilization_samples"):
                tx.execute(f"DELETE FROM {table}")
        loop.report("n1", gpu=30.0)
        start = loop.adjust()["rate"]
        shares = []
        for _ in range(runs):
            loop.clock.advance(gap)
            loop.report("n1", gpu=30.0)
            done = loop.adjust()
            assert done["acted"], done
            shares.append(done["controller"]["interval_share"])
        return start, done["rate"], shares

    start, end, shares = steps(loop.interval, 1)
    one_step = end / start - 1.0
    assert shares == [1.0] and one_step > 0.0
    start, end, shares = steps(loop.interval / 2, 2)
    two_halves = end / start - 1.0
    assert shares == [0.5, 0.5]
    assert 0.0 < two_halves < 1.3 * one_step, (one_step, two_halves)  # not twice the step


def test_a_first_step_on_target_from_an_uneven_load_holds(engine_db: Any) -> None:
    """7 of 24 running: the load's rate (1458.3/h) is stored in tenths like every rate, so a
    first step inside the band is a hold, not a 'scale_down' of a rounding."""
    loop = Loop(engine_db)
    loop.report("g1", gpu=70.0, cpu=70.0)
    for _ in range(7):
        assert loop.start("g1").allowed
    done = loop.adjust()
    assert done["action"] == "none" and done["rate"] == done["previous_rate"] == 1458.3, done
    assert loop.targets() == {"g1": 7}  # ceil(24 x 1458.3 / 5000) = 7 = what it runs
