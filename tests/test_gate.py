"""The write gate in front of SQLite's write lock (store/gate.py), with real processes.

Every ringrift-coord writer queues on an ``flock`` of ``PATH-gate`` before ``BEGIN
IMMEDIATE``: waiters block in the kernel and are woken when it is let go, instead of
sleeping and retrying in SQLite's busy handler, which a herd of writers wins against a
newcomer every time. The gate is SQLite's only (PostgreSQL queues on its advisory lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Coord, own_tmpfs, ready_child, wait_for

BUSY_LINE = "is still locked after the"


@pytest.fixture
def coord(tmp_path: Path) -> Coord:
    runner = Coord(tmp_path)
    done = runner("can-spawn", "selfplay", "--node", "n1")  # makes the store
    assert done.returncode == 0, done.stderr
    return runner


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    return data[data.rfind(b")") + 2 :].split()[0].decode()


child = ready_child


# A ringrift-coord writer that stops (SIGSTOP) inside its write transaction: it holds the
# gate and SQLite's write lock.
STOPPED_WRITER = """
import os, signal, sys
from ringrift_coord.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
with store.write() as tx:
    tx.query("SELECT COUNT(*) AS n FROM tasks")
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""

# A process that holds the gate only (as a writer stopped between the gate and BEGIN does):
# SQLite's write lock stays free.
GATE_HOLDER = """
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1] + "-gate", os.O_RDONLY | os.O_NOFOLLOW)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
if sys.argv[2] == "stop":
    os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(float(sys.argv[2]) if sys.argv[2] != "stop" else 300)
"""


def open_store(coord: Coord, busy_timeout: float = 5.0) -> Any:
    from ringrift_coord.store.sqlite import SQLiteStore

    return SQLiteStore(str(coord.db), busy_timeout=busy_timeout)


def timed_write(store: Any) -> float:
    started = time.monotonic()
    with store.write() as tx:
        tx.query("SELECT COUNT(*) AS n FROM tasks")
    return time.monotonic() - started


def test_the_gate_file_is_made_beside_the_store_with_its_mode(coord: Coord) -> None:
    gate = Path(str(coord.db) + "-gate")
    st = gate.lstat()
    assert gate.is_file() and not gate.is_symlink()
    assert oct(st.st_mode & 0o777) == oct(coord.db.stat().st_mode & 0o777) == "0o600"
    from ringrift_coord.store import gate as gate_module

    # empty until writers line up; then the line's counter and one place per ticket, reused
    # in turn: 36 KiB at most
    assert st.st_size <= gate_module.PLACES + 8 * gate_module.PLACE_COUNT


# -- fairness ----------------------------------------------------------------------------

# A herd member: write transactions that hold the lock 10 ms each, back to back.
HERD = """
import sys, time
from ringrift_coord.errors import StoreBusy
from ringrift_coord.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], busy_timeout=30)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        with store.write() as tx:
            tx.execute("INSERT INTO gate_herd (at) VALUES (?)", (time.time(),))
            time.sleep(0.01)
    except StoreBusy:
        pass
"""


def test_a_newcomer_gets_in_within_its_busy_timeout_under_a_herd_of_writers(
    coord: Coord,
) -> None:
    """Eight writers hold the lock 10 ms each, back to back; a newcomer with a 1 s busy
    timeout makes eight writes (50 ms apart), each of which must get in: behind the gate it
    waits its turn (~8 x 10 ms). Without the gate it loses nearly every race (15 of 16
    writes exited busy in two tries): each herd writer takes the lock again the moment it
    commits, while the newcomer sleeps up to 100 ms between tries in SQLite's busy handler."""
    with open_store(coord) as store, store.write() as tx:
        tx.execute("CREATE TABLE gate_herd (at REAL)")
    herd = [child(HERD, str(coord.db), "60") for _ in range(8)]
    procs = [h.__enter__() for h in herd]
    try:
        wait_for(lambda: herd_rows(coord) > 40, 30, "the herd to write")
        newcomer = open_store(coord, busy_timeout=1.0)
        waits = []
        try:
            for _ in range(8):
                time.sleep(0.05)  # (not straight after its own commit: it would win at once)
                waits.append(timed_write(newcomer))  # StoreBusy fails the test
        finally:
            newcomer.close()
        assert max(waits) < 1.0, waits
        assert all(p.poll() is None for p in procs)  # the herd was there all along
    finally:
        for h in herd:
            h.__exit__(None, None, None)


# A member of an even herd: once told to go, writes back to back for a while (a launch
# loop, with ~2 ms of its own work between writes); prints how many and its longest wait.
EVEN_HERD = """
import os, sys, time
from ringrift_coord.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], busy_timeout=30)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
end = time.monotonic() + float(sys.argv[3])
turns, longest = [], 0.0
while time.monotonic() < end:
    started = time.monotonic()
    with store.write() as tx:
        tx.execute("INSERT INTO gate_herd (at) VALUES (?)", (time.time(),))
    turns.append(time.time())
    longest = max(longest, time.monotonic() - started)
    spin = time.perf_counter()
    while time.perf_counter() - spin < 0.002:
        pass
print(longest, *turns, flush=True)
"""


def test_a_herd_of_writers_gets_in_turn_by_turn(coord: Coord, tmp_path: Path) -> None:
    """Twelve writers write back to back for 3 s: in line, each gets in once per round, so
    their counts stay within 15 % of each other (measured 204..208, 207..211, 218..225).
    With the ``flock`` alone (the line taken out) each turn woke every waiter to race, and
    a writer that had just written often won again: 195..305, 200..339, 210..290, and its
    longest wait 112..146 ms against the line's 22..26 ms."""
    with open_store(coord) as store, store.write() as tx:
        tx.execute("CREATE TABLE gate_herd (at REAL)")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", EVEN_HERD, str(coord.db), str(go), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(12)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    turns = [[float(t) for t in out.split()[1:]] for out, _ in results]
    assert all(turns), [err for _, err in results]
    # the turns each got while all twelve were writing (they start and stop a little apart)
    first, last = max(t[0] for t in turns), min(t[-1] for t in turns)
    counts = [sum(first <= t <= last for t in mine) for mine in turns]
    assert last - first > 1.5 and min(counts) > 0, (last - first, counts)
    assert max(counts) <= 1.15 * min(counts), sorted(counts)


# A writer that lines up and waits (the gate is held): stopped or killed there by the test.
IN_LINE = """
import sys
from ringrift_coord.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], busy_timeout=60)
print("ready", flush=True)
with store.write() as tx:
    tx.query("SELECT 1 AS x")
"""


def gate_tickets(coord: Coord) -> int:
    raw = Path(str(coord.db) + "-gate").read_bytes()[:8]
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def published_pid(coord: Coord) -> int:
    """The pid written at the place of the last ticket drawn (0: none yet)."""
    from ringrift_coord.store import gate

    data = Path(str(coord.db) + "-gate").read_bytes()
    ticket = int.from_bytes(data[:8], "little") - 1
    at = gate.PLACES + 8 * (ticket % gate.PLACE_COUNT)
    return int.from_bytes(data[at : at + 4], "little") if ticket >= 0 else 0


@pytest.mark.parametrize("how", ["stopped", "killed", "unseen"])
def test_a_writer_stopped_or_killed_in_line_holds_up_the_one_behind_it_briefly(
    coord: Coord, how: str
) -> None:
    """A writer waits in line (another process holds the gate's ``flock``) and is stopped
    (SIGSTOP) or killed (SIGKILL) there; the writer behind it, with a 3 s busy timeout, gets
    in once the gate's holder goes 1 s later: it stops waiting for a stopped one after
    ~0.5 s (it looks at the pid written at its place), and a killed one's place is let go by
    the kernel. ``unseen``: a stopped writer whose pid this process cannot judge (written
    from another pid namespace, as a container sharing the state directory would): passed
    after two looks (~1 s). Without the look the writer behind waited for the stopped one
    until its busy timeout; without the second rule, for the unseen one (both checked)."""
    from ringrift_coord.store import gate

    before = gate_tickets(coord)
    with child(GATE_HOLDER, str(coord.db), "60") as holder, child(IN_LINE, str(coord.db)) as waiter:
        wait_for(lambda: gate_tickets(coord) > before, 30, "the writer to line up")
        wait_for(lambda: published_pid(coord) == waiter.pid, 30, "the writer to wait")
        os.kill(waiter.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        if how != "killed":
            wait_for(lambda: state_of(waiter.pid) == "T", 10, "the writer to stop")
        if how == "unseen":  # (its namespace field made another's)
            ticket = gate_tickets(coord) - 1
            at = gate.PLACES + 8 * (ticket % gate.PLACE_COUNT) + 4
            with open(str(coord.db) + "-gate", "r+b") as handle:
                handle.seek(at)
                own = int.from_bytes(handle.read(4), "little")
                handle.seek(at)
                handle.write(((own + 1) & 0xFFFFFFFF).to_bytes(4, "little"))
        store = open_store(coord, busy_timeout=3.0)
        let_go = threading.Timer(1.0, holder.kill)
        let_go.start()
        try:
            took = timed_write(store)  # StoreBusy fails the test
        finally:
            let_go.cancel()
            store.close()
            if how != "killed":
                os.kill(waiter.pid, signal.SIGCONT)
    assert 0.9 <= took < 2.5, took


OTHER_WRITER = """
import sys
from ringrift_coord.store.sqlite import SQLiteStore
print("ready", flush=True)
store = SQLiteStore(sys.argv[1], busy_timeout=3.0)
with store.write() as tx:
    tx.query("SELECT 1 AS x")
"""


@pytest.mark.parametrize("where", ["commit", "release"])
def test_a_signal_raised_as_a_write_ends_leaves_the_gate_to_be_let_go(
    coord: Coord, where: str
) -> None:
    """In line the gate is held to the COMMIT. A signal's exception (Ctrl-C, ``run``'s SIGHUP)
    that arrives during the COMMIT is raised once it returns, with the change landed; one
    may also land as the gate is being let go. Raised here at those very points (a profile
    hook: on the COMMIT's return; on entering ``gate.release``). After the first, the gate is
    let go on the way out: another process writes at once. After the second, the store's
    next write lets go first (``run --wait`` leaves its queue so), and a writer that lined up
    meanwhile gets in too. Without the first fix the other writer waited out its busy timeout;
    without the second, this store's next write queued behind that writer, which waited for
    the gate this store still held, until its busy timeout (both checked)."""
    from ringrift_coord.store import gate

    store = open_store(coord)
    try:
        with store.write() as tx:  # (opens the gate)
            tx.query("SELECT 1 AS x")
        if not gate.queues(store._gate):
            pytest.skip("no open-file-description locks here: the flock alone, let go at BEGIN")

        def interrupt(frame: Any, event: str, arg: object) -> None:
            if (where, event, frame.f_code.co_name) in (
                ("commit", "c_return", "_commit"),
                ("release", "call", "release"),
            ):
                sys.setprofile(None)
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            with store.write() as tx:
                tx.query("SELECT COUNT(*) AS n FROM tasks")
                sys.setprofile(interrupt)
        sys.setprofile(None)
        assert not store._conn.in_transaction
        before = gate_tickets(coord)
        with child(OTHER_WRITER, str(coord.db)) as other:
            if where == "release":  # (in line behind the gate this store still holds)
                wait_for(lambda: other.poll() is not None or gate_tickets(coord) > before, 30,
                         "the other writer to line up")  # fmt: skip
                assert timed_write(store) < 2.0
            assert other.wait(timeout=30) == 0, other.stderr.read() if other.stderr else ""
        assert timed_write(store) < 1.0
    finally:
        sys.setprofile(None)
        store.close()


def herd_rows(coord: Coord) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{coord.db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM gate_herd").fetchone()[0])
    finally:
        conn.close()


# -- the busy timeout still bounds every wait -----------------------------------------------


def test_a_stopped_writer_in_the_gate_makes_others_exit_75_within_the_busy_timeout(
    coord: Coord,
) -> None:
    with child(STOPPED_WRITER, str(coord.db)) as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the writer to stop")
        store = open_store(coord, busy_timeout=0.5)
        from ringrift_coord.errors import StoreBusy

        started = time.monotonic()
        with pytest.raises(StoreBusy, match=BUSY_LINE):
            timed_write(store)
        assert 0.45 <= time.monotonic() - started < 2.0
        store.close()
        blocked = coord("can-spawn", "selfplay", "--node", "n1", "--set", "store.busy_timeout=0.5")
        assert blocked.returncode == 75, blocked.stderr
        assert blocked.stderr.count("\n") == 1 and BUSY_LINE in blocked.stderr
        assert "Traceback" not in blocked.stderr
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait(timeout=30)
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


# An ungated writer (the sqlite3 shell, an older ringrift-coord) holding SQLite's write lock.
SQLITE_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_the_gate_wait_and_begin_together_stay_within_the_busy_timeout(coord: Coord) -> None:
    """The gate is held for 0.6 s, SQLite's lock (by a writer that does not use the gate) for
    longer: a writer with a 1 s busy timeout gives up after ~1 s in all, not 0.6 + 1 s."""
    from ringrift_coord.errors import StoreBusy

    with child(SQLITE_HOLDER, str(coord.db), "20"), child(GATE_HOLDER, str(coord.db), "0.6"):
        store = open_store(coord, busy_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(StoreBusy, match=BUSY_LINE):
            timed_write(store)
        took = time.monotonic() - started
        store.close()
    assert 0.9 <= took < 1.4, took


def test_an_ungated_writer_still_excludes_gated_ones(coord: Coord) -> None:
    """SQLite's lock stays the guard: a writer that never takes the gate holds its write lock,
    and a gated writer (holding the gate meanwhile) waits for it, then gets in."""
    with child(SQLITE_HOLDER, str(coord.db), "0.8"):
        store = open_store(coord, busy_timeout=5.0)
        took = timed_write(store)
        store.close()
    assert 0.5 <= took < 5.0, took


# -- faults ------------------------------------------------------------------------------


def test_a_writer_killed_inside_the_gate_lets_the_next_one_in_at_once(coord: Coord) -> None:
    with child(STOPPED_WRITER, str(coord.db)) as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the writer to stop")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        store = open_store(coord, busy_timeout=5.0)
        took = timed_write(store)
        store.close()
    assert took < 1.0, took
    done = coord("can-spawn", "selfplay", "--node", "n1")
    assert done.returncode == 0, done.stderr


def test_a_symlink_planted_at_the_gate_is_refused_and_never_followed(
    coord: Coord, tmp_path: Path
) -> None:
    gate = Path(str(coord.db) + "-gate")
    gate.unlink()
    target = tmp_path / "elsewhere"
    gate.symlink_to(target)
    done = coord("can-spawn", "selfplay", "--node", "n1")
    assert done.returncode == 3, done.stderr
    assert "refusing the write gate" in done.stderr and "symlink" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not target.exists() and gate.is_symlink()  # never created through it
    target.write_text("")
    done = coord("can-spawn", "selfplay", "--node", "n1")
    assert done.returncode == 3 and "symlink" in done.stderr, done.stderr
    assert coord("status").returncode == 0  # reads never take the gate
    gate.unlink()
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    assert not Path(str(coord.db) + "-gate").is_symlink()


def test_a_gate_others_could_write_is_refused(coord: Coord) -> None:
    gate = Path(str(coord.db) + "-gate")
    os.chmod(gate, 0o666)
    done = coord("can-spawn", "selfplay", "--node", "n1")
    assert done.returncode == 3, done.stderr
    assert "refusing the write gate" in done.stderr and "writable by" in done.stderr
    gate.unlink()
    os.mkfifo(gate, 0o600)  # a FIFO: never blocks the open, refused as not a regular file
    done = coord("can-spawn", "selfplay", "--node", "n1", timeout=30)
    assert done.returncode == 3 and "not a regular file" in done.stderr, done.stderr


def test_reads_never_take_the_gate(coord: Coord) -> None:
    with child(GATE_HOLDER, str(coord.db), "stop") as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the holder to stop")
        store = open_store(coord, busy_timeout=0.5)
        started = time.monotonic()
        with store.read() as tx:
            assert tx.query("SELECT COUNT(*) AS n FROM tasks")
        assert (
            time.monotonic() - started < 0.5
        )  # (queued on the gate it would have raised StoreBusy)
        store.close()


# -- where SIGALRM cannot bound the wait: the gate is waited for by trying again ---------------


def test_a_writer_in_another_thread_waits_for_the_gate_by_polling(coord: Coord) -> None:
    """Only the main thread can bound a blocked wait with SIGALRM: another thread tries
    again every few ms within the busy timeout, so it still queues behind a holder (a
    health check from serve's worker thread sees a stopped one), and gets in once it is let
    go. The main thread's timed-out wait gives SIGALRM's handler and timer back."""
    from ringrift_coord.errors import StoreBusy

    store = open_store(coord, busy_timeout=0.5)
    outcome: list[object] = []

    def in_a_thread(work: Any) -> object:
        outcome.clear()

        def run() -> None:
            try:
                outcome.append(work())
            except BaseException as exc:  # noqa: BLE001 (reported below)
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=30)
        (result,) = outcome
        return result

    handler_before = signal.getsignal(signal.SIGALRM)
    with child(GATE_HOLDER, str(coord.db), "stop") as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the holder to stop")
        with pytest.raises(StoreBusy):  # the main thread queues on the gate
            timed_write(store)
        assert signal.getsignal(signal.SIGALRM) == handler_before
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert isinstance(in_a_thread(lambda: timed_write(store)), StoreBusy)
        assert isinstance(in_a_thread(store.probe_write_lock), StoreBusy)  # serve's probe
    patient = open_store(coord, busy_timeout=5.0)
    try:
        with child(GATE_HOLDER, str(coord.db), "0.6"):  # holds it 0.6 s, then exits
            took = in_a_thread(lambda: timed_write(patient))
        assert isinstance(took, float) and 0.2 < took < 5.0, took
    finally:
        patient.close()
        store.close()


def test_an_application_that_owns_sigalrm_keeps_it(coord: Coord) -> None:
    """An application with its own SIGALRM handler and timer: the gate leaves both alone and
    waits for a held gate by polling (a stopped holder: busy after the busy timeout)."""
    code = f"""
import fcntl, os, signal, sys, time
from ringrift_coord.errors import StoreBusy
from ringrift_coord.store.sqlite import SQLiteStore
fired = []
signal.signal(signal.SIGALRM, lambda *a: fired.append(time.monotonic()))
signal.setitimer(signal.ITIMER_REAL, 1.5)
store = SQLiteStore({str(coord.db)!r}, busy_timeout=0.5)
started = time.monotonic()
try:
    with store.write() as tx:
        tx.query("SELECT 1 AS x")
    outcome = "written"
except StoreBusy:
    outcome = "busy"
took = time.monotonic() - started
handler = signal.getsignal(signal.SIGALRM)
left = signal.getitimer(signal.ITIMER_REAL)[0]
while not fired and time.monotonic() - started < 10:
    time.sleep(0.05)
print("ready", flush=True)
print(outcome, took, handler.__name__, left > 0, bool(fired), flush=True)
"""
    with child(GATE_HOLDER, str(coord.db), "stop") as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the holder to stop")
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    outcome, took, handler, timer_left, fired = done.stdout.splitlines()[1].split()
    assert outcome == "busy" and 0.4 < float(took) < 5.0, done.stdout
    assert handler == "<lambda>" and timer_left == fired == "True", done.stdout


def test_an_flock_on_another_devices_file_with_the_same_inode_is_not_the_gate(
    coord: Coord, tmp_path: Path
) -> None:
    """/proc/locks names a file by device and inode: an flock on another filesystem's file
    that happens to have the gate's inode number is not named as holding the gate."""
    from ringrift_coord.diagnose import lock_table

    st = os.stat(str(coord.db) + "-gate")
    here = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    elsewhere = f"ff:99:{st.st_ino}"
    fake = tmp_path / "locks"
    fake.write_text(f"1: FLOCK  ADVISORY  WRITE 4242 {elsewhere} 0 EOF\n")
    assert lock_table(str(coord.db), str(fake)) == {}
    fake.write_text(f"1: FLOCK  ADVISORY  WRITE 4242 {here} 0 EOF\n")
    assert lock_table(str(coord.db), str(fake)) == {4242: "write gate"}


# -- doctor names a holder of the gate ------------------------------------------------------


def test_doctor_and_status_name_a_stopped_holder_of_the_gate(coord: Coord) -> None:
    with child(GATE_HOLDER, str(coord.db), "stop") as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the holder to stop")
        blocked = coord("can-spawn", "selfplay", "--node", "n1", "--set", "store.busy_timeout=0.3")
        assert blocked.returncode == 75 and BUSY_LINE in blocked.stderr, blocked.stderr
        done = coord("--json", "--set", "store.busy_timeout=0.5", "doctor")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        document = json.loads(done.stdout)
        (locks,) = [c for c in document["checks"] if c["name"] == "locks"]
        (probe,) = [c for c in document["checks"] if c["name"] == "admission lock"]
        assert probe["level"] == "fail" and locks["level"] == "fail", locks
        (named,) = locks["details"]["holders"]
        assert named["pid"] == holder.pid and named["lock"] == "write gate" and named["stopped"]
        assert f"pid {holder.pid} (" in locks["found"] and "write gate" in locks["found"]
        assert f"kill -CONT {holder.pid}" in locks["fix"]
        doc = json.loads(coord("--json", "status").stdout)
        assert [h["pid"] for h in doc["long_holds"]] == [holder.pid]
        os.kill(holder.pid, signal.SIGCONT)


# -- a gate that cannot be made: the writer goes on without it ---------------------------------


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own with few inodes (unmounted afterwards)."""
    with own_tmpfs(tmp_path / "fs", "size=8m,nr_inodes=64,mode=0755") as where:
        yield where


def test_a_gate_that_cannot_be_made_is_done_without(tmp_path: Path, few_inodes: Path) -> None:
    """No inode left for the gate file (ENOSPC), while the store itself can still be written:
    the write goes on without the gate (SQLite's busy handler, as before it existed)."""
    import sqlite3

    runner = Coord(tmp_path)
    runner.env["RINGRIFT_COORDINATOR_DIR"] = str(few_inodes / "state")
    assert runner("register", "selfplay", "--node", "n1", "-q").returncode == 0
    gate = few_inodes / "state" / "tasks.db-gate"
    gate.unlink()
    keep = sqlite3.connect(str(few_inodes / "state" / "tasks.db"))  # keeps -wal and -shm
    keep.execute("SELECT COUNT(*) FROM tasks").fetchall()
    try:
        for n in range(1000):  # every inode left, taken
            try:
                os.close(os.open(few_inodes / f"filler{n}", os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError:
                break
        done = runner("register", "selfplay", "--node", "n1", "-q")
        assert done.returncode == 0, done.stderr
        assert not gate.exists()
    finally:
        keep.close()


def test_the_gate_file_has_the_store_mode_whatever_the_umask_and_doctor_never_makes_it(
    coord: Coord,
) -> None:
    gate = Path(str(coord.db) + "-gate")
    gate.unlink()
    assert coord("doctor").returncode == 0
    assert not gate.exists()  # doctor writes nothing
    old = os.umask(0)
    try:
        assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    finally:
        os.umask(old)
    assert oct(gate.stat().st_mode & 0o777) == "0o600"
