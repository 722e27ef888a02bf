"""``run``: exit codes, the job's environment, signals, and the slot's life around the job.

Everything here runs the real ``ringrift-coord run`` wrapper around real jobs (sh, sleep,
python) and checks exit codes, the processes left on the machine, and the state afterwards
through ``tasks list --json`` / ``tasks history --json`` / ``tasks reap --json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, alive, wait_for

CONFIG = """\
task_limits: {selfplay: {per_node: 4, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
"""


# --------------------------------------------------------------------------- helpers


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) members of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def read_when_ready(path: Path, timeout: float = 20) -> str:
    """Jobs write ``path.tmp`` and rename it, so a file that exists is complete."""
    wait_for(path.exists, timeout, f"{path.name} from the job")
    return path.read_text().strip()


def listed(coord: Coord) -> list[dict]:
    result = coord("tasks", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


def history(coord: Coord, task_id: str | None = None) -> list[dict]:
    result = coord("tasks", "history", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["tasks"]
    return rows if task_id is None else [r for r in rows if r["task_id"] == task_id]


def only_history_row(coord: Coord) -> dict:
    rows = history(coord)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Process groups to SIGKILL when the test ends, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Wrapper:
    """A ``run`` wrapper in the background, its output in files (jobs may keep pipes open)."""

    def __init__(self, coord: Coord, *args: str) -> None:
        self.out = coord.tmp / f"run-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = coord.popen(*args, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"run wrapper still running after {timeout} s") from None

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@pytest.fixture
def coord_run(coord: Coord) -> Coord:
    coord.write_config(CONFIG)
    return coord


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("command", "code", "status"),
    [
        (["true"], 0, "ok"),
        (["sh", "-c", "exit 3"], 3, "failed"),
        (["sh", "-c", "exit 255"], 255, "failed"),
        (["sh", "-c", "kill -TERM $$"], 143, "killed"),
        (["sh", "-c", "kill -KILL $$"], 137, "killed"),
        (["sh", "-c", "kill -INT $$"], 130, "killed"),
        (["sh", "-c", "kill -HUP $$"], 129, "killed"),
        (["sh", "-c", "kill -40 $$"], 168, "killed"),
    ],
    ids=["0", "3", "255", "sigterm-143", "sigkill-137", "sigint-130", "sighup-129", "rt40-168"],
)
def test_exit_code_is_passed_through_and_slot_freed(
    coord_run: Coord, command: list[str], code: int, status: str
) -> None:
    coord = coord_run
    result = coord("run", "selfplay", "--node", "n1", "--", *command, timeout=30)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert listed(coord) == []
    row = only_history_row(coord)
    assert (row["exit_code"], row["status"], row["task_type"], row["node"]) == (
        code,
        status,
        "selfplay",
        "n1",
    )
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


def test_a_job_killed_by_a_signal_without_a_name_is_said_so(coord_run: Coord) -> None:
    """A real-time signal (40: SIGRTMIN+6 on Linux) has no ``signal.Signals`` member: the
    wrapper once died there with an internal error (exit 70) and recorded the job as a
    wrapper error. The job's death is passed on (128+40) and the signal named."""
    coord = coord_run
    result = coord("run", "selfplay", "--node", "n1", "--", "sh", "-c", "kill -40 $$", timeout=30)
    assert result.returncode == 168, result.stderr
    row = only_history_row(coord)
    rt = 40 - signal.SIGRTMIN
    assert (row["status"], row["reason"]) == ("killed", f"killed by SIGRTMIN+{rt}")


def test_run_json_reports_the_exit_code(coord_run: Coord) -> None:
    result = coord_run("run", "--json", "selfplay", "--node", "n1", "--", "sh", "-c", "exit 7")
    assert result.returncode == 7, result.stderr
    document = json.loads(result.stdout)  # the one document: the job's output is on stderr
    assert document["exit_code"] == 7 and document["status"] == "failed"
    row = only_history_row(coord_run)
    assert row["task_id"] == document["task_id"] and row["exit_code"] == 7


@pytest.mark.parametrize("kind", ["file-without-x-bit", "directory"])
def test_non_executable_gives_126_and_frees_slot(coord_run: Coord, kind: str) -> None:
    coord = coord_run
    marker = coord.tmp / "ran"
    if kind == "directory":
        target = coord.tmp / "a-directory"
        target.mkdir()
    else:
        target = coord.tmp / "job.sh"
        target.write_text(f"#!/bin/sh\ntouch {marker}\n")
        target.chmod(0o644)
    result = coord("run", "selfplay", "--node", "n1", "--", str(target), timeout=30)
    assert result.returncode == 126, result.stderr
    assert "Permission denied" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert listed(coord) == []
    row = only_history_row(coord)
    assert (row["exit_code"], row["status"]) == (126, "spawn_failed")


@pytest.mark.parametrize("command", ["no-such-command-ringrift-xyz", "/nonexistent/dir/cmd"])
def test_missing_command_gives_127_and_frees_slot(coord_run: Coord, command: str) -> None:
    coord = coord_run
    coord.write_config(CONFIG.replace("per_node: 4", "per_node: 1"))
    result = coord("run", "selfplay", "--node", "n1", "--", command, "--flag", timeout=30)
    assert result.returncode == 127, result.stderr
    assert "No such file or directory" in result.stderr
    assert command in result.stderr
    assert listed(coord) == []
    row = only_history_row(coord)
    assert (row["exit_code"], row["status"]) == (127, "spawn_failed")
    # The one slot is free again: the next run gets it.
    assert coord("run", "selfplay", "--node", "n1", "--", "true").returncode == 0


# --------------------------------------------------------------------------- the job's view


def test_job_sees_task_id_and_lease_token_and_its_row_exists(coord_run: Coord) -> None:
    coord = coord_run
    out = coord.tmp
    script = (
        'echo $$ > "$1/pid"; env | grep ^RINGRIFT_ | sort > "$1/env"; '
        '"$0" -m ringrift_coord tasks list --json > "$1/list.tmp" && mv "$1/list.tmp" "$1/list"'
    )
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--config-name",
        "square8_2p",
        "--",
        "sh",
        "-c",
        script,
        sys.executable,
        str(out),
    )
    assert wrapper.wait(timeout=60) == 0, wrapper.stderr
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    rows = json.loads((out / "list").read_text())["tasks"]
    job_pid = int((out / "pid").read_text())

    assert env["RINGRIFT_TASK_ID"].startswith("selfplay-")
    assert env["RINGRIFT_LEASE_TOKEN"].isdigit()
    assert env["RINGRIFT_TASK_TYPE"] == "selfplay" and env["RINGRIFT_NODE_ID"] == "n1"
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["task_id"] == env["RINGRIFT_TASK_ID"]
    assert row["lease_token"] == int(env["RINGRIFT_LEASE_TOKEN"])
    assert (row["pid"], row["pgid"], row["wrapper_pid"]) == (job_pid, job_pid, wrapper.pid)
    assert (row["node"], row["config_name"], row["source"]) == ("n1", "square8_2p", "run")
    assert row["lease_left"] > 0

    assert listed(coord) == []
    done = only_history_row(coord)
    assert (done["task_id"], done["status"], done["exit_code"]) == (row["task_id"], "ok", 0)
    # Released once: a second release of the same id finds nothing to free.
    again = coord("unregister", row["task_id"])
    assert again.returncode == 0 and "already released" in again.stderr
    assert len(history(coord, row["task_id"])) == 1


# --------------------------------------------------------------------------- signals

FORWARDED = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]

JOB_PY = r"""
import os, signal, subprocess, sys, time
role, out = sys.argv[1], sys.argv[2]

def publish(name, text):
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name))

if role == "grandchild":
    def got(signum, frame):
        publish("grandchild.sig", str(signum))
        os._exit(0)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, got)
    publish("grandchild.ready", str(os.getpid()))
    while True:
        time.sleep(1)
else:
    # The leader dies of the signal only once its children have: if the signal reached the
    # leader alone, it would wait until the wrapper's grace ran out and SIGKILL came.
    def leave(signum, frame):
        gc.wait()
        sleeper.wait()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, leave)
    gc = subprocess.Popen([sys.executable, __file__, "grandchild", out])
    sleeper = subprocess.Popen(["sleep", "300"])
    while not os.path.exists(os.path.join(out, "grandchild.ready")):
        time.sleep(0.01)
    publish("ready", f"{os.getpid()} {gc.pid} {sleeper.pid}")
    time.sleep(300)
"""


@pytest.mark.parametrize("sig", FORWARDED, ids=lambda s: s.name)
def test_signal_reaches_whole_job_group_including_grandchildren(
    coord_run: Coord, cleanup: list[int], sig: signal.Signals
) -> None:
    coord = coord_run
    coord.write_config(CONFIG + "run: {kill_grace: 60}\n")
    script = coord.tmp / "job.py"
    script.write_text(JOB_PY)
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        sys.executable,
        str(script),
        "leader",
        str(coord.tmp),
    )
    leader, grandchild, sleeper = map(int, read_when_ready(coord.tmp / "ready").split())
    cleanup.append(leader)
    (task,) = listed(coord)
    assert task["pgid"] == leader and task["wrapper_pid"] == wrapper.pid
    assert sorted(group_pids(leader)) == sorted([leader, grandchild, sleeper])

    os.kill(wrapper.pid, sig)
    # well inside the 60 s grace: the job ended of the forwarded signal, not of a SIGKILL
    assert wrapper.wait(timeout=30) == 128 + sig, wrapper.stderr
    # The grandchild got the very signal (its handler ran), not just a SIGKILL.
    assert read_when_ready(coord.tmp / "grandchild.sig", timeout=5) == str(int(sig))
    assert group_pids(leader) == []
    assert not alive(sleeper) and not alive(grandchild)

    assert listed(coord) == []
    rows = history(coord, task["task_id"])
    assert len(rows) == 1, rows  # released exactly once
    assert (rows[0]["status"], rows[0]["exit_code"]) == ("stopped", 128 + sig)
    assert f"forwarded {sig.name}" in rows[0]["reason"]
    assert "grace" not in rows[0]["reason"]  # no SIGKILL was needed
    assert "could not release" not in wrapper.stderr and "Traceback" not in wrapper.stderr


@pytest.mark.parametrize("sig", FORWARDED, ids=lambda s: s.name)
def test_signal_to_wrapper_ends_shell_job_with_background_children(
    coord_run: Coord, cleanup: list[int], sig: signal.Signals
) -> None:
    coord = coord_run
    coord.write_config(CONFIG + "run: {kill_grace: 2}\n")
    ready = coord.tmp / "ready"
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        'sleep 300 & a=$!; sleep 300 & echo "$$ $a $!" > "$0.tmp"; mv "$0.tmp" "$0"; wait',
        str(ready),
    )
    pids = [int(p) for p in read_when_ready(ready).split()]
    cleanup.append(pids[0])
    wait_for(lambda: len(group_pids(pids[0])) == 3, 5, "the job's three processes")

    os.kill(wrapper.pid, sig)
    code = wrapper.wait(timeout=20)
    assert code == 128 + sig, wrapper.stderr
    assert group_pids(pids[0]) == [] and not any(alive(p) for p in pids)
    assert listed(coord) == []
    row = only_history_row(coord)
    assert (row["status"], row["exit_code"]) == ("stopped", 128 + sig)


def test_sigkill_after_grace_when_job_ignores_sigterm(coord_run: Coord, cleanup: list[int]) -> None:
    coord = coord_run
    coord.write_config(CONFIG + "run: {kill_grace: 1}\n")
    ready = coord.tmp / "ready"
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        'trap "" TERM INT HUP; sleep 300 & echo "$$ $!" > "$0.tmp"; mv "$0.tmp" "$0"; '
        "while :; do wait; done",
        str(ready),
    )
    leader, child = map(int, read_when_ready(ready).split())
    cleanup.append(leader)

    started = time.monotonic()
    os.kill(wrapper.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert alive(leader) and alive(child), "the job should have ignored SIGTERM"
    assert wrapper.proc.poll() is None
    code = wrapper.wait(timeout=20)
    elapsed = time.monotonic() - started
    assert code == 128 + signal.SIGKILL, wrapper.stderr
    assert "after it was signalled (run.kill_grace); sending SIGKILL" in wrapper.stderr
    # not before the grace; that it comes exactly when the grace runs out is checked on a
    # manual clock in test_launcher.py
    assert elapsed >= 0.9, f"SIGKILL came {elapsed:.2f} s after SIGTERM (grace 1 s)"
    assert group_pids(leader) == [] and not alive(child)
    assert listed(coord) == []
    rows = history(coord)
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["exit_code"]) == ("stopped", 137)
    assert "grace" in rows[0]["reason"] and "forwarded SIGTERM" in rows[0]["reason"]


def test_second_signal_does_not_release_twice(coord_run: Coord, cleanup: list[int]) -> None:
    """TERM, then INT and HUP during the grace: one release, one history row, exit 137."""
    coord = coord_run
    coord.write_config(CONFIG + "run: {kill_grace: 1.5}\n")
    ready = coord.tmp / "ready"
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        'trap "" TERM INT HUP; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; while :; do sleep 1; done',
        str(ready),
    )
    leader = int(read_when_ready(ready))
    cleanup.append(leader)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        os.kill(wrapper.pid, sig)
        time.sleep(0.1)
    assert wrapper.wait(timeout=20) == 137, wrapper.stderr
    assert group_pids(leader) == []
    assert listed(coord) == []
    assert len(history(coord)) == 1


# --------------------------------------------------------------------------- the slot vs the job


def test_leftover_grandchildren_are_stopped_before_the_slot_is_freed(
    coord_run: Coord, cleanup: list[int]
) -> None:
    """The leader exits at once, leaving children in its group: they do not outlive the slot."""
    coord = coord_run
    coord.write_config(CONFIG + "run: {kill_grace: 1}\n")
    gc_file = coord.tmp / "gc"
    result = coord(
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        # the leader exits only once the second child ignores SIGTERM (else the wrapper's
        # SIGTERM could come first, and there would be nothing left to SIGKILL)
        'sleep 300 & a=$!; (trap "" TERM; : > "$0.trap"; exec sleep 300) & '
        'while [ ! -e "$0.trap" ]; do sleep 0.01; done; echo "$$ $a $!" > "$0"',
        str(gc_file),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in gc_file.read_text().split()]
    cleanup.append(pids[0])
    assert not any(alive(p) for p in pids), "a job process outlived its slot"
    assert group_pids(pids[0]) == []
    assert "ignored SIGTERM" in result.stderr
    assert listed(coord) == []
    assert only_history_row(coord)["status"] == "ok"


def test_kill_9_of_wrapper_keeps_slot_while_job_lives_then_frees_it(
    coord: Coord, cleanup: list[int]
) -> None:
    coord.write_config(CONFIG.replace("per_node: 4", "per_node: 1") + "store: {lease_ttl: 1}\n")
    ready = coord.tmp / "ready"
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        'sleep 300 & echo "$$ $!" > "$0.tmp"; mv "$0.tmp" "$0"; wait',
        str(ready),
    )
    leader, grandchild = map(int, read_when_ready(ready).split())
    cleanup.append(leader)
    (task,) = listed(coord)

    os.kill(wrapper.pid, signal.SIGKILL)
    assert wrapper.wait(timeout=10) == -signal.SIGKILL
    time.sleep(1.5)  # the lease (1 s) has expired: on this host the process decides
    assert alive(leader) and alive(grandchild)

    def still_held() -> None:
        reaped = coord("tasks", "reap", "--json")
        assert reaped.returncode == 0, reaped.stderr
        assert json.loads(reaped.stdout)["reaped"] == []
        assert [t["task_id"] for t in listed(coord)] == [task["task_id"]]
        denied = coord("can-spawn", "selfplay", "--node", "n1")
        assert denied.returncode == 1 and "per-node limit 1" in denied.stderr
        busy = coord("run", "selfplay", "--node", "n1", "--", "true")
        assert busy.returncode == 75, busy.stderr

    still_held()
    # The job's leader dies; its grandchild still runs in the group: the slot stays held.
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: not alive(leader), 5, "the leader to die")
    assert alive(grandchild)
    still_held()

    # Once the last process of the job is gone, the slot comes back (within 30 s).
    os.kill(grandchild, signal.SIGKILL)
    started = time.monotonic()
    wait_for(
        lambda: coord("can-spawn", "selfplay", "--node", "n1").returncode == 0,
        30,
        "the slot to come back",
    )
    assert time.monotonic() - started < 30
    assert listed(coord) == []
    rows = history(coord, task["task_id"])
    assert len(rows) == 1 and rows[0]["status"] == "reaped"
    assert "gone" in rows[0]["reason"]
    assert coord("run", "selfplay", "--node", "n1", "--", "true").returncode == 0


def test_job_cannot_outlive_a_slot_freed_under_it(coord: Coord, cleanup: list[int]) -> None:
    """An operator (or another host's reaper) frees the slot: the wrapper stops the job."""
    coord.write_config(
        CONFIG.replace("per_node: 4", "per_node: 1")
        + "store: {lease_ttl: 1}\nrun: {kill_grace: 1}\n"
    )
    ready = coord.tmp / "ready"
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        'sleep 300 & echo "$$ $!" > "$0.tmp"; mv "$0.tmp" "$0"; wait',
        str(ready),
    )
    leader, child = map(int, read_when_ready(ready).split())
    cleanup.append(leader)
    (task,) = listed(coord)
    freed = coord("unregister", task["task_id"], "--reason", "operator")
    assert freed.returncode == 0, freed.stderr
    code = wrapper.wait(timeout=30)  # the job itself would run 300 s
    assert code == 128 + signal.SIGTERM, wrapper.stderr
    assert "lease of" in wrapper.stderr and "lost" in wrapper.stderr
    assert group_pids(leader) == [] and not alive(child)
    assert listed(coord) == []
    assert len(history(coord, task["task_id"])) == 1


def test_kill_9_of_wrapper_then_job_finishes_by_itself(coord: Coord, cleanup: list[int]) -> None:
    coord.write_config(CONFIG.replace("per_node: 4", "per_node: 1"))
    ready, finish = coord.tmp / "ready", coord.tmp / "finish"
    wrapper = Wrapper(
        coord,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; while [ ! -e "$1" ]; do sleep 0.05; done',
        str(ready),
        str(finish),
    )
    leader = int(read_when_ready(ready))
    cleanup.append(leader)
    (task,) = listed(coord)
    os.kill(wrapper.pid, signal.SIGKILL)
    assert wrapper.wait(timeout=10) == -signal.SIGKILL
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 1
    reaped = json.loads(coord("tasks", "reap", "--json").stdout)["reaped"]
    assert reaped == []

    finish.touch()
    wait_for(lambda: not alive(leader), 10, "the job to finish")
    started = time.monotonic()

    def reaped_now() -> list[dict]:
        return json.loads(coord("tasks", "reap", "--json").stdout)["reaped"]

    rows = wait_for(reaped_now, 30, "tasks reap to free the slot")
    assert time.monotonic() - started < 30
    assert [r["task_id"] for r in rows] == [task["task_id"]]
    assert listed(coord) == []
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


@pytest.mark.parametrize("kind", ["run", "bandwidth run"])
def test_an_empty_program_word_is_a_usage_error(coord_run: Coord, kind: str) -> None:
    """(exec refuses it with a ValueError: the job ended as a failure of its own, exit 126)"""
    head = ["run", "selfplay", "--node", "n1"] if kind == "run" else ["bandwidth", "run", "h1"]
    assert coord_run(*head, "--", "true", timeout=30).returncode == 0  # the store, one row
    result = coord_run(*head, "--", "", "x", timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "ringrift-coord: error: the program to run (the command's first word) is empty ('')"
    ]
    assert listed(coord_run) == []
    history = coord_run("--json", "tasks", "history")
    assert len(json.loads(history.stdout)["tasks"]) == (kind == "run"), history.stdout
