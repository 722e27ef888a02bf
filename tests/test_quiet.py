"""``-q/--quiet`` (cron) and ``run --no-slot-exit-code N`` (flock's ``-E``).

Real subprocesses: exact exit codes, exact stdout and stderr. ``--quiet`` says nothing on
success (``register`` still prints its id: that is its output), a refusal still says why on
stderr, and ``--json`` is unaffected. ``--no-slot-exit-code N`` replaces the 75 of "the
command was not started" only; the job's own 75 stays 75.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import Coord

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits: {selfplay: {per_node: 1, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
"""
FULL = "task_limits.selfplay.per_node=0"  # every admission of selfplay is denied


@pytest.fixture
def quiet_coord(coord: Coord) -> Coord:
    coord.write_config(CONFIG)
    return coord


def history(coord: Coord) -> list[dict]:
    result = coord("tasks", "history", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


def running(coord: Coord) -> list[dict]:
    result = coord("tasks", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


# --------------------------------------------------------------------------- can-spawn


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_can_spawn_quiet_success_says_nothing(quiet_coord: Coord, flag: str) -> None:
    r = quiet_coord("can-spawn", "selfplay", "--node", "n1", flag)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_can_spawn_without_quiet_is_one_line(quiet_coord: Coord) -> None:
    r = quiet_coord("can-spawn", "selfplay", "--node", "n1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "allowed: selfplay on n1\n", "")


def test_can_spawn_quiet_refusal_still_says_why(quiet_coord: Coord) -> None:
    r = quiet_coord("--set", FULL, "can-spawn", "-q", "selfplay", "--node", "n1")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringrift-coord: denied: selfplay on n1: ")


def test_can_spawn_quiet_json_is_unaffected(quiet_coord: Coord) -> None:
    r = quiet_coord("can-spawn", "selfplay", "--node", "n1", "-q", "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout)["allowed"] is True


# --------------------------------------------------------------------------- register


def test_register_quiet_prints_only_the_id(quiet_coord: Coord) -> None:
    r = quiet_coord("register", "selfplay", "--node", "n1", "-q", "--pid", str(os.getpid()))
    assert r.returncode == 0 and r.stderr == ""
    task_id = r.stdout.strip()
    assert r.stdout == f"{task_id}\n" and task_id.startswith("selfplay-")
    assert [t["task_id"] for t in running(quiet_coord)] == [task_id]
    done = quiet_coord("unregister", task_id, "--exit-code", "0")
    assert done.returncode == 0, done.stderr


def test_register_quiet_refusal_still_says_why(quiet_coord: Coord) -> None:
    r = quiet_coord(
        "--set", FULL, "register", "selfplay", "--node", "n1", "--quiet", "--pid", str(os.getpid())
    )
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringrift-coord: denied: selfplay on n1: ")
    assert running(quiet_coord) == []


# --------------------------------------------------------------------------- run


def test_run_quiet_success_prints_only_the_jobs_output(quiet_coord: Coord) -> None:
    r = quiet_coord("run", "selfplay", "--node", "n1", "-q", "--", "sh", "-c", "echo job")
    assert (r.returncode, r.stdout, r.stderr) == (0, "job\n", "")
    r = quiet_coord("run", "selfplay", "--node", "n1", "-q", "--", "true")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_run_quiet_refusal_still_says_why(quiet_coord: Coord) -> None:
    r = quiet_coord("--set", FULL, "run", "selfplay", "--node", "n1", "-q", "--", "echo", "RAN")
    assert r.returncode == 75 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ringrift-coord: error: denied: selfplay on n1: ")
    assert history(quiet_coord) == []


def test_run_quiet_says_why_the_command_could_not_run(quiet_coord: Coord) -> None:
    r = quiet_coord("run", "selfplay", "--node", "n1", "-q", "--", "/nonexistent/job")
    assert r.returncode == 127 and r.stdout == ""
    assert r.stderr.startswith("ringrift-coord: cannot run '/nonexistent/job': ")


def test_no_slot_exit_code_when_denied(quiet_coord: Coord) -> None:
    r = quiet_coord(
        "--set", FULL, "run", "selfplay", "--node", "n1", "--no-slot-exit-code", "9",
        "--", "echo", "RAN",
    )  # fmt: skip
    assert r.returncode == 9 and r.stdout == ""
    assert r.stderr.startswith("ringrift-coord: error: denied: selfplay on n1: ")
    assert history(quiet_coord) == [] and running(quiet_coord) == []


def test_no_slot_exit_code_when_the_wait_times_out(quiet_coord: Coord) -> None:
    r = quiet_coord(
        "--set", FULL, "run", "selfplay", "--node", "n1", "-q", "--wait", "--timeout", "0.3",
        "--no-slot-exit-code=0", "--", "echo", "RAN",
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.startswith("ringrift-coord: error: gave up waiting for a selfplay slot on n1")
    assert history(quiet_coord) == []


def test_no_slot_exit_code_in_json(quiet_coord: Coord) -> None:
    r = quiet_coord(
        "--set", FULL, "--json", "run", "selfplay", "--node", "n1", "--no-slot-exit-code", "9",
        "--", "echo", "RAN",
    )  # fmt: skip
    assert r.returncode == 9
    assert json.loads(r.stdout)["exit_code"] == 9


def test_the_jobs_own_75_stays_75(quiet_coord: Coord) -> None:
    r = quiet_coord(
        "run", "selfplay", "--node", "n1", "-q", "--no-slot-exit-code", "9",
        "--", "sh", "-c", "exit 75",
    )  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (75, "", "")
    rows = history(quiet_coord)
    assert [(row["exit_code"], row["status"]) for row in rows] == [(75, "failed")]


@pytest.mark.parametrize("value", ["256", "-1", "nine", "1.5", "99999999999999999999"])
def test_no_slot_exit_code_bad_values(quiet_coord: Coord, value: str) -> None:
    r = quiet_coord("run", "selfplay", "--no-slot-exit-code", value, "--", "echo", "RAN")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ringrift-coord: error: option --no-slot-exit-code: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["can-spawn", "selfplay", "-q=1"],
        ["can-spawn", "selfplay", "-qx"],
        ["unregister", "t-1", "-q"],
        ["run", "selfplay", "--no-slot-exit-code"],
    ],
)
def test_bad_quiet_usage(coord: Coord, argv: list[str]) -> None:
    r = coord(*argv)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("ringrift-coord: error: ")


@pytest.mark.parametrize("flag", [None, "-q"])
def test_run_quiet_silences_the_note_of_its_sigkill_after_the_grace(
    quiet_coord: Coord, flag: str | None
) -> None:
    """A job that ignores the SIGTERM run forwards is SIGKILLed after run.kill_grace: run
    says so (a note), and -q keeps it quiet; exit 137 either way."""
    ready = quiet_coord.tmp / f"deaf-{flag}"
    args = ["--set", "run.kill_grace=0.3", "run", "selfplay", "--node", "n1"]
    job = f"trap '' TERM; touch {ready}; while :; do sleep 0.05; done"
    wrapper = quiet_coord.popen(*args, *([flag] if flag else []), "--", "sh", "-c", job)
    try:
        for _ in range(400):
            if ready.exists():
                break
            time.sleep(0.025)
        wrapper.send_signal(signal.SIGTERM)
        out, err = wrapper.communicate(timeout=30)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    assert wrapper.returncode == 137 and out == "", err
    said = "after it was signalled (run.kill_grace); sending SIGKILL"
    assert (said in err) is (flag is None), err
    if flag:
        assert err == ""


@pytest.mark.parametrize("flag", [None, "-q"])
def test_run_quiet_silences_its_own_notes(quiet_coord: Coord, flag: str | None) -> None:
    """A leftover that ignores SIGTERM is killed either way; only the note about it goes."""
    ready = quiet_coord.tmp / f"ready-{flag}"  # the leftover ignores SIGTERM before sh exits
    job = (
        f"(trap '' TERM; touch {ready}; exec sleep 30) & until [ -e {ready} ]; do sleep 0.01; done"
    )
    args = ["--set", "run.kill_grace=0.3", "run", "selfplay", "--node", "n1"]
    r = quiet_coord(*args, *([flag] if flag else []), "--", "sh", "-c", job)
    assert r.returncode == 0 and r.stdout == ""
    if flag:
        assert r.stderr == ""
    else:
        assert "ignored SIGTERM; sending SIGKILL" in r.stderr
    assert [row["status"] for row in history(quiet_coord)] == ["ok"]
