"""Emergency halt through the CLI: DB row + EMERGENCY_HALT file, scope, expiry, audit."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import Coord

ENGINES = ("sqlite", "postgres")


def test_halt_blocks_everything_until_unhalt(coord):
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    result = coord("halt", "--reason", "bad model pushed")
    assert result.returncode == 0, result.stderr
    assert "halted every task type" in result.stdout

    halt_file = coord.state_dir / "EMERGENCY_HALT"
    record = json.loads(halt_file.read_text())
    assert record["reason"] == "bad model pushed"
    assert record["who"] and record["at"] > 0 and record["expires_at"] is None

    for ttype in ("selfplay", "training", "sync"):
        denied = coord("can-spawn", ttype, "--node", "n1")
        assert denied.returncode == 1
        assert "halted every task type in " in denied.stderr and "bad model pushed" in denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1

    check = coord("halt", "--check")
    assert check.returncode == 1 and "HALTED" in check.stdout

    run = coord("run", "selfplay", "--node", "n1", "--", "sh", "-c", f"touch {coord.tmp}/ran")
    assert run.returncode == 75
    assert not (coord.tmp / "ran").exists()

    lifted = coord("unhalt")
    assert lifted.returncode == 0 and "removed the halt file" in lifted.stdout
    assert not halt_file.exists()
    assert coord("halt", "--check").returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


def test_deleting_the_file_by_hand_does_not_lift_a_halt(coord):
    assert coord("halt", "--reason", "maintenance").returncode == 0
    (coord.state_dir / "EMERGENCY_HALT").unlink()
    denied = coord("can-spawn", "selfplay", "--json")
    assert denied.returncode == 1
    decision = json.loads(denied.stdout)
    assert decision["allowed"] is False
    assert [r["rule"] for r in decision["reasons"]] == ["halt"]
    assert decision["retry_after"] is None  # no expiry: only an operator lifts it
    assert coord("unhalt").returncode == 0
    assert coord("can-spawn", "selfplay").returncode == 0


def test_touched_halt_file_halts_this_host(coord):
    coord("tasks", "reap")  # creates the state directory and the store
    (coord.state_dir / "EMERGENCY_HALT").touch()
    denied = coord("can-spawn", "training", "--json")
    assert denied.returncode == 1
    rules = json.loads(denied.stdout)["reasons"]
    assert [r["rule"] for r in rules] == ["halt_file"]
    assert coord("halt", "--check").returncode == 1
    assert coord("register", "selfplay").returncode == 1
    # an unknown type is bad input whatever is halted (not "halted": exit 2, not 1)
    bogus = coord("halt", "--check", "--type", "bogus")
    assert bogus.returncode == 2 and "unknown task type 'bogus'" in bogus.stderr
    assert coord("unhalt").returncode == 0
    assert coord("can-spawn", "training").returncode == 0


def test_halt_scoped_to_one_type(coord):
    assert coord("halt", "--type", "training", "--reason", "trainer bug").returncode == 0
    assert not (coord.state_dir / "EMERGENCY_HALT").exists()  # the file halts every type
    assert coord("can-spawn", "training").returncode == 1
    assert coord("can-spawn", "selfplay").returncode == 0
    assert coord("halt", "--check", "--type", "training").returncode == 1
    assert coord("halt", "--check", "--type", "selfplay").returncode == 0
    assert coord("unhalt", "--type", "selfplay").returncode == 0  # lifts nothing
    assert coord("can-spawn", "training").returncode == 1
    assert coord("unhalt", "--type", "training").returncode == 0
    assert coord("can-spawn", "training").returncode == 0


def test_halt_with_expiry_lifts_by_itself(coord):
    assert coord("halt", "--ttl", "1.5", "--reason", "short pause").returncode == 0
    denied = coord("can-spawn", "selfplay", "--json")
    assert denied.returncode == 1
    retry = json.loads(denied.stdout)["retry_after"]
    assert 0 < retry <= 1.5
    deadline = time.monotonic() + 10
    while coord("can-spawn", "selfplay").returncode != 0:
        assert time.monotonic() < deadline, "expired halt still blocks"
        time.sleep(0.3)
    assert coord("halt", "--check").returncode == 0


def test_halt_audit_trail_and_json(coord):
    made = coord("halt", "--reason", "first", "--json")
    assert made.returncode == 0
    assert json.loads(made.stdout)["scope"] == "*"
    assert coord("unhalt").returncode == 0
    status = json.loads(coord("halt", "--check", "--json").stdout)
    assert status["halted"] is False
    actions = [(e["action"], e["scope"]) for e in status["recent"]]
    assert actions[:2] == [("unhalt", "*"), ("halt", "*")]


def test_a_blank_reason_is_no_reason_in_the_row_and_the_file(coord):
    """`halt --reason "$REASON"` with REASON empty halts all the same, with no reason: the
    row, the audit entry and the halt file agree (the row kept "" and the file null)."""
    assert coord("halt", "--reason", " ").returncode == 0
    status = json.loads(coord("--json", "halt", "--check").stdout)
    assert [h["reason"] for h in status["halts"]] == [None]
    assert status["halt_file"]["reason"] is None
    assert "no reason given" in coord("can-spawn", "selfplay", "--node", "n1").stderr


def test_an_unhalt_that_lifted_the_row_but_not_the_file_says_exactly_that(coord):
    """The store's halt is lifted, the halt file cannot be removed (a directory stands in
    its place): the one line says so, and never that nothing was lifted."""
    assert coord("halt", "--reason", "x").returncode == 0
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    halt_file.unlink()
    halt_file.mkdir()
    try:
        done = coord("unhalt")
        assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
        assert "lifted the halt in the store, but cannot remove" in done.stderr, done.stderr
        assert "nothing was lifted" not in done.stderr, done.stderr
    finally:
        halt_file.rmdir()
    assert json.loads(coord("--json", "halt", "--check").stdout)["halts"] == []


def test_halt_bad_input(coord):
    for args in (["halt", "--ttl", "-5"], ["halt", "--ttl", "inf"], ["halt", "--type", "bogus"]):
        result = coord(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert not (coord.state_dir / "EMERGENCY_HALT").exists()


# --------------------------------------------------------------------------- two hosts, one store


def second_host(coord: Coord) -> Coord:
    """Another host on ``coord``'s store: its own state directory (so its own halt file) and
    host name, the same database (a shared SQLite path, or the same PostgreSQL database)."""
    if coord.engine == "sqlite":
        coord.env["RINGRIFT_COORD_DB"] = str(coord.tmp / "shared.db")
    coord.env["RINGRIFT_COORD_HOST"] = "host-a"
    (coord.tmp / "b").mkdir()
    other = Coord(coord.tmp / "b")
    other.env.update(RINGRIFT_COORD_DB=coord.env["RINGRIFT_COORD_DB"], RINGRIFT_COORD_HOST="host-b")
    return other


API_VIEW = """
import json
from ringrift_coord import safeguards, task_coordinator
print(json.dumps({
    "state": task_coordinator.get_state().value,
    "stats_state": task_coordinator.get_stats()["state"],
    "emergency_active": safeguards.get_stats()["emergency_active"],
    "is_halted": safeguards.is_halted(safeguards.Safeguards.get_instance().ctx),
}))
"""


def views_of_the_halt(coord: Coord) -> dict[str, object]:
    """What every command and the Python API say about the halt, without admitting anything."""
    status = coord("status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    check = coord("halt", "--check", "--json")
    assert check.returncode in (0, 1), check.stderr
    api = subprocess.run(
        [sys.executable, "-c", API_VIEW], env=coord.env, capture_output=True, text=True
    )
    assert api.returncode == 0, api.stderr
    return {
        "status_state": doc["state"],
        "status_lists_a_halt": bool(doc["halt"]["halts"]) or doc["halt"]["halt_file"] is not None,
        "check_exit": check.returncode,
        "check_halted": json.loads(check.stdout)["halted"],
        **json.loads(api.stdout),
    }


def test_unhalt_on_another_host_lifts_the_halt_for_every_command(coord):
    """Host A halts (store row + its halt file), host B unhalts (the row): on A every view must
    agree that nothing is halted, before anything on A has touched its stale copy."""
    other = second_host(coord)
    assert coord("halt", "--reason", "bad model").returncode == 0
    halted = views_of_the_halt(coord)
    assert halted == {
        "status_state": "paused",
        "status_lists_a_halt": True,
        "check_exit": 1,
        "check_halted": True,
        "state": "paused",
        "stats_state": "paused",
        "emergency_active": True,
        "is_halted": True,
    }
    assert other("halt", "--check").returncode == 1  # the store's row halts host B too

    assert other("unhalt").returncode == 0
    assert (coord.state_dir / "EMERGENCY_HALT").exists()  # A's copy: B cannot reach it
    assert views_of_the_halt(coord) == {
        "status_state": "running",
        "status_lists_a_halt": False,
        "check_exit": 0,
        "check_halted": False,
        "state": "running",
        "stats_state": "running",
        "emergency_active": False,
        "is_halted": False,
    }
    assert coord("can-spawn", "selfplay").returncode == 0
    # an admission on A (a write transaction) clears the stale copy
    assert not (coord.state_dir / "EMERGENCY_HALT").exists()


def test_a_touched_halt_file_is_never_stale(coord):
    """Only ``halt``'s own copy of a cluster-wide halt goes stale with the store's row; a file
    an operator touched halts this host, whatever another host lifts."""
    other = second_host(coord)
    coord.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (coord.state_dir / "EMERGENCY_HALT").touch()
    assert other("unhalt").returncode == 0
    views = views_of_the_halt(coord)
    assert views["status_state"] == "paused" and views["check_exit"] == 1
    assert views["state"] == "paused" and views["is_halted"] and views["emergency_active"]
    assert coord("can-spawn", "selfplay").returncode == 1
    assert (coord.state_dir / "EMERGENCY_HALT").exists()


def test_a_bad_config_file_never_stops_an_emergency_halt(coord: Coord) -> None:
    """A typo pushed to every node's config file: the commands that use the settings refuse
    it (exit 3), but halt, halt --check and unhalt go on without the file, saying so."""
    coord.write_config("task_limits:\n  selfplay: {per_nod: 2}\n")
    refused = coord("status")
    assert refused.returncode == 3 and "per_nod: unknown key" in refused.stderr
    halted = coord("halt", "--reason", "bad push")
    assert halted.returncode == 0, halted.stderr
    assert halted.stderr.startswith("ringrift-coord: warning: ") and "per_nod" in halted.stderr
    assert "goes on without the config file" in halted.stderr, halted.stderr
    check = coord("--json", "halt", "--check")
    assert check.returncode == 1 and json.loads(check.stdout)["halts"][0]["reason"] == "bad push"
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 3  # (the file is bad)
    lifted = coord("unhalt")
    assert lifted.returncode == 0 and "warning: " in lifted.stderr, lifted.stderr
    coord.write_config("{}\n")
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


def test_a_bad_config_file_keeps_its_shared_group_for_the_halt(coord: Coord) -> None:
    """A shared state directory (group-writable, set-gid) is accepted only with its
    ``store.shared_group``: the halt that goes on without a bad config file keeps that one
    value from it (else it would be refused, with advice to chmod the directory private)."""
    import grp
    import os

    group = grp.getgrgid(os.getegid()).gr_name
    coord.state_dir.mkdir(mode=0o700)
    os.chmod(coord.state_dir, 0o2770)
    coord.write_config(
        f"store: {{shared_group: {group}}}\ntask_limits: {{selfplay: {{per_nod: 1}}}}\n"
    )
    halted = coord("halt", "--reason", "bad push")
    assert halted.returncode == 0, halted.stderr
    assert f"its store.shared_group {group} is kept" in halted.stderr, halted.stderr
    assert "chmod" not in halted.stderr
    # an error the retry without the file meets too is said alone, with no "ignored" warning
    bad_env = coord("halt", "--check", env={"RINGRIFT_COORD_SET": "store.busy_timeout=abc"})
    assert bad_env.returncode == 3 and "warning" not in bad_env.stderr, bad_env.stderr
    assert coord("unhalt").returncode == 0


def test_the_fallback_warning_escapes_the_config_files_name(coord: Coord) -> None:
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0  # (a store)
    odd = coord.tmp / "odd\x1b[31mname.yaml"
    odd.write_text("task_limits: {selfplay: {per_nod: 1}}\n")
    check = coord("halt", "--check", env={"RINGRIFT_COORD_CONFIG": str(odd)})
    assert check.returncode == 0, check.stderr
    assert "\x1b" not in check.stderr and "odd\\x1b[31mname.yaml" in check.stderr, check.stderr
