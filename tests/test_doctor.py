"""``doctor`` and ``status``'s long-hold line against real stores, real processes and real
signals: a holder stopped inside a write transaction, a long reader, a PostgreSQL session idle
in transaction, a halt file that disagrees with the store, a bad config value, a
world-writable state directory, a store written by a newer version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import pytest
from conftest import Coord, own_tmpfs, ready_child, wait_for

from ringrift_coord.doctor import LEVELS

ENGINES = ("sqlite", "postgres")


def doctor(coord: Coord, *args: str) -> tuple[int, dict[str, Any]]:
    done = coord("--json", *args, "doctor")
    assert done.stdout, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def check(document: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in document["checks"] if c["name"] == name]
    return found


def raw_store(coord: Coord) -> Any:
    """The coord's store, opened in this process (its own connection)."""
    if coord.engine == "postgres":
        from ringrift_coord.store.postgres import PostgresStore

        return PostgresStore(coord.env["RINGRIFT_COORD_DB"], busy_timeout=2)
    from ringrift_coord.store.sqlite import SQLiteStore

    return SQLiteStore(str(coord.db), busy_timeout=2)


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    return data[data.rfind(b")") + 2 :].split()[0].decode()


child = ready_child


def test_healthy_store_is_exit_0_with_every_check_in_the_document(coord: Coord) -> None:
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    code, document = doctor(coord)
    assert code == 0, document
    assert list(document) == [
        "schema_version",
        "healthy",
        "failed_checks",
        "warned_checks",
        "checks",
        "at",
    ]
    assert document["healthy"] is True and document["failed_checks"] == 0
    names = [c["name"] for c in document["checks"]]
    for name in ("config", "state directory", "store", "schema", "admission lock", "locks"):
        assert name in names
    assert ("writable" in names) == (coord.engine == "sqlite")
    assert {"clock", "psutil", "nvml", "readings", "halt"} <= set(names)
    for entry in document["checks"]:
        assert set(entry) == {"name", "level", "found", "fix", "details"}
        assert entry["level"] in LEVELS and entry["level"] != "fail", entry
    assert check(document, "store")["details"]["engine"] == coord.engine
    assert check(document, "schema")["level"] == "ok"
    if coord.engine == "sqlite":
        assert check(document, "integrity")["found"].startswith("quick_check ok")
    else:
        engine = check(document, "engine")
        assert engine["details"]["statement_timeout_seconds"] == 10.0  # busy 5 s + 5 s
        assert "admission sessions: lock_timeout 5 s" in engine["found"], engine
    text = coord("doctor", env={"COLUMNS": "80"})
    assert text.returncode == 0 and text.stdout.splitlines()[-1].startswith("healthy")
    assert all(len(line) <= 80 for line in text.stdout.splitlines()), text.stdout
    # in a pipe with no COLUMNS (cron, `| grep`): one line per check, none cut in two
    piped = subprocess.run(
        coord.argv("doctor"),
        env={k: v for k, v in coord.env.items() if k != "COLUMNS"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = piped.stdout.splitlines()
    assert piped.returncode == 0 and len(lines) == len(document["checks"]) + 1, piped.stdout
    assert all(line.split()[0] in LEVELS for line in lines[:-1]), piped.stdout


WRITER = """
import os, signal, sys
from ringrift_coord.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
with store.write() as tx:
    tx.query("SELECT COUNT(*) AS n FROM tasks")
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_process_stopped_inside_a_sqlite_write_is_named_by_doctor_and_status(
    coord: Coord, engine: str
) -> None:
    if engine != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL: the idle-in-transaction test")
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    code = WRITER.replace("sys.argv[1]", repr(str(coord.db)))
    with child(code) as holder:
        wait_for(lambda: state_of(holder.pid) == "T", 10, "the writer to stop")
        blocked = coord("can-spawn", "selfplay", "--node", "n1", "--set", "store.busy_timeout=0.3")
        assert blocked.returncode == 75, blocked.stderr  # what every admission sees meanwhile
        code_, document = doctor(coord, "--set", "store.busy_timeout=0.5")
        assert code_ == 1 and document["healthy"] is False
        assert check(document, "admission lock")["level"] == "fail"
        locks = check(document, "locks")
        assert locks["level"] == "fail"
        (named,) = locks["details"]["holders"]
        assert named["pid"] == holder.pid and named["lock"] == "write lock" and named["stopped"]
        assert f"pid {holder.pid} (" in locks["found"] and "stopped" in locks["found"]
        assert f"kill -CONT {holder.pid}" in locks["fix"]
        status = coord("status")
        assert status.returncode == 0, status.stderr
        (warning,) = [line for line in status.stdout.splitlines() if line.startswith("warning:")]
        assert f"pid {holder.pid} (" in warning and "write lock" in warning
        doc = json.loads(coord("--json", "status").stdout)
        assert [h["pid"] for h in doc["long_holds"]] == [holder.pid]
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait(timeout=30)
    code_, document = doctor(coord, "--set", "store.busy_timeout=0.5")
    assert code_ == 0 and check(document, "locks")["details"]["holders"] == []
    assert json.loads(coord("--json", "status").stdout)["long_holds"] == []


READER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT COUNT(*) FROM tasks").fetchall()
print("ready", flush=True)
time.sleep(300)
"""


def test_a_long_reader_is_named_with_its_pid(coord: Coord, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("SQLite's read snapshots")
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    with child(READER.replace("sys.argv[1]", repr(str(coord.db)))) as reader:
        # not long yet by the default (30 s): nothing said
        code, document = doctor(coord)
        assert code == 0 and check(document, "locks")["level"] == "ok"
        code, document = doctor(coord, "--set", "store.long_hold=0")
        assert code == 0, document  # a warning: admission still works
        locks = check(document, "locks")
        assert locks["level"] == "warn"
        (named,) = locks["details"]["holders"]
        assert named["pid"] == reader.pid and named["lock"] == "read snapshot"
        assert not named["stopped"] and named["held_at_least"] is True
        assert named["held_seconds"] >= 1.0 and named["looks"] > 2  # measured over the looks
        assert f"pid {reader.pid} (" in locks["found"]
        assert "for at least the last" in locks["found"], locks
        status = coord("--set", "store.long_hold=0", "status", "--brief")
        assert f"warning: pid {reader.pid} (" in status.stdout, status.stdout


def test_a_postgres_session_idle_in_transaction_is_named(coord: Coord, engine: str) -> None:
    if engine != "postgres":
        pytest.skip("pg_stat_activity")
    import psycopg

    from ringrift_coord.store.postgres import ADMISSION_LOCK

    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    url = coord.env["RINGRIFT_COORD_DB"]
    with psycopg.connect(url, application_name="stuck-job") as conn:
        conn.execute("SELECT COUNT(*) FROM tasks").fetchall()  # a transaction, left open
        backend = conn.info.backend_pid
        code, document = doctor(coord, "--set", "store.long_hold=0")
        assert code == 0, document
        locks = check(document, "locks")
        assert locks["level"] == "warn"
        (named,) = locks["details"]["holders"]
        assert named["pid"] == backend and named["application_name"] == "stuck-job"
        assert named["session_state"] == "idle in transaction"
        assert f"session {backend} (stuck-job" in locks["found"]
        assert f"pg_terminate_backend({backend})" in locks["fix"]
        # the same session now holds the admission lock: every admission waits, doctor fails
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
        code, document = doctor(
            coord, "--set", "store.long_hold=0", "--set", "store.busy_timeout=0.5"
        )
        assert code == 1
        assert check(document, "admission lock")["level"] == "fail"
        locks = check(document, "locks")
        assert locks["level"] == "fail" and locks["details"]["holders"][0]["pid"] == backend
        assert "holding the admission lock" in locks["found"]
        doc = json.loads(coord("--json", "--set", "store.long_hold=0", "status").stdout)
        assert [h["pid"] for h in doc["long_holds"]] == [backend]
        screen = coord("--set", "store.long_hold=0", "status").stdout
        assert f"warning: PostgreSQL session {backend} (stuck-job" in screen, screen
        # an admission queued behind it is counted as waiting on the admission lock
        waiter = coord.popen(
            "--set", "store.busy_timeout=60", "can-spawn", "selfplay", "--node", "n2"
        )
        try:
            with psycopg.connect(url, autocommit=True) as watcher:
                wait_for(
                    lambda: watcher.execute(
                        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    ).fetchone()[0],  # type: ignore[index]
                    30,
                    "the admission to queue on the lock",
                )
            code, document = doctor(coord, "--set", "store.busy_timeout=0.5")
            locks = check(document, "locks")
            assert locks["details"]["waiting"] >= 1, locks  # the waiter; doctor's probe ended
            # the probe failed: the holder is named although younger than store.long_hold
            assert locks["level"] == "fail" and locks["details"]["holders"][0]["pid"] == backend
            assert "waiting on the admission lock" in locks["found"]
        finally:
            conn.rollback()  # the lock goes: the waiter is admitted
            out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
    code, document = doctor(coord, "--set", "store.long_hold=0")
    assert code == 0 and check(document, "locks")["details"]["holders"] == []


def test_a_halt_file_that_disagrees_with_the_store_is_a_warning(coord: Coord) -> None:
    assert coord("halt", "--reason", "maintenance").returncode == 0
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    assert halt_file.exists()
    code, document = doctor(coord)
    assert code == 0 and check(document, "halt")["level"] == "warn"  # halted: said, not failed
    assert "halted" in check(document, "halt")["found"]
    with raw_store(coord) as store, store.write() as tx:  # lifted elsewhere: the row alone goes
        tx.execute("DELETE FROM halts")
    code, document = doctor(coord)
    halt = check(document, "halt")
    assert code == 0 and halt["level"] == "warn", halt
    assert "no longer holds" in halt["found"] and halt["fix"].startswith(f"rm {halt_file}")
    # the other way round: the store halted, its mirror removed by hand
    halt_file.unlink()
    assert coord("halt", "--reason", "again").returncode == 0
    halt_file.unlink()
    code, document = doctor(coord)
    halt = check(document, "halt")
    assert code == 0 and halt["level"] == "warn" and "is missing" in halt["found"], halt
    assert coord("unhalt").returncode == 0
    code, document = doctor(coord)
    assert check(document, "halt")["level"] == "ok"


def test_a_halt_file_that_is_not_a_file_gets_a_fix_that_removes_it(coord: Coord) -> None:
    """A directory where the halt file belongs fails the halt check with a fix that works on
    it (``rm`` alone refuses a directory); a FIFO gets ``rm``."""
    assert coord("register", "selfplay", "-q").returncode == 0
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    halt_file.mkdir()
    code, document = doctor(coord)
    halt = check(document, "halt")
    assert code == 1 and halt["level"] == "fail", halt
    assert halt["fix"].startswith(f"remove it: rmdir {halt_file}"), halt
    halt_file.rmdir()
    os.mkfifo(halt_file)
    code, document = doctor(coord)
    halt = check(document, "halt")
    assert code == 1 and halt["fix"] == f"remove it: rm {halt_file}", halt


def test_a_bad_config_value_is_reported(coord: Coord, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("the config does not depend on the engine")
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    coord.write_config("serve:\n  port: -5\n")  # a deferred section: admission goes on
    code, document = doctor(coord)
    assert code == 1
    config = check(document, "config")
    assert config["level"] == "fail" and "serve.port" in config["found"]
    assert str(coord.config) in config["fix"]
    coord.write_config("store:\n  busy_timeout: -5\n")  # nothing loads: exit 3, one line
    done = coord("doctor")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "the configuration does not load" in line and "store.busy_timeout" in line


def test_a_world_writable_state_directory_fails_with_the_chmod_fix(
    coord: Coord, engine: str
) -> None:
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    os.chmod(coord.state_dir, 0o777)
    try:
        code, document = doctor(coord)
        text = coord("doctor")
    finally:
        os.chmod(coord.state_dir, 0o700)
    assert code == 1
    entry = check(document, "state directory")
    assert entry["level"] == "fail" and "0777" in entry["found"]
    assert entry["fix"].startswith(f"chmod 700 {coord.state_dir}")
    assert text.returncode == 1 and f"fix: chmod 700 {coord.state_dir}" in text.stdout


def test_a_store_file_that_cannot_be_written_fails_though_the_lock_probe_passes(
    coord: Coord,
) -> None:
    """An immutable store file (chattr +i: even root cannot write it) lets the admission
    probe take the lock and roll back, while every admission exits 3: doctor says so."""
    if coord.engine != "sqlite":
        pytest.skip("SQLite's file")
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    made = subprocess.run(["chattr", "+i", str(coord.db)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {made.stderr.strip()}")
    try:
        code, document = doctor(coord)
        refused = coord("can-spawn", "selfplay", "--node", "n1")
    finally:
        subprocess.run(["chattr", "-i", str(coord.db)], check=True)
    assert refused.returncode == 3, refused.stderr  # what doctor must not call healthy
    assert code == 1 and document["healthy"] is False
    writable = check(document, "writable")
    assert writable["level"] == "fail" and "immutable" in writable["found"], writable
    assert "chattr -i" in writable["fix"]
    assert check(document, "admission lock")["level"] == "ok"
    code, document = doctor(coord)
    assert code == 0 and check(document, "writable")["level"] == "ok", document


def test_the_fix_of_a_store_that_does_not_open_follows_its_cause(coord: Coord) -> None:
    """A store directory that cannot be written, a server that cannot be reached: the fix
    says that, never "restore the store from a backup" nor a locks check that is not run."""
    if coord.engine != "sqlite":
        pytest.skip("SQLite's directory (the server: a closed port)")
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    made = subprocess.run(["chattr", "+i", str(coord.state_dir)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {made.stderr.strip()}")
    try:
        code, document = doctor(coord)
    finally:
        subprocess.run(["chattr", "-i", str(coord.state_dir)], check=True)
    store = check(document, "store")
    assert code == 1 and " is read-only here (" in store["found"], store
    assert "backup" not in store["fix"] and "chattr -i" in store["fix"], store
    code, document = doctor(coord, "--db", "postgresql://127.0.0.1:1/x?connect_timeout=2")
    store = check(document, "store")
    assert code == 1 and "is unreachable" in store["found"], store
    assert store["fix"] == (
        "is the PostgreSQL server up and reachable from here (host, port, firewall)?"
    )
    assert "locks" not in [c["name"] for c in document["checks"]]


def test_a_store_written_by_a_newer_version_fails(coord: Coord, engine: str) -> None:
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    with raw_store(coord) as store, store.write() as tx:
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
            ("9999_from_the_future", tx.now()),
        )
    code, document = doctor(coord)
    assert code == 1
    schema = check(document, "schema")
    assert schema["level"] == "fail" and "9999_from_the_future" in schema["found"]
    assert "upgrade" in schema["fix"]


def test_a_corrupt_sqlite_store_fails_and_the_other_checks_still_run(
    coord: Coord, engine: str
) -> None:
    if engine != "sqlite":
        pytest.skip("a SQLite file")
    for node in ("n1", "n2", "n3"):
        assert (
            coord("register", "selfplay", "--node", node, "--pid", str(os.getpid())).returncode == 0
        )
    size = coord.db.stat().st_size
    with open(coord.db, "r+b") as handle:  # every page past the first two: garbage
        for offset in range(2048, size, 1024):
            handle.seek(offset + 100)
            handle.write(b"\xff" * 200)
    code, document = doctor(coord)
    assert code == 1
    store = check(document, "store")
    assert store["level"] == "fail" and "corrupt" in store["found"]
    assert check(document, "readings")["level"] == "skip"
    assert check(document, "halt")["level"] == "ok"  # the file alone, said so


def test_a_wal_past_its_threshold_is_a_warning(tmp_path: Any) -> None:
    from ringrift_coord.doctor import WAL_WARN_BYTES, Report, check_wal

    path = str(tmp_path / "tasks.db")
    with open(path + "-wal", "wb") as handle:
        handle.truncate(WAL_WARN_BYTES)  # sparse: the size is what is looked at
    report = Report()
    check_wal(report, path)
    assert report.checks[-1]["level"] == "ok"
    with open(path + "-wal", "ab") as handle:
        handle.truncate(WAL_WARN_BYTES + 1)
    check_wal(report, path)
    (entry,) = report.checks[-1:]
    assert entry["level"] == "warn" and entry["details"]["wal_bytes"] == WAL_WARN_BYTES + 1
    assert "64.0 MiB" in entry["found"] and entry["fix"]


def test_a_store_clock_an_hour_off_is_a_warning(engine_db: Any) -> None:
    import time

    from ringrift_coord.clock import ManualClock
    from ringrift_coord.doctor import Report, check_clock

    report = Report()
    check_clock(report, engine_db.open(clock=ManualClock(time.time())))
    assert report.checks[-1]["level"] == "ok"
    check_clock(report, engine_db.open(clock=ManualClock(time.time() + 3600)))
    entry = report.checks[-1]
    if engine_db.engine == "sqlite":  # the store's clock is this host's: nothing to compare
        assert entry["level"] == "ok" and "this host's clock" in entry["found"]
        return
    assert entry["level"] == "warn" and "ahead of this host's" in entry["found"], entry
    assert 3590 < entry["details"]["skew_seconds"] < 3610
    assert "sync" in entry["fix"]


# --------------------------------------------------------------------------- doctor writes nothing


@pytest.mark.pg_empty
def test_doctor_leaves_an_empty_postgres_database_empty(coord: Coord, engine: str) -> None:
    if engine != "postgres":
        pytest.skip("an empty PostgreSQL database; SQLite: a missing file is not created")
    import psycopg

    code, document = doctor(coord)
    store = check(document, "store")
    assert store["level"] == "warn" and "no ringrift-coord store here" in store["found"], store
    assert "schema" not in [c["name"] for c in document["checks"]]
    with psycopg.connect(coord.env["RINGRIFT_COORD_DB"]) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [], tables  # no schema made


def _old_store(coord: Coord) -> list[str]:
    """A store as a version without the last migration left it; the names it records."""
    from ringrift_coord.store.migrations import MIGRATIONS, statements

    older = MIGRATIONS[:-1]
    if coord.engine == "postgres":
        import psycopg

        with psycopg.connect(coord.env["RINGRIFT_COORD_DB"]) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            for name, scripts in older:
                for statement in statements(scripts["postgres"]):
                    conn.execute(statement)  # type: ignore[arg-type]
                conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (name,))
        return [name for name, _ in older]
    import sqlite3

    from ringrift_coord.statedir import ensure_state_dir
    from ringrift_coord.store.sqlite import write_store_id

    ensure_state_dir(str(coord.state_dir))
    conn = sqlite3.connect(str(coord.db), isolation_level=None)
    try:
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA application_id=4242")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, scripts in older:
            for statement in statements(scripts["sqlite"]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (name,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    os.chmod(coord.db, 0o600)
    write_store_id(str(coord.db), 4242)
    return [name for name, _ in older]


@pytest.mark.pg_empty
def test_doctor_does_not_migrate_an_older_store(coord: Coord, engine: str) -> None:
    from ringrift_coord.store.migrations import MIGRATION_NAMES

    older = _old_store(coord)
    before = coord.db.read_bytes() if engine == "sqlite" else b""
    code, document = doctor(coord)
    schema = check(document, "schema")
    assert code == 1 and schema["level"] == "fail", schema
    assert f"{len(older)} of {len(MIGRATION_NAMES)} migrations applied" in schema["found"]
    assert schema["details"]["missing"] == [MIGRATION_NAMES[-1]]
    assert "ringrift-coord status" in schema["fix"] and "upgrade" in schema["fix"]
    if engine == "sqlite":
        assert coord.db.read_bytes() == before  # not one byte written
    else:
        import psycopg

        with psycopg.connect(coord.env["RINGRIFT_COORD_DB"]) as conn:
            rows = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
        assert [r[0] for r in rows] == older
    # the fix it names works: status migrates it, and doctor is then content
    assert coord("status").returncode == 0
    assert check(doctor(coord)[1], "schema")["level"] == "ok"


def test_a_missing_database_directory_is_said(coord: Coord, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("a SQLite path")
    code, document = doctor(coord, "--db", str(coord.tmp / "no-such-dir" / "x.db"))
    store = check(document, "store")
    assert code == 1 and store["level"] == "fail", store
    assert f"its directory {coord.tmp / 'no-such-dir'} does not exist" in store["found"]


def test_a_full_filesystem_under_a_db_elsewhere_fails_its_own_check(
    coord: Coord, engine: str
) -> None:
    """``--db`` on another filesystem than the state directory: its filesystem is checked
    too (the state directory's said healthy while every admission failed 'disk full')."""
    if engine != "sqlite":
        pytest.skip("a SQLite path")
    with own_tmpfs(coord.tmp / "fs", "size=256k,mode=0755") as where:
        db = str(where / "tasks.db")
        assert coord("--db", db, "register", "selfplay").returncode == 0
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)  # unbuffered: the last write is the one that fails
        except OSError:
            pass
        finally:
            os.close(fd)
        code, document = doctor(coord, "--db", db)
        full = check(document, "db filesystem")
        assert code == 1 and full["level"] == "fail", full
        assert full["found"].startswith(f"{where}: tmpfs, ") and "disk full" in full["found"]
        assert full["fix"] == f"free space on the filesystem of {where}"
        assert check(document, "filesystem")["level"] == "ok"  # (the state directory's)
        store = check(document, "store")
        assert "disk full" in store["found"] and "backup" not in store["fix"], store
    # the same filesystem as the state directory: no second line
    _, document = doctor(coord, "--db", str(coord.state_dir / "other.db"))
    assert [c["name"] for c in document["checks"]].count("db filesystem") == 0


# --------------------------------------------------------------------------- honest long holds

CHURN = """
import sys, time
from ringrift_coord.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], busy_timeout=30)
print("ready", flush=True)
while True:  # the write lock held about half the time, 10 ms at a time
    with store.write() as tx:
        tx.query("SELECT COUNT(*) AS n FROM tasks")
        time.sleep(0.01)
    time.sleep(0.01)
"""


def test_busy_healthy_waiters_and_writers_are_not_named_a_stopped_writer_is(
    coord: Coord, engine: str
) -> None:
    """Eight `run --wait` waiters polling every 50 ms and two long-lived processes writing in
    a loop (each holding the write lock about half the time, 10 ms at a time) hold the store's
    locks most of the time, each for a moment: no look of status or doctor names one (two
    looks 0.2 s apart, as before, named a churner in about one look in four). A writer
    stopped inside its transaction is named, as stopped."""
    if engine != "sqlite":
        pytest.skip("SQLite's lock table; PostgreSQL times each transaction exactly")
    coord.write_config(
        "task_limits: {selfplay: {per_node: 1, cluster: 500}}\n"
        "rate_limits: {selfplay: {per_minute: null}}\n"
        "run: {poll_interval: 0.05, wake_poll: 0.05}\n"  # waiters ask the store every 50 ms
    )
    sleeper = subprocess.Popen(["sleep", "600"])
    waiters: list[subprocess.Popen[str]] = []
    try:
        done = coord("register", "selfplay", "--node", "n1", "--pid", str(sleeper.pid))
        assert done.returncode == 0, done.stderr
        for _ in range(8):
            waiters.append(
                coord.popen(
                    "run",
                    "selfplay",
                    "--node",
                    "n1",
                    "--wait",
                    "--",
                    "true",
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        churn = CHURN.replace("sys.argv[1]", repr(str(coord.db)))
        with child(churn), child(churn):
            import sqlite3

            def queued() -> int:
                conn = sqlite3.connect(f"file:{coord.db}?mode=ro", uri=True, timeout=10)
                try:
                    return int(conn.execute("SELECT COUNT(*) FROM waiters").fetchone()[0])
                finally:
                    conn.close()

            wait_for(lambda: queued() == 8, 60, "the eight waiters to queue")
            for _ in range(6):
                doc = json.loads(coord("--json", "--set", "store.long_hold=0", "status").stdout)
                assert doc["long_holds"] == [], doc["long_holds"]
            for _ in range(2):
                code, document = doctor(coord, "--set", "store.long_hold=0")
                locks = check(document, "locks")
                assert locks["level"] == "ok" and locks["details"]["holders"] == [], locks
            assert all(w.poll() is None for w in waiters)  # still waiting all along
            with child(WRITER.replace("sys.argv[1]", repr(str(coord.db)))) as stopped:
                wait_for(lambda: state_of(stopped.pid) == "T", 10, "the writer to stop")
                doc = json.loads(coord("--json", "status").stdout)
                assert [h["pid"] for h in doc["long_holds"]] == [stopped.pid], doc["long_holds"]
                code, document = doctor(coord, "--set", "store.busy_timeout=0.5")
                locks = check(document, "locks")
                assert code == 1 and locks["level"] == "fail", locks
                assert [h["pid"] for h in locks["details"]["holders"]] == [stopped.pid]
                assert "stopped (SIGSTOP)" in locks["found"]
                os.kill(stopped.pid, signal.SIGCONT)
    finally:
        for proc in waiters:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_a_hidden_postgres_holder_of_the_admission_lock_is_named(
    coord: Coord, engine: str, pg_server: Any
) -> None:
    """A role with SELECT only (no pg_read_all_stats) sees another role's session without its
    times: the holder of the admission lock is still named, from pg_locks."""
    if engine != "postgres":
        pytest.skip("pg_locks")
    import time

    import psycopg

    from ringrift_coord.store.postgres import ADMISSION_LOCK

    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    url = coord.env["RINGRIFT_COORD_DB"]
    role = f"watcher_{os.getpid()}_{time.monotonic_ns() % 100000}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    watcher = {"RINGRIFT_COORD_DB": url.replace("ringrift@", f"{role}@")}
    with psycopg.connect(url, application_name="stuck-job") as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
        backend = conn.info.backend_pid
        done = coord("--json", "--set", "store.busy_timeout=0.5", "doctor", env=watcher)
        document = json.loads(done.stdout)
        assert done.returncode == 1, document
        assert check(document, "admission lock")["level"] == "fail"
        locks = check(document, "locks")
        assert locks["level"] == "fail", locks
        (named,) = locks["details"]["holders"]
        assert named["pid"] == backend and named["hidden"] is True
        assert named["held_seconds"] is None and named["lock"] == "admission lock"
        assert f"session {backend} (stuck-job" in locks["found"]
        assert "pg_read_all_stats" in locks["found"]
        assert f"pg_terminate_backend({backend})" in locks["fix"]
        status = coord("--json", "status", env=watcher)
        assert status.returncode == 0, status.stderr
        assert [h["pid"] for h in json.loads(status.stdout)["long_holds"]] == [backend]
        conn.rollback()
    document = json.loads(coord("--json", "doctor", env=watcher).stdout)
    assert document["healthy"] is True and check(document, "locks")["level"] == "ok"


def test_a_cluster_wide_halt_is_said_without_a_state_directory(coord: Coord, engine: str) -> None:
    if engine == "sqlite":  # a store outside the state directory
        coord.env["RINGRIFT_COORD_DB"] = str(coord.tmp / "shared.db")
    assert coord("halt", "--reason", "bad model pushed").returncode == 0
    elsewhere = {"RINGRIFT_COORDINATOR_DIR": str(coord.tmp / "not-made-yet")}
    done = coord("--json", "doctor", env=elsewhere)
    document = json.loads(done.stdout)
    assert check(document, "state directory")["level"] == "warn"
    halt = check(document, "halt")
    assert halt["level"] == "warn" and halt["found"].startswith("halted: every"), halt
    assert "unhalt" in halt["fix"]


# --------------------------------------------------------------------------- /proc/locks reading


def test_a_lock_on_the_same_inode_of_another_device_is_not_taken_for_ours(
    engine_db: Any, tmp_path: Any
) -> None:
    if engine_db.engine != "sqlite":
        pytest.skip("SQLite's -shm file")
    from ringrift_coord.diagnose import sqlite_holders

    store = engine_db.open()
    with store.read() as tx:
        tx.query("SELECT 1")
    st = os.stat(engine_db.url + "-shm")
    ours = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    other = f"ff:7f:{st.st_ino}"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        locks = tmp_path / "locks"
        locks.write_text(
            f"1: POSIX  ADVISORY  WRITE {sleeper.pid} {ours} 120 120\n"
            f"2: POSIX  ADVISORY  READ 4242424 {other} 123 123\n"
            f"3: POSIX  ADVISORY  READ 0 {ours} 124 124\n"
        )
        holders = sqlite_holders(engine_db.url, str(locks))
        assert [(h["pid"], h["lock"]) for h in holders] == [
            (None, "read snapshot"),
            (sleeper.pid, "write lock"),
        ]
        assert "another pid namespace" in holders[0]["cmdline"]
        # with no lock on the exact device, the inode alone decides (an overlay filesystem)
        locks.write_text(f"2: POSIX  ADVISORY  READ {sleeper.pid} {other} 123 123\n")
        assert [h["pid"] for h in sqlite_holders(engine_db.url, str(locks))] == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_failed_probe_without_a_seen_holder_and_a_checkpointer_are_worded_so(
    engine_db: Any,
) -> None:
    """Beside a failed admission probe, no holder seen is "holder not seen", never "ok"; a
    checkpointer is never advised to be killed (only other checkpoints wait for it)."""
    if engine_db.engine != "sqlite":
        pytest.skip("SQLite's lock table")
    import time

    from ringrift_coord.diagnose import holder_line
    from ringrift_coord.doctor import Report, check_sqlite_locks

    engine_db.open().close()
    report = Report()
    check_sqlite_locks(report, engine_db.url, 30.0, [], time.monotonic(), False)
    (locks,) = report.checks
    assert locks["level"] == "warn" and locks["found"].startswith("holder not seen"), locks
    line = holder_line(
        {"pid": 77, "lock": "checkpoint lock", "cmdline": "x", "stopped": False, "looks": 1}
    )
    assert "only other checkpoints wait for it" in line and "kill" not in line, line


LIVE_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("ready", flush=True)
time.sleep(600)
"""


def test_after_a_failed_probe_doctor_watches_the_writer_its_span_not_the_probe_again(
    coord: Coord,
) -> None:
    """A live writer holds the write lock through a failed 5 s probe: the look before the
    probe counts as the first, and the watch after it lasts the rest of its span (1 s: ~40
    looks), not as many looks again as the probe's seconds held (~240: doctor took 12 s)."""
    if coord.engine != "sqlite":
        pytest.skip("SQLite's lock table")
    import time

    from ringrift_coord.diagnose import DOCTOR_WATCH, LOOK_INTERVAL, watch_sqlite_holders
    from ringrift_coord.diagnose import sqlite_holders as holders_of

    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    with child(LIVE_WRITER, str(coord.db)) as writer:
        before = [h for h in holders_of(str(coord.db)) if h["lock"] == "write lock"]
        if not before:
            pytest.skip("no lock table to read here")
        probe = 5.0  # as if the probe had failed after its busy timeout
        named = watch_sqlite_holders(
            str(coord.db),
            DOCTOR_WATCH + probe,
            0.0,
            first=before,
            first_at=time.monotonic() - probe,
        )
    (holder,) = named
    assert holder["pid"] == writer.pid and holder["lock"] == "write lock"
    assert holder["held_seconds"] >= DOCTOR_WATCH + probe
    assert holder["looks"] <= DOCTOR_WATCH / LOOK_INTERVAL + 2, holder["looks"]
