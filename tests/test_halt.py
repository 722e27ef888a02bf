"""Emergency halt through the CLI: DB row + EMERGENCY_HALT file, scope, expiry, audit."""

from __future__ import annotations

import json
import time

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
        assert "halted cluster-wide by" in denied.stderr and "bad model pushed" in denied.stderr
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
    coord("tasks")  # creates the state directory
    (coord.state_dir / "EMERGENCY_HALT").touch()
    denied = coord("can-spawn", "training", "--json")
    assert denied.returncode == 1
    rules = json.loads(denied.stdout)["reasons"]
    assert [r["rule"] for r in rules] == ["halt_file"]
    assert coord("halt", "--check").returncode == 1
    assert coord("register", "selfplay").returncode == 1
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


def test_halt_bad_input(coord):
    for args in (["halt", "--ttl", "-5"], ["halt", "--ttl", "inf"], ["halt", "--type", "bogus"]):
        result = coord(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert not (coord.state_dir / "EMERGENCY_HALT").exists()
