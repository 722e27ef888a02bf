"""``doctor`` and ``status``'s long-hold line against real stores, real processes and real
signals: a holder stopped inside a write transaction, a long reader, a PostgreSQL session idle
in transaction, a halt file that disagrees with the store, a bad config value, a
world-writable state directory, a store written by a newer version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import Coord, wait_for

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


@contextmanager
def child(code: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process running ``code`` (which prints "ready" when in place); killed at the
    end whatever happened."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


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
    assert {"clock", "psutil", "nvml", "readings", "halt"} <= set(names)
    for entry in document["checks"]:
        assert set(entry) == {"name", "level", "found", "fix", "details"}
        assert entry["level"] in LEVELS and entry["level"] != "fail", entry
    assert check(document, "store")["details"]["engine"] == coord.engine
    assert check(document, "schema")["level"] == "ok"
    if coord.engine == "sqlite":
        assert check(document, "integrity")["found"].startswith("quick_check ok")
    else:
        assert "statement_timeout" in check(document, "engine")["details"]
    text = coord("doctor", env={"COLUMNS": "80"})
    assert text.returncode == 0 and text.stdout.splitlines()[-1].startswith("healthy")
    assert all(len(line) <= 80 for line in text.stdout.splitlines()), text.stdout


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
        assert not named["stopped"] and named["held_at_most"] is True
        assert f"pid {reader.pid} (" in locks["found"]
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
