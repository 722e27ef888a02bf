"""Faults of the environment, injected for real: a full disk and a read-only filesystem under
the SQLite store (a small tmpfs mounted by the test; root only), each a clear line naming the
fault and where, exit 3, nothing decided, and the store usable again once the fault is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, own_tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs of its own (unmounted afterwards)."""
    with own_tmpfs(tmp_path / "fs", "size=512k,mode=0755") as where:
        yield where


def _fill(where: Path) -> Path:
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)  # unbuffered: the last write is the one that fails
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _coord_on(tmp_path: Path, where: Path) -> Coord:
    coord = Coord(tmp_path)
    coord.env["RINGRIFT_COORDINATOR_DIR"] = str(where / "state")
    coord.env.pop("RINGRIFT_COORD_DB", None)
    return coord


def test_a_full_disk_during_admission_and_release_says_so(tmp_path: Path, small_fs: Path) -> None:
    coord = _coord_on(tmp_path, small_fs)
    held = coord("register", "selfplay", "--node", "n1", "-q")
    assert held.returncode == 0, held.stderr
    task_id = held.stdout.strip()
    filler = _fill(small_fs)
    for argv in (("register", "selfplay", "--node", "n1", "-q"), ("unregister", task_id)):
        refused = coord(*argv)
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "disk full" in refused.stderr and str(small_fs) in refused.stderr
        assert "disk I/O error" not in refused.stderr
    filler.unlink()  # room again: the slot was never lost, the release goes through now
    released = coord("unregister", task_id)
    assert released.returncode == 0, released.stderr


def test_a_read_only_filesystem_is_said_plainly(tmp_path: Path, small_fs: Path) -> None:
    coord = _coord_on(tmp_path, small_fs)
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    halt_file = small_fs / "state" / "EMERGENCY_HALT"
    halt_file.write_text('{"reason": "old maintenance", "expires_at": 1.0}')  # (expired)
    os.chmod(halt_file, 0o600)
    remounted = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True
    )
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
    try:
        refused = coord("register", "selfplay", "--node", "n1", "-q")
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "read-only here (its filesystem is mounted read-only" in refused.stderr
        assert "unable to open database file" not in refused.stderr
        # an emergency halt that lands nowhere (no row, no halt file) says NOT halted
        halt = coord("halt", "--reason", "disk trouble")
        assert halt.returncode == 3 and halt.stderr.count("\n") == 1, halt.stderr
        assert halt.stderr.startswith("ringrift-coord: error: NOT halted: "), halt.stderr
        assert "halted in the store" not in halt.stderr
        assert "admissions on this host fail the same way" in halt.stderr, halt.stderr
        assert "already halted" not in halt.stderr, halt.stderr  # (its halt file expired)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=False)
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0


def test_an_unhalt_on_a_store_on_a_read_only_filesystem_names_only_a_file_that_halts(
    tmp_path: Path, small_fs: Path
) -> None:
    """A store (--db) on a filesystem that went read-only, the state directory elsewhere: the
    unhalt cannot open the store for writing. A halt file written alone (the halt could not
    write the store either) still halts this host: said so, as for a store that reads but
    cannot be written, not 'the store cannot be read: restore the store' (it reads fine). A
    mirror of a halt the store holds is not named: removing it would lift nothing."""
    coord = Coord(tmp_path)
    coord.env["RINGRIFT_COORD_DB"] = str(small_fs / "tasks.db")
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    _remount(small_fs, "ro")
    try:
        halted = coord("halt", "--reason", "disk trouble")
        assert halted.returncode == 3 and f"halted by {halt_file} only" in halted.stderr
        for argv in (("unhalt",), ("--json", "unhalt")):
            stuck = coord(*argv)
            assert stuck.returncode == 3, stuck.stderr
            assert "mounted read-only" in stuck.stderr and "nothing was lifted" in stuck.stderr
            assert f"this host stays halted by {halt_file}" in stuck.stderr, stuck.stderr
            assert "cannot be read" not in stuck.stderr and "restore" not in stuck.stderr
            assert halt_file.exists()
    finally:
        _remount(small_fs, "rw")
    assert coord("unhalt").returncode == 0 and not halt_file.exists()
    assert coord("halt", "--reason", "drill").returncode == 0  # (its file: a mirror)
    _remount(small_fs, "ro")
    try:
        stuck = coord("unhalt")
        assert stuck.returncode == 3 and "mounted read-only" in stuck.stderr, stuck.stderr
        assert "by hand" not in stuck.stderr and "restore" not in stuck.stderr, stuck.stderr
    finally:
        _remount(small_fs, "rw")
    assert coord("unhalt").returncode == 0


def _remount(where: Path, how: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{how}", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount {how}: {done.stderr.decode().strip()}")


def _tasks(coord: Coord) -> list[str]:
    import json

    listed = coord("tasks", "--json")
    assert listed.returncode == 0, listed.stderr
    return [row["task_id"] for row in json.loads(listed.stdout)["tasks"]]


def test_the_reading_commands_read_a_store_on_a_read_only_filesystem(
    tmp_path: Path, small_fs: Path
) -> None:
    """A disk that went read-only (errors=remount-ro) leaves the operator able to look: the
    commands that only read open the store read-only; the ones that write still say why not."""
    import json

    coord = _coord_on(tmp_path, small_fs)
    held = coord("register", "selfplay", "--node", "n1", "-q")
    assert held.returncode == 0, held.stderr
    task_id = held.stdout.strip()
    _remount(small_fs, "ro")
    try:
        assert _tasks(coord) == [task_id]  # (no -wal: the file is the whole store)
        status = coord("status", "--json")
        assert status.returncode == 0, status.stderr
        store = json.loads(status.stdout)["store"]
        assert "mounted read-only" in store["read_only"], store
        shown = coord("status")
        assert shown.returncode == 0 and "the store is read-only here" in shown.stdout
        assert coord("halt", "--check").returncode == 0
        assert coord("decisions", "--json").returncode == 0
        doctor = coord("doctor", "--json")
        checks = {c["name"]: c["level"] for c in json.loads(doctor.stdout)["checks"]}
        assert doctor.returncode == 1 and checks["writable"] == "fail", checks
        assert checks["store"] == "ok" and checks["integrity"] == "ok", checks
        assert checks["admission lock"] == "skip" and checks["locks"] == "skip", checks
        assert "restore" not in doctor.stdout, doctor.stdout  # a healthy store, read-only
        refused = coord("unregister", task_id)
        assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
        assert "read-only here (its filesystem is mounted read-only" in refused.stderr
    finally:
        _remount(small_fs, "rw")
    assert not list((small_fs / "state").glob("*-shm")), "a read created files"

    # a writer that died with its changes still in the -wal (the crash that remounts the
    # disk read-only): the read goes through the -shm left beside it, and sees them
    db = small_fs / "state" / "tasks.db"
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute('DELETE FROM tasks')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(db)], check=False)
    assert died.returncode == -9
    assert (small_fs / "state" / "tasks.db-wal").stat().st_size > 0
    _remount(small_fs, "ro")
    try:
        assert _tasks(coord) == []  # the -wal's change, not the file's stale row
    finally:
        _remount(small_fs, "rw")
    # without its -shm the -wal cannot be read: said so, never the stale file instead
    shm = small_fs / "state" / "tasks.db-shm"
    shm.rename(small_fs / "shm.aside")
    _remount(small_fs, "ro")
    try:
        refused = coord("tasks")
        assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
        assert "cannot be read without" in refused.stderr and "--db" in refused.stderr
    finally:
        _remount(small_fs, "rw")
    (small_fs / "shm.aside").rename(shm)
    assert _tasks(coord) == []


def test_a_read_only_open_sees_the_files_as_they_are_at_each_read(
    tmp_path: Path, small_fs: Path
) -> None:
    """A long-lived reader (``events tail --follow``, a library user) of a store opened
    read-only reads the files as they are at each transaction, not as they were at its
    open (an immutable open caches pages); an empty ``-wal`` is no change to read, and a
    directory whose name is not UTF-8 is opened too."""
    from ringrift_coord.store.sqlite import SQLiteStore

    where = small_fs / os.fsdecode(b"st\xffate")  # (bytes that are not UTF-8)
    where.mkdir(mode=0o700)
    db = str(where / "tasks.db")
    writer = SQLiteStore(db)
    with writer.write() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")
        tx.execute("INSERT INTO probe (n) VALUES (1)")
    writer.close()
    (where / "tasks.db-wal").write_bytes(b"")  # an empty -wal, no -shm: nothing to read
    _remount(small_fs, "ro")
    try:
        reader = SQLiteStore(db, read_only_ok=True)
        assert reader.read_only is not None and "mounted read-only" in reader.read_only
        with reader.read() as tx:
            assert tx.query("SELECT COUNT(*) AS n FROM probe")[0]["n"] == 1
    finally:
        _remount(small_fs, "rw")
    (where / "tasks.db-wal").unlink()
    writer = SQLiteStore(db)  # a write while the reader still has the store open
    with writer.write() as tx:
        tx.execute("INSERT INTO probe (n) VALUES (2)")
    writer.close()
    with reader.read() as tx:
        assert tx.query("SELECT COUNT(*) AS n FROM probe")[0]["n"] == 2
    reader.close()
