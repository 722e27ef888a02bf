"""Special files never block, a store address is never misread, halts say their real scope,
and a read-only command never creates a store.

* ``EMERGENCY_HALT`` is opened with ``O_NONBLOCK | O_NOFOLLOW`` and read only when it is a
  regular file: a FIFO, socket or symlink there is refused with one line (exit 3), promptly,
  and nothing is read from the filesystem while the store's write lock is held.
* ``--db`` naming a symlink is refused (exit 3); so is a store that another local user (a real
  second uid) swapped for a symlink or a FIFO.
* A libpq keyword string is PostgreSQL (no file named after it is created); ``:memory:``,
  ``file:``, ``sqlite:x`` and ``sqlite:///a.db?mode=ro`` are refused; a password is never
  shown; a path in a directory that does not exist is said to be that (nothing is created).
* ``halt``/``unhalt``/``status`` say "this host's store sqlite:…" or "cluster-wide on
  postgres …".
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Coord, user_admin_lock

ENGINES = ("sqlite", "postgres")
SECRET = "sekrit-Pw-42"
PREFIX = "ringrift-coord: error: "


def one_line(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0][len(PREFIX) :]


def keyword_form(url: str, **extra: str) -> str:
    """The libpq keyword string ``host=… port=… dbname=… user=…`` of a postgresql:// URL."""
    from psycopg.conninfo import conninfo_to_dict

    parts = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    parts.update(extra)
    return " ".join(f"{k}={v}" for k, v in parts.items())


# --------------------------------------------------------------------------- the halt file


@pytest.mark.parametrize("kind", ["fifo", "symlink", "socket"])
def test_a_special_halt_file_is_refused_promptly_in_one_line(coord: Coord, kind: str) -> None:
    assert coord("tasks", "reap").returncode == 0  # the state directory and the store
    path = coord.state_dir / "EMERGENCY_HALT"
    held = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target = coord.tmp / "elsewhere"
        target.write_text('{"reason": "followed"}\n')
        path.symlink_to(target)
    else:
        held = socket.socket(socket.AF_UNIX)
        held.bind(str(path))
    try:
        started = time.monotonic()
        for argv in (("can-spawn", "selfplay"), ("status",), ("halt", "--check")):
            message = one_line(coord(*argv, timeout=15), 3)
            assert message.startswith(f"halt file {path} is a ") and "not a regular file" in message
            assert "followed" not in message
        assert time.monotonic() - started < 15
        # unhalt removes it whatever it is; then admission goes on
        assert coord("unhalt").returncode == 0
        assert not os.path.lexists(path)
        assert coord("can-spawn", "selfplay").returncode == 0
    finally:
        if held is not None:
            held.close()


def test_a_fifo_never_blocks_the_other_commands(coord: Coord) -> None:
    """Many can-spawn against a FIFO while register/unregister run: all end promptly, and
    the other commands are never refused as busy (75): nothing held the write lock."""
    assert coord("tasks", "reap").returncode == 0
    os.mkfifo(coord.state_dir / "EMERGENCY_HALT")
    checkers = [coord.popen("can-spawn", "selfplay") for _ in range(6)]
    try:
        os.unlink(coord.state_dir / "EMERGENCY_HALT")
        # a second FIFO now, while the first wave may still be running
        os.mkfifo(coord.state_dir / "EMERGENCY_HALT")
        second = [coord.popen("can-spawn", "training") for _ in range(4)]
        for proc in checkers + second:
            out, err = proc.communicate(timeout=20)
            assert proc.returncode in (0, 3), err
            assert proc.returncode == 0 or "not a regular file" in err
        os.unlink(coord.state_dir / "EMERGENCY_HALT")
        registered = coord("register", "selfplay", "--pid", str(os.getpid()), timeout=20)
        assert registered.returncode == 0, registered.stderr
        released = coord("unregister", registered.stdout.strip(), timeout=20)
        assert released.returncode == 0, released.stderr
    finally:
        for proc in checkers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_nothing_is_read_from_the_filesystem_under_the_write_lock(
    engine_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While admission reads the halt file and the live host reading, another process's
    write transaction gets the lock at once: neither is read inside admission's."""
    from ringrift_coord import halts, readings
    from ringrift_coord.context import apply_overrides
    from ringrift_coord.errors import StoreBusy
    from ringrift_coord.task_coordinator import TaskCoordinator

    ctx = engine_db.context()
    apply_overrides(ctx.settings, ["resources.live_host=true"])  # the live reading is taken
    other = engine_db.open(busy_timeout=0.2)
    probes: list[str] = []

    def lock_is_free(what: str) -> None:
        try:
            with other.write() as tx:
                tx.query("SELECT COUNT(*) AS n FROM halts")
        except StoreBusy:
            probes.append(f"{what}: write lock held")
            return
        probes.append(f"{what}: free")

    real_load, real_live = halts.load_file, readings.live_host

    def load_file(state_dir: str):  # noqa: ANN202
        lock_is_free("halt file")
        return real_load(state_dir)

    def live_host(paths: list[str]):  # noqa: ANN202
        lock_is_free("live reading")
        return real_live(paths)

    monkeypatch.setattr(halts, "load_file", load_file)
    monkeypatch.setattr(readings, "live_host", live_host)
    (Path(ctx.state_dir) / "EMERGENCY_HALT").write_text('{"reason": "drill"}\n')
    from ringrift_coord.identity import local_node

    decision = TaskCoordinator(ctx).check("selfplay", local_node())
    assert not decision.allowed and "halt_file" in [r.rule for r in decision.reasons]
    assert "halt file: free" in probes and "live reading: free" in probes
    assert all(p.endswith("free") for p in probes), probes


# --------------------------------------------------------------------------- --db symlinks


def test_a_db_symlink_is_refused_not_followed(coord: Coord, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("a SQLite path")
    assert coord("halt", "--reason", "the real store").returncode == 0
    link = coord.tmp / "link.db"
    link.symlink_to(coord.db)
    before = coord.db.stat().st_mtime_ns, coord.db.stat().st_size
    for argv in (("can-spawn", "selfplay"), ("status",), ("unhalt",)):
        message = one_line(coord("--db", str(link), *argv), 3)
        assert message.startswith(f"database {link} is a symlink; refusing it")
    one_line(coord("can-spawn", "selfplay", env={"RINGRIFT_COORD_DB": str(link)}), 3)
    assert (coord.db.stat().st_mtime_ns, coord.db.stat().st_size) == before
    assert coord("halt", "--check").returncode == 1  # still halted: unhalt never reached it


OTHER_USER = "rrc-addr"


def other_user() -> pwd.struct_passwd:
    """A real second Unix user (made with useradd when missing); the test skips unless root."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to play a second local user")
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        with user_admin_lock():
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/bin/sh", OTHER_USER],
                check=False,
                capture_output=True,
            )
        return pwd.getpwnam(OTHER_USER)


def as_other(user: pwd.struct_passwd, script: str, cwd: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", script],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("umask", [0o000, 0o077], ids=["umask000", "umask077"])
@pytest.mark.parametrize("swap", ["symlink", "fifo"])
def test_another_user_swapping_the_db_for_a_symlink_or_fifo_is_refused(
    coord: Coord, engine: str, umask: int, swap: str
) -> None:
    """A store in a directory another local user can write: that user (a real second uid)
    replaces the database with a symlink to our own private store, or with a FIFO. Every
    command refuses it in one line, promptly, and our private store is untouched."""
    if engine != "sqlite":
        pytest.skip("a SQLite path")
    user = other_user()
    top = Path(tempfile.mkdtemp(prefix="rrc-addr-"))  # pytest's own tmp is 0700 all the way
    top.chmod(0o755)
    shared = top / "theirs"
    shared.mkdir()
    os.chown(shared, user.pw_uid, user.pw_gid)
    shared.chmod(0o755)
    db = shared / "tasks.db"
    old = os.umask(umask)
    try:
        # our private store; a store in their directory is refused from the start (they
        # could replace it), and nothing is created there
        assert coord("halt", "--reason", "private").returncode == 0
        inside = one_line(coord("--db", str(db), "can-spawn", "selfplay"), 3)
        assert f"owned by uid {user.pw_uid}" in inside and not db.exists(), inside
        before = coord.db.stat().st_mtime_ns, coord.db.stat().st_size
        if swap == "symlink":
            as_other(user, f"rm -f tasks.db* && ln -s {coord.db} tasks.db", shared)
        else:
            as_other(user, "rm -f tasks.db* && mkfifo -m 666 tasks.db", shared)
        started = time.monotonic()
        for argv in (("can-spawn", "selfplay"), ("status",), ("unhalt",), ("tasks",)):
            message = one_line(coord("--db", str(db), *argv, timeout=15), 3)
            expected = "is a symlink" if swap == "symlink" else "is not a regular file"
            assert expected in message and str(db) in message, message
        assert time.monotonic() - started < 15
        assert (coord.db.stat().st_mtime_ns, coord.db.stat().st_size) == before
        assert coord("halt", "--check").returncode == 1  # our halt was never lifted
    finally:
        os.umask(old)
        shutil.rmtree(top, ignore_errors=True)


# --------------------------------------------------------------------------- addresses


def refused_as_flag_and_env(coord: Coord, value: str) -> str:
    """``--db value`` is refused (exit 2) and ``RINGRIFT_COORD_DB=value`` too (exit 3), each in
    one line, and no file is made beside the state directory; the flag's line."""
    before = set(os.listdir(coord.tmp))
    done = {}
    for argv, env in (
        (("--db", value, "can-spawn", "selfplay"), coord.env),
        (("can-spawn", "selfplay"), {**coord.env, "RINGRIFT_COORD_DB": value}),
    ):
        done[argv[0]] = subprocess.run(
            coord.argv(*argv), env=env, cwd=coord.tmp, capture_output=True, text=True, timeout=60
        )
    assert one_line(done["can-spawn"], 3).startswith("RINGRIFT_COORD_DB: ")
    assert set(os.listdir(coord.tmp)) - before <= {"state"}
    return one_line(done["--db"], 2)


@pytest.mark.parametrize("value", [":memory:", "sqlite://:memory:", "file:x.db", "file::memory:"])
def test_memory_and_uri_names_are_refused(coord: Coord, value: str, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("SQLite names")
    assert "in-memory or URI SQLite name" in refused_as_flag_and_env(coord, value)


@pytest.mark.parametrize(
    "value",
    ["sqlite:", "sqlite:x.db", "SQLite:x.db", "sqlite:///T/x/a.db?mode=ro", "sqlite:///T/x/a.db#z"],
)
def test_sqlite_addresses_that_are_no_file_are_refused(
    coord: Coord, value: str, engine: str
) -> None:
    """'sqlite:' without '//' and a sqlite:// address with a query were taken as file names:
    ./sqlite:, a.db?mode=ro (with their -gate and .id) were created and used silently."""
    if engine != "sqlite":
        pytest.skip("SQLite names")
    (coord.tmp / "x").mkdir()
    value = value.replace("/T/", str(coord.tmp) + "/")
    line = refused_as_flag_and_env(coord, value)
    if value.startswith("sqlite:///"):  # what to give instead: the address without its query
        bare = f"sqlite://{coord.tmp}/x/a.db"
        assert "takes no '?' query" in line and f"give {bare}, or the file's plain path (" in line
        assert line.endswith(f"({value[len('sqlite://') :]}) if the name holds them"), line
    else:  # a plain path, or a file of that name
        assert "no SQLite address" in line and "sqlite:///path or the file's path" in line
        assert f"./{value}" in line
    assert os.listdir(coord.tmp / "x") == []


def test_a_database_path_that_cannot_be_says_what_is_wrong_with_it(
    coord: Coord, engine: str
) -> None:
    """A missing directory was "cannot inspect DIR above database ...: No such file or
    directory", and a too-long file name "cannot inspect /tmp above ...": the directory is
    said not to exist (nor to be created, with what to do), the name to be too long."""
    if engine != "sqlite":
        pytest.skip("SQLite paths")
    missing = coord.tmp / "nope" / "dir"

    def refused(db: str, *argv: str) -> str:
        done = subprocess.run(
            coord.argv("--db", db, *argv), env=coord.env, capture_output=True, text=True, timeout=60
        )
        return one_line(done, 3)

    for argv in (("can-spawn", "selfplay"), ("tasks",)):  # a writing and a reading command
        line = refused(str(missing / "t.db"), *argv)
        assert f"the directory {missing} does not exist, and is not created" in line, line
        assert f"mkdir -p {missing}" in line and "cannot inspect" not in line, line
    line = refused(str(coord.tmp / ("a" * 300 + ".db")), "can-spawn", "selfplay")
    assert "a name in it is 303 bytes, more than a file name may have" in line, line
    assert f"inspect {coord.tmp} " not in line and len(line) < 300, line
    (coord.tmp / "file").write_text("")
    line = refused(str(coord.tmp / "file" / "t.db"), "can-spawn", "selfplay")
    assert f"{coord.tmp / 'file'} is not a directory" in line, line
    assert sorted(os.listdir(coord.tmp)) == ["coord.yaml", "file", "state"]
    # the default store in a state directory not made yet: the first command that writes
    # makes it (mode 0700), so a reading command says so, not "mkdir -p" (doctor agrees)
    fresh = coord.tmp / "fresh" / "sd"
    env = {**coord.env, "RINGRIFT_COORDINATOR_DIR": str(fresh)}
    env.pop("RINGRIFT_COORD_DB", None)
    read = subprocess.run(coord.argv("tasks"), env=env, capture_output=True, text=True, timeout=60)
    line = one_line(read, 3)
    assert "a command that writes creates it" in line and "mkdir" not in line, line
    assert not fresh.exists()


def test_a_keyword_string_is_postgres_and_no_file_is_made(coord: Coord, pg_url: str) -> None:
    keywords = keyword_form(pg_url)
    assert keywords.startswith("host=") or "host=" in keywords
    cwd = coord.tmp / "cwd"
    cwd.mkdir()

    def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            coord.argv(*argv),
            env={**coord.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = run("--db", keywords, "can-spawn", "selfplay")
    assert done.returncode == 0, done.stderr
    status = json.loads(run("--db", keywords, "--json", "status").stdout)
    assert status["store"]["engine"] == "postgres"
    assert status["store"]["store_scope"].startswith("cluster-wide on postgres 127.0.0.1:")
    # the same database as the URL: a halt said through one is seen through the other
    assert run("--db", keywords, "halt", "--reason", "kw").returncode == 0
    assert run("--db", pg_url, "halt", "--check").returncode == 1
    assert run("unhalt", env={"RINGRIFT_COORD_DB": keywords}).returncode == 0
    assert os.listdir(cwd) == []  # no file named after the address
    assert not (coord.state_dir / "tasks.db").exists()


def test_a_password_is_never_shown(coord: Coord, pg_url: str) -> None:
    """The server trusts local connections, so a password in the address is accepted and
    ignored: every line and document that shows the address masks it."""
    keywords = keyword_form(pg_url, password=SECRET)
    url = pg_url.replace("ringrift@", f"ringrift:{SECRET}@")
    query = pg_url + f"?password={SECRET}"
    outputs: list[str] = []
    for address in (keywords, url, query):
        env = {"RINGRIFT_COORD_DB": address}
        for argv in (
            ("halt", "--reason", "drill"),
            ("status",),
            ("--json", "status"),
            ("halt", "--check"),
            ("--json", "halt", "--check"),
            ("can-spawn", "selfplay"),
            ("--json", "can-spawn", "selfplay"),
            ("unhalt",),
            ("--json", "unhalt"),
        ):
            done = coord(*argv, env=env)
            assert done.returncode in (0, 1), (argv, done.stderr)
            outputs.append(done.stdout + done.stderr)
        assert "cluster-wide on postgres 127.0.0.1:" in outputs[-1]
        # an unreachable server and a bad keyword string: the error masks it too
        dead = address.replace(str(pg_url.split(":")[2].split("/")[0]), "1")
        outputs.append(coord("status", env={"RINGRIFT_COORD_DB": dead}).stderr)
    bad = coord("status", env={"RINGRIFT_COORD_DB": f"host=h password='{SECRET}"})
    outputs.append(one_line(bad, 3))
    other = coord("status", env={"RINGRIFT_COORD_DB": f"mysql://u:{SECRET}@h/db"})
    outputs.append(one_line(other, 3))
    for flag in (keywords, url, query):  # on the command line: refused, still masked
        refused = coord("--db", flag, "status")
        outputs.append(one_line(refused, 2))
    assert all(SECRET not in text for text in outputs), [t for t in outputs if SECRET in t]
    assert any("***" in text for text in outputs)


# --------------------------------------------------------------------------- scope wording


def test_halt_lines_name_the_real_scope(coord: Coord, engine: str) -> None:
    if engine == "sqlite":
        where = f"this host's store sqlite:{coord.db}"
    else:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(coord.env["RINGRIFT_COORD_DB"])
        where = f"cluster-wide on postgres {parts['host']}:{parts['port']}/{parts['dbname']}"
    halted = coord("halt", "--reason", "drill")
    assert halted.stdout.startswith(f"halted every task type in {where} (by "), halted.stdout
    assert ("cluster-wide" in halted.stdout) == (engine == "postgres")
    typed = coord("halt", "--type", "training")
    assert f"halted training in {where}" in typed.stdout
    denied = coord("can-spawn", "selfplay")
    assert f"halted every task type in {where} by" in denied.stderr
    check = coord("halt", "--check")
    assert check.returncode == 1 and f"HALTED all types in {where} by" in check.stdout
    assert f"({where})" in " ".join(coord("status").stdout.split())
    document = json.loads(coord("--json", "status").stdout)
    assert document["store"]["store_scope"] == where and document["halt"]["store_scope"] == where
    assert json.loads(coord("--json", "halt", "--check").stdout)["store_scope"] == where
    unhalted = coord("unhalt")
    assert unhalted.stdout.startswith(f"unhalted in {where}: ")
    assert coord("halt", "--check").stdout.strip() == f"not halted in {where}"
    record = json.loads(coord("--json", "halt", "--reason", "again").stdout)
    assert record["store_scope"] == where
    assert json.loads(coord("--json", "unhalt").stdout)["store_scope"] == where


# --------------------------------------------------------------------------- no store


READ_ONLY = [
    ("status",),
    ("--json", "status"),
    ("tasks",),
    ("tasks", "list"),
    ("tasks", "history"),
    ("decisions",),
    ("breakers", "list"),
    ("resources",),
    ("utilization",),
    ("adjust", "--dry-run"),
    ("rate", "show"),
    ("halt", "--check"),
    ("reserve", "list"),
]


def test_read_only_commands_never_create_a_store(coord: Coord, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("a SQLite file")
    for argv in READ_ONLY:
        message = one_line(coord(*argv), 3)
        assert message.startswith(f"no store at {coord.db}"), (argv, message)
        assert not coord.db.exists(), argv
    missing = coord.tmp / "nowhere.db"
    for argv in READ_ONLY[:3]:
        assert one_line(coord("--db", str(missing), *argv), 3).startswith(f"no store at {missing}")
        env = one_line(coord(*argv, env={"RINGRIFT_COORD_DB": f"sqlite://{missing}"}), 3)
        assert env.startswith(f"no store at {missing}")
    assert not missing.exists()
    # limits shows the configuration without one (nothing learned yet), creating nothing
    limits = coord("--json", "limits")
    assert limits.returncode == 0, limits.stderr
    assert json.loads(limits.stdout)["lowered_caps"] == []
    assert not coord.db.exists()
    # a bad --type is still bad input (2), said before the store
    assert coord("tasks", "--type", "quantum").returncode == 2
    # a command that writes creates it; then the readers work
    assert coord("can-spawn", "selfplay").returncode == 0
    assert coord.db.exists() and stat.S_ISREG(coord.db.stat().st_mode)
    for argv in READ_ONLY:
        assert coord(*argv).returncode == 0, (argv, coord(*argv).stderr)


def test_a_password_with_url_punctuation_is_masked_whole(coord: Coord) -> None:
    """libpq reads a keyword string's value up to the next space, ``&`` and ``#`` included:
    so does the mask. An ``@`` in a URL's query is no password."""
    secret = "se&cret#xyz"
    dead = f"host=127.0.0.1 port=1 dbname=d user=u password={secret} connect_timeout=1"
    for argv in (("status",), ("--json", "status"), ("can-spawn", "selfplay")):
        done = coord(*argv, env={"RINGRIFT_COORD_DB": dead})
        assert done.returncode == 75, done.stderr
        shown = done.stdout + done.stderr
        assert "cret" not in shown and "xyz" not in shown and "password=***" in shown, shown
    query_at = "postgresql://127.0.0.1:1/d?application_name=a@b&connect_timeout=1"
    done = coord("--db", query_at, "status")  # not refused as "a password in --db"
    assert done.returncode == 75 and "password" not in done.stderr, done.stderr


def test_a_password_inside_other_words_leaves_them_whole(coord: Coord) -> None:
    """The password is masked where it stands whole, never inside another word of the
    message: ``postgres`` (Docker's default) leaves ``postgresql://`` whole, ``p`` the
    word ``port``; a user name equal to the password is masked with it."""
    cases = (
        (
            "postgres",
            "postgresql://postgres:postgres@127.0.0.1:1/ringrift",
            "postgresql://***:***@127.0.0.1:1/ringrift",
        ),
        ("p", "postgresql://u:p@127.0.0.1:99999/x", "postgresql://u:***@127.0.0.1:99999/x"),
    )
    for secret, address, shown in cases:
        for argv in (("status",), ("can-spawn", "selfplay")):
            message = one_line(coord(*argv, env={"RINGRIFT_COORD_DB": address}), 75)
            assert message.startswith(f"PostgreSQL {shown} is unreachable ("), message
            assert f"{secret}:" not in message and "***ostgres" not in message, message
    assert "invalid port number" in message, message  # (libpq's own words, whole)
