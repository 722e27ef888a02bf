"""Hermetic test environment: every test gets its own state directory, config and env.

CLI tests run the real program in a subprocess (``python -m ringrift_coord``), so exit codes,
stderr lines and files on disk are what a launch script would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Coord:
    """Runs ``ringrift-coord`` against one isolated state directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.config = tmp / "coord.yaml"
        self.config.write_text("{}\n")
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))
        }
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
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # each call would recompile everything
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
        return subprocess.run(
            self.argv(*args),
            env={**self.env, **(env or {})},
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


@pytest.fixture
def engine() -> str:  # replaced by pytest_generate_tests' parameter
    return "sqlite"


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


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database(f"t{os.getpid()}_{next(_db_counter)}")
