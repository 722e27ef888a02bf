"""Racing launchers: N real processes register at once and exactly the limit is admitted.

Every racer is a real ``ringrift-coord register`` process. Two ways of starting them:

* ``popen``: all ``python -m ringrift_coord register ...`` processes are created back to back;
  on a small machine their start-ups overlap, so their transactions collide.
* ``barrier``: each racer is a real interpreter that imports the CLI's modules, says it is
  ready, then blocks opening a FIFO; once all are ready the test opens the FIFO and they all
  call the CLI entry point (``ringrift_coord.cli.main.run_cli``, what ``python -m
  ringrift_coord`` runs) within a few milliseconds of each other: the tightest race a
  machine can produce, on a fresh state directory (so the database is created in the race
  too).

Rate limits are switched off in the config so only the slot limits decide.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Coord

# No rate limit, so only the slot limits decide. A long busy timeout: on a machine that
# other test suites share, a lock holder can be descheduled for seconds, and a racer that
# gives up (exit 75, "nothing was decided") is not what these tests are about.
NO_RATE = "rate_limits: {selfplay: {per_minute: null}}\nstore: {busy_timeout: 30}\n"

RACER = r"""
import os, sys
fifo, ready = sys.argv[1], sys.argv[2]
# Import what the hot path imports, so the race is between transactions, not start-ups.
import sqlite3
import ringrift_coord.cli.main as entry
import ringrift_coord.cli.hot, ringrift_coord.context, ringrift_coord.task_coordinator
import ringrift_coord.admission, ringrift_coord.store.sqlite
fd = os.open(ready, os.O_WRONLY | os.O_APPEND)
os.write(fd, b"r")
os.close(fd)
os.close(os.open(fifo, os.O_RDONLY))  # blocks until the test opens the FIFO
sys.exit(entry.run_cli(sys.argv[3:]))
"""


@pytest.fixture
def sleeper():
    """A long-lived process whose pid the racers register as the holder."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return results


def race(coord: Coord, argvs: list[list[str]], mode: str) -> list[tuple[int, str, str]]:
    """Run every argv as its own racing process; (exit code, stdout, stderr) in argv order."""
    procs: list[subprocess.Popen[str]] = []
    if mode == "popen":
        try:
            for argv in argvs:
                procs.append(coord.popen(*argv))
        except BaseException:
            _finish(procs, timeout=30)
            raise
        return _finish(procs)

    assert mode == "barrier"
    fifo = coord.tmp / f"go-{time.monotonic_ns()}"
    ready = coord.tmp / f"ready-{time.monotonic_ns()}"
    os.mkfifo(fifo)
    ready.write_bytes(b"")
    go: int | None = None
    try:
        for argv in argvs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", RACER, str(fifo), str(ready), *argv],
                    env=coord.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + 90
        while len(ready.read_bytes()) < len(argvs):
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, f"a racer died before the barrier: {_finish(dead, 10)[0]}"
            assert time.monotonic() < deadline, "racers never all reached the barrier"
            time.sleep(0.02)
        time.sleep(0.2)  # let the last ones block in open()
        # O_RDWR never blocks on a FIFO and releases every reader, now and later.
        go = os.open(fifo, os.O_RDWR)
        return _finish(procs)
    finally:
        if go is not None:
            os.close(go)
        _finish([p for p in procs if p.poll() is None], timeout=10)


def db_state(coord: Coord) -> dict[str, object]:
    """Read the state file directly and check it is consistent."""
    conn = sqlite3.connect(f"file:{coord.db}?mode=ro", uri=True, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tasks = conn.execute(
            "SELECT task_id, node, pid, lease_token, lease_expires, started_at FROM tasks"
        ).fetchall()
        decisions = conn.execute(
            "SELECT allowed, task_id, id FROM decisions WHERE action = 'register'"
        ).fetchall()
        history = conn.execute("SELECT COUNT(*) FROM task_history").fetchone()[0]
        waiters = conn.execute("SELECT COUNT(*) FROM waiters").fetchone()[0]
    finally:
        conn.close()
    ids = [t[0] for t in tasks]
    tokens = [t[3] for t in tasks]
    assert len(set(ids)) == len(ids), "duplicate task ids"
    assert len(set(tokens)) == len(tokens), "two slots share a fencing token"
    # A slot's fencing token is the id of the decision that admitted it.
    admitted = {d[1]: d[2] for d in decisions if d[0] == 1}
    assert {t[0]: t[3] for t in tasks} == admitted
    assert all(t[4] > t[5] for t in tasks), "lease expires before it starts"
    allowed_ids = sorted(d[1] for d in decisions if d[0] == 1)
    assert allowed_ids == sorted(ids), "decision log disagrees with the task table"
    assert history == 0 and waiters == 0
    return {
        "tasks": tasks,
        "per_node": Counter(t[1] for t in tasks),
        "decisions": len(decisions),
        "denied": sum(1 for d in decisions if d[0] == 0),
    }


def listed(coord: Coord) -> list[dict[str, object]]:
    result = coord("tasks", "list", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


def check_outcome(
    coord: Coord,
    results: list[tuple[int, str, str]],
    admitted: int,
    rule_text: str,
    sleeper: int,
) -> dict[str, object]:
    codes = Counter(code for code, _, _ in results)
    details = [(c, e.strip()) for c, _, e in results if c not in (0, 1)]
    assert set(codes) <= {0, 1}, f"unexpected exit codes {dict(codes)}: {details[:3]}"
    assert codes[0] == admitted, f"admitted {codes[0]}, expected {admitted}: {dict(codes)}"
    assert codes[1] == len(results) - admitted
    for code, out, err in results:
        assert "Traceback" not in err
        if code == 0:
            assert out.strip().startswith("selfplay-"), out
        else:
            assert out == ""
            assert rule_text in err, err
    winners = sorted(out.strip() for code, out, _ in results if code == 0)
    assert len(set(winners)) == admitted

    rows = listed(coord)
    assert sorted(r["task_id"] for r in rows) == winners
    assert all(r["pid"] == sleeper and r["task_type"] == "selfplay" for r in rows)
    state = db_state(coord)
    assert state["decisions"] == len(results)
    assert state["denied"] == len(results) - admitted
    return state


@pytest.mark.parametrize("mode", ["barrier", "popen"])
def test_64_racers_per_node_limit_8_admit_exactly_8(coord: Coord, sleeper: int, mode: str) -> None:
    coord.write_config("task_limits: {selfplay: {per_node: 8, cluster: 500}}\n" + NO_RATE)
    argvs = [["register", "selfplay", "--node", "n1", "--pid", str(sleeper)]] * 64
    results = race(coord, argvs, mode)
    state = check_outcome(coord, results, 8, "per-node limit 8", sleeper)
    assert state["per_node"] == {"n1": 8}

    # The limit holds after the race as well, and a released slot is usable again.
    full = coord("can-spawn", "selfplay", "--node", "n1")
    assert full.returncode == 1, full.stderr
    assert "8 running + 1 requested > per-node limit 8" in full.stderr
    victim = listed(coord)[0]["task_id"]
    assert coord("unregister", victim).returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    again = coord("register", "selfplay", "--node", "n1", "--pid", str(sleeper))
    assert again.returncode == 0, again.stderr
    assert coord("register", "selfplay", "--node", "n1", "--pid", str(sleeper)).returncode == 1
    assert len(listed(coord)) == 8


@pytest.mark.parametrize("mode", ["barrier", "popen"])
def test_64_racers_on_4_nodes_cluster_limit_20_admit_exactly_20(
    coord: Coord, sleeper: int, mode: str
) -> None:
    coord.write_config("task_limits: {selfplay: {per_node: 64, cluster: 20}}\n" + NO_RATE)
    argvs = [
        ["register", "selfplay", "--node", f"n{i % 4}", "--pid", str(sleeper)] for i in range(64)
    ]
    results = race(coord, argvs, mode)
    state = check_outcome(coord, results, 20, "cluster limit 20", sleeper)
    assert sum(state["per_node"].values()) == 20
    assert set(state["per_node"]) <= {"n0", "n1", "n2", "n3"}
    assert all(n <= 16 for n in state["per_node"].values())
    for node in ("n0", "n1", "n2", "n3"):
        assert coord("can-spawn", "selfplay", "--node", node).returncode == 1


@pytest.mark.stress
def test_stress_per_node_race_repeated_20_times(tmp_path: Path) -> None:
    sleeper_proc = subprocess.Popen(["sleep", "600"])
    try:
        timings = []
        for round_no in range(20):
            (tmp_path / f"round{round_no:02d}").mkdir()
            coord = Coord(tmp_path / f"round{round_no:02d}")
            coord.write_config("task_limits: {selfplay: {per_node: 8, cluster: 500}}\n" + NO_RATE)
            argvs = [["register", "selfplay", "--node", "n1", "--pid", str(sleeper_proc.pid)]] * 64
            started = time.monotonic()
            results = race(coord, argvs, "barrier" if round_no % 2 == 0 else "popen")
            timings.append(time.monotonic() - started)
            try:
                check_outcome(coord, results, 8, "per-node limit 8", sleeper_proc.pid)
            except AssertionError as exc:
                raise AssertionError(f"round {round_no}: {exc}") from None
        print(
            f"\n20 rounds of 64 racers: {sum(timings):.1f} s "
            f"(min {min(timings):.1f}, max {max(timings):.1f} s per round)"
        )
    finally:
        sleeper_proc.kill()
        sleeper_proc.wait(timeout=10)
