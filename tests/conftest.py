"""Hermetic test environment: every test gets its own state directory, config and env.

CLI tests run the real program in its own process, so exit codes, stderr lines and files on
disk are what a launch script would see: a fork of a per-worker interpreter that has already
imported the CLI (tests/forkcli.py: the same entry point from argv on, without ~150 ms of
interpreter start and imports per command line), or ``python -m ringrift_coord`` where the
environment changes what the interpreter does before it runs (or RINGRIFT_TEST_FORK_CLI=0).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import forkcli
import pytest

ROOT = Path(__file__).resolve().parent.parent

# A shell that starts the tests in the background (`pytest &` in a script) makes them ignore
# SIGINT, and every program they start inherits that: the tests that send SIGINT to a wrapper
# would then wait for nothing. Take the default back (children get SIG_DFL at exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _clean_env() -> dict[str, str]:
    """The caller's environment without its ringrift settings or PYTHONDONTWRITEBYTECODE
    (each command line would recompile everything)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


_FORK: list[forkcli.Client] = []


def _fork_client() -> forkcli.Client | None:
    """This worker's fork server (tests/forkcli.py), or None with RINGRIFT_TEST_FORK_CLI=0."""
    if os.environ.get("RINGRIFT_TEST_FORK_CLI", "1") == "0":
        return None
    if not _FORK:
        _FORK.append(forkcli.Client(_clean_env()))
    return _FORK[0]


class Coord:
    """Runs ``ringrift-coord`` against one isolated state directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.config = tmp / "coord.yaml"
        self.config.write_text("{}\n")
        self.env = _clean_env()
        self.env.update(
            {
                "RINGRIFT_COORDINATOR_DIR": str(self.state_dir),
                "RINGRIFT_COORD_CONFIG": str(self.config),
                "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
                "XDG_STATE_HOME": str(tmp / "xdg-state"),
                "COLUMNS": "200",
                # this machine's own load (64 racing processes on 2 cores) must not decide tests;
                # tests of the thresholds turn live readings back on
                "RINGRIFT_COORD_SET": "resources.live_host=false",
            }
        )
        self.engine = "sqlite"

    @property
    def db(self) -> Path:
        return self.state_dir / "tasks.db"

    def write_config(self, text: str) -> Path:
        self.config.write_text(textwrap.dedent(text))
        return self.config

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ringrift_coord", *args]

    def __call__(
        self,
        *args: str,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**self.env, **(env or {})}
        fork = _fork_client()
        if fork is not None and forkcli.forkable(full_env, fork.base_env):
            return fork.run(self.argv(*args), args, full_env, timeout=timeout, input=input)
        return subprocess.run(
            self.argv(*args),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        env = {**self.env, **(kw.pop("env", None) or {})}  # type: ignore[dict-item]
        return subprocess.Popen(self.argv(*args), env=env, text=True, **kw)  # type: ignore[call-overload]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a module's tests on every engine it names in ``ENGINES`` (default: SQLite only).

    Engine-independent modules (config parsing, SQLite file handling, completions) stay on
    SQLite; admission, halt, run and queue modules set ``ENGINES = ("sqlite", "postgres")``.
    """
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", getattr(metafunc.module, "ENGINES", ("sqlite",)))


@contextmanager
def user_admin_lock() -> Iterator[None]:
    """Serialise useradd/groupadd/usermod across the test processes (pytest-xdist runs
    several): they lock /etc/passwd and fail, rather than wait, when another holds it."""
    import fcntl

    with open(os.path.join(tempfile.gettempdir(), "ringrift-coord-tests-useradd.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture
def engine() -> str:  # replaced by pytest_generate_tests' parameter
    return "sqlite"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] != b"Z"


@contextmanager
def ready_child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process running ``code`` with ``args`` (it prints "ready" once in place);
    killed at the end whatever happened."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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


@contextmanager
def own_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs of its own mounted at ``where`` (made) with ``options``, unmounted
    afterwards; skips the test where mounting is not possible (not root, no mount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def coord(tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> Coord:
    runner = Coord(tmp_path)
    if engine == "postgres":
        runner.engine = engine
        runner.env["RINGRIFT_COORD_DB"] = request.getfixturevalue("pg_url")
    return runner


# --------------------------------------------------------------------------- PostgreSQL

REQUIRE_PG = os.environ.get("RINGRIFT_TEST_REQUIRE_PG") == "1"  # .ci/run sets it


@pytest.fixture(scope="session")
def pg_server():
    """One throw-away PostgreSQL server for the session (skipped if none is installed)."""
    from pgserver import PgServer, find_pg_bin

    try:
        import psycopg  # noqa: F401
    except ImportError:
        if REQUIRE_PG:
            raise
        pytest.skip("psycopg is not installed (pip install -e '.[postgres]')")
    bindir = find_pg_bin()
    if bindir is None:
        if REQUIRE_PG:
            raise RuntimeError("PostgreSQL binaries not found but RINGRIFT_TEST_REQUIRE_PG=1")
        pytest.skip("PostgreSQL is not installed")
    server = PgServer(bindir)
    server.start()
    yield server
    server.destroy()


_db_counter = iter(range(1, 1_000_000))
MIGRATED_TEMPLATE = "ringrift_migrated_template"


@pytest.fixture(scope="session")
def pg_migrated_template(pg_server) -> str:
    """A database the store's own migrations ran on once: ``pg_url`` copies it.

    Migrating a fresh PostgreSQL database costs more than the rest of most tests' store work;
    a copy of one migrated by the same code is the state every command after the first sees.
    Tests of the first open itself (migrating, refusing, reading an unmigrated database) ask
    for an empty one: ``@pytest.mark.pg_empty``.
    """
    from ringrift_coord.store.postgres import PostgresStore

    url = pg_server.create_database(MIGRATED_TEMPLATE)
    PostgresStore(url, connect_timeout=10).close()
    return MIGRATED_TEMPLATE


def own_pg_database(request: pytest.FixtureRequest, template: str | None = None) -> str:
    """A new database on the session's server for this test (empty, or a copy of
    ``template``), dropped when the test ends: the server's data directory stays small
    enough to live in memory."""
    server = request.getfixturevalue("pg_server")
    name = f"t{os.getpid()}_{next(_db_counter)}"
    url = server.create_database(name, template)
    request.addfinalizer(lambda: server.drop_database(name))
    return url


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's server: migrated (a copy of the template), or empty
    for a test marked ``pg_empty``."""
    if request.node.get_closest_marker("pg_empty") is not None:
        return own_pg_database(request)
    return own_pg_database(request, request.getfixturevalue("pg_migrated_template"))


# --------------------------------------------------------------------------- in-process stores


class EngineDB:
    """One fresh database of this test's engine, opened in-process as often as a test needs.

    ``open`` gives a new store (its own connection) on it; ``context`` a ``Context`` around a
    new store, with the given config and clock. Every store and context opened is closed when
    the test ends.
    """

    def __init__(self, engine: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        from ringrift_coord.statedir import ensure_state_dir

        self.engine = engine
        self.tmp = tmp
        self.state_dir = ensure_state_dir(str(tmp / "state"))
        self.url = (
            request.getfixturevalue("pg_url")
            if engine == "postgres"
            else os.path.join(self.state_dir, "tasks.db")
        )
        self._opened: list[object] = []

    def open(self, clock: object = None, busy_timeout: float = 5.0, url: str | None = None):  # noqa: ANN201
        from ringrift_coord.clock import SYSTEM_CLOCK

        url = url or self.url
        if self.engine == "postgres":
            from ringrift_coord.store.postgres import PostgresStore

            store = PostgresStore(url, busy_timeout=busy_timeout, connect_timeout=2, clock=clock)  # type: ignore[arg-type]
        else:
            from ringrift_coord.store.sqlite import SQLiteStore

            store = SQLiteStore(url, busy_timeout=busy_timeout, clock=clock or SYSTEM_CLOCK)  # type: ignore[arg-type]
        self._opened.append(store)
        return store

    def context(self, config_text: str = "{}\n", clock: object = None):  # noqa: ANN201
        from ringrift_coord.clock import SYSTEM_CLOCK
        from ringrift_coord.config import load_settings
        from ringrift_coord.context import Context

        config = self.tmp / f"coord-{len(self._opened)}.yaml"
        config.write_text(textwrap.dedent(config_text))
        settings = load_settings(
            str(config), env={"RINGRIFT_COORD_SET": "resources.live_host=false"}
        )
        ctx = Context(
            settings=settings,
            state_dir=self.state_dir,
            store=self.open(clock, float(settings.get("store.busy_timeout"))),
            clock=clock or SYSTEM_CLOCK,  # type: ignore[arg-type]
            env={"USER": "tester"},
        )
        self._opened.append(ctx)
        return ctx

    def close(self) -> None:
        for thing in reversed(self._opened):
            thing.close()  # type: ignore[attr-defined]
        self._opened.clear()


@pytest.fixture
def engine_db(engine: str, tmp_path: Path, request: pytest.FixtureRequest):  # noqa: ANN201
    db = EngineDB(engine, tmp_path, request)
    yield db
    db.close()
