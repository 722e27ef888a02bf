"""Faults of the store, injected for real: the SQLite file deleted or replaced under a running
``run`` wrapper, a reader held open while admissions pile up in the WAL, a corrupted tasks
table, PostgreSQL restarted or stopped under a holder and an admission, a killed wrapper
whose job lives on (PostgreSQL leases kept by the host's own liveness check), and a job that
leaves its process group with ``setsid``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Coord, EngineDB, alive, wait_for

ONE_SLOT = """\
task_limits:
  selfplay: {per_node: 1}
store: {lease_ttl: 1.5}
"""

# A job that says it started, then waits for a file to appear and exits 7.
JOB = (
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').close()\n"
    "while not os.path.exists(sys.argv[2]):\n"
    "    time.sleep(0.05)\n"
    "sys.exit(7)\n"
)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class _Wrapper:
    """A ``run`` wrapper holding the one selfplay slot, its stderr in a file."""

    def __init__(self, coord: Coord, tmp: Path) -> None:
        self.started, self.go = tmp / "started", tmp / "go"
        self.err_path = tmp / "wrapper.err"
        self.err = open(self.err_path, "w")  # noqa: SIM115 (closed in finish)
        self.proc = coord.popen(
            "run",
            "selfplay",
            "--node",
            "n1",
            "--",
            sys.executable,
            "-c",
            JOB,
            str(self.started),
            str(self.go),
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        wait_for(lambda: self.started.exists() or self.proc.poll() is not None, 60, "the job")
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def finish(self) -> int:
        self.go.touch()
        code = self.proc.wait(60)
        self.err.close()
        return code


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_deleted_or_replaced_is_never_silently_recreated(
    coord: Coord, tmp_path: Path, how: str
) -> None:
    coord.write_config(ONE_SLOT)
    wrapper = _Wrapper(coord, tmp_path)
    marker = Path(str(coord.db) + ".id")
    assert marker.exists() and marker.stat().st_mode & 0o777 == coord.db.stat().st_mode & 0o777
    # the one slot is held: a second job is denied while the store is whole
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 1
    if how == "deleted":
        coord.db.unlink()
    else:  # another whole ringrift-coord store moved over it (mv other.db tasks.db)
        (tmp_path / "other").mkdir()
        other = Coord(tmp_path / "other")
        assert other("register", "training", "--node", "n9", "-q").returncode == 0
        os.replace(other.db, coord.db)
    for argv in (
        ("register", "selfplay", "--node", "n1", "-q"),
        ("can-spawn", "selfplay", "--node", "n1"),
        ("tasks",),
        ("halt", "--reason", "x"),
    ):
        refused = coord(*argv)
        assert refused.returncode == 3, (argv, refused.stderr)
        line = _one_line(refused)
        assert f"state store {coord.db} was {how}" in line, line
        assert f"remove {marker}" in line, line
    assert coord.db.exists() == (how == "replaced"), "a fresh store was created"
    # the running wrapper notices at its next lease renewal, says so once, keeps the job
    wait_for(lambda: "while this process had it open" in wrapper.stderr(), 30, "the notice")
    time.sleep(1.6)  # more renewal periods pass: still said once
    assert wrapper.proc.poll() is None
    assert wrapper.stderr().count("while this process had it open") == 1, wrapper.stderr()
    assert f"was {how} while this process had it open" in wrapper.stderr()
    code = wrapper.finish()
    assert code == 7, wrapper.stderr()  # the job's own exit code
    assert "could not release" in wrapper.stderr(), wrapper.stderr()
    assert "Traceback" not in wrapper.stderr()
    # the operator's explicit step: remove the marker (and the old store's WAL, which no
    # process uses now), and the store at the path is used
    marker.unlink()
    for side in ("-wal", "-shm"):
        Path(str(coord.db) + side).unlink(missing_ok=True)
    again = coord("register", "selfplay", "--node", "n1", "-q")
    assert again.returncode == 0, again.stderr
    assert marker.exists()


def test_a_restored_copy_of_the_same_store_is_accepted(coord: Coord, tmp_path: Path) -> None:
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(coord.db), sqlite3.connect(backup)
    try:
        src.backup(dst)
    finally:  # no process holds the store when it is deleted and restored (as advised)
        src.close()
        dst.close()
    coord.db.unlink()
    assert coord("tasks").returncode == 3
    os.replace(backup, coord.db)
    os.chmod(coord.db, 0o600)
    listed = coord("tasks", "--format", "tsv", "--no-header")
    assert listed.returncode == 0, listed.stderr
    assert "selfplay" in listed.stdout


def test_a_store_made_before_ids_is_adopted(coord: Coord) -> None:
    """A store created by an older version (application_id 0, no marker) gets an id and a
    marker on first use, and is then protected like any other."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    Path(str(coord.db) + ".id").unlink()
    with sqlite3.connect(coord.db) as conn:
        conn.execute("PRAGMA application_id = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as an old version's file: in the header
    assert coord("tasks").returncode == 0
    marker = Path(str(coord.db) + ".id")
    assert marker.exists()
    with sqlite3.connect(coord.db) as conn:
        found = conn.execute("PRAGMA application_id").fetchone()[0]
    assert found != 0 and marker.read_text().strip().endswith(f"{found:08x}")
    coord.db.unlink()
    assert "was deleted" in _one_line(coord("register", "selfplay", "--node", "n1"))


def test_the_restore_advice_is_safe_while_a_process_holds_the_deleted_store(
    coord: Coord, tmp_path: Path
) -> None:
    """A process still holding the deleted store keeps tasks.db-wal and -shm in place, and
    SQLite would replay that WAL into a restored file. Every refusal says to stop the
    processes and remove both first; done in that order, the backup comes back as it was."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(coord.db), sqlite3.connect(backup)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    old = sqlite3.connect(coord.db, isolation_level=None)
    old.execute("PRAGMA wal_autocheckpoint = 0")
    old.execute("UPDATE tasks SET node = 'ghost'")  # the deleted store's pages, in its WAL
    coord.db.unlink()
    wal, shm = Path(f"{coord.db}-wal"), Path(f"{coord.db}-shm")
    assert wal.exists() and shm.exists()
    line = _one_line(coord("tasks"))
    assert f"stop every process using it, remove {wal} and {shm}, then put the backup" in line
    # the advice, in its order: stop the holder, remove -wal and -shm, restore
    old.close()
    wal.unlink(missing_ok=True)
    shm.unlink(missing_ok=True)
    os.replace(backup, coord.db)
    os.chmod(coord.db, 0o600)
    listed = coord("--json", "tasks")
    assert listed.returncode == 0, listed.stderr
    assert [t["node"] for t in json.loads(listed.stdout)["tasks"]] == ["n1"]


def test_a_backup_restored_beside_a_live_deleted_stores_wal_is_refused(
    coord: Coord, tmp_path: Path
) -> None:
    """The operator restores the backup but a process still holds the deleted store (its
    -wal and -shm are in place): the store is refused (exit 3, naming the process and the
    steps), never read through the other store's WAL."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(coord.db), sqlite3.connect(backup)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    old = sqlite3.connect(coord.db, isolation_level=None)
    try:
        old.execute("PRAGMA wal_autocheckpoint = 0")
        old.execute("UPDATE tasks SET node = 'ghost'")  # the deleted store's pages, in its WAL
        coord.db.unlink()
        os.replace(backup, coord.db)  # restored without the steps
        os.chmod(coord.db, 0o600)
        for argv in (("tasks",), ("register", "selfplay", "--node", "n1", "-q")):
            refused = coord(*argv)
            assert refused.returncode == 3, (argv, refused.stdout, refused.stderr)
            line = _one_line(refused)
            assert f"belong to a deleted store that process {os.getpid()} still has open" in line
            assert f"remove {coord.db}-wal and {coord.db}-shm" in line, line
    finally:
        old.close()
    for side in ("-wal", "-shm"):
        Path(f"{coord.db}{side}").unlink(missing_ok=True)
    listed = coord("--json", "tasks")
    assert listed.returncode == 0, listed.stderr
    assert [t["node"] for t in json.loads(listed.stdout)["tasks"]] == ["n1"]


def test_a_process_that_lost_its_lock_on_the_store_is_not_taken_for_a_deleted_ones(
    engine_db,  # noqa: ANN001
) -> None:
    """Closing any descriptor of a file drops a process's POSIX locks on it (a second store
    opened in-process reads the header): that process holds the -shm but not the file's
    lock, yet has the same file open; other stores opened beside it are not refused."""
    first = engine_db.open()
    with first.read() as tx:
        tx.one("SELECT count(*) AS n FROM tasks")
    for _ in range(3):
        again = engine_db.open()
        with again.read() as tx:
            assert tx.one("SELECT count(*) AS n FROM tasks") == {"n": 0}


@pytest.mark.parametrize("how", ["backup-without-id", "dump"])
def test_a_restored_store_without_an_id_is_adopted(coord: Coord, tmp_path: Path, how: str) -> None:
    """A backup taken before stores had ids, or a store salvaged with sqlite3's .dump, has
    id 0: restored under an existing marker it is adopted (the marker's id), not refused as
    replaced."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    marker = Path(str(coord.db) + ".id")
    recorded = marker.read_text().strip()
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(coord.db), sqlite3.connect(backup, isolation_level=None)
    try:
        if how == "dump":
            dst.execute("PRAGMA page_size = 1024")
            dst.executescript("".join(f"{line}\n" for line in src.iterdump()))
        else:
            src.backup(dst)
            dst.execute("PRAGMA application_id = 0")
        dst.execute("PRAGMA journal_mode = WAL")
        assert dst.execute("PRAGMA application_id").fetchone()[0] == 0
    finally:
        src.close()
        dst.close()  # the last connection: its WAL is checkpointed into the file, removed
    coord.db.unlink()
    for side in ("-wal", "-shm"):
        Path(str(coord.db) + side).unlink(missing_ok=True)
    os.replace(backup, coord.db)
    os.chmod(coord.db, 0o600)
    listed = coord("tasks", "--format", "tsv", "--no-header")
    assert listed.returncode == 0, listed.stderr
    assert "selfplay" in listed.stdout
    assert marker.read_text().strip() == recorded
    conn = sqlite3.connect(coord.db)
    try:
        found = conn.execute("PRAGMA application_id").fetchone()[0]
    finally:
        conn.close()
    assert recorded.endswith(f"{found:08x}"), (found, recorded)


def test_a_store_published_between_the_two_looks_is_not_called_deleted(
    coord: Coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First use, two processes: A finds no file; B publishes the store, then its marker;
    A then finds the marker. A looks for the file again and uses B's store instead of
    saying it was deleted."""
    from ringrift_coord.store.sqlite import SQLiteStore

    assert coord("tasks").returncode in (0, 3)  # the state directory exists
    made = coord("register", "selfplay", "--node", "n1", "-q")  # B: file, then marker
    assert made.returncode == 0, made.stderr
    path = str(coord.db)
    real = os.path.lexists
    first = [True]

    def before_b_published(p: str) -> bool:  # A's first look came before B's link(2)
        if p == path and first[0]:
            first[0] = False
            return False
        return real(p)

    monkeypatch.setattr(os.path, "lexists", before_b_published)
    store = SQLiteStore(path)
    try:
        with store.read() as tx:
            assert tx.one("SELECT count(*) AS n FROM tasks") == {"n": 1}
    finally:
        store.close()
    assert not first[0], "the interleaving was not exercised"


def test_a_store_moved_away_while_being_opened_is_not_recreated_empty(
    coord: Coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file moved aside (a backup being restored, ``events tail -f`` polling meanwhile)
    between the open's checks and SQLite's connect: the connect created an empty file at the
    path, which every later command refused as "not a ringrift-coord one"."""
    from ringrift_coord.store import StoreGone
    from ringrift_coord.store import sqlite as engine

    made = coord("register", "selfplay", "--node", "n1", "-q")
    assert made.returncode == 0, made.stderr
    path, aside = str(coord.db), str(coord.tmp / "aside.db")
    real = engine._check_and_pin

    def then_moved(p: str, gid: int | None) -> tuple[int, tuple[int, int]]:
        found = real(p, gid)
        os.rename(path, aside)  # right after the checks, before the connect
        return found

    monkeypatch.setattr(engine, "_check_and_pin", then_moved)
    with pytest.raises(StoreGone) as info:
        engine.SQLiteStore(path)
    assert "was deleted" in str(info.value) and "nothing was created" not in str(info.value)
    assert not os.path.lexists(path), "an empty store was created in its place"
    monkeypatch.setattr(engine, "_check_and_pin", real)
    os.rename(aside, path)
    assert coord("tasks", "--format", "tsv", "--no-header").stdout.startswith("selfplay-")


@pytest.mark.parametrize("left", ["marker", "wal"])
def test_doctor_fails_a_deleted_store(coord: Coord, left: str) -> None:
    """Every command refuses a deleted store (or a WAL left by one): doctor says fail with
    the restore advice, never "no store yet"."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    coord.db.unlink()
    if left == "wal":
        Path(str(coord.db) + ".id").unlink()
        Path(str(coord.db) + "-wal").write_bytes(b"")
        os.chmod(str(coord.db) + "-wal", 0o600)
    assert coord("tasks").returncode == 3
    report = json.loads(coord("--json", "doctor").stdout)
    (check,) = [c for c in report["checks"] if c["name"] == "store"]
    assert report["healthy"] is False
    assert check["level"] == "fail", check
    if left == "marker":
        assert f"state store {coord.db} was deleted" in check["found"], check
        assert f"remove {coord.db}-wal and {coord.db}-shm" in check["found"], check
    else:
        assert f"{coord.db}-wal is left from a deleted store" in check["found"], check


# --------------------------------------------------------------------------- corrupt pages


def _fingerprint(path: Path) -> bytes:
    return path.read_bytes()


def _damage_root_page(db: Path, table: str, garbage: bool) -> None:
    with sqlite3.connect(db) as conn:
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    offset = (root[0] - 1) * page_size
    data[offset : offset + page_size] = os.urandom(page_size) if garbage else bytes(page_size)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", ["tasks:garbage-root-page", "tasks:zeroed-root-page", "halt_log:zeroed-root-page"]
)
def test_an_emergency_halt_takes_effect_on_a_corrupt_store(coord: Coord, damage: str) -> None:
    """halt on a corrupt store writes nothing into it, but this host's EMERGENCY_HALT file
    (admission here is halted by it), and says so: exit 3. unhalt refuses, naming the
    manual step."""
    table, how = damage.split(":")
    for _ in range(3):
        assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    _damage_root_page(coord.db, table, how.startswith("garbage"))
    before = _fingerprint(coord.db)
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    for argv in (("halt", "--reason", "maintenance"), ("--json", "halt")):
        refused = coord(*argv)
        assert refused.returncode == 3, (argv, refused.returncode, refused.stderr)
        line = _one_line(refused)
        assert f"state store {coord.db} is corrupt: " in line, line
        assert (
            f"this host is halted by {halt_file} only (other hosts are not): run "
            "`ringrift-coord doctor`" in line
        ), line
        assert halt_file.exists()
    assert _fingerprint(coord.db) == before, "a halt wrote into the corrupt file"
    info = json.loads(halt_file.read_text())
    assert info["store_corrupt"] is True and not info.get("mirror"), info
    # the file halts this host's admissions (the store cannot say otherwise)
    denied = coord("can-spawn", "selfplay", "--node", "n1")
    assert denied.returncode in (1, 3), denied.stderr
    if table == "halt_log":  # admission reads no damaged page here: the file is what halts it
        assert denied.returncode == 1 and "halt" in (denied.stdout + denied.stderr).lower()
    before = _fingerprint(coord.db)  # (admission logs its refusal)
    refused = coord("unhalt")
    assert refused.returncode == 3, refused.stderr
    line = _one_line(refused)
    assert f"state store {coord.db} is corrupt: " in line and "nothing was lifted" in line, line
    assert f"remove {halt_file} by hand" in line, line
    assert halt_file.exists()
    assert _fingerprint(coord.db) == before, "an unhalt wrote into the corrupt file"


def test_an_emergency_halt_takes_effect_when_the_store_is_not_even_a_database(
    coord: Coord,
) -> None:
    """A wrecked header is no database at all: the emergency halt still
    halts this host by its EMERGENCY_HALT file, and says so (exit 3), so that the jobs do not
    start again the moment the file is restored or moved."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    with open(coord.db, "r+b") as handle:
        handle.write(b"X" * 16)  # the "SQLite format 3" magic
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    refused = coord("halt", "--reason", "disk trouble")
    assert refused.returncode == 3, refused.stderr
    line = _one_line(refused)
    assert "is not a SQLite database" in line and f"halted by {halt_file} only" in line, line
    assert json.loads(halt_file.read_text())["store_corrupt"] is True
    # an unhalt cannot read the store either: it lifts nothing, and names the file
    stuck = coord("unhalt")
    assert stuck.returncode == 3, stuck.stderr
    line = _one_line(stuck)
    assert "is not a SQLite database" in line and "nothing was lifted" in line, line
    assert f"this host stays halted by {halt_file}" in line and "by hand" in line, line
    assert halt_file.exists()


def test_an_unhalt_on_a_store_that_cannot_be_written_names_the_halt_file(coord: Coord) -> None:
    """A store that reads but cannot be written (chattr +i, even for root): the emergency
    halt halts this host by its file alone; the unhalt, which cannot write the store either,
    lifts nothing and says that the file still halts this host and how to lift it by hand."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    made = subprocess.run(["chattr", "+i", str(coord.db)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {made.stderr.strip()}")
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    try:
        halted = coord("halt", "--reason", "disk trouble")
        assert halted.returncode == 3 and f"halted by {halt_file} only" in _one_line(halted)
        written = json.loads(halt_file.read_text())  # why it stands alone: not damage
        assert written.get("store_unwritable") is True and "store_corrupt" not in written
        for argv in (("unhalt",), ("--json", "unhalt")):
            stuck = coord(*argv)
            assert stuck.returncode == 3, stuck.stderr
            line = _one_line(stuck)
            assert "is read-only here" in line and "nothing was lifted" in line, line
            assert f"this host stays halted by {halt_file}" in line and "by hand" in line, line
            assert halt_file.exists()
        typed = coord("unhalt", "--type", "selfplay")  # (a file halts every type: not named)
        assert typed.returncode == 3 and "stays halted" not in _one_line(typed)
    finally:
        subprocess.run(["chattr", "-i", str(coord.db)], check=True)
    assert coord("unhalt").returncode == 0 and not halt_file.exists()
    # a mirror of a halt the store holds: removing the file would lift nothing, so not said
    assert coord("halt", "--reason", "drill").returncode == 0
    subprocess.run(["chattr", "+i", str(coord.db)], check=True)
    try:
        stuck = coord("unhalt")
        assert stuck.returncode == 3 and "by hand" not in _one_line(stuck), stuck.stderr
    finally:
        subprocess.run(["chattr", "-i", str(coord.db)], check=True)


def test_a_halt_of_one_type_on_a_corrupt_store_is_refused(coord: Coord) -> None:
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    _damage_root_page(coord.db, "tasks", garbage=False)
    refused = coord("halt", "--type", "selfplay", "--reason", "x")
    assert refused.returncode == 3, refused.stderr
    assert "nothing was written: run `ringrift-coord doctor`" in _one_line(refused)
    assert not (coord.state_dir / "EMERGENCY_HALT").exists()


# --------------------------------------------------------------------------- a long reader


def test_a_wal_a_long_reader_let_grow_is_cut_back(engine_db) -> None:  # noqa: ANN001
    """A reader holds its snapshot while admissions pile up in the WAL (it cannot shrink
    then); once it is gone, the next write cuts the WAL back below the bound."""
    from ringrift_coord.clock import ManualClock
    from ringrift_coord.store.sqlite import WAL_CUT_RETRY, WAL_LIMIT
    from ringrift_coord.task_coordinator import TaskCoordinator, TaskType

    clock = ManualClock()
    ctx = engine_db.context(
        "task_limits: {selfplay: {per_node: 100000}}\n"
        "rate_limits: {selfplay: {per_minute: null}}\n",
        clock=clock,
    )
    coord = TaskCoordinator(ctx)
    wal = Path(engine_db.url + "-wal")
    reader = sqlite3.connect(engine_db.url, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM tasks").fetchone()
        pairs = 0
        while wal.stat().st_size <= WAL_LIMIT + (1 << 20):
            coord.unregister_task(coord.register_task(None, TaskType.SELFPLAY, "n1"))
            clock.advance(0.01)
            pairs += 1
            assert pairs < 20_000, "the WAL never grew past the bound"
        grown = wal.stat().st_size
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    clock.advance(WAL_CUT_RETRY)
    coord.register_task(None, TaskType.SELFPLAY, "n1")  # one more write
    assert wal.stat().st_size < WAL_LIMIT, (grown, wal.stat().st_size)
    # and the store is whole and usable after the cut
    with ctx.store.read() as tx:
        assert tx.one("PRAGMA quick_check")["quick_check"] == "ok"  # type: ignore[index]
        assert tx.one("SELECT count(*) AS n FROM tasks")["n"] == 1  # type: ignore[index]


def test_journal_size_limit_alone_bounds_the_wal(engine_db) -> None:  # noqa: ANN001
    """The other half of the bound: with the non-waiting TRUNCATE kept out of the way, a
    WAL a reader let grow is still cut to journal_size_limit once a checkpoint has caught
    up and a writer starts it again."""
    from ringrift_coord.store.sqlite import WAL_LIMIT

    store = engine_db.open()
    store._next_wal_cut = float("inf")  # the TRUNCATE half never runs here
    wal = Path(engine_db.url + "-wal")
    reader = sqlite3.connect(engine_db.url, isolation_level=None)
    blob = "x" * 900
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM tasks").fetchone()
        while wal.stat().st_size <= WAL_LIMIT + (2 << 20):
            with store.write() as tx:
                for _ in range(200):
                    tx.execute(
                        "INSERT INTO decisions (at, action, task_type, node, host, pid, who, "
                        "allowed, rules) VALUES (1, 'x', 'selfplay', 'n1', 'h', 1, ?, 1, '[]')",
                        (blob,),
                    )
        grown = wal.stat().st_size
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    for _ in range(3):  # a checkpoint catches up (autocheckpoint), then the WAL restarts
        with store.write() as tx:
            tx.execute("DELETE FROM decisions WHERE id IN (SELECT id FROM decisions LIMIT 50)")
    assert wal.stat().st_size <= WAL_LIMIT, (grown, wal.stat().st_size)


# --------------------------------------------------------------------------- PostgreSQL


def _on_postgres(coord: Coord, pg_url: str, config: str) -> Coord:
    coord.env["RINGRIFT_COORD_DB"] = pg_url
    coord.engine = "postgres"
    coord.write_config(config)
    return coord


def test_postgres_restarted_under_a_holder(coord: Coord, tmp_path: Path, pg_server, pg_url) -> None:  # noqa: ANN001
    """The server restarts while a ``run`` wrapper holds a slot: renewals say "unreachable"
    and recover; a release while it is down says "unreachable" (never "busy"), and the
    operator's retry once it is back succeeds."""
    _on_postgres(
        coord,
        pg_url,
        "task_limits:\n  selfplay: {per_node: 1}\nstore: {lease_ttl: 1.5, connect_timeout: 1}\n",
    )
    wrapper = _Wrapper(coord, tmp_path)
    try:
        pg_server.stop()
        wait_for(lambda: "could not renew the lease" in wrapper.stderr(), 30, "a failed renewal")
    finally:
        pg_server.start()
    assert "unreachable" in wrapper.stderr() and "busy" not in wrapper.stderr(), wrapper.stderr()
    listed = coord("--json", "tasks")
    assert listed.returncode == 0, listed.stderr
    import json

    (task,) = json.loads(listed.stdout)["tasks"]
    mark = len(wrapper.stderr())
    wait_for(lambda: float(_lease_left(coord)) > 1.0, 30, "a renewal after the restart")
    # now the server goes away for good while the job ends: the release cannot reach it
    pg_server.stop()
    try:
        code = wrapper.finish()
        said = wrapper.stderr()[mark:]
        assert code == 7, said
        assert f"could not release {task['task_id']}: PostgreSQL" in said, said
        assert "unreachable" in said and "busy" not in said, said
        assert "Traceback" not in said
    finally:
        pg_server.start()
    again = coord("unregister", task["task_id"])
    assert again.returncode == 0, again.stderr
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0


def _lease_left(coord: Coord) -> float:
    import json

    listed = coord("--json", "tasks")
    tasks = json.loads(listed.stdout)["tasks"] if listed.returncode == 0 else []
    return float(tasks[0]["lease_left"]) if tasks else 0.0


def test_postgres_stopped_backend_during_admission_ends_within_the_bound(
    coord: Coord, pg_server, pg_url: str
) -> None:  # noqa: ANN001
    """A backend that stops answering mid-admission (SIGSTOP: a black hole the server's own
    statement_timeout cannot end, and TCP keepalives cannot see) ends the command within
    the bound: exit 75, one line saying "unreachable"."""
    import psycopg

    from ringrift_coord.store.postgres import ADMISSION_LOCK, REPLY_MARGIN, STATEMENT_MARGIN

    busy = 3.0
    _on_postgres(coord, pg_url, f"store: {{busy_timeout: {busy}, connect_timeout: 2}}\n")
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0  # migrated
    holder = psycopg.connect(pg_url, autocommit=True)
    stopped: int | None = None
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
        started = time.monotonic()
        proc = coord.popen("register", "selfplay", "--node", "n1", "-q")

        def waiting_backend() -> int | None:
            with psycopg.connect(pg_url, autocommit=True) as look:
                row = look.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'ringrift-coord' "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()
            return None if row is None else int(row[0])

        stopped = int(wait_for(waiting_backend, busy, "the admission to wait on the lock"))  # type: ignore[arg-type]
        os.kill(stopped, signal.SIGSTOP)
        holder.execute("COMMIT")  # the lock is free: only the stopped backend holds it up
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        holder.close()
    assert proc.returncode == 75, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "busy" not in lines[0], err
    assert took < busy + STATEMENT_MARGIN + REPLY_MARGIN + 10, took
    # the store is usable again once the backend is gone
    wait_for(lambda: not alive(stopped or 0), 30, "the stopped backend to end")
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0


def test_postgres_lease_of_a_killed_wrapper_is_kept_by_its_hosts_liveness_check(
    coord: Coord, tmp_path: Path, pg_url: str
) -> None:
    """Host A's wrapper is killed while its job runs on: host A's own liveness check (`tasks
    reap`, from its timer) keeps the slot's lease fresh, so host B never reaps it; once the
    job ends and host A stops refreshing, host B reaps it when the lease runs out."""
    import json

    ttl = 10.0
    _on_postgres(
        coord, pg_url, f"task_limits:\n  selfplay: {{per_node: 1}}\nstore: {{lease_ttl: {ttl}}}\n"
    )
    host_a, host_b = {"RINGRIFT_COORD_HOST": "host-a"}, {"RINGRIFT_COORD_HOST": "host-b"}
    coord.env.update(host_a)
    wrapper = _Wrapper(coord, tmp_path)
    (task,) = json.loads(coord("--json", "tasks").stdout)["tasks"]
    job_pid = int(task["pid"])
    wrapper.proc.send_signal(signal.SIGKILL)
    wrapper.proc.wait(30)
    wrapper.err.close()
    assert alive(job_pid)
    # host A's liveness check, as its timer runs it (here back to back)
    check = " ".join(coord.argv("tasks", "reap"))
    timer = subprocess.Popen(
        ["sh", "-c", f"while :; do {check} >/dev/null || exit 9; sleep 0.2; done"],
        env={**coord.env, **host_a},
        start_new_session=True,  # stopped as a whole: no check of A's left running after it
    )
    try:
        deadline = time.monotonic() + 1.5 * ttl
        while time.monotonic() < deadline:  # host B's reaper, meanwhile
            reaped = coord("--json", "tasks", "reap", env=host_b)
            assert reaped.returncode == 0, reaped.stderr
            assert json.loads(reaped.stdout)["reaped"] == [], "host B reaped a live job's slot"
            time.sleep(0.5)  # real processes and a real lease: the store's clock, not ours
        assert alive(job_pid) and timer.poll() is None
        denied = coord("register", "selfplay", "--node", "n1", "-q", env=host_b)
        assert denied.returncode == 1, denied.stderr
    finally:
        os.killpg(timer.pid, signal.SIGKILL)
        timer.wait(30)
    # the job ends; host A's check no longer runs: host B reaps the slot once its lease is out
    wrapper.go.touch()
    wait_for(lambda: not alive(job_pid), 30, "the job to end")

    def reaped_by_b() -> bool:
        reaped = coord("--json", "tasks", "reap", env=host_b)
        return bool(json.loads(reaped.stdout)["reaped"])

    wait_for(reaped_by_b, 6 * ttl, "host B to reap the expired lease")
    assert coord("register", "selfplay", "--node", "n1", "-q", env=host_b).returncode == 0


# --------------------------------------------------------------------------- setsid


SETSID_JOB = (
    "import subprocess, sys\n"
    "child = subprocess.Popen(['sleep', '300'], start_new_session=True,\n"
    "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
)


def test_a_setsid_child_outlives_its_slot_as_documented(coord: Coord, tmp_path: Path) -> None:
    """The documented limit (README "Store faults", `run --help`): the slot is held while the
    job's process group lives; a process that left it with setsid is neither tracked nor
    stopped: the slot is released when the group ends, and that process survives."""
    help_text = coord("run", "--help").stdout
    assert "setsid" in " ".join(help_text.split()), help_text
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "outlives its slot" in readme and "setsid" in readme
    pid_file = tmp_path / "escaped.pid"
    ran = coord(
        "run", "selfplay", "--node", "n1", "--", sys.executable, "-c", SETSID_JOB, str(pid_file)
    )
    escaped = int(pid_file.read_text())
    try:
        assert ran.returncode == 0, ran.stderr
        assert alive(escaped), "the setsid child was stopped with the job's group"
        assert os.getsid(escaped) == escaped and os.getpgid(escaped) == escaped
        listed = coord("tasks", "--format", "tsv", "--no-header")
        assert listed.returncode == 0 and listed.stdout.strip() == "", listed.stdout
        again = coord("register", "selfplay", "--node", "n1", "-q")
        assert again.returncode == 0, again.stderr
    finally:
        os.kill(escaped, signal.SIGKILL)


def test_no_new_store_is_made_beside_a_deleted_stores_wal(coord: Coord) -> None:
    """A process still has the deleted store open (its WAL holds pages not yet in the file):
    even once the operator removed the marker, a new store is not made beside that WAL (it
    would take the old store's pages as its own), until the operator removes it too."""
    held = coord("register", "selfplay", "--node", "n1", "-q")
    assert held.returncode == 0, held.stderr
    old = sqlite3.connect(coord.db, isolation_level=None)
    try:
        old.execute("PRAGMA wal_autocheckpoint = 0")
        old.execute("UPDATE tasks SET lease_expires = lease_expires + 1")  # pages in the WAL
        coord.db.unlink()
        Path(str(coord.db) + ".id").unlink()  # the operator's step to start anew
        refused = coord("register", "selfplay", "--node", "n1", "-q")
        assert refused.returncode == 3, refused.stderr
        assert "-wal is left from a deleted store" in _one_line(refused)
        assert not coord.db.exists()
    finally:
        old.close()  # the last user of the deleted store is gone
    again = coord("register", "selfplay", "--node", "n1", "-q")
    assert again.returncode == 3 and "-wal is left" in again.stderr, again.stderr
    for side in ("-wal", "-shm"):  # the operator's step the message names
        Path(str(coord.db) + side).unlink(missing_ok=True)
    made = coord("register", "selfplay", "--node", "n1", "-q")
    assert made.returncode == 0, made.stderr
    import json

    (only,) = json.loads(coord("--json", "tasks").stdout)["tasks"]
    assert only["task_id"] == made.stdout.strip(), "the old store's task reappeared"


def test_postgres_sessions_are_bounded(pg_url: str) -> None:
    """Every session: statement_timeout = busy_timeout + the margin, TCP keepalives on."""
    from ringrift_coord.store.postgres import KEEPALIVES, PostgresStore

    store = PostgresStore(pg_url, busy_timeout=2.0, connect_timeout=2)
    try:
        with store.read() as tx:
            assert tx.one("SHOW statement_timeout") == {"statement_timeout": "7s"}
            assert tx.one("SHOW lock_timeout") == {"lock_timeout": "2s"}
        params = store._conn.info.get_parameters()
        for key, value in KEEPALIVES.items():
            assert params.get(key) == str(value), (key, params)
    finally:
        store.close()


def test_postgres_deadlock_is_busy_not_unreachable(pg_url: str) -> None:
    """A deadlock the server broke (40P01) is a transaction to try again, not a server that
    cannot be reached."""
    import threading

    import psycopg

    from ringrift_coord.errors import StoreBusy
    from ringrift_coord.store.base import StoreUnreachable
    from ringrift_coord.store.postgres import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE dl (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO dl VALUES (1, 0), (2, 0)")
    store = PostgresStore(pg_url, busy_timeout=20.0, connect_timeout=2)
    other = psycopg.connect(pg_url)
    try:
        other.execute("SET deadlock_timeout = '30s'")  # the store's session is the victim
        other.execute("UPDATE dl SET v = 1 WHERE id = 2")
        locked = threading.Event()
        with pytest.raises(StoreBusy) as caught, store.write() as tx:
            tx.execute("UPDATE dl SET v = 1 WHERE id = 1")

            def cross() -> None:
                locked.set()
                try:
                    other.execute("UPDATE dl SET v = 2 WHERE id = 1")  # waits for the store
                except psycopg.Error:
                    pass

            thread = threading.Thread(target=cross, daemon=True)
            thread.start()
            locked.wait(10)
            time.sleep(0.3)  # the other session is queued behind the store's row lock
            tx.execute("UPDATE dl SET v = 2 WHERE id = 2")  # a cycle: 40P01 after 1 s
        thread.join(30)
        other.rollback()
    finally:
        other.close()
        store.close()
    assert not isinstance(caught.value, StoreUnreachable), caught.value
    assert "deadlock" in str(caught.value) and "try again" in str(caught.value), caught.value
    assert "unreachable" not in str(caught.value)


@pytest.mark.parametrize(
    ("state", "said"),
    [
        ("53100", "disk full on the PostgreSQL server"),
        ("40001", "rolled the transaction back"),
        ("53200", "is busy"),
    ],
)
def test_postgres_server_errors_are_not_unreachable(pg_url: str, state: str, said: str) -> None:
    """The server's own errors are said as such: raised by the server itself (RAISE ...
    USING ERRCODE), through the store's own statement path."""
    from ringrift_coord.store.base import StoreUnreachable
    from ringrift_coord.store.postgres import PostgresStore

    store = PostgresStore(pg_url, busy_timeout=2.0, connect_timeout=2)
    try:
        with pytest.raises(Exception) as caught, store.write() as tx:
            tx.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '" + state + "'; END $$"
            )
    finally:
        store.close()
    assert not isinstance(caught.value, StoreUnreachable), caught.value
    assert said in str(caught.value) and "unreachable" not in str(caught.value), caught.value


@pytest.mark.parametrize("which", ["sqlite", "postgres"])
def test_the_log_prune_is_bounded_and_drains_a_backlog(
    which: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A backlog of old decisions (and task history) is pruned at most PRUNE_BATCH rows a
    call (a whole backlog in one statement would outlast PostgreSQL's statement timeout and
    fail the admission every time), and calls drain it; newer rows are kept."""
    from ringrift_coord.admission import PRUNE_BATCH, prune_logs
    from ringrift_coord.clock import ManualClock

    engine_db = EngineDB(which, tmp_path, request)  # both engines (this module: SQLite)
    request.addfinalizer(engine_db.close)
    clock = ManualClock(1_000_000.0)
    store = engine_db.open(clock=clock)
    old, new = 2 * PRUNE_BATCH + 500, 300
    with store.write() as tx:
        for n in range(old + new):
            at = 1000.0 + n if n < old else 999_000.0 + n
            tx.execute(
                "INSERT INTO decisions (at, action, task_type, node, host, pid, who, allowed, "
                "rules) VALUES (?, 'can-spawn', 'selfplay', 'n1', 'h', 1, 'u', 1, '[]')",
                (at,),
            )
            tx.execute(
                "INSERT INTO task_history (task_id, task_type, node, host, started_at, "
                "ended_at, duration, status) VALUES (?, 'selfplay', 'n1', 'h', ?, ?, 1, 'ok')",
                (f"t{n}", at - 1, at),
            )
    cutoff = clock.time() - 86400.0  # a day of log kept
    rounds = []
    while True:
        with store.write() as tx:
            deleted = prune_logs(tx, cutoff)
        rounds.append(deleted)
        if not deleted:
            break
        assert len(rounds) < 10, rounds
    assert max(rounds) <= 2 * PRUNE_BATCH, rounds  # each log: at most PRUNE_BATCH a call
    assert len(rounds) == 4, rounds  # 2 full batches, the rest, then nothing
    with store.read() as tx:
        for table, column in (("decisions", "at"), ("task_history", "ended_at")):
            left = tx.one(f"SELECT count(*) AS n, min({column}) AS first FROM {table}")
            assert left is not None and int(left["n"]) == new, (table, left)
            assert float(left["first"]) >= cutoff


def test_postgres_keepalives_in_the_address_are_kept(pg_url: str) -> None:
    """The user's own keepalive settings in the connection address win over the defaults."""
    from ringrift_coord.store.postgres import KEEPALIVES, PostgresStore

    sep = "&" if "?" in pg_url else "?"
    store = PostgresStore(f"{pg_url}{sep}keepalives_idle=33", busy_timeout=2.0, connect_timeout=2)
    try:
        with store.read() as tx:
            tx.one("SELECT 1")
        params = store._conn.info.get_parameters()
        assert params.get("keepalives_idle") == "33", params
        assert params.get("keepalives_count") == str(KEEPALIVES["keepalives_count"]), params
    finally:
        store.close()


def test_postgres_an_explicit_endless_wait_is_not_cut_by_the_reply_timeout(pg_url: str) -> None:
    """The reply timeout bounds waits that gave none; a LISTEN's notifies(timeout=None)
    waits until a notification comes, however long after the reply timeout."""
    import threading

    import psycopg

    from ringrift_coord.store.postgres import _connection_class

    conn = _connection_class(psycopg).connect(pg_url, autocommit=True)
    conn.reply_timeout = 0.3
    got: list[str] = []
    try:
        conn.execute("LISTEN f2f")

        def listen() -> None:
            got.extend(n.payload for n in conn.notifies(timeout=None, stop_after=1))

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        thread.join(1.2)  # four reply timeouts pass: still waiting
        assert thread.is_alive() and not got, got
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("NOTIFY f2f, 'rang'")
        thread.join(10)
        assert got == ["rang"], got
    finally:
        conn.close()
