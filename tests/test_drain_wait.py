"""A drained node's ``run --wait`` holds no place in the fair queue while a halt denies it.

Such a waiter cannot be admitted until the halt lifts; were it to stand in line, every other
node would count it against the type's cluster limit (and each cron period on the drained
node would add one more). It steps out of line at its first denial and, once the halt
lifts, takes its own place back: ahead of those who came after it, behind those before.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, EngineDB, wait_for

from ringrift_coord import halts, queue
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import WaitTimeout
from ringrift_coord.launcher import HALTED_POLL, acquire_slot
from ringrift_coord.task_coordinator import Holder, TaskCoordinator, TaskType

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits: {training: {per_node: 1, cluster: 3}}
rate_limits: {training: {per_minute: null}}
run: {poll_interval: 0.05, wake_poll: 0.05}
"""


def queued(coord: Coord) -> int:
    result = coord("status", "--json")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["by_type"]["training"]["queued"])


def first_decision(coord: Coord, pid: int) -> dict | None:
    """The logged decision of the ``run`` with wrapper ``pid`` (its first poll), if any."""
    result = coord("decisions", "--json", "--type", "training")
    assert result.returncode == 0, result.stderr
    mine = [d for d in json.loads(result.stdout)["decisions"] if d["pid"] == pid]
    return mine[-1] if mine else None


class Runs:
    """``run --wait`` processes of this test, killed at its end if still waiting."""

    def __init__(self, coord: Coord, log: Path) -> None:
        self.coord, self.log = coord, log
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, node: str) -> subprocess.Popen[str]:
        proc = self.coord.popen(
            "run",
            "training",
            "--node",
            node,
            "--wait",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            'echo "$1" >> "$0"',
            str(self.log),
            name,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def polled(self, proc: subprocess.Popen[str], expect_queued: int) -> dict:
        """Wait until ``proc`` was denied once and the line holds ``expect_queued``."""
        decision = wait_for(
            lambda: first_decision(self.coord, proc.pid) or proc.poll() is not None,
            30,
            f"run {proc.pid} to ask",
        )
        assert proc.poll() is None, proc.communicate()[1]
        assert isinstance(decision, dict) and not decision["allowed"], decision
        wait_for(lambda: queued(self.coord) == expect_queued, 30, f"{expect_queued} in line")
        return decision


@pytest.fixture
def runs(coord: Coord) -> Iterator[Runs]:
    coord.write_config(CONFIG)
    found = Runs(coord, coord.tmp / "log")
    try:
        yield found
    finally:
        for proc in found.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_a_drained_nodes_waiters_do_not_shrink_the_other_nodes_cluster_limit(
    coord: Coord, runs: Runs
) -> None:
    holder = subprocess.Popen(["sleep", "600"])
    try:
        assert coord("halt", "--node", "n1", "--reason", "disk swap").returncode == 0
        held = []
        for node in ("n2", "n3"):
            result = coord("register", "training", "--node", node, "--pid", str(holder.pid))
            assert result.returncode == 0, result.stderr
            held.append(result.stdout.strip())

        # two cron periods on the drained node: each one's run --wait is halted...
        first = runs.start("first", "n1")
        denied = runs.polled(first, expect_queued=0)
        assert [r["rule"] for r in denied["reasons"]] == ["halt"]
        second = runs.start("second", "n1")
        runs.polled(second, expect_queued=0)
        # ...and holds no place: the cluster's third slot is still there for the other nodes
        free = coord("can-spawn", "training", "--node", "n4")
        assert free.returncode == 0, free.stderr
        result = coord("register", "training", "--node", "n4", "--pid", str(holder.pid))
        assert result.returncode == 0, result.stderr

        # one that came after them waits on a healthy node for the full cluster
        later = runs.start("later", "n5")
        denied = runs.polled(later, expect_queued=1)
        assert "3 running + 1 requested > cluster limit 3" in denied["reasons"][0]["message"]

        # the drain lifts: the two take their places back, ahead of the later one
        assert coord("unhalt", "--node", "n1").returncode == 0
        wait_for(lambda: queued(coord) == 3, 30, "the drained node's waiters to rejoin")
        full = coord("can-spawn", "training", "--node", "n6")
        assert full.returncode == 1
        assert "3 running + 3 queued + 1 requested > cluster limit 3" in full.stderr

        # one slot frees: served in arrival order, one at a time
        assert coord("unregister", held[0]).returncode == 0
        for proc in (first, second, later):
            assert proc.wait(timeout=60) == 0, proc.communicate()[1]
        assert runs.log.read_text().splitlines() == ["first", "second", "later"]
        assert queued(coord) == 0
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_halted_waiter_that_times_out_leaves_nothing_in_line(coord: Coord, runs: Runs) -> None:
    assert coord("halt", "--type", "training", "--reason", "upgrade").returncode == 0
    result = coord(
        "run", "training", "--node", "n1", "--wait", "--timeout", "0.3", "--", "true", timeout=30
    )
    assert result.returncode == 75, result.stderr
    assert "gave up waiting" in result.stderr and "halted training" in result.stderr
    assert queued(coord) == 0


# --------------------------------------------------------------------------- in-process

ONE_SLOT = """\
task_limits: {training: {per_node: 1, cluster: 1}}
rate_limits: {training: {per_minute: null}}
run: {poll_interval: 0.05, wake_poll: 0.05}
"""


def waiters(coord: TaskCoordinator, held: int = 0) -> list[tuple[int, str]]:
    """The waiters in line (``held=1``: those a halt holds back, out of line)."""
    with coord.ctx.store.read() as tx:
        return [
            (int(r["seq"]), r["node"])
            for r in tx.query("SELECT seq, node FROM waiters WHERE held = ? ORDER BY seq", (held,))
        ]


def test_a_halted_waiter_steps_out_and_rejoins_with_its_own_place(engine_db: EngineDB) -> None:
    """On a manual clock: out of line at its first denial, polled gently while halted, back
    in line with its own seq (ahead of a later waiter) once only the limit denies it."""
    clock = ManualClock()
    mine = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    held = other.acquire("training", "n2", holder=Holder(pid=os.getpid()), source="register")
    assert held.allowed and held.task_id
    halts.activate(other.ctx, "drain", task_type=None, ttl=None, who="t", host="h", node="n1")
    steps: list[tuple[float, bool, list[tuple[int, str]]]] = []
    later: list[int] = []
    counted: list[list[dict]] = []

    def on_wait(decision, waited: float) -> None:
        steps.append((round(waited, 6), decision.halted, waiters(other)))
        with other.ctx.store.read() as tx:
            counted.append(
                [
                    {k: int(v) if k != "task_type" else v for k, v in r.items()}
                    for r in queue.lengths(tx)
                ]
            )
        assert waited < 10, "the clock never reached the steps below"
        if len(steps) == 1:  # stepped out: a later waiter on another node is first in line
            later.append(other.enqueue("training", "n3"))
        elif len(steps) == 2:
            halts.deactivate(other.ctx, task_type=None, who="t", host="h", node="n1")
        elif len(steps) == 3:  # back in line, ahead of the later one: the slot comes to us
            assert other.unregister_task(held.task_id) is not None

    decision = acquire_slot(
        mine,
        TaskType.TRAINING,
        "n1",
        holder=Holder(pid=os.getpid()),
        config_name=None,
        command="true",
        wait=True,
        timeout=None,
        on_wait=on_wait,
    )
    assert decision.allowed and decision.node == "n1"
    (seq,) = later
    assert steps[0][:2] == (0.0, True) and steps[0][2] == []  # out of line at once
    # ... yet counted, as held (status and metrics say how many start at the unhalt)
    assert counted[0] == [{"task_type": "training", "n": 0, "held": 1}]
    assert counted[1] == [{"task_type": "training", "n": 1, "held": 1}]
    assert counted[2] == [{"task_type": "training", "n": 2, "held": 0}]
    assert steps[1][1] and steps[1][2] == [(seq, "n3")]
    own = steps[2][2][0][0]
    assert own < seq and steps[2][1] is False  # rejoined with its earlier seq, ahead
    assert steps[2][2] == [(own, "n1"), (seq, "n3")]
    # polled every HALTED_POLL while halted; then woken at once by the unhalt (back in line)
    # and by the release (admitted): no poll in between
    assert clock.slept == pytest.approx([HALTED_POLL], abs=1e-6)
    assert waiters(other) == [(seq, "n3")]  # admitted: its own place is gone


def test_a_waiter_halted_to_its_deadline_gives_up_out_of_line(engine_db: EngineDB) -> None:
    clock = ManualClock()
    mine = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    halts.activate(other.ctx, "x", task_type="training", ttl=None, who="t", host="h")
    with pytest.raises(WaitTimeout) as raised:
        acquire_slot(
            mine,
            TaskType.TRAINING,
            "n1",
            holder=Holder(pid=os.getpid()),
            config_name=None,
            command="true",
            wait=True,
            timeout=1.2,
        )
    assert "halted training" in str(raised.value)
    assert clock.slept == pytest.approx([0.5, 0.5, 0.2], abs=1e-6)
    assert waiters(other) == []
