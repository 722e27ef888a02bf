"""Node readings (``report``, ``resources``), thresholds in admission, and the Safeguards API.

The admission tests run on both engines; the CLI calls on PostgreSQL are kept few (each
pays for importing psycopg). Tests of this machine's own readings and of bad input run on
SQLite only (``local``): they do not depend on the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from conftest import Coord, own_pg_database

from ringrift_coord import readings, safeguards
from ringrift_coord.clock import ManualClock
from ringrift_coord.config import load_settings
from ringrift_coord.context import Context
from ringrift_coord.safeguards import Safeguards
from ringrift_coord.statedir import ensure_state_dir
from ringrift_coord.store.sqlite import SQLiteStore
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")


@pytest.fixture
def local(tmp_path) -> Coord:
    """The CLI on SQLite only, for what does not depend on the engine."""
    return Coord(tmp_path)


def js(result):
    assert result.stdout, (result.returncode, result.stderr)
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- admission


def test_critical_reading_blocks_only_that_node(coord):
    assert coord("report", "--node", "nX", "--disk", "90").returncode == 0
    denied = coord("--json", "can-spawn", "selfplay", "--node", "nX")
    assert denied.returncode == 1
    doc = js(denied)
    assert doc["allowed"] is False
    (rule,) = doc["reasons"]
    assert rule["rule"] == "threshold" and "disk" in rule["message"]
    assert (rule["used"], rule["limit"]) == (90, 70)
    assert coord("can-spawn", "selfplay", "--node", "nY").returncode == 0  # other nodes: fine

    assert (
        coord("report", "--node", "nX", "--disk", "10", "--mem", "10", "--cpu", "10").returncode
        == 0
    )
    assert coord("can-spawn", "selfplay", "--node", "nX").returncode == 0
    assert coord("report", "--node", "nX", "--mem", "75").returncode == 0
    warned = js(coord("--json", "can-spawn", "selfplay", "--node", "nX"))
    assert warned["allowed"] is True
    assert any("memory" in w and "warning" in w for w in warned["warnings"])


def test_stale_sample_is_ignored_and_shown_stale(coord):
    coord.write_config("resources: {max_sample_age: 1}\n")
    assert coord("report", "--node", "nX", "--disk", "95").returncode == 0
    time.sleep(1.2)
    assert coord("can-spawn", "selfplay", "--node", "nX").returncode == 0
    doc = js(coord("--json", "resources", "--node", "nX"))
    (node,) = doc["nodes"]
    assert node["stale"] is True and node["blocking"] is False
    assert node["levels"]["disk"] == "critical" and node["age"] > 1
    assert doc["live"] is None  # nX is not this host


# --------------------------------------------------------------------------- this host


def test_real_report_of_this_machine(local):
    result = local("--json", "report")
    assert result.returncode == 0, result.stderr
    reading = js(result)
    assert reading["node"] == os.uname().nodename and reading["source"].startswith("psutil")
    assert reading["memory_gb"] > 0 and reading["cpus"] == os.cpu_count()
    assert 0 <= reading["disk"] <= 100 and 0 <= reading["memory"] <= 100
    assert 0 <= reading["cpu"] <= 100
    assert reading["gpu_count"] >= 0  # no NVML here is a normal case, not an error
    if reading["gpu_count"] == 0:
        assert reading["gpu"] is None and reading["details"].get("gpu_note")

    before = hashlib.sha256(local.db.read_bytes()).hexdigest()
    doc = js(local("--json", "resources"))
    (stored,) = doc["nodes"]
    assert stored["node"] == reading["node"] and stored["memory_gb"] == reading["memory_gb"]
    assert stored["stale"] is False and stored["levels"]["disk"] in ("ok", "warning", "critical")
    assert doc["thresholds"]["disk"] == {"warning": 65, "critical": 70}
    assert doc["live"]["node"] == reading["node"] and doc["live"]["memory"] > 0
    assert doc["live"]["used_by_admission"] is False  # live_host is off in tests
    table = local("resources")
    assert table.returncode == 0 and reading["node"] in table.stdout
    assert "(live)" in table.stdout and "selfplay 32" in table.stdout
    assert local("limits").returncode == 0
    # reading commands do not write
    assert hashlib.sha256(local.db.read_bytes()).hexdigest() == before

    line = local("report")
    assert line.returncode == 0 and line.stdout.startswith(f"reported {reading['node']} (psutil")
    assert line.stdout.count("\n") == 1


def test_live_readings_of_this_host_decide_admission(local):
    tight = (
        "--set",
        "resources.live_host=true",
        "--set",
        "thresholds.memory.critical=0.1",
        "--set",
        "thresholds.memory.warning=0",
    )
    for where in ((), ("--node", os.uname().nodename)):
        denied = local(*tight, "can-spawn", "selfplay", *where)
        assert denied.returncode == 1, denied.stderr
        assert "memory" in denied.stderr and "critical 0.1%" in denied.stderr
    assert local(*tight, "can-spawn", "selfplay", "--node", "elsewhere").returncode == 0
    doc = js(local(*tight, "--json", "resources"))
    assert doc["nodes"] == [] and doc["live"]["used_by_admission"] is True
    assert doc["live"]["blocking"] is True and doc["live"]["levels"]["memory"] == "critical"
    # without live readings (the tests' default) the same thresholds decide nothing here
    assert (
        local(
            "--set",
            "thresholds.memory.critical=0.1",
            "--set",
            "thresholds.memory.warning=0",
            "can-spawn",
            "selfplay",
        ).returncode
        == 0
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("report", "--disk", "150"),
        ("report", "--cpu", "abc"),
        ("report", "--mem", "-1"),
        ("report", "--gpu", "nan"),
        ("report", "--load", "-2"),
        ("report", "--node", ""),
        ("report", "--cpus", "many"),
        # --cpus 0 was stored (the load rule, 1.5 x cpus, then never applied); --load 1e308
        # too (report and resources printed a 300-digit number)
        ("report", "--cpus", "0"),
        ("report", "--load", "1e308"),
        ("report", "--load", "1000001"),
        ("resources", "--node", "a\nb"),
    ],
)
def test_bad_input_is_one_line_exit_2(local, argv):
    result = local(*argv)
    assert result.returncode == 2, (argv, result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"ringrift-coord: error: option {argv[1]}")
    assert not local.db.exists() or argv[0] == "resources"  # nothing was stored
    if argv[1:] == ("--load", "1000001"):  # the value as given, not 1e+06 (the limit's own)
        assert "1000001.0 is not a load average from 0 to 1000000" in result.stderr


def test_the_largest_load_and_the_fewest_cpus_are_taken(local):
    reading = js(local("--json", "report", "--node", "big", "--load", "1e6", "--cpus", "1"))
    assert (reading["load_avg"], reading["cpus"]) == (1e6, 1)


def test_manual_hardware_is_kept_and_caps_are_shown(local):
    first = local(
        "report",
        "--node",
        "g1",
        "--gpu-name",
        "H100",
        "--gpu-count",
        "8",
        "--cpus",
        "64",
        "--memory-gb",
        "512",
        "--gpu",
        "50",
    )
    assert first.returncode == 0, first.stderr
    # --memory-gb is GiB, and so is what report and resources say (as capacity does)
    assert "512 GiB" in first.stdout and " GB" not in first.stdout, first.stdout
    reading = js(local("--json", "report", "--node", "g1", "--load", "100"))
    assert (reading["gpu_name"], reading["gpu_count"], reading["cpus"]) == ("H100", 8, 64)
    assert reading["gpu"] is None and reading["load_avg"] == 100  # figures are this report's
    doc = js(local("--json", "can-spawn", "selfplay", "--node", "g1"))
    assert [r["rule"] for r in doc["reasons"]] == ["threshold"]  # 100 >= 1.5 x 64
    assert doc["reasons"][0]["limit"] == 96

    # an OOM-lowered cap and a backpressure factor: in `resources` and in `limits`
    with Context.open(
        state_dir=str(local.state_dir), config=str(local.config), env=local.env
    ) as ctx:
        Safeguards(ctx).record_failure("selfplay", "g1", "OOM")
        with ctx.store.write() as tx:
            tx.execute(
                "INSERT INTO lowered_caps (node, task_type, cap, lowered_at, ooms) "
                "VALUES ('g1', 'selfplay', 5, ?, 2)",
                (tx.now(),),
            )
    caps = js(local("--json", "resources", "--node", "g1"))["nodes"][0]["caps"]
    assert caps["lowered"] == {"selfplay": 5} and caps["effective"]["selfplay"] == 5
    assert 0.5 <= caps["backpressure_factor"] < 0.51  # recovering with time since the failure
    table = local("resources", "--node", "g1").stdout
    assert "H100 x8" in table and "selfplay 5" in table and "0.50" in table
    assert "512 GiB" in table and " GB" not in table, table
    limits = js(local("--json", "limits"))
    assert [(c["node"], c["cap"], c["configured"]) for c in limits["lowered_caps"]] == [
        ("g1", 5, 32)
    ]
    assert [(b["node"], round(b["factor"], 1)) for b in limits["backpressure"]] == [("g1", 0.5)]
    text = local("limits").stdout
    assert "lowered after repeated OOMs" in text and "backpressure" in text


# --------------------------------------------------------------------------- Python API


@pytest.fixture
def api_ctx(tmp_path, engine, request):
    config = tmp_path / "c.yaml"
    config.write_text(
        "rate_limits: {sync: {per_minute: 60, burst: 2}}\n"
        "task_limits: {training: {per_node: 1, cluster: 3}}\n"
    )
    state = ensure_state_dir(str(tmp_path / "state"))
    clock = ManualClock()
    if engine == "postgres":
        from ringrift_coord.store.postgres import PostgresStore

        store = PostgresStore(own_pg_database(request), clock=clock)
    else:
        store = SQLiteStore(os.path.join(state, "tasks.db"), clock=clock)
    settings = load_settings(str(config), env={"RINGRIFT_COORD_SET": "resources.live_host=false"})
    ctx = Context(
        settings=settings, state_dir=state, store=store, clock=clock, env={"USER": "tester"}
    )
    yield ctx, clock
    ctx.close()


def test_safeguards_api(api_ctx, monkeypatch):
    ctx, clock = api_ctx
    guard = Safeguards(ctx)
    assert guard.allow_spawn("sync", "n1") and guard.get_block_reason() is None

    # record_spawn: a token from the (node, type) bucket and a decision-log entry, no slot
    assert guard.record_spawn("sync", "n1").allowed
    assert guard.record_spawn("sync", "n1").allowed
    assert not guard.allow_spawn("sync", "n1") and "rate" in guard.get_block_reason()
    assert guard.allow_spawn("sync", "n2")  # buckets are per (node, type)
    coord = TaskCoordinator(ctx)
    assert coord.list_tasks() == []
    assert [d["action"] for d in coord.decisions()] == ["record-spawn", "record-spawn"]
    clock.advance(1.0)
    assert guard.allow_spawn("sync", "n1")

    # record_failure: the breaker opens, the node's backpressure drops
    for _ in range(3):
        state = guard.record_failure("training", "n1", "OOM\nkilled")
    assert state["state"] == "open" and state["last_reason"] == "OOM killed"
    assert state["backpressure"] == 0.125
    allowed, reason = guard.check_before_spawn("training", "n1")
    assert not allowed and "circuit breaker" in reason and guard.get_block_reason() == reason
    assert guard.check_before_spawn("training", "n2") == (True, "")

    # a critical reading blocks its node
    with ctx.store.write() as tx:
        readings.store_reading(tx, "n3", {"disk": 95.0, "memory": 75.0, "cpus": 8}, tx.now())
        tx.execute(
            "INSERT INTO lowered_caps (node, task_type, cap, lowered_at, ooms) "
            "VALUES ('n3', 'selfplay', 4, ?, 2)",
            (tx.now(),),
        )
    allowed, reason = safeguards.check_before_spawn(ctx, "selfplay", "n3")
    assert not allowed and "disk at 95%" in reason

    stats = guard.get_stats()
    json.dumps(stats)  # JSON-able
    assert stats["blocked_nodes"] == ["n3"] and stats["open_breakers"] == 1
    assert [(b["node"], b["task_type"], b["state"]) for b in stats["breakers"]] == [
        ("n1", "training", "open")
    ]
    assert [(b["node"], b["factor"]) for b in stats["backpressure"]] == [("n1", 0.125)]
    assert [
        (c["node"], c["task_type"], c["cap"], c["configured"]) for c in stats["lowered_caps"]
    ] == [("n3", "selfplay", 4, 32)]
    (n3,) = stats["readings"]
    assert n3["levels"] == {
        "disk": "critical",
        "memory": "warning",
        "cpu": None,
        "gpu": None,
        "load_avg": None,
    }
    assert n3["caps"]["effective"]["selfplay"] == 4
    assert stats["last_block_reason"] == guard.get_block_reason()

    # the emergency halt through the object, and the recovery of the breaker
    guard.activate_emergency("api test")
    assert guard.is_emergency_active() and guard.get_stats()["emergency_active"]
    assert not guard.allow_spawn("selfplay", "n2") and "api test" in guard.get_block_reason()
    guard.deactivate_emergency()
    assert guard.allow_spawn("selfplay", "n2")
    clock.advance(301)  # past the recovery timeout: a recorded success is the trial
    assert guard.record_success("training", "n1")["state"] == "closed"
    assert guard.allow_spawn("training", "n1")

    # the reference's module functions, without a context: the process-wide instance
    monkeypatch.setattr(Safeguards, "_instance", guard)
    assert Safeguards.get_instance() is guard
    assert safeguards.check_before_spawn("selfplay", "n3")[0] is False
    assert "disk" in safeguards.get_block_reason()
    assert safeguards.allow_spawn("selfplay", "n2") and safeguards.get_block_reason() is None
    safeguards.activate_emergency("module halt")
    assert "module halt" in safeguards.get_block_reason("selfplay", "n2")
    assert safeguards.deactivate_emergency()["lifted"] == ["*"]
    safeguards.record_failure("sync", "n4", "spawn failed")
    assert safeguards.get_stats()["backpressure"][-1]["node"] == "n4"
    with pytest.raises(TypeError):
        safeguards.check_before_spawn()


def test_safeguards_instance_from_environment(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    monkeypatch.setenv("RINGRIFT_COORDINATOR_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RINGRIFT_COORD_CONFIG", str(config))
    monkeypatch.setenv("RINGRIFT_COORD_SET", "resources.live_host=false")
    monkeypatch.delenv("RINGRIFT_COORD_DB", raising=False)
    monkeypatch.setattr(Safeguards, "_instance", None)
    try:
        guard = Safeguards.get_instance()
        assert Safeguards.get_instance() is guard
        assert guard.ctx.state_dir == str(tmp_path / "state")
        assert safeguards.check_before_spawn("selfplay", "n1") == (True, "")
        assert guard.record_spawn("selfplay", "n1").allowed
    finally:
        Safeguards.reset_instance()
    assert Safeguards._instance is None
