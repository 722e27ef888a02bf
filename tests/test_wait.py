"""``run --wait``: a fair line for one slot, a timeout that gives up, dead waiters dropped.

Real ``ringrift-coord run --wait`` processes queue for a slot (per-node limit 1) held by a
``register``-ed sleeper. Arrival order is made certain by starting each waiter only once the
previous one is in the ``waiters`` table; each job appends to a log, so the log shows who was
served when.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, wait_for

CONFIG = """\
task_limits: {selfplay: {per_node: 1, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
run: {poll_interval: 0.05}
"""

JOB = 'echo "start $1" >> "$0"; sleep 0.2; echo "end $1" >> "$0"'


def waiter_pids(coord: Coord) -> list[int]:
    """Pids in the fair queue, in line order (read straight from the state file)."""
    if not coord.db.exists():
        return []
    conn = sqlite3.connect(f"file:{coord.db}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in conn.execute("SELECT pid FROM waiters ORDER BY seq")]
    finally:
        conn.close()


def listed(coord: Coord) -> list[dict]:
    result = coord("tasks", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


def history(coord: Coord) -> list[dict]:
    result = coord("tasks", "history", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


class Waiter:
    """A ``run selfplay --node n1 --wait [extra] -- JOB log name`` in the background
    (``env``: added to the coord's environment); its stderr kept in a file."""

    def __init__(
        self, coord: Coord, log: Path, name: str, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.err = coord.tmp / f"waiter-{name}.err"
        with open(self.err, "w") as err:
            self.proc = coord.popen(
                "run",
                "selfplay",
                "--node",
                "n1",
                "--wait",
                *extra,
                "--",
                "sh",
                "-c",
                JOB,
                str(log),
                name,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env or {},
            )
        self.pid = self.proc.pid

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"waiter {self.name} still waiting after {timeout} s") from None

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@pytest.fixture
def line(coord: Coord) -> Iterator[tuple[Coord, str, list[Waiter]]]:
    """The slot held by a registered sleeper; yields (coord, its task id, waiters to clean)."""
    coord.write_config(CONFIG)
    holder = subprocess.Popen(["sleep", "600"])
    waiters: list[Waiter] = []
    try:
        result = coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert result.returncode == 0, result.stderr
        yield coord, result.stdout.strip(), waiters
    finally:
        for w in waiters:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(timeout=10)
        holder.kill()
        holder.wait(timeout=10)


def join_line(coord: Coord, waiters: list[Waiter], log: Path, name: str, *extra: str) -> Waiter:
    """Start a waiter and return once it stands in line (so arrival order is known)."""
    w = Waiter(coord, log, name, *extra)
    waiters.append(w)
    wait_for(
        lambda: w.pid in waiter_pids(coord) or w.proc.poll() is not None,
        20,
        f"waiter {name} to join the line",
    )
    assert w.proc.poll() is None, f"waiter {name} exited early: {w.stderr}"
    return w


def log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_six_waiters_are_served_in_arrival_order(line: tuple[Coord, str, list[Waiter]]) -> None:
    coord, holder_id, waiters = line
    log = coord.tmp / "log"
    names = [str(i) for i in range(6)]
    for name in names:
        join_line(coord, waiters, log, name)
        time.sleep(0.05)
    assert waiter_pids(coord) == [w.pid for w in waiters]
    assert log_lines(log) == []  # the slot is still held: nobody ran

    assert coord("unregister", holder_id).returncode == 0
    # A newcomer that does not wait cannot jump the line.
    jumper = coord("run", "selfplay", "--node", "n1", "--", "sh", "-c", JOB, str(log), "jumper")
    assert jumper.returncode == 75, jumper.stderr

    for w in waiters:
        assert w.wait(timeout=60) == 0, w.stderr
    expected = [f"{word} {name}" for name in names for word in ("start", "end")]
    assert log_lines(log) == expected  # in order, one at a time
    assert waiter_pids(coord) == []
    assert listed(coord) == []
    rows = history(coord)
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)


def test_wait_timeout_gives_up_with_75(line: tuple[Coord, str, list[Waiter]]) -> None:
    coord, holder_id, _ = line
    marker = coord.tmp / "ran"
    started = time.monotonic()
    result = coord(
        "run",
        "selfplay",
        "--node",
        "n1",
        "--wait",
        "--timeout",
        "0.5",
        "--",
        "touch",
        str(marker),
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    # it waited its 0.5 s (and gave up by itself: the call's own timeout is 30 s); that it
    # gives up at the deadline exactly is checked on a manual clock in test_launcher.py
    assert elapsed >= 0.5, f"gave up after {elapsed:.2f} s of wall time"
    assert "gave up waiting" in result.stderr and "per-node limit 1" in result.stderr
    assert not marker.exists()
    assert waiter_pids(coord) == []  # it left the line
    assert [t["task_id"] for t in listed(coord)] == [holder_id]
    assert history(coord) == []

    zero = coord(
        "run",
        "selfplay",
        "--node",
        "n1",
        "--wait",
        "--timeout",
        "0",
        "--",
        "touch",
        str(marker),
        timeout=30,
    )
    assert zero.returncode == 75, zero.stderr
    assert not marker.exists() and waiter_pids(coord) == []

    # no --timeout: $RINGRIFT_WAIT_TIMEOUT is the wait's (--timeout, when given, wins)
    from_env = coord(
        "run", "selfplay", "--node", "n1", "--wait", "--", "touch", str(marker),
        env={"RINGRIFT_WAIT_TIMEOUT": "0.3"}, timeout=30,
    )  # fmt: skip
    assert from_env.returncode == 75 and "gave up waiting" in from_env.stderr, from_env.stderr
    given = coord(
        "run", "selfplay", "--node", "n1", "--wait", "--timeout", "0", "--", "true",
        env={"RINGRIFT_WAIT_TIMEOUT": "not a duration"}, timeout=30,
    )  # fmt: skip
    assert given.returncode == 75, given.stderr
    assert not marker.exists() and waiter_pids(coord) == []


def test_timeout_without_wait_is_a_usage_error(coord: Coord) -> None:
    coord.write_config(CONFIG)
    result = coord("run", "selfplay", "--node", "n1", "--timeout", "1", "--", "true")
    assert result.returncode == 2, result.stderr
    assert not coord.db.exists()  # nothing was taken: not even the store was made
    # $RINGRIFT_WAIT_TIMEOUT is --timeout's default: without --wait it is not read
    plain = coord(
        "run", "selfplay", "--node", "n1", "--", "true", env={"RINGRIFT_WAIT_TIMEOUT": "x"}
    )
    assert plain.returncode == 0, plain.stderr
    bad = coord("run", "selfplay", "--wait", "--", "true", env={"RINGRIFT_WAIT_TIMEOUT": "-5"})
    assert bad.returncode == 2 and "RINGRIFT_WAIT_TIMEOUT: '-5' is negative" in bad.stderr


def test_killed_waiters_lose_their_place_and_the_line_moves_on(
    line: tuple[Coord, str, list[Waiter]],
) -> None:
    coord, holder_id, waiters = line
    log = coord.tmp / "log"
    a, b, c, d = (join_line(coord, waiters, log, name) for name in "abcd")
    # Kill the head of the line and one in the middle: neither may stall the others.
    for dead in (a, c):
        os.kill(dead.pid, signal.SIGKILL)
        assert dead.wait(timeout=10) == -signal.SIGKILL
    assert coord("unregister", holder_id).returncode == 0
    released = time.monotonic()

    assert b.wait(timeout=30) == 0, b.stderr
    assert d.wait(timeout=30) == 0, d.stderr
    assert time.monotonic() - released < 10, "the line stalled behind dead waiters"
    assert log_lines(log) == ["start b", "end b", "start d", "end d"]
    assert waiter_pids(coord) == []
    assert listed(coord) == []
    rows = history(coord)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)


def test_dead_waiter_is_dropped_while_the_slot_is_still_held(
    line: tuple[Coord, str, list[Waiter]],
) -> None:
    """The next admission reaps a killed waiter's place even before the slot frees up."""
    coord, holder_id, waiters = line
    log = coord.tmp / "log"
    a = join_line(coord, waiters, log, "a")
    b = join_line(coord, waiters, log, "b")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    wait_for(lambda: waiter_pids(coord) == [b.pid], 10, "the dead waiter to be dropped")
    assert coord("unregister", holder_id).returncode == 0
    assert b.wait(timeout=30) == 0, b.stderr
    assert log_lines(log) == ["start b", "end b"]


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_signalled_waiter_leaves_the_line(
    line: tuple[Coord, str, list[Waiter]], sig: signal.Signals
) -> None:
    coord, holder_id, waiters = line
    log = coord.tmp / "log"
    a = join_line(coord, waiters, log, "a")
    b = join_line(coord, waiters, log, "b")
    os.kill(a.pid, sig)
    assert a.wait(timeout=10) == 128 + sig, a.stderr
    assert waiter_pids(coord) == [b.pid]
    assert coord("unregister", holder_id).returncode == 0
    assert b.wait(timeout=30) == 0, b.stderr
    assert log_lines(log) == ["start b", "end b"]
    assert listed(coord) == []


def test_a_busy_store_while_waiting_is_a_reason_to_keep_waiting(
    line: tuple[Coord, str, list[Waiter]], engine: str
) -> None:
    """A waiter without --timeout whose store stays locked past the busy timeout (here a
    process holding SQLite's write lock for 3 s, with busy_timeout 0.3 s) keeps waiting and
    runs once the slot frees; before, it exited 75 "still locked after the busy timeout"."""
    if engine != "sqlite":
        pytest.skip("the lock is SQLite's file lock")
    coord, holder_id, waiters = line
    coord.write_config(CONFIG + "store: {busy_timeout: 0.3}\n")
    log = coord.tmp / "log"
    w = join_line(coord, waiters, log, "patient")
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(3)\n"
            "c.execute('ROLLBACK')",
            str(coord.db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
    assert locker.wait(timeout=30) == 0
    assert w.proc.poll() is None, w.stderr  # still waiting through the 3 s lock
    done = coord("unregister", holder_id)
    assert done.returncode == 0, done.stderr
    assert w.wait() == 0, w.stderr
    assert log_lines(log) == ["start patient", "end patient"]


def test_waiters_a_halt_holds_back_are_counted_as_held(
    line: tuple[Coord, str, list[Waiter]],
) -> None:
    """Behind a halt the waiters stand in no line, yet status and metrics count them (held),
    so that an operator sees how many start at the unhalt; then they run."""
    coord, holder_id, waiters = line
    assert coord("halt", "--reason", "maintenance").returncode == 0
    log = coord.tmp / "log"
    for name in ("a", "b"):
        waiters.append(Waiter(coord, log, name))

    def by_type() -> dict:
        done = coord("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["by_type"]["selfplay"]

    wait_for(lambda: by_type()["held"] == 2, 30, "two waiters counted as held")
    assert by_type()["queued"] == 0
    gone = Waiter(coord, log, "gone")  # a third, killed while held: counted no more at once
    wait_for(lambda: by_type()["held"] == 3, 30, "the third counted as held")
    gone.proc.kill()
    gone.proc.wait(timeout=10)
    assert by_type()["held"] == 2  # (its row stays until an admission reaps it)
    brief = coord("status", "--brief").stdout
    assert "selfplay: 1/500 running on 1 node(s), 0 queued, 2 held;" in brief, brief
    metrics = coord("metrics").stdout
    assert 'ringrift_waiters_held{node="n1",type="selfplay"} 2.0' in metrics, metrics
    assert 'ringrift_waiters{node="n1",type="selfplay"} 0.0' in metrics, metrics
    assert coord("unhalt").returncode == 0
    wait_for(lambda: (by_type()["held"], by_type()["queued"]) == (0, 2), 30, "back in line")
    assert coord("unregister", holder_id).returncode == 0
    for w in waiters:
        assert w.wait() == 0, w.stderr
    assert by_type()["held"] == 0 and by_type()["queued"] == 0
