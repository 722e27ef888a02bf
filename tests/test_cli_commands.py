"""The operator commands through the real CLI: decisions, reserve, tasks, status, --set."""

from __future__ import annotations

import json
import subprocess
import sys
import time

ENGINES = ("sqlite", "postgres")


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_decision_log_says_who_why_and_numbers(coord):
    coord.write_config("task_limits: {training: {per_node: 1, cluster: 3}}\n")
    holder = sleeper()
    try:
        first = coord("register", "training", "--node", "n1", "--pid", str(holder.pid))
        assert first.returncode == 0 and first.stdout.strip().startswith("training-")
        second = coord("register", "training", "--node", "n1", "--pid", str(holder.pid))
        assert second.returncode == 1
        assert "1 running + 1 requested > per-node limit 1 on n1" in second.stderr
        assert coord("can-spawn", "training", "--node", "n2").returncode == 0
    finally:
        holder.kill()
        holder.wait()

    rows = json.loads(coord("decisions", "--json").stdout)["decisions"]
    assert [(r["action"], r["node"], r["allowed"]) for r in rows] == [
        ("can-spawn", "n2", True),
        ("register", "n1", False),
        ("register", "n1", True),
    ]
    denied = json.loads(coord("decisions", "--denied", "--json").stdout)["decisions"]
    assert len(denied) == 1
    rule = denied[0]["reasons"][0]
    assert (rule["rule"], rule["requested"], rule["used"], rule["limit"]) == ("node_limit", 1, 1, 1)
    assert denied[0]["who"] and denied[0]["pid"] == holder.pid
    assert (
        json.loads(coord("decisions", "--since", "1h", "--node", "n2", "--json").stdout)[
            "decisions"
        ][0]["allowed"]
        is True
    )
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert json.loads(coord("decisions", "--since", future, "--json").stdout)["decisions"] == []
    table = coord("decisions", "--denied")
    assert table.returncode == 0 and "per-node limit" in table.stdout


def test_reserve_cli(coord):
    coord.write_config("task_limits: {selfplay: {per_node: 2, cluster: 500}}\n")
    made = coord("reserve", "gauntlet", "--node", "n1", "--slots", "1", "--ttl", "600", "--json")
    assert made.returncode == 0, made.stderr
    res_id = json.loads(made.stdout)["reservation_id"]
    holder = sleeper()
    try:
        assert (
            coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid)).returncode == 0
        )
        blocked = coord("can-spawn", "selfplay", "--node", "n1", "--json")
        assert blocked.returncode == 1
        assert json.loads(blocked.stdout)["reasons"][0]["rule"] == "reservation"
        assert res_id in coord("reserve", "list").stdout
        assert coord("reserve", "release", res_id).returncode == 0
        assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
        assert coord("reserve", "release", res_id).returncode == 2
    finally:
        holder.kill()
        holder.wait()


def test_tasks_list_reap_and_history(coord):
    holder = sleeper()
    task_id = coord(
        "register", "sync", "--node", "n1", "--pid", str(holder.pid), "--config-name", "square8_2p"
    ).stdout.strip()
    rows = json.loads(coord("tasks", "list", "--json").stdout)["tasks"]
    assert [(r["task_id"], r["task_type"], r["node"], r["pid"]) for r in rows] == [
        (task_id, "sync", "n1", holder.pid)
    ]
    assert rows[0]["started_at"] > 0 and rows[0]["config_name"] == "square8_2p"
    assert json.loads(coord("tasks", "reap", "--json").stdout)["reaped"] == []
    holder.kill()
    holder.wait()
    reaped = json.loads(coord("tasks", "reap", "--json").stdout)["reaped"]
    assert [r["task_id"] for r in reaped] == [task_id]
    assert json.loads(coord("tasks", "--json").stdout)["tasks"] == []
    history = json.loads(coord("tasks", "history", "--json").stdout)["tasks"]
    assert history[0]["status"] == "reaped" and history[0]["reason"] == "holder process gone"


def test_register_then_unregister_records_exit(coord):
    holder = sleeper()
    try:
        task_id = coord("register", "evaluation", "--pid", str(holder.pid)).stdout.strip()
        done = coord("unregister", task_id, "--exit-code", "3", "--json")
        assert done.returncode == 0
        assert json.loads(done.stdout)["released"] is True
        again = coord("unregister", task_id)
        assert again.returncode == 0 and "already released" in again.stderr
    finally:
        holder.kill()
        holder.wait()
    last = json.loads(coord("tasks", "history", "--json").stdout)["tasks"][0]
    assert (last["exit_code"], last["status"]) == (3, "failed")


def test_status_screen_and_json(coord):
    holder = sleeper()
    try:
        coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        coord("halt", "--type", "training", "--reason", "trainer bug")
        status = json.loads(coord("status", "--json").stdout)
        assert status["store"]["engine"] == coord.engine
        assert status["by_type"]["selfplay"]["running_by_node"] == {"n1": 1}
        assert status["halt"]["halts"][0]["scope"] == "training"
        screen = coord("status")
        assert screen.returncode == 0
        for text in (f"engine {coord.engine}", "selfplay=1/32", "HALTED", "trainer bug"):
            assert text in screen.stdout
        rows = [row.split() for row in screen.stdout.splitlines()]
        assert ["n1", "1", "-", "selfplay=1/32"] in rows  # the node × type summary
    finally:
        holder.kill()
        holder.wait()


def test_precedence_defaults_yaml_env_flag(coord):
    coord.write_config("resource_targets: {cpu_min: 56}\nstore: {lease_ttl: 90}\n")
    values = {r["key"]: r for r in json.loads(coord("targets", "--json").stdout)["values"]}
    assert values["resource_targets.cpu_min"]["value"] == 56
    assert values["resource_targets.cpu_min"]["source"].endswith("coord.yaml:1")
    assert values["resource_targets.gpu_max"]["source"] == "default"
    env = {"RINGRIFT_TARGET_UTIL_MIN": "65"}
    values = {r["key"]: r for r in json.loads(coord("targets", "--json", env=env).stdout)["values"]}
    assert values["resource_targets.cpu_min"]["value"] == 65
    assert values["resource_targets.cpu_min"]["source"] == "env RINGRIFT_TARGET_UTIL_MIN"
    flagged = coord("targets", "--json", "--set", "resource_targets.cpu_min=62", env=env)
    values = {r["key"]: r for r in json.loads(flagged.stdout)["values"]}
    assert values["resource_targets.cpu_min"]["value"] == 62
    assert values["resource_targets.cpu_min"]["source"] == "flag --set resource_targets.cpu_min"
    limits = {r["key"]: r for r in json.loads(coord("limits", "--json").stdout)["values"]}
    assert limits["store.lease_ttl"]["value"] == 90
    bad = coord("limits", "--set", "store.lease_ttl=-1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_set_flag_changes_admission(coord):
    holder = sleeper()
    try:
        args = (
            "--set",
            "task_limits.training.per_node=2",
            "--node",
            "n1",
            "--pid",
            str(holder.pid),
        )
        assert coord("register", "training", *args).returncode == 0
        assert coord("register", "training", *args).returncode == 0
        assert coord("register", "training", *args).returncode == 1
    finally:
        holder.kill()
        holder.wait()


def test_reserve_list_and_release_refuse_what_only_reserve_type_takes(coord):
    """``reserve list --node n1`` listed every node's reservations as if filtered, and
    ``reserve list extra`` ignored its word: both are usage errors now."""
    made = coord("reserve", "gauntlet", "--node", "n1", "--slots", "1", "--json")
    assert made.returncode == 0, made.stderr
    res_id = json.loads(made.stdout)["reservation_id"]
    for argv in (
        ("reserve", "list", "--node", "n1"),
        ("reserve", "list", "--slots", "1"),
        ("reserve", "list", "--ttl", "5m"),
        ("reserve", "list", "extra"),
        ("reserve", "release", res_id, "--node", "n1"),
    ):
        result = coord(*argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
        assert result.stdout == ""
    assert "applies only to reserve TYPE" in coord("reserve", "list", "--node", "n1").stderr
    assert res_id in coord("reserve", "list").stdout  # the refused release released nothing


def test_reserve_on_a_node_never_named_warns_as_a_drain_does(coord):
    """``reserve gauntlet --node gpu-12`` for gpu-1 reserved nothing on gpu-1, silently
    (``halt --node`` warned about the same typo)."""
    assert coord("report", "--node", "gpu-1", "--cpu", "10").returncode == 0
    typo = coord("--json", "reserve", "gauntlet", "--node", "gpu-12", "--slots", "1")
    assert typo.returncode == 0, typo.stderr
    assert json.loads(typo.stdout)["node"] == "gpu-12"  # it stands, as a drain does
    assert typo.stderr.splitlines() == [
        "ringrift-coord: warning: no task, waiter, reading or recent decision has named node "
        "gpu-12 yet (did you mean gpu-1?): the reservation holds for that name only"
    ]
    known = coord("reserve", "gauntlet", "--node", "gpu-1", "--slots", "1")
    assert known.returncode == 0 and known.stderr == "", known.stderr
