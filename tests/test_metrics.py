"""``metrics``: every family from one read transaction of a populated store, on both engines;
the real output passes ``promtool check metrics``; counters survive the decision log's
pruning; ``--textfile`` is atomic and its errors are one line with the contract's code; a
hostile node name comes out escaped; no store yet and a store that is down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Coord

from ringrift_coord import metrics, readings, safeguards
from ringrift_coord.bandwidth_manager import BandwidthManager
from ringrift_coord.clock import ManualClock
from ringrift_coord.halts import FILE_NAME
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")
PROMTOOL = shutil.which("promtool")
HOSTILE = 'n"6\\x\ny'  # quote, backslash, newline: label values are data

CONFIG = """
resources:
  max_sample_age: 300
"""


def samples(collection: metrics.Collection, name: str) -> dict[tuple[str, ...], float]:
    for metric in collection.metrics:
        if metric.name == name:
            return metric.samples
    raise AssertionError(f"no family {name}")


def by_label(collection: metrics.Collection, name: str, **labels: str) -> float | None:
    family = next(m for m in collection.metrics if m.name == name)
    key = tuple(labels[label] for label in family.labels)
    return family.samples.get(key)


def promtool_check(text: bytes) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout, done.stderr)


def populate(ctx: Any, clock: ManualClock) -> dict[str, Any]:
    """Tasks on two nodes, OOMs (a lowered cap, backpressure), an open breaker, readings
    (one stale, one critical, one hostile), transfers (one active, one ended with bytes), an
    optimizer adjust, a waiter, a refusal, then a cluster halt, a node drain and the file."""
    pid = os.getpid()
    tc = TaskCoordinator(ctx)
    with ctx.store.write() as tx:  # stale by the time the others are taken
        readings.store_reading(tx, "n5", {"cpu": 10.0, "cpus": 4}, tx.now())
    clock.advance(400)
    for _ in range(2):
        tc.register_task(None, "selfplay", "n1", pid=pid)
    tc.register_task(None, "selfplay", "n2", pid=pid)
    tc.register_task(None, "training", "n2", pid=pid)
    ooms = [tc.register_task(None, "selfplay", "n4", pid=pid) for _ in range(4)]
    for task_id in ooms[:2]:
        tc.unregister_task(task_id, status="oom", reason="OOM killed")
    for _ in range(3):
        safeguards.record_failure(ctx, "training", "n3", "boom")
    bw = BandwidthManager(ctx)
    active = bw.start("aws-1", "data")
    assert active.allowed, active.summary()
    ended = bw.start("aws-1", "data")
    bw.end_transfer("aws-1", str(ended.task_id), bytes_transferred=4096)
    other = bw.start("runpod-2", "data")
    bw.end_transfer("runpod-2", str(other.task_id), bytes_transferred=1000)
    bw.end_transfer(
        "aws-1", str(bw.start("aws-1", "data").task_id), bytes_transferred=None
    )  # unknown bytes: not counted
    with ctx.store.write() as tx:  # after the spawns: n1 and n2 are critical now
        now = tx.now()
        readings.store_reading(
            tx,
            "n1",
            {"cpu": 50.0, "memory": 60.0, "disk": 10.0, "gpu": 90.0, "gpu_memory": 40.0}
            | {"cpus": 8, "gpu_count": 2},
            now,
        )
        readings.store_reading(tx, "n2", {"cpu": 95.0, "memory": 20.0, "cpus": 4}, now)
        readings.store_reading(tx, HOSTILE, {"cpu": 5.0, "cpus": 2}, now)
    from ringrift_coord.identity import host_name
    from ringrift_coord.optimizer import adjust

    step = adjust.adjust(ctx.store, ctx.settings, who="tester", host=host_name())
    tc.enqueue("training", "n2")
    denied = tc.check("training", "n2")  # per-node limit 1 on n2: refused, logged
    assert not denied.allowed
    safeguards.activate_emergency(ctx, "maintenance")
    safeguards.activate_emergency(ctx, "drain", node="n2")
    Path(ctx.state_dir, FILE_NAME).write_text("")  # an operator's touch still halts
    refused = tc.check("selfplay", "n1")
    assert not refused.allowed
    return {"step": step, "active": active}


def test_every_family_from_a_populated_store(engine_db: Any) -> None:
    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock=clock)
    populate(ctx, clock)
    got = metrics.gather(ctx)
    assert got.store_up and got.problem is None and got.at == clock.time()
    names = [m.name for m in got.metrics]
    expected = {
        "ringrift_store_up",
        "ringrift_store_schema_migrations",
        "ringrift_cluster_cpu_utilization",
        "ringrift_cluster_gpu_utilization",
        "ringrift_cluster_gpu_memory_utilization",
        "ringrift_cpu_in_target_range",
        "ringrift_gpu_in_target_range",
        "ringrift_optimization_action",
        "ringrift_optimization_confidence",
        "ringrift_cluster_gpu_nodes",
        "ringrift_cluster_cpu_nodes",
        "ringrift_cluster_total_jobs",
        "ringrift_tasks",
        "ringrift_task_node_limit",
        "ringrift_task_cluster_limit",
        "ringrift_waiters",
        "ringrift_waiters_held",
        "ringrift_halted",
        "ringrift_halt_active",
        "ringrift_breaker_state",
        "ringrift_breaker_opened_timestamp_seconds",
        "ringrift_denials_total",
        "ringrift_backpressure_factor",
        "ringrift_lowered_cap",
        "ringrift_selfplay_rate_games_per_hour",
        "ringrift_transfers",
        "ringrift_transfer_bandwidth_limit_bytes_per_second",
        "ringrift_transfer_bandwidth_allocated_bytes_per_second",
        "ringrift_transfer_bytes_total",
        "ringrift_node_reading_age_seconds",
        "ringrift_node_utilization",
        "ringrift_node_critical",
        "ringrift_metrics_collected_timestamp_seconds",
        "ringrift_config_problem",
        "ringrift_optimization_resource",
        "ringrift_selfplay_target",
        "ringrift_reserved_slots",
        "ringrift_transfer_waiters",
        "ringrift_transfer_waiters_held",
    }
    assert set(names) == expected and len(names) == len(expected)
    optional = {  # their own test
        "ringrift_reserved_slots",
        "ringrift_transfer_waiters",
        "ringrift_transfer_waiters_held",
    }
    for metric in got.metrics:  # every family but the optional ones has a sample
        assert metric.samples or metric.name in optional, metric.name
    one = {m.name: m.samples.get(()) for m in got.metrics if not m.labels}
    assert one["ringrift_store_up"] == 1
    assert one["ringrift_store_schema_migrations"] >= 6
    # fresh readings: n1 (8 cpus at 50 %, 2 GPUs), n2 (4 cpus at 95 %), the hostile one
    # (2 cpus at 5 %); n5 is stale and left out
    assert one["ringrift_cluster_cpu_utilization"] == pytest.approx((400 + 380 + 10) / 14 / 100)
    assert one["ringrift_cluster_gpu_utilization"] == pytest.approx(0.9)
    assert one["ringrift_cluster_gpu_memory_utilization"] == pytest.approx(0.4)
    assert one["ringrift_cluster_gpu_nodes"] == 1
    assert one["ringrift_cluster_cpu_nodes"] == 2
    assert one["ringrift_cluster_total_jobs"] == 6  # 2 + 1 + 1 + the 2 left on n4
    assert one["ringrift_cpu_in_target_range"] == 0  # 56 % is below cpu_min 60
    assert one["ringrift_gpu_in_target_range"] == 0  # 90 % is above gpu_max 80
    action = samples(got, "ringrift_optimization_action")
    assert sorted(action) == [("none",), ("scale_down",), ("scale_up",)]
    assert sum(action.values()) == 1
    from ringrift_coord.optimizer import state as opt_state

    with ctx.store.read() as tx:
        saved = opt_state.load(tx, ctx.settings)
    assert saved["stored"]
    assert action[(saved["action"],)] == 1
    assert one["ringrift_optimization_confidence"] == pytest.approx(saved["confidence"])
    assert one["ringrift_selfplay_rate_games_per_hour"] == pytest.approx(saved["rate"])
    # tasks and limits per type and node
    assert by_label(got, "ringrift_tasks", type="selfplay", node="n1") == 2
    assert by_label(got, "ringrift_tasks", type="training", node="n2") == 1
    assert by_label(got, "ringrift_tasks", type="selfplay", node="n4") == 2
    assert by_label(got, "ringrift_tasks", type="training", node="n1") == 0
    assert by_label(got, "ringrift_task_node_limit", type="training", node="n2") == 1
    target = by_label(got, "ringrift_selfplay_target", node="n1")  # adjust's, in force
    assert target is not None
    assert by_label(got, "ringrift_task_node_limit", type="selfplay", node="n1") == min(32, target)
    assert by_label(got, "ringrift_task_node_limit", type="sync", node="n1") is None  # unlimited
    from ringrift_coord import reports

    lowered = reports.caps_in_force(ctx)["lowered_caps"]
    assert [(r["node"], r["task_type"]) for r in lowered] == [("n4", "selfplay")]
    cap = lowered[0]["cap"]
    assert cap < 32
    assert by_label(got, "ringrift_lowered_cap", type="selfplay", node="n4") == cap
    assert by_label(got, "ringrift_task_node_limit", type="selfplay", node="n4") == cap
    assert by_label(got, "ringrift_task_cluster_limit", type="selfplay") == 500
    assert by_label(got, "ringrift_task_cluster_limit", type="sync") is None
    assert samples(got, "ringrift_waiters") == {("training", "n2"): 1}
    assert samples(got, "ringrift_waiters_held") == {("training", "n2"): 0}
    # halts: the cluster, the drain, the file
    assert one["ringrift_halted"] == 1
    from ringrift_coord.identity import local_node

    assert samples(got, "ringrift_halt_active") == {
        ("cluster", "all", "all"): 1,
        ("node", "all", "n2"): 1,
        ("file", "all", local_node()): 1,
    }
    # breakers: n3/training open (3 failures), n4/selfplay closed (2 OOMs)
    state = samples(got, "ringrift_breaker_state")
    assert state[("training", "n3", "open")] == 1
    assert state[("training", "n3", "closed")] == 0
    assert state[("training", "n3", "half_open")] == 0
    assert state[("selfplay", "n4", "closed")] == 1
    assert samples(got, "ringrift_breaker_opened_timestamp_seconds") == {
        ("training", "n3"): pytest.approx(clock.time())
    }
    denials = samples(got, "ringrift_denials_total")
    assert denials[("node_limit", "training", "n2")] == 1
    assert denials[("halt", "selfplay", "n1")] == 1  # two halts, one rule: counted once
    assert denials[("halt_file", "selfplay", "n1")] == 1
    factors = samples(got, "ringrift_backpressure_factor")
    assert factors[("n4",)] == pytest.approx(0.25)  # halved by each OOM
    assert factors[("n3",)] == pytest.approx(0.125)
    assert factors[("n1",)] == 1.0
    # transfers: one active to aws-1, bytes per remote (a transfer of unknown bytes adds none)
    assert samples(got, "ringrift_transfers") == {("aws-1",): 1, ("runpod-2",): 0}
    allocated = samples(got, "ringrift_transfer_bandwidth_allocated_bytes_per_second")
    assert allocated[("aws-1",)] == pytest.approx(float(got_kbps(ctx)) * 1024)
    assert allocated[("runpod-2",)] == 0
    limits = samples(got, "ringrift_transfer_bandwidth_limit_bytes_per_second")
    assert limits[("aws-1",)] > allocated[("aws-1",)]
    assert samples(got, "ringrift_transfer_bytes_total") == {("aws-1",): 4096, ("runpod-2",): 1000}
    # readings: every node's age; utilization and the critical flags of the fresh ones only
    ages = samples(got, "ringrift_node_reading_age_seconds")
    assert ages[("n5",)] == pytest.approx(400)
    assert ages[("n1",)] == 0
    util = samples(got, "ringrift_node_utilization")
    assert util[("n1", "gpu_memory")] == pytest.approx(0.4)
    assert util[("n2", "cpu")] == pytest.approx(0.95)
    assert ("n5", "cpu") not in util
    critical = samples(got, "ringrift_node_critical")
    assert critical[("n2", "cpu")] == 1
    assert critical[("n1", "gpu")] == 1  # 90 % >= thresholds.gpu.critical 80
    assert critical[("n1", "cpu")] == 0
    assert ("n5", "cpu") not in critical
    # the real output: promtool's check, the hostile name escaped and read back as it was
    text = metrics.render(got)
    assert b'node="n\\"6\\\\x\\ny"' in text
    from prometheus_client.parser import text_string_to_metric_families

    nodes = {
        s.labels["node"]
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if f.name == "ringrift_node_reading_age_seconds"
    }
    assert HOSTILE in nodes
    for line in text.decode().splitlines():
        if not line.startswith("#"):
            continue
        assert line.startswith(("# HELP ringrift_", "# TYPE ringrift_")), line
    assert text.count(b"# TYPE ") == text.count(b"# HELP ") == len(expected)
    promtool_check(text)


def got_kbps(ctx: Any) -> float:
    with ctx.store.read() as tx:
        row = tx.one("SELECT kbps FROM transfers")
    assert row is not None
    return float(row["kbps"])


def test_counters_never_go_down_across_a_prune(engine_db: Any) -> None:
    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock=clock)
    tc = TaskCoordinator(ctx)
    safeguards.activate_emergency(ctx, "maintenance")
    for _ in range(3):
        assert not tc.check("selfplay", "n1").allowed
    bw = BandwidthManager(ctx)
    safeguards.deactivate_emergency(ctx)
    bw.end_transfer("h1", str(bw.start("h1").task_id), bytes_transferred=10**12)
    before = metrics.gather(ctx)
    assert by_label(before, "ringrift_denials_total", rule="halt", type="selfplay", node="n1") == 3
    assert by_label(before, "ringrift_transfer_bytes_total", remote="h1") == 10**12
    # the decision log's and the transfer history's pruning (what admission and transfers.end
    # run when the rows are old enough): the logs go, the totals stay
    clock.advance(400 * 86400)
    with ctx.store.write() as tx:
        tx.execute("DELETE FROM decisions WHERE at < ?", (tx.now() - 86400,))
        tx.execute("DELETE FROM transfer_history WHERE ended_at < ?", (tx.now() - 86400,))
        assert not tx.query("SELECT id FROM decisions")
    after = metrics.gather(ctx)
    assert by_label(after, "ringrift_denials_total", rule="halt", type="selfplay", node="n1") == 3
    assert by_label(after, "ringrift_transfer_bytes_total", remote="h1") == 10**12
    safeguards.activate_emergency(ctx, "again")
    assert not tc.check("selfplay", "n1").allowed
    later = metrics.gather(ctx)
    assert by_label(later, "ringrift_denials_total", rule="halt", type="selfplay", node="n1") == 4


# --------------------------------------------------------------------------- the command


def test_command_output_passes_promtool(coord: Coord) -> None:
    pid = str(os.getpid())
    for node in ("n1", "n2"):
        assert coord("register", "selfplay", "--node", node, "--pid", pid).returncode == 0
    assert coord("report", "--node", 'n"3\\', "--cpu", "91", "--cpus", "4").returncode == 0
    assert coord("halt", "--node", "n2", "--reason", "drain").returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "n2").returncode == 1
    transfer = coord("bandwidth", "start", "aws-1", "--kind", "data").stdout.strip()
    assert coord("bandwidth", "end", transfer, "--bytes", "2048").returncode == 0
    done = coord("metrics")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert 'ringrift_tasks{node="n1",type="selfplay"} 1.0' in done.stdout
    assert 'ringrift_denials_total{node="n2",rule="halt",type="selfplay"} 1.0' in done.stdout
    assert 'ringrift_transfer_bytes_total{remote="aws-1"} 2048.0' in done.stdout
    assert 'ringrift_node_critical{node="n\\"3\\\\",resource="cpu"} 1.0' in done.stdout
    promtool_check(done.stdout.encode())
    as_json = coord("--json", "metrics")
    assert as_json.returncode == 0, as_json.stderr
    import json

    doc = json.loads(as_json.stdout)
    assert doc["store_up"] is True and doc["problem"] is None
    families = {f["name"]: f for f in doc["families"]}
    assert set(families) == {
        line.split()[2] for line in done.stdout.splitlines() if line.startswith("# TYPE")
    }
    assert {"labels": {"remote": "aws-1"}, "value": 2048.0} in families[
        "ringrift_transfer_bytes_total"
    ]["samples"]


def test_no_store_yet_creates_none(tmp_path: Path) -> None:
    """A host where nothing was recorded yet (SQLite: no file): an empty store's values,
    and no store created."""
    coord = Coord(tmp_path)
    coord.state_dir.mkdir(mode=0o700)
    (coord.state_dir / FILE_NAME).write_text("")
    done = coord("metrics")
    assert done.returncode == 0, done.stderr
    assert not coord.db.exists()
    assert "ringrift_store_up 1.0" in done.stdout
    assert "ringrift_store_schema_migrations 0.0" in done.stdout
    assert "ringrift_halted 1.0" in done.stdout  # the file halts this host all the same
    assert "ringrift_cluster_total_jobs 0.0" in done.stdout
    promtool_check(done.stdout.encode())


def test_textfile(coord: Coord, tmp_path: Path) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    target = out / "ringrift.prom"
    done = coord("metrics", "--textfile", str(target))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert b"ringrift_store_up 1.0" in target.read_bytes()
    promtool_check(target.read_bytes())
    assert os.listdir(out) == ["ringrift.prom"]  # no temporary file left behind
    as_json = coord("--json", "metrics", "--textfile", str(target))
    assert as_json.returncode == 0 and as_json.stderr == ""
    doc = json.loads(as_json.stdout)  # one document: what was written where
    assert doc["textfile"] == str(target) and doc["store_up"] is True and "families" not in doc
    stamp = next(
        line.split()[1]
        for line in target.read_text().splitlines()
        if line.startswith("ringrift_metrics_collected_timestamp_seconds ")
    )
    assert abs(float(stamp) - doc["at"]) < 2.0, (stamp, doc["at"])  # the file it just wrote
    # errors: one line each, the contract's codes
    bad = coord("metrics", "--textfile", str(out / "ringrift.txt"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and ".prom" in bad.stderr, bad.stderr
    missing = coord("metrics", "--textfile", str(tmp_path / "nowhere" / "x.prom"))
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr


def test_textfile_is_never_seen_half_written(engine_db: Any, tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten over and over sees a whole
    exposition every time (the rename replaces it: a new inode each write)."""
    ctx = engine_db.context(CONFIG, clock=ManualClock())
    tc = TaskCoordinator(ctx)
    for n in range(40):  # a file of some size: many series
        tc.register_task(None, "selfplay", f"node-{n:03d}", pid=os.getpid())
    out = tmp_path / "textfile"
    out.mkdir()
    target = out / "ringrift.prom"
    metrics.write_textfile(ctx, str(target))
    whole = target.read_bytes()
    assert whole.endswith(b"\n") and len(whole) > 10_000
    stop = threading.Event()
    seen: list[bytes] = []
    inodes: set[int] = set()

    def read() -> None:
        while not stop.is_set():
            with open(target, "rb") as handle:
                inodes.add(os.fstat(handle.fileno()).st_ino)
                seen.append(handle.read())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(30):
            metrics.write_textfile(ctx, str(target))
    finally:
        stop.set()
        reader.join()
    assert seen
    for text in seen:
        assert text == whole  # never a prefix of it, never empty
    assert len(inodes) > 1  # it was replaced while being read
    assert os.listdir(out) == ["ringrift.prom"]  # no temporary file left behind


def test_store_down_is_store_up_zero(tmp_path: Path) -> None:
    """A PostgreSQL server that does not answer: ringrift_store_up 0 (and a warning), exit 0,
    valid exposition; the textfile says so too."""
    pytest.importorskip("psycopg")
    runner = Coord(tmp_path)
    runner.env["RINGRIFT_COORD_DB"] = "postgresql://nobody@127.0.0.1:1/none"
    done = runner("metrics", "--set", "store.connect_timeout=2", timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert lines[0] == "ringrift_store_up 0.0"
    assert lines[1].startswith("ringrift_metrics_collected_timestamp_seconds ")
    assert 'ringrift_config_problem{section="optimizer"} 0.0' in lines
    assert "ringrift_halted 0.0" in lines
    assert not any(line.startswith("ringrift_tasks") for line in lines)  # the store's: absent
    assert done.stderr.startswith("ringrift-coord: warning: the store did not answer")
    assert done.stderr.count("\n") == 1
    promtool_check(done.stdout.encode())
    # this host's halt file is read without the store
    runner.state_dir.mkdir(parents=True, exist_ok=True)
    (runner.state_dir / FILE_NAME).write_text("")
    halted = runner("metrics", "--set", "store.connect_timeout=2", timeout=60)
    assert halted.returncode == 0, halted.stderr
    assert "ringrift_halted 1.0" in halted.stdout.splitlines()
    assert 'ringrift_halt_active{node="' in halted.stdout and 'scope="file"' in halted.stdout
    promtool_check(halted.stdout.encode())
    target = tmp_path / "down.prom"
    written = runner("metrics", "--set", "store.connect_timeout=2", "--textfile", str(target))
    assert written.returncode == 0 and written.stdout == ""
    assert b"ringrift_store_up 0.0" in target.read_bytes()


def test_metrics_is_not_on_the_hot_path() -> None:
    """Admission never imports prometheus_client: only the exporting commands pay for it."""
    code = (
        "import sys; import ringrift_coord.admission, ringrift_coord.cli.hot, "
        "ringrift_coord.transfers; print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


# --------------------------------------------------------------------------- review fixes

RETIRE_CONFIG = """
resources:
  max_sample_age: 300
  retire_after: 3600
"""


def test_a_retired_node_leaves_the_per_node_families(engine_db: Any) -> None:
    """A node whose reading is older than resources.retire_after and that holds nothing
    (no task, waiter, open breaker, cap, backpressure, reservation or target) goes from every
    per-node family; a stale one younger than that stays (the readings-stale alert sees it);
    a node with a running task stays whatever its reading's age."""
    clock = ManualClock()
    ctx = engine_db.context(RETIRE_CONFIG, clock=clock)
    with ctx.store.write() as tx:
        for node in ("gone", "busy"):
            readings.store_reading(tx, node, {"cpu": 10.0, "cpus": 4}, tx.now())
    TaskCoordinator(ctx).register_task(None, "training", "busy", pid=os.getpid())
    from ringrift_coord import breakers

    with ctx.store.write() as tx:  # one failure: a breaker row that stays closed
        cfg = breakers.BreakerConfig.from_settings(ctx.settings)
        breakers.record_outcome(tx, cfg, "gone", "selfplay", tx.now(), ok=False, trial=False)
    per_node = (
        "ringrift_tasks",
        "ringrift_node_reading_age_seconds",
        "ringrift_backpressure_factor",
        "ringrift_task_node_limit",
    )

    def nodes_in(got: metrics.Collection, name: str) -> set[str]:
        family = next(m for m in got.metrics if m.name == name)
        at = family.labels.index("node")
        return {key[at] for key in family.samples}

    clock.advance(600)  # stale, not retired
    got = metrics.gather(ctx)
    for name in per_node:
        assert nodes_in(got, name) == {"gone", "busy"}, name
    assert samples(got, "ringrift_node_reading_age_seconds")[("gone",)] == 600
    assert nodes_in(got, "ringrift_breaker_state") == {"gone"}
    clock.advance(3100)  # 3700 s: retired
    got = metrics.gather(ctx)
    for name in per_node:
        assert nodes_in(got, name) == {"busy"}, name
    assert samples(got, "ringrift_node_reading_age_seconds") == {("busy",): 3700}
    assert nodes_in(got, "ringrift_breaker_state") == set()  # its closed breaker went too
    with ctx.store.write() as tx:  # it reports again: back
        readings.store_reading(tx, "gone", {"cpu": 10.0, "cpus": 4}, tx.now())
    assert "gone" in nodes_in(metrics.gather(ctx), "ringrift_tasks")


def test_forget_node(coord: Coord) -> None:
    """forget-node drops the node's reading (resources and metrics forget it); an unknown
    node is exit 2 with the closest stored name; a blank one is exit 2."""
    for node in ("n1", "old-node"):
        done = coord("report", "--node", node, "--cpu", "10")
        assert done.returncode == 0, done.stderr
    typo = coord("forget-node", "old-nod")
    assert typo.returncode == 2 and "did you mean old-node?" in typo.stderr, typo.stderr
    assert typo.stderr.count("\n") == 1
    assert coord("forget-node", " ").returncode == 2
    done = coord("--json", "forget-node", "old-node")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["node"] == "old-node" and doc["forgotten"] == 1 and doc["reading_at"] > 0
    nodes = [n["node"] for n in json.loads(coord("--json", "resources").stdout)["nodes"]]
    assert nodes == ["n1"]
    exported = coord("metrics").stdout
    assert 'node="n1"' in exported and "old-node" not in exported
    again = coord("forget-node", "old-node")
    assert again.returncode == 2 and "no stored reading" in again.stderr
    plain = coord("forget-node", "n1")
    assert plain.returncode == 0 and plain.stderr.startswith("ringrift-coord: forgot the reading")


def test_selfplay_limit_is_what_admission_enforces(engine_db: Any) -> None:
    """After adjust sets a node's self-play target, ringrift_task_node_limit{selfplay} is
    the min of the configured limit and that target, ringrift_selfplay_target is the
    target, and can-spawn refuses exactly at that limit (rule optimizer)."""
    from ringrift_coord.optimizer import adjust

    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock=clock)
    with ctx.store.write() as tx:
        readings.store_reading(tx, "n1", {"cpu": 20.0, "cpus": 8}, tx.now())
    adjust.adjust(ctx.store, ctx.settings, who="tester", host="here")
    got = metrics.gather(ctx)
    target = by_label(got, "ringrift_selfplay_target", node="n1")
    limit = by_label(got, "ringrift_task_node_limit", type="selfplay", node="n1")
    assert target is not None and limit == min(32, target) == target < 32
    tc = TaskCoordinator(ctx)
    for _ in range(int(limit)):
        assert tc.check("selfplay", "n1").allowed
        tc.register_task(None, "selfplay", "n1", pid=os.getpid())
    refused = tc.check("selfplay", "n1")
    assert not refused.allowed
    reasons = {r.rule: r for r in refused.reasons}
    assert reasons["optimizer"].limit == limit
    clock.advance(float(ctx.settings.get("optimizer.state_ttl")) + 1)  # expired: fail open
    got = metrics.gather(ctx)
    assert by_label(got, "ringrift_selfplay_target", node="n1") is None
    assert by_label(got, "ringrift_task_node_limit", type="selfplay", node="n1") == 32


def test_a_bad_section_is_said_and_exported(coord: Coord) -> None:
    """A bad optimizer or bandwidth section: metrics exits 0, exports everything else and
    ringrift_config_problem{section} 1 (0 for the sound ones), and its warning does not
    claim the command does not use the section."""
    coord.write_config("optimizer:\n  interval: -5\nbandwidth:\n  default_mbps: -1\n")
    coord("report", "--node", "n1", "--cpu", "10")
    done = coord("metrics")
    assert done.returncode == 0, done.stderr
    assert 'ringrift_config_problem{section="optimizer"} 1.0' in done.stdout
    assert 'ringrift_config_problem{section="bandwidth"} 1.0' in done.stdout
    assert 'ringrift_config_problem{section="hardware"} 0.0' in done.stdout
    assert 'ringrift_tasks{node="n1",type="selfplay"} 0.0' in done.stdout
    assert "does not use it" not in done.stderr
    assert done.stderr.count("warning:") == 2, done.stderr
    assert 'ringrift_config_problem{section="optimizer"} is 1' in done.stderr
    promtool_check(done.stdout.encode())


def test_collected_timestamp_and_steered_resource(engine_db: Any) -> None:
    """ringrift_metrics_collected_timestamp_seconds is the collection time;
    ringrift_optimization_resource is the optimizer's controlling resource."""
    from ringrift_coord.optimizer import utilization

    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock=clock)
    got = metrics.gather(ctx)
    one = {m.name: m.samples.get(()) for m in got.metrics if not m.labels}
    assert one["ringrift_metrics_collected_timestamp_seconds"] == clock.time()
    assert samples(got, "ringrift_optimization_resource") == {}  # no readings: nothing steered
    # before any adjust: action none and the initial rate
    assert samples(got, "ringrift_optimization_action")[("none",)] == 1
    assert one["ringrift_selfplay_rate_games_per_hour"] == 1000
    with ctx.store.write() as tx:
        readings.store_reading(tx, "c1", {"cpu": 95.0, "cpus": 8}, tx.now())
        readings.store_reading(
            tx, "g1", {"cpu": 10.0, "gpu": 50.0, "cpus": 8, "gpu_count": 1}, tx.now()
        )
    with ctx.store.read() as tx:
        controlling = utilization.status(tx, ctx.settings, tx.now())["controlling"]
    assert controlling == "cpu"  # CPU far above its target, GPU below its own
    got = metrics.gather(ctx)
    assert samples(got, "ringrift_optimization_resource") == {("cpu",): 1, ("gpu",): 0}


def test_a_reading_dated_in_the_future_is_fresh_as_admission_has_it(engine_db: Any) -> None:
    """A node whose clock runs ahead: admission checks its reading (fresh), so metrics
    exports its utilization and critical flags (readings.is_stale, the one test)."""
    clock = ManualClock()
    ctx = engine_db.context(CONFIG, clock=clock)
    with ctx.store.write() as tx:
        readings.store_reading(tx, "ahead", {"cpu": 99.0, "cpus": 4}, tx.now() + 1000)
    refused = TaskCoordinator(ctx).check("selfplay", "ahead")
    assert "threshold" in {r.rule for r in refused.reasons}
    got = metrics.gather(ctx)
    assert by_label(got, "ringrift_node_critical", node="ahead", resource="cpu") == 1
    assert by_label(got, "ringrift_node_utilization", node="ahead", resource="cpu") == 0.99
    assert by_label(got, "ringrift_node_reading_age_seconds", node="ahead") == 0


def test_transfer_waiters_and_reserved_slots(engine_db: Any) -> None:
    from ringrift_coord import queue, reservations, transfers
    from ringrift_coord.transfers import TASK_TYPE

    ctx = engine_db.context(CONFIG, clock=ManualClock())
    with ctx.store.write() as tx:
        queue.enqueue(tx, TASK_TYPE, "aws-1", "here", os.getpid())
        queue.enqueue(tx, TASK_TYPE, "aws-1", "here", os.getpid())
        held = queue.enqueue(tx, TASK_TYPE, "aws-2", "here", os.getpid())
        queue.hold(tx, held)  # (a halt denied it: out of line, still counted)
        reservations.create(tx, "gauntlet", "n1", 2, None, "me")
        reservations.create(tx, "gauntlet", "n1", 1, 600, "me")
    got = metrics.gather(ctx)
    assert samples(got, "ringrift_transfer_waiters") == {("aws-1",): 2, ("aws-2",): 0}
    assert samples(got, "ringrift_transfer_waiters_held") == {("aws-1",): 0, ("aws-2",): 1}
    with ctx.store.read() as tx:
        hosts = {h["remote"]: h for h in transfers.status(tx, ctx.settings, tx.now())["hosts"]}
    assert (hosts["aws-1"]["queued"], hosts["aws-1"]["held"]) == (2, 0)
    assert (hosts["aws-2"]["queued"], hosts["aws-2"]["held"]) == (0, 1)
    assert samples(got, "ringrift_reserved_slots") == {("gauntlet", "n1"): 3}
    assert ("transfer", "aws-1") not in samples(got, "ringrift_waiters")


def test_textfile_with_an_empty_name(coord: Coord, tmp_path: Path) -> None:
    bad = coord("metrics", "--textfile", str(tmp_path / ".prom"))
    assert bad.returncode == 2 and "file name before .prom is empty" in bad.stderr
    assert "does not end in" not in bad.stderr
