"""Shared parts of the bench/ scripts: the machine line, a throw-away PostgreSQL server with one
fresh database per measurement, the CPU time of a process tree, and interleaved median timing.

The peer harness in ``bench/peers/`` stays byte-for-byte as vendored: this module imports it
(``store_ceiling.PgServer`` starts the server) instead of copying it.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE / "peers"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import startup  # noqa: E402  (bench/startup.py: time_once, editable_finder)
import store_ceiling  # noqa: E402  (vendored peer harness: the throw-away server)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def machine() -> dict[str, Any]:
    """What a reader needs to judge a figure: when, where, on what, how loaded."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg": loadavg(),
        "editable_install": startup.editable_finder(),
    }


def median_times(
    rows: Sequence[tuple[str, Sequence[str], Mapping[str, str]]],
    runs: int,
    warmup: int,
    cwd: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Wall time of each (name, argv, env) row, interleaved run by run so that a noisy machine's
    drift hits every row alike; a row whose command fails once gets an ``error`` and is
    dropped from the later rounds. ``cwd``: where the commands run."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    errors: dict[str, str] = {}
    for i in range(warmup + runs):
        for name, argv, env in rows:
            if name in errors:
                continue
            try:
                elapsed = startup.time_once(list(argv), dict(env), cwd)
            except (RuntimeError, OSError) as exc:
                errors[name] = str(exc)
                continue
            if i >= warmup:
                times[name].append(elapsed)
    out: dict[str, dict[str, Any]] = {}
    for name, _, _ in rows:
        if name in errors:
            out[name] = {"error": errors[name]}
        else:
            got = times[name]
            out[name] = {
                "runs": len(got),
                "median_ms": round(statistics.median(got) * 1e3, 2),
                "min_ms": round(min(got) * 1e3, 2),
                "max_ms": round(max(got) * 1e3, 2),
            }
    return out


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of each process and of every live descendant, plus what each has reaped
    (cutime + cstime): a polling shell loop's short-lived children count too."""
    import psutil

    seen: set[int] = set()
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class Postgres:
    """A throw-away PostgreSQL server (``store_ceiling.PgServer``: initdb in a temp dir,
    127.0.0.1 only, a free port, as the ``postgres`` user when run as root, default
    durability) and a fresh database per measurement."""

    server: Any
    url: str
    version: str
    psycopg: str
    _count: int = field(default=0)

    def new_database(self, prefix: str) -> str:
        import psycopg

        self._count += 1
        name = f"{prefix}_{self._count}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


def postgres_missing() -> str | None:
    """Why no throw-away server can be started here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return f"psycopg 3 is not installed for {sys.executable} (pip install '.[postgres]')"
    if not store_ceiling.find_pg_bin(None):
        return "PostgreSQL's initdb/postgres binaries are not installed"
    return None


@contextmanager
def postgres() -> Iterator[Postgres]:
    """Start a throw-away server; stop it (by its pid) and remove its files however the block
    ends."""
    import psycopg

    bindir = store_ceiling.find_pg_bin(None)
    if not bindir:
        raise RuntimeError("PostgreSQL's initdb/postgres binaries are not installed")
    server = store_ceiling.PgServer(bindir)
    try:
        server.start()
        with psycopg.connect(server.url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]).split()[0] if row else "?"
        yield Postgres(server, server.url, version, psycopg.__version__)
    finally:
        server.stop()


@contextmanager
def server_url(pg_url: str | None) -> Iterator[tuple[str, str]]:
    """(url, server version): ``pg_url``'s server, or a throw-away one (``postgres``) for
    the block."""
    if pg_url:
        import psycopg

        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        yield pg_url, str(row[0]).split()[0] if row else "?"
        return
    with postgres() as pg:
        yield pg.url, pg.version
