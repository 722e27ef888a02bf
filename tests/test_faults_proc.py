"""Faults of processes, the clock and the filesystem, injected for real.

SIGKILL at random points of admission and release; a holder stopped (SIGSTOP) beyond its
lease; a holder's pid reused by a stranger; a writer stopped inside its transaction; the
store's clock stepped an hour forward and back around breakers, buckets, leases and the
optimizer; a hostile umask; a symlink planted at every path the tool writes. Each test says
what protects against its fault; the report of the branch that added them says how each one
was seen to fail with its protection removed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Coord, EngineDB, alive, wait_for

ENGINES = ("sqlite", "postgres")

LIMITS = """\
task_limits: {training: {per_node: 2, cluster: 3}}
rate_limits: {training: {per_minute: 600, burst: 40}}
durations: {training: 600}
"""
OPEN_LIMITS = """\
task_limits: {training: {per_node: 4, cluster: 4}}
rate_limits: {training: {per_minute: null}}
"""


def coord_on(db: EngineDB, config: str = LIMITS) -> Coord:
    """The CLI on ``db`` (its state directory; its PostgreSQL database)."""
    coord = Coord(db.tmp)
    assert coord.state_dir == Path(db.state_dir)
    if db.engine == "postgres":
        coord.env["RINGRIFT_COORD_DB"] = db.url
        coord.engine = "postgres"
    coord.write_config(config)
    return coord


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A long-lived process to name as a slot's holder (``register --pid``)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def rows(db: EngineDB, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    store = db.open()
    try:
        with store.read() as tx:
            return tx.query(sql, args)
    finally:
        store.close()


# =========================================================================== 1. SIGKILL


def check_whole(db: EngineDB, per_node: int = 2, cluster: int = 3, burst: float = 40) -> None:
    """What a SIGKILL anywhere must never leave: a slot without its admission, an admission
    without its slot or its history, a history row twice, a count above a limit, a bucket
    below empty, a counter below zero."""
    running = rows(db, "SELECT task_id, node, lease_token FROM tasks")
    per: dict[str, int] = {}
    for r in running:
        per[r["node"]] = per.get(r["node"], 0) + 1
    assert all(n <= per_node for n in per.values()) and len(running) <= cluster, running
    ended = rows(db, "SELECT task_id, COUNT(*) AS n FROM task_history GROUP BY task_id")
    assert all(r["n"] == 1 for r in ended), ended
    ended_ids = {r["task_id"] for r in ended}
    running_ids = {r["task_id"] for r in running}
    assert not running_ids & ended_ids
    admitted = rows(
        db, "SELECT id, task_id FROM decisions WHERE allowed = 1 AND task_id IS NOT NULL"
    )
    by_token = {r["id"]: r["task_id"] for r in admitted}
    for r in running:  # every slot was admitted, by the decision its token names
        assert by_token.get(r["lease_token"]) == r["task_id"], r
    for r in admitted:  # every admission holds its slot or has ended it, exactly once
        assert (r["task_id"] in running_ids) != (r["task_id"] in ended_ids), r
    for r in rows(db, "SELECT tokens FROM rate_buckets"):
        assert -1e-9 <= r["tokens"] <= burst, r
    for r in rows(db, "SELECT family, value FROM counters"):
        assert r["value"] >= 0, r
    if db.engine == "sqlite":
        conn = sqlite3.connect(db.url)
        try:
            assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            conn.close()


def _usual_seconds(coord: Coord, argv: list[str]) -> float:
    started = time.monotonic()
    done = coord(*argv)
    assert done.returncode in (0, 1), done.stderr
    return time.monotonic() - started


WAL_WRITE_LOCK = 120  # the byte of the -shm file SQLite's WAL writer locks (fcntl)


def holds_write_lock(pid: int, shm: Path) -> bool:
    """Whether ``pid`` holds the SQLite write lock of the database whose ``-shm`` is ``shm``
    (``/proc/locks``: a POSIX WRITE lock on that file's byte 120): it is inside a write
    transaction."""
    try:
        ino = os.stat(shm).st_ino
        with open("/proc/locks") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if len(f) >= 8 and f[1] == "POSIX" and f[3] == "WRITE" and f[4] == str(pid):
            if f[5].rsplit(":", 1)[-1] == str(ino) and f[6] == str(WAL_WRITE_LOCK):
                return True
    return False


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def answers(argv: list[str]) -> tuple[int, ...]:
    """The exit codes of a command that ran to its end: allowed, or denied (1; ``run``
    without ``--wait``: 75, no slot granted)."""
    return (0, 75) if argv[0] == "run" else (0, 1)


def kill_inside_transaction(coord: Coord, argv: list[str], shm: Path, rng: random.Random) -> bool:
    """Start ``argv``, freeze it (SIGSTOP) at random moments until it is caught holding the
    write lock, and SIGKILL it there: inside its write transaction. False when it finished
    before it was caught."""
    proc = coord.popen(*argv)
    try:
        while proc.poll() is None:
            # freeze it at a random moment and look: a frozen process's locks stay put
            time.sleep(rng.uniform(0.0, 0.0005))
            try:
                os.kill(proc.pid, signal.SIGSTOP)
            except ProcessLookupError:
                break
            while _state(proc.pid) not in ("T", "Z", None):
                pass  # a moment: the signal is on its way
            if holds_write_lock(proc.pid, shm):  # caught inside a write transaction
                proc.kill()
                break
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        _, err = proc.communicate(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode in answers(argv), (argv, proc.returncode, err)
        return False
    return True


def kill_at_random(db: EngineDB, iterations: int, seed: int, holder: int) -> None:
    """``iterations`` commands of admission and release, each SIGKILLed after a random delay
    in [0, its usual duration], six at a time (on SQLite, every other batch is one command
    killed inside its write transaction, seen holding the write lock in /proc/locks); the
    store checked whole after each batch, and the next admission never stuck behind what a
    killed process left."""
    coord = coord_on(db)
    rng = random.Random(seed)
    nodes = ("n1", "n2")
    usual = {
        "can-spawn": _usual_seconds(coord, ["can-spawn", "training", "--node", "n1"]),
        "register": 0.0,
        "unregister": 0.0,
        "run": _usual_seconds(coord, ["run", "training", "--node", "n1", "--", "true"]),
    }
    done = coord("register", "training", "--node", "n1", "--pid", str(holder), "-q")
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    assert coord("unregister", done.stdout.strip()).returncode == 0
    usual["register"] = usual["unregister"] = time.monotonic() - started
    left = iterations
    shm = Path(db.url + "-shm")
    inside = turn = 0
    while left:
        held = [r["task_id"] for r in rows(db, "SELECT task_id FROM tasks")]
        turn += 1
        if db.engine == "sqlite" and turn % 2:
            # one that takes a slot where there is room, else one that frees one: the
            # transactions that write the most
            on = [r["node"] for r in rows(db, "SELECT node FROM tasks")]
            room = [n for n in nodes if on.count(n) < 2] if len(on) < 3 else []
            if room and rng.random() < 0.7:
                node = rng.choice(room)
                argv = rng.choice(
                    (
                        ["register", "training", "--node", node, "--pid", str(holder), "-q"],
                        ["run", "training", "--node", node, "--", "sleep", "0.3"],
                    )
                )
            else:
                argv = ["unregister", held[0]] if held else ["can-spawn", "training"]
            inside += kill_inside_transaction(coord, argv, shm, rng)
            left -= 1
            check_whole(db)
            continue
        batch = []
        for _ in range(min(6, left)):
            kind = rng.choice(("can-spawn", "register", "unregister", "run"))
            node = rng.choice(nodes)
            if kind == "unregister" and held:
                argv = ["unregister", held.pop(rng.randrange(len(held)))]
            elif kind == "run":
                argv = ["run", "training", "--node", node, "--", "sleep", "0.3"]
            elif kind in ("register", "unregister"):
                kind = "register"
                argv = ["register", "training", "--node", node, "--pid", str(holder), "-q"]
            else:
                argv = ["can-spawn", "training", "--node", node]
            batch.append((coord.popen(*argv), rng.uniform(0.0, usual[kind]), argv))
        left -= len(batch)
        begun = time.monotonic()
        for proc, delay, _ in sorted(batch, key=lambda b: b[1]):
            pause = begun + delay - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # a real process's real progress: the point of the test
            proc.kill()
        for proc, _, argv in batch:
            out, err = proc.communicate(timeout=60)
            if proc.returncode != -signal.SIGKILL:  # it finished first: a normal answer
                assert proc.returncode in answers(argv), (argv, proc.returncode, err)
                assert "Traceback" not in err, err
        check_whole(db)
        nxt = coord("can-spawn", "training", "--node", "n3", "--set", "store.busy_timeout=5")
        assert nxt.returncode in (0, 1), nxt.stderr  # never busy (75) behind a dead writer
    # the end: every holder gone, every slot reaped or released, nothing left half-made
    os.kill(holder, signal.SIGKILL)
    wait_for(lambda: not alive(holder), 10, "the holder to die")

    def all_reaped() -> bool:
        assert coord("tasks", "reap").returncode == 0
        return not rows(db, "SELECT task_id FROM tasks")

    wait_for(all_reaped, 30, "every slot to be released or reaped")
    check_whole(db)
    if db.engine == "sqlite":  # the in-transaction kills did happen
        assert inside >= iterations // 10, inside


def test_sigkill_at_random_points_of_admission_and_release(
    engine_db: EngineDB, sleeper: subprocess.Popen[bytes]
) -> None:
    """Every write is one transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction
    under the advisory lock): a process killed anywhere leaves all of it or none of it, and
    its lock dies with it."""
    seed = int(os.environ.get("RINGRIFT_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")  # shown when it fails: RINGRIFT_FAULT_SEED=... reruns it
    kill_at_random(engine_db, 30, seed, sleeper.pid)


@pytest.mark.stress
def test_sigkill_at_random_points_many_times_over(
    engine_db: EngineDB, sleeper: subprocess.Popen[bytes]
) -> None:
    seed = int(os.environ.get("RINGRIFT_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    kill_at_random(engine_db, 200, seed, sleeper.pid)


# =========================================================================== 2. SIGSTOP


def _lease_expired(db: EngineDB, task_id: str) -> bool:
    found = rows(db, "SELECT lease_expires FROM tasks WHERE task_id = ?", (task_id,))
    store = db.open()
    try:
        with store.read() as tx:
            now = tx.now()
    finally:
        store.close()
    return bool(found) and found[0]["lease_expires"] < now


def test_a_holder_stopped_beyond_its_lease(engine_db: EngineDB) -> None:
    """A ``run`` wrapper and its job stopped (SIGSTOP) past ``store.lease_ttl``: on its own
    host the live process keeps the slot (and its lease is refreshed); another host reaps it
    once the lease has expired; resumed (SIGCONT), the wrapper's renewal fails, it says the
    lease was lost and stops its job: the slot is never held twice for long."""
    coord = coord_on(
        engine_db,
        "task_limits: {training: {per_node: 1, cluster: 1}}\nstore: {lease_ttl: 2}\n"
        "rate_limits: {training: {per_minute: null}}\n",
    )
    wrapper = coord.popen("run", "training", "--node", "n1", "--", "sleep", "120")
    row = wait_for(lambda: rows(engine_db, "SELECT * FROM tasks"), 30, "the slot")
    task_id, pgid = row[0]["task_id"], row[0]["pgid"]  # type: ignore[index]
    wait_for(lambda: rows(engine_db, "SELECT pgid FROM tasks")[0]["pgid"], 30, "the job's group")
    pgid = rows(engine_db, "SELECT pgid FROM tasks")[0]["pgid"]
    try:
        os.kill(wrapper.pid, signal.SIGSTOP)
        os.killpg(pgid, signal.SIGSTOP)
        wait_for(lambda: _lease_expired(engine_db, task_id), 30, "the lease to expire")
        # this host: the process decides; the lease is refreshed for the other hosts
        here = coord("can-spawn", "training", "--node", "n1")
        assert here.returncode == 1 and "per-node limit" in here.stderr + here.stdout, here
        assert not _lease_expired(engine_db, task_id)
        wait_for(lambda: _lease_expired(engine_db, task_id), 30, "the lease to expire again")
        # another host judges by the lease: reaped, and its own admission takes the slot
        elsewhere = {"RINGRIFT_COORD_HOST": "other-host"}
        taken = coord("register", "training", "--node", "n2", "-q", env=elsewhere)
        assert taken.returncode == 0, taken.stderr
        reaped = rows(engine_db, "SELECT status FROM task_history WHERE task_id = ?", (task_id,))
        assert [r["status"] for r in reaped] == ["reaped"]
    finally:
        os.killpg(pgid, signal.SIGCONT)
        os.kill(wrapper.pid, signal.SIGCONT)
    _, err = wrapper.communicate(timeout=60)
    assert f"lease of {task_id} was lost" in err, err
    assert "Traceback" not in err
    assert wrapper.returncode != 0
    wait_for(lambda: not any(alive(p) for p in _members(pgid)), 30, "the job to stop")
    held = rows(engine_db, "SELECT task_id, node FROM tasks")
    assert [r["node"] for r in held] == ["n2"], held  # the other host's slot, and only it
    assert [r["status"] for r in rows(engine_db, "SELECT status FROM task_history")] == [
        "reaped"
    ]  # the wrapper's release found its slot gone: nothing ended twice


def _members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2 :].split()
            if fields[0] != b"Z" and int(fields[2]) == pgid:
                found.append(int(entry))
    return found


# =========================================================================== 3. reused pid


def test_a_reused_pid_is_a_dead_holder(
    engine_db: EngineDB, sleeper: subprocess.Popen[bytes]
) -> None:
    """A holder is a pid and its start time: a live stranger with the holder's pid (another
    start time) is not the holder, whether it stands as the registered pid, the wrapper or
    the job's process group; the reaper frees those slots and keeps the true one."""
    coord = coord_on(engine_db, OPEN_LIMITS)
    ids = []
    for _ in range(4):
        done = coord("register", "training", "--node", "n1", "--pid", str(sleeper.pid), "-q")
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    true_start = rows(engine_db, "SELECT pid_start FROM tasks")[0]["pid_start"]
    assert true_start
    store = engine_db.open()
    with store.write() as tx:  # the stranger: same pid, another start time
        tx.execute("UPDATE tasks SET pid_start = ? WHERE task_id = ?", (true_start - 7, ids[0]))
        tx.execute(
            "UPDATE tasks SET pid = NULL, pid_start = NULL, wrapper_pid = ?, wrapper_start = ?"
            " WHERE task_id = ?",
            (sleeper.pid, true_start - 7, ids[1]),
        )
        tx.execute(
            "UPDATE tasks SET pid = ?, pid_start = ?, pgid = ? WHERE task_id = ?",
            (sleeper.pid, true_start - 7, sleeper.pid, ids[2]),
        )
    store.close()
    reaped = coord("--json", "tasks", "reap")
    assert reaped.returncode == 0, reaped.stderr
    assert sorted(r["task_id"] for r in json.loads(reaped.stdout)["reaped"]) == sorted(ids[:3])
    assert [r["task_id"] for r in rows(engine_db, "SELECT task_id FROM tasks")] == [ids[3]]
    reasons = rows(engine_db, "SELECT reason FROM task_history")
    assert {r["reason"] for r in reasons} == {"holder process gone"}


# =========================================================================== 4. stopped writer

STOPPED_SQLITE = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
conn.execute("COMMIT")
"""

STOPPED_PG = """
import os, signal, sys
import psycopg
from ringrift_coord.store.postgres import ADMISSION_LOCK
conn = psycopg.connect(sys.argv[1])
conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
conn.commit()
"""


def test_a_writer_stopped_inside_its_transaction(engine_db: EngineDB) -> None:
    """A process stopped while it holds the admission write lock (SQLite: inside ``BEGIN
    IMMEDIATE``; PostgreSQL: holding the admission advisory lock): every admission exits 75
    after the busy timeout with one line, nothing decided, until it resumes; then they
    succeed."""
    coord = coord_on(engine_db, OPEN_LIMITS)
    assert coord("can-spawn", "training").returncode == 0  # the store exists
    script = STOPPED_SQLITE if engine_db.engine == "sqlite" else STOPPED_PG
    holder = subprocess.Popen(
        [sys.executable, "-c", script, engine_db.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        wait_for(lambda: _state(holder.pid) == "T", 10, "the writer to stop")
        before = rows(engine_db, "SELECT COUNT(*) AS n FROM decisions")[0]["n"]
        quick = ("--set", "store.busy_timeout=0.5")
        for argv in (
            ("can-spawn", "training"),
            ("register", "training", "-q"),
            ("run", "training", "--", "true"),
        ):
            busy = coord(*quick, *argv)
            assert busy.returncode == 75, (argv, busy.returncode, busy.stderr)
            assert busy.stderr.count("\n") == 1 and "Traceback" not in busy.stderr, busy.stderr
            assert "still locked" in busy.stderr and "nothing was decided" in busy.stderr
            if engine_db.engine == "sqlite":  # the lock table names the holder and the cure
                assert f"held now by pid {holder.pid} (" in busy.stderr, busy.stderr
                assert f"stopped: resume it (kill -CONT {holder.pid})" in busy.stderr
        assert rows(engine_db, "SELECT COUNT(*) AS n FROM decisions")[0]["n"] == before
        assert not rows(engine_db, "SELECT task_id FROM tasks")
        # SQLite (this host's own store): the operator's emergency halt still takes effect,
        # by its halt file alone; PostgreSQL (every host's): nothing decided, no file here
        # that an unhalt on another host would not lift
        halted = coord(*quick, "halt", "--reason", "stuck writer")
        assert halted.returncode == 75, halted.stderr
        assert halted.stderr.count("\n") == 1 and "Traceback" not in halted.stderr
        assert not rows(engine_db, "SELECT scope FROM halts")
        check = coord("halt", "--check")
        if engine_db.engine == "sqlite":
            assert "halted by" in halted.stderr and "alone (no halt row" in halted.stderr
            assert "nothing was decided" not in halted.stderr
            assert check.returncode == 1 and "HALTED this host by" in check.stdout
            # an unhalt while the store is still locked lifts nothing, and says how the
            # file that halt wrote alone can be lifted now
            stuck = coord(*quick, "unhalt")
            assert stuck.returncode == 75 and stuck.stderr.count("\n") == 1, stuck.stderr
            assert "this host stays halted by" in stuck.stderr, stuck.stderr
            assert "remove that file by hand" in stuck.stderr, stuck.stderr
            assert (coord.state_dir / "EMERGENCY_HALT").exists()
        else:
            assert "nothing was decided" in halted.stderr, halted.stderr
            assert check.returncode == 0 and not (coord.state_dir / "EMERGENCY_HALT").exists()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait(timeout=30)
    assert holder.returncode == 0
    if engine_db.engine == "sqlite":
        denied = coord("register", "training", "-q")
        assert denied.returncode == 1 and "stuck writer" in denied.stderr, denied.stderr
        assert coord("unhalt").returncode == 0
    assert coord("register", "training", "-q").returncode == 0
    assert coord("run", "training", "--", "true").returncode == 0


# =========================================================================== 5. clock jumps

HOUR = 3600.0
CLOCK_LIMITS = """\
task_limits: {training: {per_node: 1, cluster: 1}}
rate_limits: {training: {per_minute: null}, sync: {per_minute: 60, burst: 3}}
durations: {training: 14400}
circuit_breaker: {failure_threshold: 1, recovery_timeout: 60}
store: {lease_ttl: 120}
"""


def _clocked(db: EngineDB) -> tuple[Any, Any]:
    from ringrift_coord.clock import ManualClock
    from ringrift_coord.task_coordinator import TaskCoordinator

    clock = ManualClock()
    return TaskCoordinator(db.context(CLOCK_LIMITS, clock)), clock


def _waits(decision: Any) -> dict[str, float]:
    return {r.rule: r.retry_after for r in decision.reasons}


def test_a_clock_jump_never_stretches_a_breaker_or_a_limit_wait(engine_db: EngineDB) -> None:
    """The reported case: a breaker reopened (and a trial started) while the store's clock
    was an hour ahead, then the clock came back: the breaker's wait stays within its
    recovery timeout and a limit's within the running task's expected duration (it was
    "retry in 18000 s": the trial counted as started an hour in the future)."""
    from ringrift_coord.task_coordinator import Holder

    coord, clock = _clocked(engine_db)
    me = Holder(pid=os.getpid())
    first = coord.acquire("training", "n1", holder=me)
    coord.unregister_task(first.task_id, token=first.lease_token, exit_code=1, status="failed")
    assert _waits(coord.check("training", "n1")) == {"breaker": 60.0}
    clock.advance(HOUR)  # an hour ahead: the breaker is half-open, the trial runs
    trial = coord.acquire("training", "n1", holder=me)
    assert trial.allowed
    clock.advance(-HOUR)  # and back
    waits = _waits(coord.check("training", "n1"))
    assert waits["node_limit"] <= 14400 and waits["cluster_limit"] <= 14400, waits
    clock.advance(HOUR)
    coord.unregister_task(trial.task_id, token=trial.lease_token, exit_code=1, status="failed")
    assert _waits(coord.check("training", "n1")) == {"breaker": 60.0}  # reopened ahead
    clock.advance(-HOUR)
    assert 0 < _waits(coord.check("training", "n1"))["breaker"] <= 60.0
    clock.advance(60)
    assert coord.check("training", "n1").allowed  # half-open after its own period


def test_a_clock_jump_never_grants_a_burst_nor_sticks_a_bucket(engine_db: EngineDB) -> None:
    """Forward: the bucket refills to its capacity, never beyond (3 admissions, not the 180
    an hour at 60/min would be). Back: it refills from the new now, one token a second."""
    from ringrift_coord.task_coordinator import Holder

    coord, clock = _clocked(engine_db)
    me = Holder(pid=os.getpid())

    def burst() -> int:
        taken = 0
        while coord.acquire("sync", "n1", holder=me).allowed:
            taken += 1
            assert taken <= 3
        return taken

    assert burst() == 3
    clock.advance(HOUR)
    assert burst() == 3
    denied = coord.check("sync", "n1")
    assert 0 < _waits(denied)["rate"] <= 1.0  # one token's refill, the rule's own period
    clock.advance(-HOUR)
    assert 0 < _waits(coord.check("sync", "n1"))["rate"] <= 1.0
    clock.advance(1.0)
    assert burst() == 1


def test_a_clock_jump_and_leases(engine_db: EngineDB, sleeper: subprocess.Popen[bytes]) -> None:
    """Leases are the store's clock's: a jump forward of J seconds expires another host's
    lease up to J early (that host's wrapper finds out at its next renewal and stops its
    job); this host's live holders keep their slots whatever the clock says; a jump back
    delays another host's dead lease by at most the size of the step."""
    from ringrift_coord.task_coordinator import Holder

    coord, clock = _clocked(engine_db)
    here = coord.acquire("training", "n1", holder=Holder(pid=sleeper.pid), source="run")
    assert here.allowed
    clock.advance(HOUR)
    assert coord.reap() == [] and len(coord.list_tasks()) == 1  # a live local holder stays
    assert coord.renew_lease(here.task_id, here.lease_token)
    store = engine_db.open()
    with store.write() as tx:  # the same slot, as another host sees it
        tx.execute("UPDATE tasks SET host = 'other-host'")
    lease_end = coord.list_tasks()[0]["lease_expires"]
    clock.advance(HOUR)  # forward past the lease: the other host's slot is reaped
    assert [r["task_id"] for r in coord.reap()] == [here.task_id]
    assert not coord.renew_lease(here.task_id, here.lease_token)  # its wrapper notices
    back = coord.acquire("training", "n1", holder=Holder(pid=sleeper.pid), source="run")
    with store.write() as tx:
        tx.execute("UPDATE tasks SET host = 'other-host'")
    clock.advance(-HOUR)  # back an hour: the lease runs an hour longer, no more
    assert coord.reap() == []
    clock.advance(HOUR + 120 + 1)
    assert [r["task_id"] for r in coord.reap()] == [back.task_id]
    assert lease_end
    store.close()


def test_a_clock_jump_and_the_optimizer_target(engine_db: EngineDB) -> None:
    """The optimizer's per-node target, stamped while the clock was ahead: after the clock
    comes back its retry-after stays within one optimizer interval (the target's age counts
    as 0, never negative); an hour ahead of it, the target has lapsed (fail open)."""
    from ringrift_coord.optimizer import state as optimizer_state
    from ringrift_coord.task_coordinator import Holder

    coord, clock = _clocked(engine_db)
    settings = coord.ctx.settings
    interval = float(settings.get("optimizer.interval"))
    clock.advance(30)
    store = engine_db.open(clock)
    with store.write() as tx:
        tx.execute(
            "INSERT INTO selfplay_targets (node, target, cap, at) VALUES ('n1', 1, NULL, ?)",
            (tx.now(),),
        )
        optimizer_state.set_rate(
            tx, settings, rate=100.0, now=tx.now(), source="adjust", action="none",
            previous_rate=None, retarget=False,
        )  # fmt: skip
    store.close()
    assert coord.acquire("selfplay", "n1", holder=Holder(pid=os.getpid())).allowed
    clock.advance(-30)  # back: the target was stamped 30 s in the future
    wait = _waits(coord.check("selfplay", "n1"))["optimizer"]
    assert 0 < wait <= interval, wait
    clock.advance(HOUR)
    assert "optimizer" not in _waits(coord.check("selfplay", "n1"))


# =========================================================================== 6. umask

HOOKED = """\
task_limits: {training: {per_node: 4, cluster: 4}}
rate_limits: {training: {per_minute: null}}
events: {hooks: {fails: {on: ["*"], command: [/bin/false], timeout: 5}}}
"""


READ_STDIN = "import sys; sys.stdin.read()"  # a job that runs until its stdin closes


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _run_everything(coord: Coord, umask: int, *extra: str) -> dict[str, int]:
    """Every command that writes a file, under ``umask``; the modes of what it made."""

    def call(*argv: str) -> None:
        done = subprocess.run(
            coord.argv(*extra, *argv), env=coord.env, capture_output=True, text=True, umask=umask
        )
        assert done.returncode == 0, (argv, done.stderr)

    job = subprocess.Popen(
        coord.argv(
            *extra, "run", "training", "--", sys.executable, "-c", "import sys; sys.stdin.read()"
        ),
        env=coord.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        umask=umask,
    )
    assert job.stdin is not None
    wait_for(lambda: (coord.state_dir / "tasks.db").exists() or coord.engine != "sqlite", 30, "db")
    listed = ("tasks", "list", "--format", "tsv", "--no-header")
    wait_for(lambda: coord(*extra, *listed).stdout, 30, "the job")
    modes = {p.name: _mode(p) for p in coord.state_dir.iterdir()}  # -wal, -shm while open
    job.stdin.close()
    assert job.wait(timeout=60) == 0
    call("halt", "--reason", "umask")  # the halt file, and a HALT event for the hook
    textfile = coord.tmp / "prom" / "ringrift.prom"
    textfile.parent.mkdir(exist_ok=True)
    call("metrics", "--textfile", str(textfile))
    wait_for((coord.state_dir / "hooks.log").exists, 30, "the failed hook's log line")
    modes.update({p.name: _mode(p) for p in coord.state_dir.iterdir()})
    modes["textfile"] = _mode(textfile)
    modes["state dir"] = _mode(coord.state_dir)
    return modes


@pytest.mark.parametrize("umask", [0o000, 0o077], ids=["umask000", "umask077"])
def test_a_hostile_umask_changes_no_mode(engine_db: EngineDB, umask: int) -> None:
    """Every file made with the mode the tool means, whatever the umask: state directory
    0700; database, -wal, -shm, halt file, hooks.log, settings cache 0600; the metrics
    textfile 0644 (node_exporter reads it). Nothing world-writable under umask 000."""
    coord = coord_on(engine_db, HOOKED)
    os.chmod(coord.config, 0o600)
    os.rmdir(coord.state_dir)  # made by the command, under the umask
    modes = _run_everything(coord, umask)
    expected = {"EMERGENCY_HALT", "hooks.log", "config-cache.json"}
    if engine_db.engine == "sqlite":
        expected |= {"tasks.db", "tasks.db-wal", "tasks.db-shm"}
    assert expected <= set(modes), modes
    assert modes.pop("state dir") == 0o700 and modes.pop("textfile") == 0o644
    assert set(modes.values()) == {0o600}, modes


def test_umask_077_keeps_a_group_shared_store_usable(engine_db: EngineDB) -> None:
    """A store shared by a group (setgid 2770 directory, ``store.shared_group``): under
    umask 077 its files still get 0660 and the group, so the group's other users can use
    them."""
    coord = coord_on(engine_db, HOOKED)
    os.chmod(coord.config, 0o600)
    gid = os.getegid()
    os.chmod(coord.state_dir, 0o2770)
    modes = _run_everything(coord, 0o077, "--set", f"store.shared_group={gid}")
    expected = {"EMERGENCY_HALT", "hooks.log"}
    if engine_db.engine == "sqlite":
        expected |= {"tasks.db", "tasks.db-wal", "tasks.db-shm"}
    assert expected <= set(modes), modes
    assert modes.pop("state dir") == 0o2770 and modes.pop("textfile") == 0o644
    modes.pop("config-cache.json", None)  # private to each user: not in a shared store
    assert set(modes.values()) == {0o660}, modes
    for path in coord.state_dir.iterdir():  # (-wal and -shm go with the last connection)
        assert path.stat().st_gid == gid, path


# =========================================================================== 7. symlinks


def _victim(tmp: Path) -> tuple[Path, bytes]:
    victim = tmp / "victim.txt"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o600)
    return victim, victim.read_bytes()


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize("name", ["tasks.db", "tasks.db-wal", "tasks.db-shm"])
def test_a_symlink_planted_at_a_store_file_is_refused(engine_db: EngineDB, name: str) -> None:
    """The database and its -wal and -shm: a symlink in their place is refused in one line
    (exit 3), and the file it points at is never opened for writing."""
    if engine_db.engine != "sqlite":
        pytest.skip("the SQLite store's files")
    coord = coord_on(engine_db, OPEN_LIMITS)
    assert coord("can-spawn", "training").returncode == 0
    victim, before = _victim(coord.tmp)
    path = coord.state_dir / name
    if path.exists():
        path.unlink()
    if name == "tasks.db":
        for side in ("-wal", "-shm"):
            Path(str(path) + side).unlink(missing_ok=True)
    path.symlink_to(victim)
    for argv in (("can-spawn", "training"), ("register", "training"), ("halt", "--reason", "x")):
        message = one_line(coord(*argv), 3)
        assert str(path) in message and ("symlink" in message or "regular file" in message)
    assert victim.read_bytes() == before and path.is_symlink()


def test_a_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    coord = Coord(tmp_path)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    coord.state_dir.symlink_to(real)
    message = one_line(coord("can-spawn", "training"), 3)
    assert "is a symlink; refusing it" in message
    assert list(real.iterdir()) == []


def test_symlinks_planted_at_the_files_the_tool_replaces(engine_db: EngineDB) -> None:
    """The halt file, the settings cache, hooks.log and its rotation, the metrics textfile:
    a symlink in their place is never followed. The halt file is refused when read (exit 3)
    and replaced by ``halt`` (a rename); the cache and the textfile are replaced; the log is
    left alone (nothing logged); what they point at is never written."""
    coord = coord_on(engine_db, HOOKED)
    os.chmod(coord.config, 0o600)
    assert coord("can-spawn", "training").returncode == 0
    victim, before = _victim(coord.tmp)
    state = coord.state_dir
    for name in ("EMERGENCY_HALT", "config-cache.json", "hooks.log"):
        (state / name).unlink(missing_ok=True)
        (state / name).symlink_to(victim)
    textfile = coord.tmp / "prom" / "ringrift.prom"
    textfile.parent.mkdir()
    textfile.symlink_to(victim)
    refused = one_line(coord("can-spawn", "training"), 3)
    assert "EMERGENCY_HALT" in refused and "symlink" in refused
    assert coord("halt", "--reason", "over the link").returncode == 0  # fires the hook too
    assert not (state / "EMERGENCY_HALT").is_symlink()
    assert coord("metrics", "--textfile", str(textfile)).returncode == 0
    assert not textfile.is_symlink() and b"ringrift_" in textfile.read_bytes()
    assert coord("unhalt").returncode == 0
    assert coord("can-spawn", "training").returncode == 0
    assert not (state / "config-cache.json").is_symlink()  # replaced by a fresh cache
    time.sleep(0.5)  # the detached hook runner's moment to (not) log through the link
    assert (state / "hooks.log").is_symlink()
    # the rotation: a full log is renamed over a planted .1 link, never through it
    (state / "hooks.log").unlink()
    (state / "hooks.log").write_bytes(b"x" * (1 << 20 | 1))
    os.chmod(state / "hooks.log", 0o600)
    (state / "hooks.log.1").symlink_to(victim)
    assert coord("halt", "--reason", "rotate").returncode == 0
    wait_for(lambda: not (state / "hooks.log.1").is_symlink(), 30, "the rotation")
    assert victim.read_bytes() == before


def test_symlinks_planted_at_the_temporary_names(engine_db: EngineDB) -> None:
    """The temporary names of the halt file and the settings cache are this process's pid:
    a symlink planted there is removed, never written through (``O_EXCL | O_NOFOLLOW``)."""
    from ringrift_coord import config, halts

    victim, before = _victim(engine_db.tmp)
    state = Path(engine_db.state_dir)
    for tmp in (
        state / f"{halts.FILE_NAME}.{os.getpid()}.tmp",
        state / f"{config.CACHE_NAME}.{os.getpid()}.tmp",
    ):
        tmp.symlink_to(victim)
    halts._write_file(str(state), {"reason": "r"})
    config._write_cache(str(state), ["k"], {}, {})
    assert json.loads((state / halts.FILE_NAME).read_text())["reason"] == "r"
    assert json.loads((state / config.CACHE_NAME).read_text())["key"] == ["k"]
    assert victim.read_bytes() == before
    assert not list(state.glob("*.tmp"))
