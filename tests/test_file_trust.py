"""Files another local user can touch: the modes of what the tool creates, what it trusts when
it reads files back, the state directory's parents, the config cache, and a store shared by a
host's users.

The other user is played for real: as root, the tests create Unix users (``useradd``) and run
the real program as them (a second uid, its groups, its umask); without root they skip. The
checks that need no second user run as whoever runs the tests.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, user_admin_lock

from ringrift_coord.config import SYSTEM_CONFIG_DIR, config_search_path, find_config_file

ENGINES = ("sqlite", "postgres")

GROUP = "ringrift"
ALICE, BOB, MALLORY = "rrc-alice", "rrc-bob", "rrc-mallory"  # alice and bob are in GROUP

LIMIT_ONE = "task_limits: {selfplay: {per_node: 1}}\n"


def _run_root(*argv: str) -> None:
    subprocess.run(argv, check=False, capture_output=True, timeout=60)


def _ensure_users() -> None:
    _run_root("groupadd", "-f", GROUP)
    for name, groups in ((ALICE, GROUP), (BOB, GROUP), (MALLORY, None)):
        try:
            pwd.getpwnam(name)
        except KeyError:
            extra = ["-G", groups] if groups else []
            _run_root("useradd", "-M", "-s", "/bin/sh", *extra, name)
        if groups:
            _run_root("usermod", "-a", "-G", groups, name)
        pwd.getpwnam(name)  # KeyError here: the user could not be made
    members = grp.getgrnam(GROUP).gr_mem
    assert ALICE in members and BOB in members and MALLORY not in members


@pytest.fixture(scope="module")
def users() -> None:
    if os.geteuid() != 0:
        pytest.skip("playing a second local user needs root (useradd, setuid)")
    if shutil.which("useradd") is None or shutil.which("groupadd") is None:
        pytest.skip("useradd/groupadd are not installed")
    with user_admin_lock():
        _ensure_users()
    pw = pwd.getpwnam(ALICE)
    for python, env in _interpreters():
        try:
            reach = subprocess.run(
                [python, "-c", "import ringrift_coord, yaml, typer"],
                user=pw.pw_uid,
                group=pw.pw_gid,
                cwd="/",
                env={**os.environ, **env},
                capture_output=True,
                timeout=60,
            )
        except PermissionError:
            continue
        if reach.returncode == 0:
            PYTHON[:] = [python]
            PYTHON_ENV.clear()
            PYTHON_ENV.update(env)
            return
    pytest.skip(
        f"no interpreter another user can run with this package ({sys.executable} lies where "
        "they cannot reach it, e.g. under /root, and no system python of the same version)"
    )


# the interpreter the other users run (this one, or a system one of the same version with
# this venv's packages on its path when this one lies where they cannot reach it)
PYTHON = [sys.executable]
PYTHON_ENV: dict[str, str] = {}


def _reachable_package() -> str:
    """A copy of this package in a directory every user can read (the checkout itself may lie
    under /root): the other users import it from there."""
    import atexit

    top = tempfile.mkdtemp(prefix="rrc-pkg-")
    atexit.register(shutil.rmtree, top, True)
    os.chmod(top, 0o755)
    source = Path(__file__).resolve().parent.parent / "ringrift_coord"
    shutil.copytree(source, Path(top) / "ringrift_coord", ignore=shutil.ignore_patterns("*.pyc"))
    for root, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return top


def _interpreters() -> list[tuple[str, dict[str, str]]]:
    import site

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = os.pathsep.join([_reachable_package(), *site.getsitepackages()])
    found: list[tuple[str, dict[str, str]]] = [(sys.executable, {})]
    for directory in ("/usr/bin", "/usr/local/bin"):
        candidate = os.path.join(directory, version)
        if os.access(candidate, os.X_OK):
            found.append((candidate, {"PYTHONPATH": path}))
    return found


class Host:
    """A scratch tree under /tmp that every test user can reach, and the program run as them."""

    def __init__(self, base: Path, engine: str, pg_url: str | None) -> None:
        self.base = base
        self.engine = engine
        self.pg_url = pg_url
        self.sys_config_dirs = base / "xdg-sys"  # stands for /etc/xdg (XDG_CONFIG_DIRS)

    def home(self, user: str) -> Path:
        home = self.base / f"home-{user}"
        if not home.exists():
            pw = pwd.getpwnam(user)
            home.mkdir(mode=0o700)
            os.chown(home, pw.pw_uid, pw.pw_gid)
        return home

    def env(self, user: str, **extra: str) -> dict[str, str]:
        home = self.home(user)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "XDG_"))}
        env.update(
            {
                "HOME": str(home),
                "USER": user,
                "LOGNAME": user,
                "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_STATE_HOME": str(home / ".local" / "state"),
                "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_CONFIG_DIRS": str(self.sys_config_dirs),
                "RINGRIFT_COORD_SET": "resources.live_host=false",
                "PYTHONDONTWRITEBYTECODE": "1",
                "COLUMNS": "200",
                **PYTHON_ENV,
            }
        )
        if self.pg_url:
            env["RINGRIFT_COORD_DB"] = self.pg_url
        env.update(extra)
        return env

    def run(
        self,
        user: str,
        *args: str,
        umask: int = 0o022,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PYTHON, "-m", "ringrift_coord", *args],
            **self._as(user, umask, env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def popen(self, user: str, *args: str, umask: int = 0o022, env: dict[str, str] | None = None):  # noqa: ANN201
        return subprocess.Popen(
            [*PYTHON, "-m", "ringrift_coord", *args],
            **self._as(user, umask, env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def python(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        """Run ``code`` as ``user``: what that user can do to the files, by hand."""
        return subprocess.run(
            [*PYTHON, "-c", code],
            **self._as(user, 0o022, None),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def _as(self, user: str, umask: int, env: dict[str, str] | None) -> dict[str, object]:
        pw = pwd.getpwnam(user)
        return {
            "user": pw.pw_uid,
            "group": pw.pw_gid,
            "extra_groups": os.getgrouplist(user, pw.pw_gid),
            "umask": umask,
            "cwd": str(self.home(user)),
            "env": env if env is not None else self.env(user),
        }


def _host(engine: str, request: pytest.FixtureRequest) -> Iterator[Host]:
    base = Path(tempfile.mkdtemp(prefix="rrc-trust-", dir="/tmp"))
    os.chmod(base, 0o755)
    pg_url = request.getfixturevalue("pg_url") if engine == "postgres" else None
    try:
        yield Host(base, engine, pg_url)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def host(users: None, engine: str, request: pytest.FixtureRequest) -> Iterator[Host]:
    """A host for a test of the store: on each engine."""
    yield from _host(engine, request)


@pytest.fixture
def sqlite_host(users: None, request: pytest.FixtureRequest) -> Iterator[Host]:
    """A host for a test of SQLite files or of the state directory itself."""
    yield from _host("sqlite", request)


def _limit(output: str) -> object:
    values = json.loads(output)["values"]
    return next(v["value"] for v in values if v["key"] == "task_limits.selfplay.per_node")


def _shared_store(host: Host, limits: str = LIMIT_ONE) -> Path:
    """The documented set-up: install -d -m 2770 -g ringrift STORE, and the system config."""
    store = host.base / "var-lib-ringrift-coord"
    subprocess.run(["install", "-d", "-m", "2770", "-g", GROUP, str(store)], check=True, timeout=30)
    config_dir = host.sys_config_dirs / "ringrift-coord"
    config_dir.mkdir(parents=True)
    (config_dir / "unified_loop.yaml").write_text(f"store: {{shared_group: {GROUP}}}\n{limits}")
    os.chmod(config_dir / "unified_loop.yaml", 0o644)
    return store


def _modes(directory: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for name in os.listdir(directory):
        st = os.lstat(directory / name)
        out[name] = (stat.S_IMODE(st.st_mode), grp.getgrgid(st.st_gid).gr_name)
    return out


# --------------------------------------------------------------------------- shared store


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_two_users_share_one_store_and_one_halt(host: Host, umask: int) -> None:
    store = _shared_store(host)
    env = {u: host.env(u, RINGRIFT_COORDINATOR_DIR=str(store)) for u in (ALICE, BOB)}

    # alice starts a job and holds the store open (WAL and shared memory in use) while bob
    # admits through the same files
    job = host.popen(
        ALICE,
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        PYTHON[0],
        "-c",
        "import sys; print('started', flush=True); sys.stdin.read()",
        umask=umask,
        env=env[ALICE],
    )
    assert job.stdout is not None and job.stdin is not None
    assert job.stdout.readline().strip() == "started"
    bob = host.run(BOB, "can-spawn", "selfplay", "--node", "n2", umask=umask, env=env[BOB])
    assert bob.returncode == 0, bob.stderr
    full = host.run(BOB, "can-spawn", "selfplay", "--node", "n1", umask=umask, env=env[BOB])
    assert full.returncode == 1, full.stderr  # alice's job holds n1's one slot: one store
    modes = _modes(store)
    if host.engine == "sqlite":
        assert {"tasks.db", "tasks.db-wal", "tasks.db-shm"} <= set(modes)
    job.stdin.close()
    assert job.wait(timeout=60) == 0, job.stderr.read() if job.stderr else ""

    halt = host.run(ALICE, "halt", "--reason", "maintenance", umask=umask, env=env[ALICE])
    assert halt.returncode == 0, halt.stderr
    refused = host.run(BOB, "run", "selfplay", "--node", "n2", "--", "true", env=env[BOB])
    assert refused.returncode == 75
    assert "halted" in refused.stderr and "maintenance" in refused.stderr
    modes.update(_modes(store))
    assert "EMERGENCY_HALT" in modes
    # every file in the shared store is the group's, readable and writable by it alone
    assert modes and all(m == (0o660, GROUP) for m in modes.values()), modes
    assert "config-cache.json" not in modes  # each user's cache stays in their own directory

    unhalt = host.run(BOB, "unhalt", env=env[BOB])  # bob may lift what alice said
    assert unhalt.returncode == 0, unhalt.stderr
    again = host.run(BOB, "run", "selfplay", "--node", "n2", "--", "true", env=env[BOB])
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("umask", [0o000, 0o077])
@pytest.mark.parametrize("plant", ["fifo", "symlink"])
def test_a_group_member_planting_a_special_halt_file_blocks_nobody(
    host: Host, umask: int, plant: str
) -> None:
    """In a shared store another user of the group can create files: a FIFO (or a symlink) at
    ``EMERGENCY_HALT`` is refused in one line, promptly, by every command; nothing hangs."""
    store = _shared_store(host)
    env = {u: host.env(u, RINGRIFT_COORDINATOR_DIR=str(store)) for u in (ALICE, BOB)}
    assert host.run(ALICE, "can-spawn", "selfplay", umask=umask, env=env[ALICE]).returncode == 0
    target = store / "EMERGENCY_HALT"
    code = (
        f"import os; os.mkfifo({str(target)!r}, 0o660)"
        if plant == "fifo"
        else f"import os; os.symlink('/etc/passwd', {str(target)!r})"
    )
    planted = host.python(BOB, code)
    assert planted.returncode == 0, planted.stderr
    started = time.monotonic()
    for argv in (("can-spawn", "selfplay"), ("status",), ("run", "selfplay", "--", "true")):
        done = host.run(ALICE, *argv, umask=umask, env=env[ALICE])
        assert done.returncode == 3, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "halt file" in lines[0] and "refusing it" in lines[0], lines
    assert time.monotonic() - started < 30  # each returned at once: the FIFO was never read
    lifted = host.run(ALICE, "unhalt", umask=umask, env=env[ALICE])  # unhalt removes it
    assert lifted.returncode == 0, lifted.stderr
    assert not os.path.lexists(target)


def test_shared_store_outside_the_group_or_unconfigured_is_refused(sqlite_host: Host) -> None:
    host = sqlite_host
    store = _shared_store(host)
    mallory = host.run(
        MALLORY, "can-spawn", "selfplay", env=host.env(MALLORY, RINGRIFT_COORDINATOR_DIR=str(store))
    )
    assert mallory.returncode == 3  # cannot even look inside: not in the group
    # the group's store without the setting that names it is a group-writable directory
    plain = host.env(
        ALICE, RINGRIFT_COORDINATOR_DIR=str(store), XDG_CONFIG_DIRS=str(host.base / "none")
    )
    refused = host.run(ALICE, "can-spawn", "selfplay", env=plain)
    assert refused.returncode == 3
    assert f"set store.shared_group to its group ({GROUP})" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # named via --set like any other key; a group that does not match is refused
    wrong = host.run(
        ALICE, "--set", f"store.shared_group={MALLORY}", "can-spawn", "selfplay", env=plain
    )
    assert wrong.returncode == 3, wrong.stderr
    right = host.run(
        ALICE, "--set", f"store.shared_group={GROUP}", "can-spawn", "selfplay", env=plain
    )
    assert right.returncode == 0, right.stderr
    # writable by others, or not setgid: refused even with the group configured
    env = host.env(ALICE, RINGRIFT_COORDINATOR_DIR=str(store))
    for mode, words in ((0o2777, "others (mode 2777)"), (0o0770, "not setgid")):
        os.chmod(store, mode)
        bad = host.run(ALICE, "can-spawn", "selfplay", env=env)
        assert bad.returncode == 3 and words in bad.stderr, bad.stderr
    # owned by a user (not root): another user of the group does not trust it
    os.chmod(store, 0o2770)
    os.chown(store, pwd.getpwnam(ALICE).pw_uid, -1)
    bob = host.run(
        BOB, "can-spawn", "selfplay", env=host.env(BOB, RINGRIFT_COORDINATOR_DIR=str(store))
    )
    assert bob.returncode == 3 and "owned by uid" in bob.stderr, bob.stderr


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_created_files_have_explicit_modes_whatever_the_umask(host: Host, umask: int) -> None:
    config = host.home(ALICE) / "coord.yaml"
    env = host.env(ALICE, RINGRIFT_COORD_CONFIG=str(config))
    assert host.python(ALICE, f"open({str(config)!r}, 'w').write({LIMIT_ONE!r})").returncode == 0
    state = host.home(ALICE) / ".local" / "state" / "ringrift-coord"
    job = host.popen(
        ALICE,
        "run",
        "selfplay",
        "--",
        PYTHON[0],
        "-c",
        "import sys; print('started', flush=True); sys.stdin.read()",
        umask=umask,
        env=env,
    )
    assert job.stdout is not None and job.stdin is not None
    assert job.stdout.readline().strip() == "started"
    during = _modes(state)
    job.stdin.close()
    assert job.wait(timeout=60) == 0
    assert host.run(ALICE, "halt", "--reason", "r", umask=umask, env=env).returncode == 0
    files = {**during, **_modes(state)}
    expected = {"config-cache.json", "EMERGENCY_HALT"}
    if host.engine == "sqlite":
        expected |= {"tasks.db", "tasks.db-wal", "tasks.db-shm"}
    assert expected <= set(files), files
    assert {name: m for name, (m, _) in files.items()} == dict.fromkeys(files, 0o600)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(d).st_mode) for d in (state.parent, state.parent.parent)} == {
        0o700
    }


# --------------------------------------------------------------------------- trust


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_another_user_cannot_raise_limits_through_the_cache(host: Host, umask: int) -> None:
    config = host.base / "coord.yaml"
    config.write_text(LIMIT_ONE)
    env = host.env(ALICE, RINGRIFT_COORD_CONFIG=str(config))
    state = host.home(ALICE) / ".local" / "state" / "ringrift-coord"
    assert (
        host.run(ALICE, "can-spawn", "selfplay", "--node", "n1", env=env, umask=umask).returncode
        == 0
    )
    cache = state / "config-cache.json"
    # the cache is alice's alone: mallory cannot write it, even where she can reach it
    for directory in (host.home(ALICE), state.parent.parent, state.parent, state):
        os.chmod(directory, 0o711)
    rewrite = (
        f"import json; p = {str(cache)!r}; d = json.load(open(p)); "
        "d['values']['task_limits']['selfplay']['per_node'] = 100000; "
        "open(p, 'w').write(json.dumps(d))"
    )
    denied = host.python(MALLORY, rewrite)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # a cache left writable by others (as one made under umask 000 used to be) is not read:
    # mallory's rewrite is ignored and the YAML's limit holds
    os.chmod(cache, 0o666)
    assert host.python(MALLORY, rewrite).returncode == 0
    assert json.loads(cache.read_text())["values"]["task_limits"]["selfplay"]["per_node"] == 100000
    first = host.run(
        ALICE,
        "register",
        "selfplay",
        "--node",
        "n1",
        "--pid",
        str(os.getpid()),
        env=env,
        umask=umask,
    )
    assert first.returncode == 0, first.stderr
    second = host.run(
        ALICE,
        "register",
        "selfplay",
        "--node",
        "n1",
        "--pid",
        str(os.getpid()),
        env=env,
        umask=umask,
    )
    assert second.returncode == 1, second.stderr
    assert "limit" in second.stderr
    assert _limit(host.run(ALICE, "--json", "limits", env=env).stdout) == 1
    # alice's next call replaced the untrusted cache with her own, 0600 again
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert json.loads(cache.read_text())["values"]["task_limits"]["selfplay"]["per_node"] == 1


def test_a_group_member_cannot_plant_a_cache_in_a_shared_store(host: Host) -> None:
    store = _shared_store(host)
    env = {u: host.env(u, RINGRIFT_COORDINATOR_DIR=str(store)) for u in (ALICE, BOB)}
    assert host.run(BOB, "can-spawn", "selfplay", env=env[BOB]).returncode == 0
    bob_cache = host.home(BOB) / ".cache" / "ringrift-coord" / "config-cache.json"
    planted = json.loads(bob_cache.read_text())
    planted["values"]["task_limits"]["selfplay"]["per_node"] = 100000
    code = f"open({str(store / 'config-cache.json')!r}, 'w').write({json.dumps(planted)!r})"
    assert host.python(BOB, code).returncode == 0
    assert host.python(MALLORY, code).returncode != 0  # outside the group: no way in
    pid = str(os.getpid())
    first = host.run(ALICE, "register", "selfplay", "--node", "n1", "--pid", pid, env=env[ALICE])
    assert first.returncode == 0, first.stderr
    second = host.run(ALICE, "register", "selfplay", "--node", "n1", "--pid", pid, env=env[ALICE])
    assert second.returncode == 1, second.stderr


def test_config_files_another_user_can_write_are_refused(sqlite_host: Host) -> None:
    host = sqlite_host
    config = host.base / "coord.yaml"
    config.write_text(LIMIT_ONE)
    env = host.env(ALICE, RINGRIFT_COORD_CONFIG=str(config))
    assert host.run(ALICE, "can-spawn", "selfplay", env=env).returncode == 0  # root's: trusted
    os.chown(config, pwd.getpwnam(MALLORY).pw_uid, -1)
    owned = host.run(ALICE, "can-spawn", "selfplay", env=env)
    assert owned.returncode == 3 and "owned by uid" in owned.stderr, owned.stderr
    assert len(owned.stderr.strip().splitlines()) == 1
    os.chown(config, 0, -1)
    os.chmod(config, 0o664)
    writable = host.run(ALICE, "can-spawn", "selfplay", env=env)
    assert writable.returncode == 3 and "writable by group or others" in writable.stderr
    # a file in a directory another user can write is refused like the state directory
    os.chmod(config, 0o644)
    evil = host.base / "evil"
    evil.mkdir(mode=0o777)
    os.chmod(evil, 0o777)
    os.chown(evil, pwd.getpwnam(MALLORY).pw_uid, -1)
    moved = evil / "coord.yaml"
    shutil.copy(config, moved)
    inside = host.run(
        ALICE, "can-spawn", "selfplay", env={**env, "RINGRIFT_COORD_CONFIG": str(moved)}
    )
    assert inside.returncode == 3 and str(evil) in inside.stderr, inside.stderr


def test_a_halt_file_of_another_user_is_refused(sqlite_host: Host) -> None:
    host = sqlite_host
    env = host.env(ALICE)
    assert host.run(ALICE, "can-spawn", "selfplay", env=env).returncode == 0
    halt = host.home(ALICE) / ".local" / "state" / "ringrift-coord" / "EMERGENCY_HALT"
    halt.write_text("{}\n")
    os.chown(halt, pwd.getpwnam(MALLORY).pw_uid, -1)
    refused = host.run(ALICE, "can-spawn", "selfplay", env=env)
    assert refused.returncode == 3 and "refusing the halt file" in refused.stderr
    assert "owned by uid" in refused.stderr


# --------------------------------------------------------------------------- parents


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_state_dir_in_a_directory_another_user_can_write_is_refused(
    sqlite_host: Host, umask: int
) -> None:
    host = sqlite_host
    alice, mallory = pwd.getpwnam(ALICE), pwd.getpwnam(MALLORY)
    evil = host.base / "mallory-0777"
    evil.mkdir()
    os.chmod(evil, 0o777)
    os.chown(evil, mallory.pw_uid, mallory.pw_gid)
    state = evil / "state"
    state.mkdir(mode=0o700)
    os.chown(state, alice.pw_uid, alice.pw_gid)
    env = host.env(ALICE, RINGRIFT_COORDINATOR_DIR=str(state))
    refused = host.run(ALICE, "can-spawn", "selfplay", umask=umask, env=env)
    assert refused.returncode == 3, refused.stderr
    assert f"inside {evil}" in refused.stderr and f"uid {mallory.pw_uid}" in refused.stderr
    assert not (state / "tasks.db").exists()
    # root's 0777 without the sticky bit: anyone can swap the entry
    os.chown(evil, 0, 0)
    open_dir = host.run(ALICE, "can-spawn", "selfplay", umask=umask, env=env)
    assert open_dir.returncode == 3 and "not sticky" in open_dir.stderr, open_dir.stderr
    # sticky (like /tmp): fine when the entry is alice's, not when it is mallory's
    os.chmod(evil, 0o1777)
    assert host.run(ALICE, "can-spawn", "selfplay", umask=umask, env=env).returncode == 0
    middle = evil / "mallorys"
    middle.mkdir(mode=0o755)
    os.chown(middle, mallory.pw_uid, mallory.pw_gid)
    deeper = middle / "state"
    deeper.mkdir(mode=0o700)
    os.chown(deeper, alice.pw_uid, alice.pw_gid)
    theirs = host.run(
        ALICE,
        "can-spawn",
        "selfplay",
        umask=umask,
        env={**env, "RINGRIFT_COORDINATOR_DIR": str(deeper)},
    )
    assert theirs.returncode == 3 and f"inside {middle}" in theirs.stderr, theirs.stderr


def test_hard_link_to_the_database_is_refused(sqlite_host: Host) -> None:
    host = sqlite_host
    env = host.env(ALICE)
    assert host.run(ALICE, "can-spawn", "selfplay", env=env).returncode == 0
    db = host.home(ALICE) / ".local" / "state" / "ringrift-coord" / "tasks.db"
    link = host.python(
        ALICE, f"import os; os.link({str(db)!r}, {str(host.home(ALICE) / 'x.db')!r})"
    )
    assert link.returncode == 0, link.stderr
    refused = host.run(ALICE, "can-spawn", "selfplay", env=env)
    assert refused.returncode == 3 and "2 hard links" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- without root


def test_cache_is_checked_against_the_whole_config_text(tmp_path: Path) -> None:
    coord = Coord(tmp_path)
    head = ("# " + "x" * 1000 + "\n") * 1030  # ~1 MiB of comments (the most a config file may be)
    coord.write_config(head + "task_limits: {selfplay: {per_node: 1}}\n")
    coord.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a read-only command makes none
    assert _limit(coord("--json", "limits").stdout) == 1
    assert (coord.state_dir / "config-cache.json").exists()
    coord.write_config(head + "task_limits: {selfplay: {per_node: 7}}\n")
    assert _limit(coord("--json", "limits").stdout) == 7  # an edit at the file's far end
    coord.write_config(head + "task_limits: {selfplay: {per_nod: 7}}\n")
    broken = coord("can-spawn", "selfplay")
    assert broken.returncode == 3 and "per_nod" in broken.stderr


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_own_files_have_explicit_modes(coord: Coord, umask: int) -> None:
    coord.write_config(LIMIT_ONE)
    os.chmod(coord.config, 0o600)
    for args in (("can-spawn", "selfplay"), ("halt", "--reason", "r")):
        done = subprocess.run(
            coord.argv(*args), env=coord.env, capture_output=True, text=True, umask=umask
        )
        assert done.returncode == 0, done.stderr
    modes = {n: m for n, (m, _) in _modes(coord.state_dir).items()}
    names = {"config-cache.json", "EMERGENCY_HALT"} | (
        {"tasks.db"} if coord.engine == "sqlite" else set()
    )
    assert names <= set(modes) and set(modes.values()) == {0o600}, modes


def test_parent_writable_by_others_is_refused_without_root(tmp_path: Path) -> None:
    coord = Coord(tmp_path)
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    state = parent / "state"
    state.mkdir(mode=0o700)
    refused = coord("can-spawn", "selfplay", env={"RINGRIFT_COORDINATOR_DIR": str(state)})
    assert refused.returncode == 3 and f"inside {parent}" in refused.stderr, refused.stderr


def test_db_outside_the_state_dir_gets_the_same_parent_check(tmp_path: Path) -> None:
    """``--db`` elsewhere: its directory and every one above it, whether the file exists yet
    or is about to be created."""
    coord = Coord(tmp_path)
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    db = parent / "elsewhere.db"
    refused = coord("--db", str(db), "can-spawn", "selfplay")
    assert refused.returncode == 3 and f"inside {parent}" in refused.stderr, refused.stderr
    assert not db.exists()  # nothing was created there
    os.chmod(parent, 0o755)
    assert coord("--db", str(db), "can-spawn", "selfplay").returncode == 0
    os.chmod(parent, 0o777)  # and a store already there is refused the same way
    again = coord("--db", str(db), "status")
    assert again.returncode == 3 and "not sticky" in again.stderr, again.stderr


def test_hard_link_refused_without_root(tmp_path: Path) -> None:
    coord = Coord(tmp_path)
    assert coord("can-spawn", "selfplay").returncode == 0
    os.link(coord.db, tmp_path / "other.db")
    refused = coord("status")
    assert refused.returncode == 3 and "hard links" in refused.stderr


def test_config_search_path_user_then_system(tmp_path: Path) -> None:
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "user"),
        "XDG_CONFIG_DIRS": f"{tmp_path}/a:{tmp_path}/b",
    }
    name = "ringrift-coord/unified_loop.yaml"
    assert config_search_path(env) == [
        f"{tmp_path}/user/{name}",
        f"{tmp_path}/a/{name}",
        f"{tmp_path}/b/{name}",
        os.path.join(SYSTEM_CONFIG_DIR, "unified_loop.yaml"),
    ]
    assert SYSTEM_CONFIG_DIR == "/etc/ringrift-coord"
    assert config_search_path({"HOME": str(tmp_path)})[1] == f"/etc/xdg/{name}"
    (tmp_path / "b" / "ringrift-coord").mkdir(parents=True)
    (tmp_path / "b" / name).write_text("{}\n")
    assert find_config_file(None, env) == f"{tmp_path}/b/{name}"
    (tmp_path / "user" / "ringrift-coord").mkdir(parents=True)
    (tmp_path / "user" / name).write_text("{}\n")
    assert find_config_file(None, env) == f"{tmp_path}/user/{name}"  # the user's own first


def test_group_writable_state_dir_needs_the_shared_group(tmp_path: Path) -> None:
    coord = Coord(tmp_path)
    coord.state_dir.mkdir(mode=0o700)
    os.chmod(coord.state_dir, 0o770)
    refused = coord("can-spawn", "selfplay")
    assert refused.returncode == 3 and "writable by group or others" in refused.stderr
    assert "store.shared_group" in refused.stderr
    bad = coord("--set", "store.shared_group=no-such-group-rrc", "can-spawn", "selfplay")
    assert bad.returncode == 3 and "no group 'no-such-group-rrc'" in bad.stderr, bad.stderr


def test_private_dir_in_the_shared_group_keeps_private_modes(sqlite_host: Host) -> None:
    host = sqlite_host
    state = host.home(ALICE) / "state"
    assert host.python(ALICE, f"import os; os.mkdir({str(state)!r}, 0o750)").returncode == 0
    os.chown(state, -1, grp.getgrnam(GROUP).gr_gid)
    os.chmod(state, 0o2750)  # the group may read, not write: not a shared store
    env = host.env(ALICE, RINGRIFT_COORDINATOR_DIR=str(state))
    done = host.run(ALICE, "--set", f"store.shared_group={GROUP}", "halt", "--reason", "r", env=env)
    assert done.returncode == 0, done.stderr
    modes = {n: m for n, (m, _) in _modes(state).items()}
    assert {"tasks.db", "EMERGENCY_HALT"} <= set(modes) and set(modes.values()) == {0o600}


def test_shared_mode_with_own_group_without_root(tmp_path: Path) -> None:
    from ringrift_coord.statedir import check_state_dir_group, create_file, untrusted_file

    gid = os.getegid()
    store = tmp_path / "shared"
    store.mkdir()
    os.chmod(store, 0o2770)
    assert check_state_dir_group(str(store), gid) == gid
    assert check_state_dir_group(str(tmp_path), None) is None  # private
    old = os.umask(0o077)
    try:
        os.close(create_file(str(store / "f"), gid))
    finally:
        os.umask(old)
    st = os.stat(store / "f")
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
    assert untrusted_file("f", st, gid) is None
    assert untrusted_file("f", st, None) is not None  # group-writable outside a shared store
    os.chmod(store / "f", 0o666)
    assert "writable by others" in (untrusted_file("f", os.stat(store / "f"), gid) or "")


def test_a_system_config_another_user_cannot_reach_is_an_error(sqlite_host: Host) -> None:
    """``sudo ringrift-coord config init`` into the system location gives a file every user
    reads; one that is there but cannot be reached is an error, never the defaults."""
    host = sqlite_host
    target = host.sys_config_dirs / "ringrift-coord" / "unified_loop.yaml"
    written = subprocess.run(
        [*PYTHON, "-m", "ringrift_coord", "config", "init", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **PYTHON_ENV},
    )
    assert written.returncode == 0, written.stderr
    env = host.env(ALICE)
    shown = host.run(ALICE, "--json", "config", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["config_file"] == str(target)
    os.chmod(target.parent, 0o700)  # root's, out of alice's reach
    hidden = host.run(ALICE, "--json", "config", "show", env=env)
    assert hidden.returncode == 3 and "Permission denied" in hidden.stderr, hidden.stdout
