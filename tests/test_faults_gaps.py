"""Faults the earlier fault tests left untested, injected for real: a second store opened on
the same SQLite file in one process (POSIX locks), the wake directory unusable (a waiter
polls instead), kill -9 exactly as each transaction of admission and release commits (the
commit's system call found by strace; random kills miss a < 1 ms window), and a PostgreSQL
server that stops answering during COMMIT. Each test was seen to fail with its protection
removed (the README's "Faults at the edges" and the branch's report say how)."""

from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Coord, EngineDB, own_tmpfs, wait_for
from test_faults_proc import answers, check_whole, coord_on, rows
from test_file_trust import ALICE, Host, users  # noqa: F401 (users: a fixture)

# the kill test runs on both engines; the others name their engine themselves
ENGINES = ("sqlite", "postgres")

# SQLite's lock bytes on a database file (os_unix.c): a connection in WAL mode holds a read
# lock on its SHARED range for as long as it is open; the last connection to close takes
# the write lock on it, checkpoints and deletes the -wal and -shm.
PENDING_BYTE = 0x40000000
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510

TWO_STORES = textwrap.dedent(
    """\
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from ringrift_coord.store.sqlite import SQLiteStore
    path = sys.argv[1]
    first = SQLiteStore(path)
    with first.write() as tx:
        tx.execute("CREATE TABLE gaps_probe (x)")
        tx.execute("INSERT INTO gaps_probe VALUES (1)")
    second = SQLiteStore(path)  # another store on the same file, in this same process
    with second.read() as tx:
        tx.query("SELECT 1")
    if sys.argv[3] == "close-second":
        second.close()
    print("ready", flush=True)
    sys.stdin.readline()
    with first.read() as tx:  # the first store still works on its own files
        n = tx.query("SELECT count(*) AS n FROM gaps_probe")
    print("rows", n[0]["n"], flush=True)
    first.close()
    if sys.argv[3] != "close-second":
        second.close()
    ino = os.stat(path).st_ino
    left = [f for f in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{f}") and os.stat(f"/proc/self/fd/{f}").st_ino == ino]
    print("fds", len(left), flush=True)
    """
)


def _read_locks_on(pid: int, path: Path) -> list[str]:
    ino = os.stat(path).st_ino
    found = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "->" or len(fields) < 8:
            continue
        if fields[4] == str(pid) and fields[5].rsplit(":", 1)[-1] == str(ino):
            found.append(line)
    return found


def _can_take_sqlite_exclusive(path: Path) -> bool:
    """Whether another process could take SQLite's EXCLUSIVE lock on the file now (the
    write lock on its whole SHARED range), as a last closing connection does. Taken and
    let go at once from a child process (this test process holds no store)."""
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        f"    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, {SHARED_SIZE}, {SHARED_FIRST})\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
        f"fcntl.lockf(fd, fcntl.LOCK_UN, {SHARED_SIZE}, {SHARED_FIRST})\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(path)], timeout=30).returncode == 0


def _two_stores(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    db = tmp_path / "tasks.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", TWO_STORES, str(db), str(ROOT), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        raise AssertionError(line + proc.communicate()[1])
    return proc, db


def _finish(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, err
    return out.split()


def test_a_second_store_on_the_same_file_keeps_the_first_ones_sqlite_locks(
    tmp_path: Path,
) -> None:
    """Opening a second store on a file this process already has open must not drop the
    first store's POSIX locks (a header read with open() + close() did: closing any
    descriptor of a file drops all of the process's locks on it)."""
    proc, db = _two_stores(tmp_path, "keep-both")
    try:
        held = _read_locks_on(proc.pid, db)
        assert any(" READ " in line for line in held), (
            f"process {proc.pid} holds no read lock on {db} with two stores open: {held}"
        )
        assert not _can_take_sqlite_exclusive(db)
        # what another process's last connection does at close: with the locks lost it
        # would checkpoint and delete the -wal and -shm under the live connections
        other = sqlite3_open_close(db)
        assert other == 0
        assert (tmp_path / "tasks.db-wal").exists()
        assert (tmp_path / "tasks.db-shm").exists()
    finally:
        words = _finish(proc)
    assert words == ["rows", "1", "fds", "0"], words  # no descriptor left once both closed


def test_closing_the_second_store_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    proc, db = _two_stores(tmp_path, "close-second")
    try:
        assert any(" READ " in line for line in _read_locks_on(proc.pid, db))
        assert not _can_take_sqlite_exclusive(db)
    finally:
        words = _finish(proc)
    assert words == ["rows", "1", "fds", "0"], words


def test_stores_opened_and_closed_by_many_threads_keep_a_long_lived_stores_locks(
    tmp_path: Path,
) -> None:
    """``serve``'s shape: one store kept open while request threads open and close stores
    of their own on the same file, all at once. The long-lived store keeps its lock, and
    once every store is closed no descriptor on the file is left."""
    import threading

    from ringrift_coord.store.sqlite import SQLiteStore

    db = tmp_path / "tasks.db"
    kept = SQLiteStore(str(db))
    errors: list[BaseException] = []

    def requests() -> None:
        try:
            for _ in range(10):
                with SQLiteStore(str(db)) as store, store.read() as tx:
                    tx.query("SELECT count(*) AS n FROM tasks")
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=requests) for _ in range(6)]
    try:
        with kept.read() as tx:
            tx.query("SELECT 1")
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert any(" READ " in line for line in _read_locks_on(os.getpid(), db))
        assert not _can_take_sqlite_exclusive(db)
    finally:
        kept.close()
    ino = db.stat().st_ino
    fds = Path("/proc/self/fd")
    left = [f for f in fds.iterdir() if f.exists() and f.stat().st_ino == ino]
    assert left == [], left


def sqlite3_open_close(db: Path) -> int:
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('SELECT count(*) FROM schema_migrations').fetchall()\n"
        "c.close()\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(db)], timeout=30).returncode


def test_the_lock_probe_sees_a_lost_lock(tmp_path: Path) -> None:
    """The probe itself: with no store open the write lock is free (so the assertions above
    can fail), and a process holding a connection blocks it."""
    db = tmp_path / "plain.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1])\n"
            "c.execute('PRAGMA journal_mode=WAL')\n"
            "c.execute('CREATE TABLE t (x)')\n"
            "c.execute('SELECT * FROM t').fetchall()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "ready\n"
        assert not _can_take_sqlite_exclusive(db)
    finally:
        holder.communicate("go\n", timeout=30)
    assert _can_take_sqlite_exclusive(db)


# -- the wake directory unusable: a waiter polls instead ------------------------------------

POLL_CONFIG = """\
task_limits: {selfplay: {per_node: 1, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
run: {poll_interval: 0.05, wake_poll: 0.3}
"""
POLLING = "waiting by polling the store (run.wake_poll) instead"


def _asked(db: Path, pid: int) -> bool:
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return bool(conn.execute(f"SELECT 1 FROM decisions WHERE pid = {int(pid)}").fetchall())
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _waits_by_polling(
    run: Callable[..., subprocess.CompletedProcess[str]],
    popen: Callable[..., subprocess.Popen[str]],
    db: Path,
    why: str,
) -> None:
    """A slot held by a registered sleeper; a ``run --wait`` behind it cannot use its wake
    directory (``why``): it still waits, says so once, and is admitted once the slot is
    released (found by its poll: nothing can ring it)."""
    holder = subprocess.Popen(["sleep", "600"])
    try:
        held = run("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert held.returncode == 0, held.stderr
        waiter = popen("run", "selfplay", "--node", "n1", "--wait", "--", "true")
        try:
            wait_for(lambda: _asked(db, waiter.pid) or waiter.poll() is not None, 60, "the waiter")
            time.sleep(1.0)  # several of its polls: still waiting, not refused
            assert waiter.poll() is None, waiter.communicate()[1]
            released = run("unregister", held.stdout.strip())
            assert released.returncode == 0, released.stderr
            _, err = waiter.communicate(timeout=60)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait(10)
        assert waiter.returncode == 0, err
        assert "Traceback" not in err, err
        notes = [line for line in err.splitlines() if POLLING in line]
        assert len(notes) == 1, err
        assert f"({why})" in notes[0], notes[0]
    finally:
        holder.kill()
        holder.wait(10)


@pytest.mark.parametrize(
    ("fault", "why"),
    [("full", "No space left on device"), ("read-only", "Read-only file system")],
)
def test_a_wake_directory_on_a_full_or_read_only_filesystem_means_polling(
    tmp_path: Path, fault: str, why: str
) -> None:
    """The wake directory is a filesystem of its own (a tmpfs mounted there): with no inode
    left (ENOSPC) or mounted read-only (EROFS), no FIFO can be made in it."""
    coord = Coord(tmp_path)
    coord.write_config(POLL_CONFIG)
    coord.state_dir.mkdir(mode=0o700)
    options = "nr_inodes=1,mode=0700" if fault == "full" else "ro,mode=0700"
    with own_tmpfs(Path(str(coord.db) + "-wake"), options):
        _waits_by_polling(coord, coord.popen, coord.db, why)


def test_another_user_whose_wake_directory_is_not_writable_waits_by_polling(
    users: None,  # noqa: F811 (the fixture)
) -> None:
    """A real second Unix user's private store whose wake directory root made (root's is
    trusted, 0755: they may list it, not make a FIFO in it: EACCES)."""
    base = Path(tempfile.mkdtemp(prefix="rrc-gaps-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        host = Host(base, "sqlite", None)
        pw = pwd.getpwnam(ALICE)
        state = base / "state-alice"
        state.mkdir(mode=0o700)
        os.chown(state, pw.pw_uid, pw.pw_gid)
        config = base / "coord.yaml"
        config.write_text(POLL_CONFIG)
        config.chmod(0o644)
        db = state / "tasks.db"
        env = host.env(
            ALICE, RINGRIFT_COORDINATOR_DIR=str(state), RINGRIFT_COORD_CONFIG=str(config)
        )
        wake = Path(str(db) + "-wake")
        wake.mkdir(mode=0o755)  # root's

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return host.run(ALICE, *args, env=env)

        def popen(*args: str) -> subprocess.Popen[str]:
            return host.popen(ALICE, *args, env=env)

        _waits_by_polling(run, popen, db, "Permission denied")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- kill -9 at each commit of admission and release, found by tracing its writes ----------

# A WAL frame is a 24-byte header then a page, each written with pwrite64; a frame header
# whose second word (the database size in pages) is not zero ends a transaction: its commit.
_PWRITE = re.compile(r'^pwrite64\((\d+), "((?:\\x[0-9a-f]{2})*)"(?:\.\.\.)?, (\d+), (\d+)\)')


def _strace_usable() -> bool:
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], capture_output=True)
    return done.returncode == 0  # ptrace refused (a container without it): no


def _commit_writes(trace: str) -> tuple[list[int], int]:
    """From an strace log of pwrite64 calls: the 1-based numbers of the calls that write a
    commit frame's header, and how many calls wrote WAL frames in all."""
    from ringrift_coord.store.sqlite import PAGE_SIZE

    commits, frames = [], 0
    for n, line in enumerate(trace.splitlines(), 1):
        m = _PWRITE.match(line)
        if m is None:
            continue
        data = bytes.fromhex(m.group(2).replace("\\x", ""))
        count, offset = int(m.group(3)), int(m.group(4))
        if count == 24 and offset >= 32 and (offset - 32) % (24 + PAGE_SIZE) == 0:
            frames += 1
            if data[4:8] != b"\0\0\0\0":
                commits.append(n)
    return commits, frames


def _traced(coord: Coord, argv: list[str], strace: list[str], env: dict[str, str]) -> int:
    done = subprocess.run(
        ["strace", "-qq", *strace, *coord.argv(*argv)],
        env={**coord.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode


def _commit_sends(trace: str) -> list[int]:
    """From an strace log of sendto calls (libpq's sends): the 1-based numbers of the calls
    that send a COMMIT."""
    return [n for n, line in enumerate(trace.splitlines(), 1) if "COMMIT" in line]


class _Copy:
    """The store as it is now, copied aside for a dry run: a copy of the SQLite state
    directory, or of the PostgreSQL database (``CREATE DATABASE ... TEMPLATE``: nobody is
    connected between two commands). ``env`` points a command at it."""

    def __init__(self, db: EngineDB, coord: Coord, name: str, pg_server: Any) -> None:
        self.db, self.pg_server, self.name = db, pg_server, name
        if db.engine == "sqlite":
            self.path = coord.tmp / name
            shutil.copytree(coord.state_dir, self.path, symlinks=True)
            self.env = {"RINGRIFT_COORDINATOR_DIR": str(self.path)}
        else:
            import psycopg

            source = db.url.rsplit("/", 1)[1]
            with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
            self.env = {"RINGRIFT_COORD_DB": db.url.rsplit("/", 1)[0] + "/" + name}

    def drop(self) -> None:
        if self.db.engine == "sqlite":
            shutil.rmtree(self.path)
            return
        import psycopg

        with psycopg.connect(self.pg_server.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{self.name}" WITH (FORCE)')


def kill_at_each_commit(
    db: EngineDB, coord: Coord, argv: list[str], rng: random.Random, extra: int, pg: Any
) -> int:
    """Run ``argv`` once on a copy of the store under strace to find the calls that commit
    (SQLite: the pwrite64 of a WAL commit frame's header; PostgreSQL: libpq's sendto of a
    COMMIT) -- same state, same calls -- then once per commit on the store itself, SIGKILLed
    by strace as it enters that call (``inject=...:signal=KILL``), plus ``extra`` kills at
    random calls before the last commit; the store checked whole after each. A transaction
    split in two (a COMMIT in the middle) has a commit inside it: killed there, its first
    half is kept without its second. Returns how many kills landed."""
    call = "pwrite64" if db.engine == "sqlite" else "sendto"
    killed = 0
    for attempt in range(1 + extra):
        copy = _Copy(db, coord, f"copy_{os.getpid()}_{rng.getrandbits(32):08x}", pg)
        try:
            log = coord.tmp / "calls.trace"
            # SQLite: frame headers in hex; PostgreSQL: messages as text (COMMIT is seen)
            shown = ["-xx", "-s", "8"] if call == "pwrite64" else ["-s", "4096"]
            code = _traced(coord, argv, ["-o", str(log), "-e", f"trace={call}", *shown], copy.env)
            assert code in answers(argv), (argv, code)
        finally:
            copy.drop()
        trace = log.read_text()
        commits = _commit_writes(trace)[0] if call == "pwrite64" else _commit_sends(trace)
        if not commits:
            return killed  # it wrote nothing (a refusal that logs nothing)
        points = commits if attempt == 0 else [rng.randint(1, commits[-1])]
        for when in points:
            inject = f"inject={call}:signal=KILL:when={when}"
            code = _traced(
                coord, argv, ["-o", "/dev/null", "-e", f"trace={call}", "-e", inject], {}
            )
            killed += code in (-signal.SIGKILL, 128 + signal.SIGKILL)
            check_whole(db)
            nxt = coord("can-spawn", "training", "--node", "n3")
            assert nxt.returncode in (0, 1), nxt.stderr  # no stuck lock behind the dead one
    return killed


def _kill_at_commits(
    engine_db: EngineDB, request: pytest.FixtureRequest, rounds: int, extra: int, with_run: bool
) -> None:
    if not _strace_usable():
        pytest.skip("strace is missing or ptrace is not allowed here")
    pg = request.getfixturevalue("pg_server") if engine_db.engine == "postgres" else None
    seed = int(os.environ.get("RINGRIFT_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")  # shown when it fails: RINGRIFT_FAULT_SEED=... reruns it
    rng = random.Random(seed)
    coord = coord_on(engine_db)
    holder = subprocess.Popen(["sleep", "600"])
    try:
        done = coord("register", "training", "--node", "n1", "--pid", str(holder.pid), "-q")
        assert done.returncode == 0, done.stderr
        killed = 0
        for _ in range(rounds):
            register = ["register", "training", "--node", "n2", "--pid", str(holder.pid), "-q"]
            killed += kill_at_each_commit(engine_db, coord, register, rng, extra, pg)
            if with_run:  # the wrapper: admission, its job's process group, release
                run = ["run", "training", "--node", "n2", "--", "true"]
                killed += kill_at_each_commit(engine_db, coord, run, rng, extra, pg)
            if with_run or engine_db.engine == "sqlite":  # (PostgreSQL's commands cost more)
                held = [r["task_id"] for r in rows(engine_db, "SELECT task_id FROM tasks")]
                unregister = ["unregister", held[0]]
                killed += kill_at_each_commit(engine_db, coord, unregister, rng, extra, pg)
        assert killed >= rounds, killed  # the kills did land
    finally:
        holder.kill()
        holder.wait(10)


def test_sigkill_at_each_commit_of_admission_and_release(
    engine_db: EngineDB, request: pytest.FixtureRequest
) -> None:
    """Admission (``register``) and, on SQLite, release (``unregister``), each SIGKILLed as
    it commits each of its transactions: every write is one transaction, all of it or none
    of it (the ``run`` wrapper, and release on PostgreSQL, under the stress marker)."""
    _kill_at_commits(engine_db, request, rounds=1, extra=0, with_run=False)


@pytest.mark.stress
def test_sigkill_at_each_commit_and_random_writes_many_times_over(
    engine_db: EngineDB, request: pytest.FixtureRequest
) -> None:
    rounds = 4 if engine_db.engine == "sqlite" else 2  # ~20 s and ~60 s on 2 busy cores
    _kill_at_commits(engine_db, request, rounds=rounds, extra=2, with_run=True)


# -- PostgreSQL stops answering during COMMIT ------------------------------------------------


def test_postgres_commit_without_an_answer_says_the_outcome_is_unknown(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend is stopped (SIGSTOP) with the transaction's writes done, so the COMMIT the
    client sends is never answered: after the reply timeout the client cannot know whether
    it was decided, and says so (not "nothing was decided, try again": a retry could take a
    second slot). Once the backend resumes it reads the COMMIT and commits after all, which
    is why "unknown" is the truth. Small timeouts: statement 0.3 s, reply 0.3 s after it."""
    import psycopg

    from ringrift_coord.store import postgres
    from ringrift_coord.store.base import OutcomeUnknown

    monkeypatch.setattr(postgres, "REPLY_MARGIN", 0.3)
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS gaps_commit_probe (tag TEXT)")
    store = postgres.PostgresStore(
        pg_url, busy_timeout=0.3, statement_timeout=0.3, connect_timeout=2
    )
    tag = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    backend: int | None = None
    try:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown) as raised:
            with store.write() as tx:
                tx.execute("INSERT INTO gaps_commit_probe (tag) VALUES (?)", (tag,))
                backend = int(tx.one("SELECT pg_backend_pid() AS pid")["pid"])  # type: ignore[index]
                os.kill(backend, signal.SIGSTOP)  # the COMMIT that follows is never answered
        took = time.monotonic() - started
    finally:
        if backend is not None:
            os.kill(backend, signal.SIGCONT)
    message = str(raised.value)
    assert "did not answer the commit" in message, message
    assert "is unknown" in message and "ringrift-coord tasks" in message, message
    assert raised.value.exit_code == 3, raised.value.exit_code
    assert "nothing was decided" not in message, message
    assert took < 10, took  # the reply timeout, not a hang
    # resumed, the backend commits what it was sent: the outcome was unknowable, not "none"
    with psycopg.connect(pg_url, autocommit=True) as look:

        def landed() -> bool:
            row = look.execute(
                "SELECT count(*) FROM gaps_commit_probe WHERE tag = %s", (tag,)
            ).fetchone()
            return bool(row and row[0])

        wait_for(landed, 30, "the resumed backend to commit")
    with store.write() as tx:  # the store reconnects: usable again
        tx.execute("INSERT INTO gaps_commit_probe (tag) VALUES (?)", (tag + "-again",))
    store.close()


def test_postgres_connection_lost_at_commit_is_an_unknown_outcome_not_a_retry(
    pg_url: str,
) -> None:
    """The server ends the session between the transaction's writes and its COMMIT (an
    administrator's pg_terminate_backend, a restart): the client cannot tell whether its
    COMMIT got there, so it says "unknown" with exit 3, never exit 75's "nothing was
    decided, try again" (a retried admission could take a second slot)."""
    import psycopg

    from ringrift_coord.store import postgres
    from ringrift_coord.store.base import OutcomeUnknown

    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS gaps_commit_probe (tag TEXT)")
    store = postgres.PostgresStore(pg_url, busy_timeout=2, connect_timeout=2)
    tag = f"gone-{os.getpid()}-{time.monotonic_ns()}"
    with pytest.raises(OutcomeUnknown) as raised:
        with store.write() as tx:
            tx.execute("INSERT INTO gaps_commit_probe (tag) VALUES (?)", (tag,))
            backend = int(tx.one("SELECT pg_backend_pid() AS pid")["pid"])  # type: ignore[index]
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (backend,))
    message = str(raised.value)
    assert raised.value.exit_code == 3
    assert "went away during the commit" in message and "is unknown" in message, message
    assert "ringrift-coord tasks" in message and "nothing was decided" not in message, message
    with store.write() as tx:  # a fresh session: usable again
        tx.execute("INSERT INTO gaps_commit_probe (tag) VALUES (?)", (tag + "-again",))
    store.close()


def test_a_halt_whose_commit_gets_no_answer_says_unknown_not_corrupt(
    pg_url: str, tmp_path: Path
) -> None:
    """An emergency halt whose COMMIT the server never answers (its session ended between
    the halt's writes and the COMMIT) may be in force on every host: the operator is told
    its outcome is unknown and that halting again is safe; it is not called a corrupt store,
    and no halt file claims a halt here that no row may back."""
    import psycopg

    from ringrift_coord import halts
    from ringrift_coord.config import load_settings
    from ringrift_coord.context import Context
    from ringrift_coord.store import postgres
    from ringrift_coord.store.base import OutcomeUnknown

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = postgres.PostgresStore(pg_url, busy_timeout=2, connect_timeout=2)
    ctx = Context(settings=load_settings(None, {}), state_dir=str(state), store=store)
    publish = halts._publish

    def publish_then_end_the_session(tx: Any, *args: Any, **kw: Any) -> None:
        publish(tx, *args, **kw)
        backend = int(tx.one("SELECT pg_backend_pid() AS pid")["pid"])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (backend,))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(halts, "_publish", publish_then_end_the_session)
        with pytest.raises(OutcomeUnknown) as raised:
            halts.activate(ctx, "fire", task_type=None, ttl=None, who="op", host="h1")
    message = str(raised.value)
    assert raised.value.exit_code == 3
    assert "whether the halt landed is unknown" in message, message
    assert "halting again is safe" in message and "halt --check" in message, message
    assert "corrupt" not in message and "ringrift-coord tasks" not in message, message
    assert not (state / halts.FILE_NAME).exists()
    again = halts.activate(ctx, "fire", task_type=None, ttl=None, who="op", host="h1")
    assert again["reason"] == "fire"
    with store.read() as tx:
        assert len(tx.query("SELECT * FROM halts")) == 1  # one halt, however many tries
    # the same for the unhalt: its advice is the unhalt's, not an admission's
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(halts, "_publish", publish_then_end_the_session)
        with pytest.raises(OutcomeUnknown) as raised:
            halts.deactivate(ctx, task_type=None, who="op", host="h1")
    message = str(raised.value)
    assert "whether the unhalt landed is unknown" in message, message
    assert "ringrift-coord tasks" not in message and "second slot" not in message, message
    halts.deactivate(ctx, task_type=None, who="op", host="h1")
    with store.read() as tx:
        assert tx.query("SELECT * FROM halts") == []
    store.close()


# the CLI with the PostgreSQL margins cut (statement timeout = busy timeout + 2 s, reply
# 0.3 s after it): the same code, bounds small enough for the default suite
_SHORT_MARGINS_CLI = (
    "import sys\n"
    "import ringrift_coord.store.postgres as p\n"
    "p.STATEMENT_MARGIN, p.REPLY_MARGIN = 2.0, 0.3\n"
    "sys.argv[0] = 'ringrift-coord'\n"
    "from ringrift_coord.cli.main import console_main\n"
    "console_main()\n"
)
_CLI = (  # the CLI as the installed script runs it
    "import sys\n"
    "sys.argv[0] = 'ringrift-coord'\n"
    "from ringrift_coord.cli.main import console_main\n"
    "console_main()\n"
)
_HOLD_KEY = 4242  # an advisory lock the test holds; a deferred trigger waits on it at COMMIT


def _hold_commits(holder: Any) -> None:
    """Make every COMMIT that inserted a task wait (a deferred trigger) on the advisory lock
    ``_HOLD_KEY``, which ``holder`` (a psycopg connection) takes; drop the trigger to end it."""
    holder.execute(
        "CREATE OR REPLACE FUNCTION gaps_hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "PERFORM set_config('lock_timeout', '0', true); "
        f"PERFORM pg_advisory_xact_lock_shared({_HOLD_KEY}); RETURN NULL; END $$"
    )
    holder.execute(
        "CREATE CONSTRAINT TRIGGER gaps_hold AFTER INSERT ON tasks DEFERRABLE INITIALLY "
        "DEFERRED FOR EACH ROW EXECUTE FUNCTION gaps_hold()"
    )
    holder.execute("SELECT pg_advisory_lock(%s)", (_HOLD_KEY,))


def _register_held(coord: Coord, holder: Any, cli: str) -> tuple[subprocess.Popen[str], int]:
    """A ``register`` (run by ``cli``) whose COMMIT waits on the server (``_hold_commits``):
    the process, once its COMMIT waits there, and the pid of the backend it waits in."""
    _hold_commits(holder)
    proc = subprocess.Popen(
        [sys.executable, "-c", cli, "register", "selfplay", "--node", "n1"],
        env=coord.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def committing() -> int | None:
        row = holder.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'ringrift-coord' "
            "AND wait_event_type = 'Lock' AND query LIKE '%COMMIT'"
        ).fetchone()
        return None if row is None else int(row[0])

    return proc, int(wait_for(committing, 30, "the COMMIT to wait in its trigger"))  # type: ignore[arg-type]


def test_postgres_a_command_whose_commit_is_not_answered_says_so_in_one_line(
    tmp_path: Path, pg_url: str
) -> None:
    """A real ``register`` whose COMMIT reaches a backend that then stops: a deferred trigger
    makes the COMMIT wait (on an advisory lock the test holds), the test stops that backend
    (SIGSTOP) there and lets the lock go. The command ends within its bounds, exit 75, one
    line: the outcome is unknown and where to look."""
    import psycopg

    coord = Coord(tmp_path)
    coord.env["RINGRIFT_COORD_DB"] = pg_url
    coord.engine = "postgres"
    coord.write_config("store: {busy_timeout: 0.5, connect_timeout: 2}\n")
    first = coord("register", "selfplay", "--node", "n1", "-q")  # the schema exists
    assert first.returncode == 0, first.stderr
    holder = psycopg.connect(pg_url, autocommit=True)
    stopped: int | None = None
    try:
        started = time.monotonic()
        proc, stopped = _register_held(coord, holder, _SHORT_MARGINS_CLI)
        os.kill(stopped, signal.SIGSTOP)
        holder.execute("SELECT pg_advisory_unlock(%s)", (_HOLD_KEY,))
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        holder.close()
    assert proc.returncode == 3, err  # not 75 ("nothing was decided, try again")
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "did not answer the commit" in lines[0] and "is unknown" in lines[0], err
    assert "ringrift-coord tasks" in lines[0] and "nothing was decided" not in lines[0], err
    assert took < 30, took
    listed = coord("tasks")  # where the message points: it answers
    assert listed.returncode == 0, listed.stderr


def test_postgres_a_command_interrupted_during_its_commit_says_the_outcome_is_unknown(
    tmp_path: Path, pg_url: str
) -> None:
    """Ctrl-C (SIGINT) reaches a ``register`` while its COMMIT waits on the server (a
    deferred trigger holds it): the server has the COMMIT, and psycopg's cancel may come
    before or after it commits, so the command cannot know the outcome. It exits 130, in
    one line that says "interrupted", that the outcome is unknown and where to look."""
    import psycopg

    coord = Coord(tmp_path)
    coord.env["RINGRIFT_COORD_DB"] = pg_url
    coord.engine = "postgres"
    first = coord("register", "selfplay", "--node", "n1", "-q")  # the schema exists
    assert first.returncode == 0, first.stderr
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        proc, _ = _register_held(coord, holder, _CLI)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ringrift-coord: error: interrupted; the commit to PostgreSQL"), err
    assert "is unknown" in lines[0] and "ringrift-coord tasks" in lines[0], err
    listed = coord("tasks")  # where the message points: it answers
    assert listed.returncode == 0, listed.stderr


def test_postgres_a_store_interrupted_during_its_commit_admits_again(pg_url: str) -> None:
    """A signal's exception (a handler that raises, as ``run --wait``'s SIGTERM does) while
    an in-process admission's COMMIT is out: it says the outcome is unknown, and the same
    store (a launcher daemon's, ``serve``'s) admits again afterwards on a fresh connection,
    its scope and description readable in between (the closed connection is not used)."""
    import psycopg

    from ringrift_coord.context import Context
    from ringrift_coord.errors import SignalError
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    work = Path(tempfile.mkdtemp(prefix="gaps-intr-"))
    (work / "c.yaml").write_text(
        "task_limits:\n  selfplay: {per_node: 50}\nrate_limits:\n  selfplay: {per_minute: null}\n"
    )
    ctx = Context.open(
        db=pg_url,
        state_dir=str(work / "state"),
        config=str(work / "c.yaml"),
        env={"USER": "t", "RINGRIFT_COORD_SET": "resources.live_host=false"},
    )
    coord, me = TaskCoordinator(ctx), Holder(pid=os.getpid())
    assert coord.acquire("selfplay", "n1", holder=me).allowed  # connected, migrated

    def raise_signal(signum: int, frame: object) -> None:
        raise SignalError("stopped by a signal")

    holder = psycopg.connect(pg_url, autocommit=True)
    previous = signal.signal(signal.SIGALRM, raise_signal)
    try:
        _hold_commits(holder)
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # the COMMIT is waiting in its trigger by then
        with pytest.raises(SignalError) as raised:
            coord.acquire("selfplay", "n1", holder=me)
        signal.setitimer(signal.ITIMER_REAL, 0)
        notes = " ".join(getattr(raised.value, "__notes__", []))
        assert "had been sent" in notes and "is unknown" in notes, notes
        assert ctx.store.scope.startswith("cluster-wide on postgres ")
        assert ctx.store.describe()["engine"] == "postgres"
        holder.execute("DROP TRIGGER gaps_hold ON tasks")
        holder.execute("SELECT pg_advisory_unlock(%s)", (_HOLD_KEY,))
        for _ in range(2):  # a fresh connection, and then the usual one
            assert coord.acquire("selfplay", "n1", holder=me).allowed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        holder.close()
        ctx.close()
        shutil.rmtree(work, ignore_errors=True)
