"""``run`` in-process on a manual clock: the wait loop, lease renewal, the kill grace and the
release retries run on the context's clock, so these tests step time instead of sleeping.

The jobs are real processes and the signals real; only the passage of time is simulated. A
second context on the same database (same clock) plays the operator or the other holder,
from a helper thread while ``run_command`` runs in the main thread (signal handlers need it).
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import EngineDB, alive, wait_for
from hypothesis import example, given
from hypothesis import strategies as st

from ringrift_coord import breakers, procs
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import ExitCode, StoreBusy, WaitTimeout
from ringrift_coord.launcher import (
    RunDenied,
    RunResult,
    TaskSlot,
    _command_text,
    _execvpe,
    acquire_slot,
    run_command,
)
from ringrift_coord.task_coordinator import Holder, TaskCoordinator, TaskType

ENGINES = ("sqlite", "postgres")

ONE_SLOT = """\
task_limits: {selfplay: {per_node: 1, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
run: {poll_interval: 0.5, kill_grace: 30, wake_poll: 0.05}
store: {lease_ttl: 30, busy_timeout: 5}
"""
# (wake_poll at its floor: the schedule of polls checked here is the one a waiter keeps
# when its doorbell cannot ring; a ring still wakes it at once)


def at(seconds: float | list[float]) -> object:
    """``pytest.approx`` with an absolute tolerance (a relative one is minutes at 1.8e9)."""
    return pytest.approx(seconds, abs=1e-6)


def waiters(coord: TaskCoordinator) -> list[int]:
    with coord.ctx.store.read() as tx:
        return [int(r["seq"]) for r in tx.query("SELECT seq FROM waiters ORDER BY seq")]


class Side:
    """Runs ``body`` in a helper thread; re-raises its failure in the test.

    If ``body`` fails, the job whose pid is in ``ready`` is SIGKILLed with its group, so that
    ``run_command`` in the main thread returns and the test fails instead of hanging.
    """

    def __init__(self, body: Callable[[], None], ready: Path) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                body()
            except BaseException as exc:  # handed to the test
                self.error = exc
                try:
                    wait_for(ready.exists, 30, "the job to start")
                    os.killpg(int(ready.read_text()), signal.SIGKILL)
                except (AssertionError, OSError, ValueError):
                    pass

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "helper thread still running"
        if self.error is not None:
            raise self.error


@contextmanager
def holder_slot(coord: TaskCoordinator) -> Iterator[str]:
    """The one selfplay slot on n1, held by this (live) process like a ``register``."""
    held = coord.acquire("selfplay", "n1", holder=Holder(pid=os.getpid()), source="register")
    assert held.allowed and held.task_id
    yield held.task_id


@pytest.fixture
def pair(engine_db: EngineDB) -> tuple[ManualClock, TaskCoordinator, TaskCoordinator]:
    """(clock, the launcher's coordinator, the other side's), one database, one clock."""
    clock = ManualClock()
    mine = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    return clock, mine, other


# --------------------------------------------------------------------------- the wait loop


def wait_for_selfplay(coord: TaskCoordinator, timeout: float, **kw: object) -> object:
    """``run --wait --timeout T``'s admission of a selfplay slot on n1 for this process."""
    return acquire_slot(
        coord,
        TaskType.SELFPLAY,
        "n1",
        holder=Holder(pid=os.getpid()),
        config_name=None,
        command="true",
        wait=True,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )


def test_wait_gives_up_after_exactly_its_timeout_of_clock_time(pair) -> None:
    clock, mine, other = pair
    seen: list[float] = []
    with holder_slot(other):
        start = clock.monotonic()
        with pytest.raises(WaitTimeout) as raised:
            wait_for_selfplay(mine, 2.2, on_wait=lambda decision, waited: seen.append(waited))
    assert raised.value.exit_code == ExitCode.TEMPFAIL
    assert "after 2.2 s" in raised.value.message and "per-node limit 1" in raised.value.message
    # polled every poll_interval (0.5 s) as the head of the line; the last wait is cut short
    # so that it gives up at the deadline, not one interval after it
    assert clock.slept == at([0.5, 0.5, 0.5, 0.5, 0.2])
    assert clock.monotonic() - start == at(2.2)
    assert seen == at([0.0, 0.5, 1.0, 1.5, 2.0, 2.2])
    assert waiters(other) == []  # it left the line


def test_a_wait_that_times_out_on_a_locked_store_says_it_gave_up_waiting(
    engine_db: EngineDB,
) -> None:
    """``--timeout`` passing while the store stays locked (another writer holds its lock
    throughout) ends the wait as a timeout says it, naming the lock, not as a bare "store
    busy" from whichever attempt came last."""
    clock = ManualClock()
    mine = TaskCoordinator(
        engine_db.context(ONE_SLOT.replace("busy_timeout: 5", "busy_timeout: 0.05"), clock)
    )
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    other.list_tasks()  # the store made before its lock is held
    with other.ctx.store.write(), pytest.raises(WaitTimeout) as raised:
        wait_for_selfplay(mine, 2.0)
    message = raised.value.message
    assert raised.value.exit_code == ExitCode.TEMPFAIL
    assert message.startswith("gave up waiting for a selfplay slot on n1 after 2 s: "), message
    assert "is still locked" in message and "nothing was decided" not in message, message
    assert clock.slept == at([0.5, 0.5, 0.5, 0.5])  # asked again on the clock, then gave up
    assert other.list_tasks() == [] and waiters(other) == []


def test_a_wait_on_a_locked_store_ends_at_its_timeout_not_a_busy_timeout_later(
    engine_db: EngineDB,
) -> None:
    """The store stays locked throughout (a writer stopped inside its transaction): an
    attempt begun a second before the deadline waits for the lock only that second, not
    the whole 5 s busy timeout, and the store's own patience is given back afterwards."""
    import time

    mine = TaskCoordinator(engine_db.context(ONE_SLOT))  # busy_timeout 5, the real clock
    other = TaskCoordinator(engine_db.context(ONE_SLOT))
    other.list_tasks()  # the store made before its lock is held
    with other.ctx.store.write():
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as raised:
            wait_for_selfplay(mine, 1.0)
        took = time.monotonic() - started
    assert raised.value.message.startswith("gave up waiting for a selfplay slot on n1 after")
    assert "still locked" in raised.value.message, raised.value.message
    assert took < 3.5, took  # (without the bound: the 5 s busy timeout at least)
    assert mine.ctx.store.busy_timeout == 5.0
    assert "at the deadline" in raised.value.message, raised.value.message
    assert "nothing was decided" not in raised.value.message, raised.value.message
    assert mine.list_tasks() == [] and waiters(other) == []


def test_a_store_locked_while_in_line_ends_the_wait_at_its_timeout_with_the_reason(
    engine_db: EngineDB,
) -> None:
    """In line behind a held slot, the store locks up (a writer stopped inside its
    transaction) before the deadline: the wait still ends at ``--timeout`` (its attempts and
    its leaving the line wait for the lock only until then), and says what it waited for
    (the limit), not the lock it met at the end."""
    import threading
    import time

    mine = TaskCoordinator(engine_db.context(ONE_SLOT))  # busy_timeout 5, the real clock
    other = TaskCoordinator(engine_db.context(ONE_SLOT))
    locker = TaskCoordinator(engine_db.context(ONE_SLOT))
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with locker.ctx.store.write():
            locked.set()
            release.wait(20)

    thread = threading.Thread(target=hold_the_lock)

    def lock_once(_decision: object, _waited: float) -> None:
        if not thread.is_alive() and not locked.is_set():
            thread.start()
            locked.wait(10)

    with holder_slot(other):
        started = time.monotonic()
        try:
            with pytest.raises(WaitTimeout) as raised:
                wait_for_selfplay(mine, 1.0, on_wait=lock_once)
            took = time.monotonic() - started
        finally:
            release.set()
            thread.join(20)
    assert locked.is_set()
    assert took < 3.5, took  # (without the bound: 5 s more to leave the line)
    message = raised.value.message
    assert "per-node limit 1" in message and "busy timeout" not in message, message
    assert mine.ctx.store.busy_timeout == 5.0


def test_a_brief_lock_at_the_deadline_still_lets_the_timed_out_waiter_leave_the_line(
    engine_db: EngineDB,
) -> None:
    """A writer's 250 ms turn around the deadline (ordinary contention): the waiter that
    gives up still leaves the line (it waits for the lock a moment past its deadline), so
    no row of it is left counting against those after it, this same process included."""
    import threading
    import time

    mine = TaskCoordinator(engine_db.context(ONE_SLOT))
    other = TaskCoordinator(engine_db.context(ONE_SLOT))
    locker = TaskCoordinator(engine_db.context(ONE_SLOT))
    deadline = time.monotonic() + 1.0

    def a_writers_turn() -> None:
        time.sleep(max(0.0, deadline - 0.05 - time.monotonic()))
        with locker.ctx.store.write():
            time.sleep(0.25)

    thread = threading.Thread(target=a_writers_turn)
    thread.start()
    try:
        with holder_slot(other) as task_id:
            with pytest.raises(WaitTimeout):
                wait_for_selfplay(mine, 1.0)
            other.unregister_task(task_id)
    finally:
        thread.join(20)
    assert waiters(other) == []
    admitted = wait_for_selfplay(mine, 2.0)
    assert admitted.allowed  # type: ignore[attr-defined]


def test_wait_with_zero_timeout_asks_once_and_never_sleeps(pair) -> None:
    clock, mine, other = pair
    with holder_slot(other), pytest.raises(WaitTimeout):
        wait_for_selfplay(mine, 0)
    assert clock.slept == [] and clock.monotonic() == 0.0
    assert waiters(other) == []


def test_without_wait_a_denial_is_run_denied(pair) -> None:
    clock, mine, other = pair
    with holder_slot(other), pytest.raises(RunDenied) as raised:
        run_command(mine, "selfplay", "n1", ["true"])
    assert raised.value.exit_code == ExitCode.TEMPFAIL
    assert clock.slept == [] and waiters(other) == []


def test_waiter_is_woken_by_the_release_and_gets_the_slot_at_once(pair) -> None:
    clock, mine, other = pair
    with holder_slot(other) as held:

        def release_at_3s(decision, waited: float) -> None:
            assert not decision.allowed and waited < 10, "the clock never reached 3.0"
            if waited == at(3.0):
                assert other.unregister_task(held) is not None  # rings its doorbell

        decision = acquire_slot(
            mine,
            TaskType.SELFPLAY,
            "n1",
            holder=Holder(pid=os.getpid(), wrapper_pid=os.getpid()),
            config_name=None,
            command="true",
            wait=True,
            timeout=None,
            on_wait=release_at_3s,
        )
    assert decision.allowed
    assert clock.monotonic() == at(3.0)  # released at 3.0: woken then, not at a poll
    assert clock.slept == at([0.5] * 6)
    (row,) = other.list_tasks()
    assert row["task_id"] == decision.task_id and row["wrapper_pid"] == os.getpid()
    assert waiters(other) == []  # admitted: its place in line is gone


def test_waiters_behind_the_head_poll_more_gently_and_never_jump_it(engine_db: EngineDB) -> None:
    clock = ManualClock()
    config = ONE_SLOT.replace("poll_interval: 0.5", "poll_interval: 0.1")
    mine = TaskCoordinator(engine_db.context(config, clock))
    other = TaskCoordinator(engine_db.context(config, clock))
    steps: list[tuple[float, int]] = []
    with holder_slot(other) as held:
        head = other.enqueue("selfplay", "n1")  # someone is already waiting, ahead of us

        def on_wait(decision, waited: float) -> None:
            steps.append((round(waited, 6), decision.queued))
            assert waited < 10, "the clock never reached 0.6 and 0.9"
            if waited == at(0.6) and len(steps) == 3:
                assert other.unregister_task(held) is not None  # the slot is free, but...
            if waited == at(0.9):
                other.leave_queue(head)  # ...it comes to us only once the head gives up

        decision = acquire_slot(
            mine,
            TaskType.SELFPLAY,
            "n1",
            holder=Holder(pid=os.getpid()),
            config_name=None,
            command="true",
            wait=True,
            timeout=None,
            on_wait=on_wait,
        )
    assert decision.allowed
    # denied at 0.9 although the slot was free since 0.6: the head of the line comes first
    # (the release rang us, the first doorbell in line, at 0.6: denied again at once)
    assert steps == [(0.0, 1), (0.3, 1), (0.6, 1), (0.6, 1), (0.9, 1)]
    # one ahead: it polls every min(0.5, poll_interval x (2 + 1)) = 0.3 s, not every 0.1 s
    assert clock.slept == at([0.3] * 4)
    assert clock.monotonic() == at(1.2)


@pytest.mark.parametrize("poll", [0.05, 0.1, 0.2])
def test_queue_poll_interval_grows_with_the_line(engine_db: EngineDB, poll: float) -> None:
    clock = ManualClock()
    config = ONE_SLOT.replace("poll_interval: 0.5", f"poll_interval: {poll}")
    mine = TaskCoordinator(engine_db.context(config, clock))
    other = TaskCoordinator(engine_db.context(config, clock))
    with holder_slot(other):
        for _ in range(2):
            other.enqueue("selfplay", "n1")
        with pytest.raises(WaitTimeout):
            acquire_slot(
                mine,
                TaskType.SELFPLAY,
                "n1",
                holder=Holder(pid=os.getpid()),
                config_name=None,
                command="true",
                wait=True,
                timeout=1.0,
            )
    # two ahead of it: min(0.5, poll x (2 + 2)); 0.2 hits the 0.5 s cap; its safety poll
    # (wake_poll, raised to poll_interval, x (1 + 2)) when that is longer
    expected = max(min(0.5, poll * 4), poll * 3)
    assert clock.slept[0] == at(expected)
    assert sum(clock.slept) == at(1.0)


# --------------------------------------------------------------------------- the running job


def job_waiting_for(tmp: Path) -> tuple[list[str], Path, Path]:
    """A job that says it runs (``ready`` holds its pid), then waits for ``finish``."""
    ready, finish = tmp / "ready", tmp / "finish"
    script = 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; while [ ! -e "$1" ]; do sleep 0.02; done'
    return ["sh", "-c", script, str(ready), str(finish)], ready, finish


def lease_of(coord: TaskCoordinator) -> float:
    with coord.ctx.store.read() as tx:
        row = tx.one("SELECT lease_expires FROM tasks")
    assert row is not None
    return float(row["lease_expires"])


def settle() -> None:
    """Give the launcher's loop real time to act (it looks every 10 ms under a manual clock)."""
    threading.Event().wait(0.3)


def test_lease_is_renewed_every_third_of_its_ttl_of_clock_time(pair, tmp_path: Path) -> None:
    clock, mine, other = pair
    argv, ready, finish = job_waiting_for(tmp_path)
    t0 = clock.time()
    leases: list[float] = []

    def operator() -> None:
        wait_for(ready.exists, 30, "the job to start")
        leases.append(lease_of(other))
        clock.advance(9.9)  # lease_ttl 30: renewal due every 10 s
        settle()
        leases.append(lease_of(other))
        clock.advance(0.1)
        wait_for(lambda: lease_of(other) == at(t0 + 10 + 30), 30, "the renewal")
        clock.advance(10)
        wait_for(lambda: lease_of(other) == at(t0 + 20 + 30), 30, "the 2nd renewal")
        finish.touch()

    side = Side(operator, ready)
    result = run_command(mine, "selfplay", "n1", argv, warn=pytest.fail)
    side.join()
    assert (result.exit_code, result.status) == (0, "ok")
    assert leases == at([t0 + 30, t0 + 30])  # not renewed before it was due
    assert result.duration == at(20.0)  # clock time, not wall time
    assert other.list_tasks() == []
    (row,) = other.history()
    assert row["status"] == "ok" and row["task_id"] == result.task_id


def test_a_failed_renewal_is_retried_soon_not_a_whole_period_later(
    engine_db: EngineDB, tmp_path: Path
) -> None:
    """A renewal that finds the store locked (busy, or a server gone) is tried again after
    RENEW_RETRY (5 s), not after another third of the lease: two misses in a row would
    otherwise meet the lease's expiry, and another host's reaper."""
    clock = ManualClock()
    mine = TaskCoordinator(
        engine_db.context(ONE_SLOT.replace("busy_timeout: 5", "busy_timeout: 0.05"), clock)
    )
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    argv, ready, finish = job_waiting_for(tmp_path)
    t0 = clock.time()
    warnings: list[str] = []
    leases: list[float] = []

    def operator() -> None:
        wait_for(ready.exists, 30, "the job to start")
        with other.ctx.store.write():  # the store is locked when the renewal falls due
            clock.advance(10)
            wait_for(lambda: any("could not renew" in w for w in warnings), 30, "a miss")
        clock.advance(4.9)
        settle()
        leases.append(lease_of(other))  # not tried again yet
        clock.advance(0.1)
        wait_for(lambda: lease_of(other) == at(t0 + 15 + 30), 30, "the retry")
        finish.touch()

    side = Side(operator, ready)
    result = run_command(mine, "selfplay", "n1", argv, warn=warnings.append)
    side.join()
    assert (result.exit_code, result.status) == (0, "ok")
    assert leases == at([t0 + 30])
    assert sum("could not renew" in w for w in warnings) == 1, warnings
    (row,) = other.history()
    assert row["status"] == "ok"


def test_job_is_stopped_at_the_first_renewal_after_its_slot_was_freed(pair, tmp_path: Path) -> None:
    clock, mine, other = pair
    argv, ready, _ = job_waiting_for(tmp_path)
    warnings: list[str] = []
    pids: list[int] = []

    def operator() -> None:
        wait_for(ready.exists, 30, "the job to start")
        pids.append(int(ready.read_text()))
        (task,) = other.list_tasks()
        assert other.unregister_task(task["task_id"], reason="operator") is not None
        settle()
        assert alive(pids[0]), "stopped before the wrapper could know (no renewal was due)"
        clock.advance(10)  # the renewal finds the slot gone

    side = Side(operator, ready)
    result = run_command(mine, "selfplay", "n1", argv, warn=warnings.append)
    side.join()
    assert result.exit_code == 128 + signal.SIGTERM
    assert result.status == "stopped" and "forwarded SIGTERM" in (result.reason or "")
    assert result.duration == at(10.0)  # stopped at the renewal the clock step made due
    assert any("was lost" in w for w in warnings), warnings
    assert not alive(pids[0])
    assert len(other.history()) == 1  # released once: by the operator, not again by run


def test_sigkill_comes_exactly_when_the_grace_runs_out_on_the_clock(pair, tmp_path: Path) -> None:
    clock, mine, other = pair
    ready, got = tmp_path / "ready", tmp_path / "got-term"
    script = (
        f'trap "echo term > {got}" TERM; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; '
        "while :; do sleep 0.02; done"
    )
    pids: list[int] = []

    def operator() -> None:
        wait_for(ready.exists, 30, "the job to start")
        pids.append(int(ready.read_text()))
        os.kill(os.getpid(), signal.SIGTERM)  # to the wrapper (this process): forwarded
        wait_for(got.exists, 30, "the job to see the forwarded SIGTERM")
        clock.advance(29.9)  # kill_grace 30
        settle()
        assert alive(pids[0]), "SIGKILL before the grace ran out"
        clock.advance(0.1)

    side = Side(operator, ready)
    result = run_command(mine, "selfplay", "n1", ["sh", "-c", script, str(ready)])
    side.join()
    assert result.exit_code == 128 + signal.SIGKILL
    assert result.status == "stopped"
    assert "forwarded SIGTERM" in (result.reason or "") and "30 s grace" in (result.reason or "")
    assert result.duration == at(30.0)
    assert not alive(pids[0])
    assert other.list_tasks() == [] and len(other.history()) == 1


def test_release_retries_a_busy_store_with_backoff_on_the_clock(
    engine_db: EngineDB, tmp_path: Path
) -> None:
    clock = ManualClock()
    busy = ONE_SLOT.replace("busy_timeout: 5", "busy_timeout: 0.05")
    mine = TaskCoordinator(engine_db.context(busy, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    argv, ready, finish = job_waiting_for(tmp_path)
    released = threading.Event()

    def locker() -> None:
        wait_for(ready.exists, 30, "the job to start")
        with other.ctx.store.write():  # hold the write lock while the job ends
            finish.touch()
            wait_for(lambda: len(clock.slept) >= 3, 30, "three release attempts")
        released.set()

    side = Side(locker, ready)
    warnings: list[str] = []
    result = run_command(mine, "selfplay", "n1", argv, warn=warnings.append)
    side.join()
    assert released.is_set()
    assert (result.exit_code, result.status) == (0, "ok")
    # 0.05 s, then doubling: each a clock step, none a real sleep
    assert clock.slept[:3] == at([0.05, 0.1, 0.2])
    assert not any("could not release" in w for w in warnings), warnings
    assert other.list_tasks() == []
    (row,) = other.history()
    assert row["status"] == "ok"


def _lock_once_admitted(
    other: TaskCoordinator, clock: ManualClock
) -> tuple[Callable[[], None], threading.Event]:
    """An ``on_admitted`` that has ``other`` hold the store's write lock (the one the wrapper
    needs to record its job's process group) until the wrapper has slept twice on the clock
    between tries; and the event set once the lock is let go."""
    locked, done = threading.Event(), threading.Event()

    def locker() -> None:
        with other.ctx.store.write():
            locked.set()
            wait_for(lambda: len(clock.slept) >= 2, 30, "two tries to record the holder")
        done.set()

    def admitted() -> None:
        threading.Thread(target=locker, daemon=True).start()
        assert locked.wait(30)

    return admitted, done


def test_a_busy_store_when_recording_the_holder_is_retried_not_a_failed_job(
    engine_db: EngineDB,
) -> None:
    """The slot is admitted, then the store stays locked past its busy timeout while the
    wrapper records the job's process group: it tries again on the clock (the slot is ours,
    its lease runs) and the job runs; before, the wrapper exited 75 and released its admitted
    slot as a failed "wrapper error" (seen in the soak as busy exits of run --wait)."""
    clock = ManualClock()
    busy = ONE_SLOT.replace("busy_timeout: 5", "busy_timeout: 0.05")
    mine = TaskCoordinator(engine_db.context(busy, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    admitted, done = _lock_once_admitted(other, clock)
    result = run_command(mine, "selfplay", "n1", ["true"], on_admitted=admitted)
    assert done.is_set()
    assert (result.exit_code, result.status) == (0, "ok")
    assert clock.slept[:2] == at([0.5, 0.5])
    (row,) = other.history()
    assert row["status"] == "ok"


def test_a_waiter_records_its_holder_through_a_store_busy_past_half_its_lease(
    engine_db: EngineDB,
) -> None:
    """``run --wait`` never exits 75 for a busy store: admitted, it keeps trying to record
    its job's process group however long the store stays locked (a one-shot run gives up
    at half the lease, 2 s here; this one is kept out for 4 s of the clock) and runs the job
    once it gets through (the update names its fencing token: a slot reaped meanwhile would
    not be recorded as its own)."""
    clock = ManualClock()
    short = ONE_SLOT.replace("lease_ttl: 30, busy_timeout: 5", "lease_ttl: 4, busy_timeout: 0.05")
    mine = TaskCoordinator(engine_db.context(short, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    locked, done = threading.Event(), threading.Event()

    def locker() -> None:
        with other.ctx.store.write():  # the lock set_holder needs, past half the lease
            locked.set()
            wait_for(lambda: len(clock.slept) >= 8, 60, "eight tries to record the holder")
        done.set()

    def admitted() -> None:
        threading.Thread(target=locker, daemon=True).start()
        assert locked.wait(30)

    result = run_command(mine, "selfplay", "n1", ["true"], wait=True, on_admitted=admitted)
    assert done.is_set()
    assert (result.exit_code, result.status) == (0, "ok")
    assert clock.slept[:8] == at([0.5] * 8)
    (row,) = other.history()
    assert row["status"] == "ok"


def _breaker_failures(coord: TaskCoordinator) -> int:
    with coord.ctx.store.read() as tx:
        return sum(len(b.failures) for b in breakers.load_all(tx))


def test_a_one_shot_run_that_gives_up_recording_its_holder_is_no_failed_job(
    engine_db: EngineDB,
) -> None:
    """A one-shot run whose store stays locked past half its lease while it records the
    job's process group gives up (StoreBusy, exit 75) without ever running the command: its
    slot is released as ``spawn_failed``, never as a ``failed`` job that feeds the node's
    breaker and backpressure (three such store stalls opened the breaker for 5 min)."""
    clock = ManualClock()
    short = ONE_SLOT.replace("lease_ttl: 30, busy_timeout: 5", "lease_ttl: 2, busy_timeout: 0.05")
    mine = TaskCoordinator(engine_db.context(short, clock))
    other = TaskCoordinator(engine_db.context(ONE_SLOT, clock))
    admitted, release = _lock_once_admitted(other, clock)
    with pytest.raises(StoreBusy):
        run_command(mine, "selfplay", "n1", ["true"], on_admitted=admitted)
    assert release.wait(30)
    (row,) = other.history()
    assert row["status"] == "spawn_failed", row
    assert _breaker_failures(other) == 0


def test_a_fork_or_pipe_that_fails_is_a_command_not_run_not_an_internal_error(
    pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process or descriptor left for the job (EAGAIN from fork, EMFILE from pipe): the
    command did not start. Exit 126 with one line, the slot released as ``spawn_failed``;
    before, the OSError escaped (exit 70, "internal error") and the slot was released as a
    ``failed`` job, so three of them opened the node's breaker."""
    clock, mine, other = pair
    warnings: list[str] = []

    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    result = run_command(mine, "selfplay", "n1", ["true"], warn=warnings.append)
    monkeypatch.undo()
    assert (result.exit_code, result.status) == (126, "spawn_failed")
    assert warnings == ["cannot run 'true': Resource temporarily unavailable"]
    (row,) = other.history()
    assert (row["status"], row["exit_code"]) == ("spawn_failed", 126)
    assert _breaker_failures(other) == 0
    assert other.list_tasks() == []


def test_no_descriptor_for_the_first_pipe_is_a_command_not_run_and_releases_the_slot(
    pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wrapper's own first pipe (its signal wake-up pipe, made right after admission)
    that fails with EMFILE: the command did not start. Exit 126 with one line and the slot
    released as ``spawn_failed``; before, the OSError escaped (exit 70, "internal error")
    and the admitted slot was left held until the reaper found its holder gone."""
    clock, mine, other = pair
    warnings: list[str] = []
    real_pipe2 = os.pipe2

    def no_pipe(flags: int) -> tuple[int, int]:
        if flags & os.O_NONBLOCK:  # (the wake-up pipe; the store's own files are not pipes)
            raise OSError(errno.EMFILE, "Too many open files")
        return real_pipe2(flags)

    monkeypatch.setattr(os, "pipe2", no_pipe)
    result = run_command(mine, "selfplay", "n1", ["true"], warn=warnings.append)
    monkeypatch.undo()
    assert (result.exit_code, result.status) == (126, "spawn_failed")
    assert warnings == ["cannot run 'true': Too many open files"]
    (row,) = other.history()
    assert (row["status"], row["exit_code"]) == ("spawn_failed", 126)
    assert _breaker_failures(other) == 0
    assert other.list_tasks() == []


def test_duration_is_measured_on_the_clock(pair) -> None:
    clock, mine, _ = pair
    result: RunResult = run_command(mine, "selfplay", "n1", ["sh", "-c", "exit 3"])
    assert (result.exit_code, result.status, result.reason) == (3, "failed", "exit code 3")
    assert result.duration == 0.0  # nothing moved the manual clock


@pytest.mark.parametrize("code", [0, 20])
def test_any_exit_after_a_forwarded_signal_is_a_stop(pair, tmp_path: Path, code: int) -> None:
    """rsync exits 20 when it is signalled, a careful job exits 0: after a forwarded signal
    either is the operator's stop, not a failure (breaker) nor a success (learned durations)."""
    clock, mine, other = pair
    ready = tmp_path / "ready"
    script = f'trap "exit {code}" TERM; echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; '
    script += "while :; do sleep 0.02; done"

    def operator() -> None:
        wait_for(ready.exists, 30, "the job to start")
        os.kill(os.getpid(), signal.SIGTERM)  # to the wrapper (this process): forwarded

    side = Side(operator, ready)
    result = run_command(mine, "training", "n1", ["sh", "-c", script, str(ready)])
    side.join()
    assert result.exit_code == code
    assert result.status == "stopped", (result.status, result.reason)
    assert result.reason == f"exit code {code} after forwarded SIGTERM"
    (ended,) = other.history()
    assert ended["status"] == "stopped"


# --------------------------------------------------------------------------- words and names
# ``run`` imports neither ``shlex`` (re) nor ``signal`` (enum): its own forms must say the same.


@given(st.lists(st.text(max_size=12), max_size=6))
@example(["a b", "it's", "", "-x", "ü", "$HOME", "n\udcff1", "a\nb"])
def test_the_recorded_command_quotes_each_word_as_shlex_does(argv: list[str]) -> None:
    expected = shlex.join(argv)[:1000].encode("utf-8", "backslashreplace").decode("utf-8")
    assert _command_text(argv) == expected


def test_signal_names_are_those_signal_gives_and_the_rest_are_named_too() -> None:
    for member in signal.Signals:
        assert procs.signal_name(int(member)) == member.name
    if hasattr(signal, "SIGRTMIN"):
        assert procs.signal_name(signal.SIGRTMIN + 6) == "SIGRTMIN+6"
    assert procs.signal_name(0) == "signal 0"
    assert procs.signal_name(200) == "signal 200"


def test_a_held_slot_keys_its_line_and_job_by_the_plain_type_name(pair) -> None:
    """The queue row is written under the parsed name; the doorbell (``queue_key``) and the
    job's RINGRIFT_TASK_TYPE must be the same name, or a ``CMA-ES`` waiter is never rung."""
    _, mine, _ = pair
    slot = TaskSlot(
        mine, "CMA-ES", "n1", holder=Holder(pid=os.getpid()), config_name=None, command="x"
    )
    assert slot.queue_key() == ("cmaes", "n1")
    assert slot.waiting_for() == "a cmaes slot on n1"


def _exec_outcome(fn: Callable[..., None], file: str, env: dict[str, str]) -> int:
    """What exec'ing ``file`` with ``fn`` in a child comes to: the program's exit status,
    or 100 + the errno of the OSError ``fn`` raised."""
    pid = os.fork()
    if pid == 0:
        try:
            fn(file, [file], env)
        except OSError as exc:
            os._exit(100 + (exc.errno or 0))
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_job_is_found_on_path_as_os_execvpe_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_execvpe`` (no ``import warnings`` in the child) searches PATH as ``os.execvpe``
    does: the first entry that runs, the first permission error kept over later errors,
    entries that are files or missing, an empty PATH or entry (the current directory), no
    PATH (the default one), a name with a slash."""
    dirs = {name: tmp_path / name for name in ("one", "two", "noexec", "empty", "cwd", "loop")}
    for directory in dirs.values():
        directory.mkdir()
    for name, code in (("one", 11), ("two", 22)):
        job = dirs[name] / "job"
        job.write_text(f"#!/bin/sh\nexit {code}\n")
        job.chmod(0o755)
    (dirs["noexec"] / "job").write_text("#!/bin/sh\nexit 33\n")
    (dirs["noexec"] / "job").chmod(0o644)
    (dirs["cwd"] / "job").write_text("#!/bin/sh\nexit 44\n")
    (dirs["cwd"] / "job").chmod(0o755)
    os.symlink("job", dirs["loop"] / "job")  # ELOOP
    monkeypatch.chdir(dirs["cwd"])
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    j = os.pathsep.join
    paths = {
        "first": j([str(dirs["one"]), str(dirs["two"])]),
        "second": j([str(dirs["empty"]), str(dirs["two"])]),
        "no x bit, then one": j([str(dirs["noexec"]), str(dirs["one"])]),
        "no x bit only": j([str(dirs["empty"]), str(dirs["noexec"])]),
        "no x bit, then nowhere": j([str(dirs["noexec"]), str(dirs["empty"])]),
        "nowhere": j([str(dirs["empty"]), str(tmp_path / "missing")]),
        "a file in PATH": j([str(a_file), str(dirs["two"])]),
        "a file in PATH, then nowhere": j([str(a_file / "sub"), str(dirs["empty"])]),
        "empty PATH": "",
        "an empty entry": j([str(dirs["empty"]), ""]),
        "no x bit, then a loop": j([str(dirs["noexec"]), str(dirs["loop"])]),
    }
    outcomes = []
    for label, path in paths.items():
        env = {"PATH": path}
        for file in ("job", str(dirs["one"] / "job"), "./job"):
            ours = _exec_outcome(_execvpe, file, env)
            assert ours == _exec_outcome(os.execvpe, file, env), (label, file)
            outcomes.append(ours)
    for file in ("job", "true"):  # no PATH: the default one
        ours = _exec_outcome(_execvpe, file, {})
        assert ours == _exec_outcome(os.execvpe, file, {}), file
        outcomes.append(ours)
    assert {11, 22, 44, 113, 102, 0} <= set(outcomes)  # the cases came to different ends
