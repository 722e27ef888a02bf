"""The state directory and the SQLite database , through the CLI with real files.

- the state directory defaults to $XDG_STATE_HOME/ringrift-coord, is created 0700, and is
  refused (exit 3, one line) when it is a symlink, someone else's, or writable by others;
- a SQLite file on a network filesystem is refused with a pointer to PostgreSQL;
- a corrupt, truncated, empty or foreign file at the database path is refused (exit 3) and left
  byte-for-byte as it was;
- a store locked past the busy timeout gives 75 ("try again"), never 0 or 1;
- many processes starting at once on a fresh state directory initialise it exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringrift_coord.errors import StateError
from ringrift_coord.statedir import filesystem_type, refuse_network_filesystem
from ringrift_coord.store.migrations import MIGRATION_NAMES

PREFIX = "ringrift-coord: error: "
IS_ROOT = os.geteuid() == 0


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


def fingerprint(path: Path) -> tuple[str, int, int]:
    """(sha256, size, mtime_ns) of a file, or of a directory's listing."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        digest = hashlib.sha256("\n".join(sorted(os.listdir(path))).encode()).hexdigest()
    else:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, st.st_size, st.st_mtime_ns


def make_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def hot_commands() -> list[tuple[str, ...]]:
    return [
        ("can-spawn", "selfplay"),
        ("register", "training", "--pid", str(os.getpid())),
        ("unregister", "selfplay-0123456789ab"),
    ]


# --------------------------------------------------------------------------- state directory


def test_default_state_dir_is_xdg_state_home_created_0700(coord, tmp_path: Path) -> None:
    env = {k: v for k, v in coord.env.items() if k != "RINGRIFT_COORDINATOR_DIR"}
    xdg = tmp_path / "xdg-state"
    old_umask = os.umask(0)  # the child inherits a careless umask: the mode must not follow it
    try:
        result = subprocess.run(
            coord.argv("can-spawn", "selfplay"), env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    state = xdg / "ringrift-coord"
    st = os.lstat(state)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()
    assert (state / "tasks.db").is_file()
    assert stat.S_IMODE(os.stat(state / "tasks.db").st_mode) & 0o077 == 0
    assert not coord.state_dir.exists()  # the per-test default was really not used


def test_default_state_dir_without_xdg_is_under_home(coord, tmp_path: Path) -> None:
    home = make_dir(tmp_path / "home")
    env = {
        k: v
        for k, v in coord.env.items()
        if k not in ("RINGRIFT_COORDINATOR_DIR", "XDG_STATE_HOME")
    }
    env["HOME"] = str(home)
    env["RINGRIFT_COORDINATOR_DIR"] = ""  # empty means unset
    result = subprocess.run(
        coord.argv("--json", "can-spawn", "selfplay"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    state = home / ".local" / "state" / "ringrift-coord"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert (state / "tasks.db").is_file()
    assert not str(state).startswith("/tmp/ringrift")  # never a shared /tmp path


def test_existing_private_state_dir_is_used_as_is(coord) -> None:
    make_dir(coord.state_dir, 0o700)
    assert coord("can-spawn", "selfplay").returncode == 0
    assert stat.S_IMODE(os.stat(coord.state_dir).st_mode) == 0o700
    os.chmod(coord.state_dir, 0o755)  # readable by others is fine, writable is not
    assert coord("can-spawn", "selfplay").returncode == 0


def _refused(coord, state: Path, *fragments: str) -> None:
    before = sorted(os.listdir(state)) if state.is_dir() else None
    for argv in (*hot_commands()[:2], ("halt", "--check")):
        result = coord("--state-dir", str(state), *argv)
        assert result.returncode == 3, (argv, result.returncode, result.stderr)
        message = one_error_line(result)
        assert str(state) in message, message
        for fragment in fragments:
            assert fragment in message, message
    if before is not None:
        assert sorted(os.listdir(state)) == before  # nothing was written there


def test_symlinked_state_dir_is_refused(coord, tmp_path: Path) -> None:
    real = make_dir(tmp_path / "real-state")
    link = tmp_path / "state-link"
    link.symlink_to(real)
    _refused(coord, link, "symlink")
    assert os.listdir(real) == []
    # the same through the environment variable
    result = coord("can-spawn", "selfplay", env={"RINGRIFT_COORDINATOR_DIR": str(link)})
    assert result.returncode == 3 and "symlink" in one_error_line(result)


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_state_dir_owned_by_another_user_is_refused(coord, tmp_path: Path) -> None:
    state = make_dir(tmp_path / "theirs")
    os.chown(state, 65534, 65534)
    _refused(coord, state, "owned by uid 65534")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o720, 0o702, 0o1777])
def test_group_or_world_writable_state_dir_is_refused(coord, tmp_path: Path, mode: int) -> None:
    state = make_dir(tmp_path / "open-state", mode)
    result = coord("--state-dir", str(state), "can-spawn", "selfplay")
    assert result.returncode == 3, result.stderr
    message = one_error_line(result)
    assert str(state) in message and "writable by group or others" in message
    assert f"chmod 700 {state}" in message  # says what to do
    assert os.listdir(state) == []


def test_state_dir_that_is_a_file_is_refused(coord, tmp_path: Path) -> None:
    state = tmp_path / "a-file"
    state.write_text("not a directory\n")
    before = fingerprint(state)
    result = coord("--state-dir", str(state), "can-spawn", "selfplay")
    assert result.returncode == 3
    assert "not a directory" in one_error_line(result)
    assert fingerprint(state) == before


# --------------------------------------------------------------------------- network filesystems

ROOT_LINE = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"


def _mount_line(mount_id: int, mount_point: str, fs_type: str, optional: str = "shared:7") -> str:
    escaped = (
        mount_point.replace("\\", "\\134")
        .replace(" ", "\\040")
        .replace("\t", "\\011")
        .replace("\n", "\\012")
    )
    return (
        f"{mount_id} 22 0:{mount_id} / {escaped} rw,relatime {optional} - {fs_type} "
        f"server:/export rw,vers=4.2\n"
    )


@pytest.mark.parametrize("fs_type", ["nfs4", "nfs", "cifs", "fuse.sshfs"])
def test_sqlite_on_network_filesystem_is_refused(coord, tmp_path: Path, fs_type: str) -> None:
    mount = make_dir(tmp_path / "shared mount")  # a space: escaped as \040 in mountinfo
    state = make_dir(mount / "state")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(ROOT_LINE + _mount_line(99, str(mount.resolve()), fs_type))
    env = {"RINGRIFT_COORD_MOUNTINFO": str(mountinfo)}
    commands = hot_commands()[:2] + [("status",)] if fs_type == "nfs4" else hot_commands()[:1]
    for argv in commands:
        result = coord("--state-dir", str(state), *argv, env=env)
        assert result.returncode == 3, (argv, result.stderr)
        message = one_error_line(result)
        assert "network filesystem" in message and fs_type in message, message
        assert "PostgreSQL" in message and "postgresql://" in message, message
        assert str(state / "tasks.db") in message
    assert not [n for n in os.listdir(state) if n.startswith("tasks.db")]  # no database made
    # --db naming a file on that mount is refused the same way, even with a local state dir
    result = coord("--db", str(mount / "x.db"), "can-spawn", "selfplay", env=env)
    assert result.returncode == 3 and "PostgreSQL" in one_error_line(result)
    assert not (mount / "x.db").exists()


def test_local_mount_inside_a_network_mount_is_accepted(coord, tmp_path: Path) -> None:
    nfs = make_dir(tmp_path / "nfs")
    local = make_dir(nfs / "local")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        ROOT_LINE
        + _mount_line(90, str(nfs.resolve()), "nfs4")
        + _mount_line(91, str(local.resolve()), "xfs")
    )
    env = {"RINGRIFT_COORD_MOUNTINFO": str(mountinfo)}
    result = coord("--state-dir", str(local / "state"), "can-spawn", "selfplay", env=env)
    assert result.returncode == 0, result.stderr


def test_filesystem_type_parses_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        ROOT_LINE
        + "garbage line without separator\n"
        + "1 2 3\n"
        + "\n"
        + _mount_line(30, "/mnt/data", "nfs4", optional="shared:3 master:1")
        + _mount_line(31, "/mnt/data2", "ext4", optional="")
        + _mount_line(32, "/mnt/my share", "cifs")
        + _mount_line(33, "/mnt/tab\there", "fuse.sshfs")
        + _mount_line(34, "/mnt/back\\slash", "9p")
        + _mount_line(35, "/mnt/data/scratch", "tmpfs")
    )
    info = str(mountinfo)
    assert filesystem_type("/", info) == "ext4"
    assert filesystem_type("/var/lib", info) == "ext4"
    assert filesystem_type("/mnt/data", info) == "nfs4"
    assert filesystem_type("/mnt/data/a/b.db", info) == "nfs4"
    assert filesystem_type("/mnt/data2/a.db", info) == "ext4"  # not a prefix match on "/mnt/data"
    assert filesystem_type("/mnt/data/scratch/x", info) == "tmpfs"  # the longest mount point wins
    assert filesystem_type("/mnt/my share/ringrift/tasks.db", info) == "cifs"  # \040
    assert filesystem_type("/mnt/my", info) == "ext4"
    assert filesystem_type("/mnt/tab\there/x", info) == "fuse.sshfs"  # \011
    assert filesystem_type("/mnt/back\\slash/x", info) == "9p"  # \134
    assert filesystem_type("/", str(tmp_path / "no-such-mountinfo")) is None


def test_filesystem_type_of_this_host_without_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RINGRIFT_COORD_MOUNTINFO", raising=False)
    if not os.path.exists("/proc/self/mountinfo"):
        pytest.skip("no /proc/self/mountinfo")
    assert filesystem_type(str(tmp_path)) is not None


def test_refuse_network_filesystem_unit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        ROOT_LINE
        + _mount_line(40, "/srv/shared", "nfs")
        + _mount_line(41, "/srv/fast", "fuse.glusterfs")
        + _mount_line(42, "/srv/local", "btrfs")
    )
    monkeypatch.setenv("RINGRIFT_COORD_MOUNTINFO", str(mountinfo))
    for path in ("/srv/shared/tasks.db", "/srv/fast/x/tasks.db"):
        with pytest.raises(StateError, match="PostgreSQL"):
            refuse_network_filesystem(path)
    refuse_network_filesystem("/srv/local/tasks.db")
    refuse_network_filesystem("/home/me/tasks.db")


# --------------------------------------------------------------------------- damaged databases


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real ringrift-coord database with a task and a decision in it."""
    tmp = tmp_path_factory.mktemp("real-db")
    state = make_dir(tmp / "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))}
    env.update(
        {
            "RINGRIFT_COORDINATOR_DIR": str(state),
            "XDG_CONFIG_HOME": str(tmp / "cfg"),
            "RINGRIFT_COORD_SET": "resources.live_host=false",
        }
    )
    for argv in (
        ["register", "selfplay", "--pid", str(os.getpid())],
        ["halt", "--reason", "x"],
        ["unhalt"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ringrift_coord", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    data = (state / "tasks.db").read_bytes()
    assert data.startswith(b"SQLite format 3\x00") and len(data) > 8192
    assert not (state / "tasks.db-wal").exists() or (state / "tasks.db-wal").stat().st_size == 0
    return data


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE inventory (item TEXT, qty INTEGER)")
    conn.executemany("INSERT INTO inventory VALUES (?, ?)", [("apples", 3), ("pears", 5)])
    conn.commit()
    conn.close()


def _foreign_wal(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


DAMAGE = {
    "random-bytes": (lambda p, real: p.write_bytes(os.urandom(16384)), "not a SQLite database"),
    "text-file": (
        lambda p, real: p.write_text("hello, I am a config file\n" * 50),
        "not a SQLite database",
    ),
    "truncated-half": (lambda p, real: p.write_bytes(real[: len(real) // 2]), "truncated"),
    "truncated-header": (lambda p, real: p.write_bytes(real[:60]), "truncated"),
    "truncated-first-page": (lambda p, real: p.write_bytes(real[:4096]), "truncated"),
    "empty": (lambda p, real: p.write_bytes(b""), "empty (0 bytes)"),
    "foreign-sqlite": (lambda p, real: _foreign(p), "not a ringrift-coord one"),
    "foreign-sqlite-wal": (lambda p, real: _foreign_wal(p), "not a ringrift-coord one"),
    "directory": (lambda p, real: p.mkdir(), "not a regular file"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_database_is_refused_and_left_untouched(coord, real_db: bytes, kind: str) -> None:
    make_dir(coord.state_dir)
    damage, fragment = DAMAGE[kind]
    damage(coord.db, real_db)
    before = fingerprint(coord.db)
    listing = set(os.listdir(coord.state_dir))
    others = [hot_commands()[2], ("tasks",), ("--json", "status")]
    for argv in (*hot_commands()[:2], others[list(DAMAGE).index(kind) % 3]):
        result = coord(*argv)
        assert result.returncode == 3, (kind, argv, result.returncode, result.stderr)
        message = one_error_line(result)
        assert str(coord.db) in message and fragment in message, message
        if "--json" in argv:
            assert json.loads(result.stdout) == {
                "schema_version": 1,
                "error": message,
                "exit_code": 3,
            }
    assert fingerprint(coord.db) == before, "the damaged file was modified or re-created"
    # nothing new beside it but the validated-config cache: no journal, WAL or fresh database
    assert set(os.listdir(coord.state_dir)) - listing <= {"config-cache.json"}


def test_damaged_database_named_by_db_flag(coord, tmp_path: Path, real_db: bytes) -> None:
    target = tmp_path / "elsewhere.db"
    target.write_bytes(real_db[:5000])
    before = fingerprint(target)
    for db in (str(target), f"sqlite:///{target}"):
        result = coord("--db", db, "can-spawn", "selfplay")
        assert result.returncode == 3, result.stderr
        assert str(target) in one_error_line(result)
    assert fingerprint(target) == before


def test_whole_copy_of_a_real_database_works(coord, real_db: bytes) -> None:
    """The control case: the undamaged bytes are a usable store (the checks are not too strict)."""
    make_dir(coord.state_dir)
    coord.db.write_bytes(real_db)
    result = coord("--json", "tasks")
    assert result.returncode == 0, result.stderr
    assert [t["task_type"] for t in json.loads(result.stdout)["tasks"]] == ["selfplay"]


# --------------------------------------------------------------------------- locked store

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()          # hold the write lock until the test says so
conn.execute("ROLLBACK")
conn.close()
"""


def test_store_locked_past_busy_timeout_exits_75(coord) -> None:
    coord.write_config("store: {busy_timeout: 0.3}\n")
    assert coord("can-spawn", "selfplay").returncode == 0  # create the database
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(coord.db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        for argv in (
            ("can-spawn", "selfplay"),
            ("register", "selfplay", "--pid", str(os.getpid())),
            ("--json", "register", "training", "--pid", str(os.getpid())),
            ("unregister", "selfplay-0123456789ab"),
            ("run", "selfplay", "--", sys.executable, "-c", "raise SystemExit(0)"),
        ):
            started = time.monotonic()
            result = coord(*argv, timeout=30)
            elapsed = time.monotonic() - started
            assert result.returncode == 75, (argv, result.returncode, result.stderr)
            message = one_error_line(result)
            assert "locked" in message and "0.3 s" in message and "try again" in message
            assert elapsed < 5, f"{argv}: took {elapsed:.1f} s with a 0.3 s busy timeout"
            if argv[0] == "--json":
                assert json.loads(result.stdout) == {
                    "schema_version": 1,
                    "error": message,
                    "exit_code": 75,
                }
            else:
                assert result.stdout == ""  # in particular, register printed no task id
    finally:
        if locker.stdin:
            locker.stdin.write("\n")
            locker.stdin.close()
        locker.wait(timeout=10)
    # nothing was registered while locked, and the store works again once the lock is gone
    result = coord("--json", "tasks")
    assert result.returncode == 0 and json.loads(result.stdout)["tasks"] == []
    assert coord("can-spawn", "selfplay").returncode == 0


# --------------------------------------------------------------------------- racing initialisation

# Each racer imports the hot path, says it is ready, then blocks opening a FIFO; the test opens
# the FIFO once all are ready, so they start their real work at the same instant.
RACER = """
import os, sys
fifo, ready = sys.argv[1], sys.argv[2]
import sqlite3
import ringrift_coord.cli.main as entry
import ringrift_coord.cli.hot, ringrift_coord.context, ringrift_coord.store.sqlite
fd = os.open(ready, os.O_WRONLY | os.O_APPEND)
os.write(fd, b"r")
os.close(fd)
os.close(os.open(fifo, os.O_RDONLY))
sys.exit(entry.run_cli(sys.argv[3:]))
"""


def test_racing_processes_initialise_a_fresh_state_dir_exactly_once(coord, tmp_path: Path) -> None:
    racers = 32
    state = tmp_path / "fresh" / "state"  # neither exists yet
    fifo, ready = tmp_path / "go", tmp_path / "ready"
    os.mkfifo(fifo)
    ready.write_bytes(b"")
    pid = str(os.getpid())
    procs = []
    try:
        for i in range(racers):
            argv = (
                ("can-spawn", "selfplay", "--node", f"n{i}")
                if i % 2 == 0
                else ("register", "selfplay", "--node", f"n{i}", "--pid", pid)
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        RACER,
                        str(fifo),
                        str(ready),
                        "--state-dir",
                        str(state),
                        *argv,
                    ],
                    env=coord.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + 60
        while len(ready.read_bytes()) < racers:
            assert time.monotonic() < deadline, "racers did not get ready"
            assert all(p.poll() is None for p in procs), "a racer died before the start"
            time.sleep(0.02)
        assert not state.parent.exists()  # nothing happened before the start
        os.close(os.open(fifo, os.O_RDWR))  # go
        outcomes = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            outcomes.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for code, out, err in outcomes:
        assert "Traceback" not in err + out, err
        assert code == 0, (code, err)  # in particular no 3: nobody saw a half-made file
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    names = os.listdir(state)
    assert "tasks.db" in names
    assert not [n for n in names if ".init-" in n], names  # no leftover temporary databases
    conn = sqlite3.connect(f"file:{state / 'tasks.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
        tasks = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert [r[0] for r in rows] == sorted(MIGRATION_NAMES)  # each migration exactly once
    assert tasks == racers // 2  # every register took its slot
