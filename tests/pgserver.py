"""A throw-away PostgreSQL server for the tests: initdb in a temp dir, 127.0.0.1, a free port.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(``runuser``). It can be stopped and restarted on the same port and data directory, which
the "server stopped mid-run" tests need.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings


def find_pg_bin() -> str | None:
    candidates = []
    for tool in ("postgres", "initdb"):
        found = shutil.which(tool)
        if found:
            candidates.append(os.path.dirname(os.path.realpath(found)))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, t), os.X_OK) for t in ("postgres", "initdb")):
            return directory
    return None


def _memory_dir() -> str | None:
    """/dev/shm where it has room: each test's database is a file-by-file copy of a ~9 MB
    template, ~30 ms in memory against ~250 ms on the CI machine's disk (and removing a
    session's databases took 30 s). None: the default temp dir."""
    try:
        found = os.statvfs("/dev/shm")
    except OSError:
        return None
    free = found.f_bavail * found.f_frsize
    return "/dev/shm" if free > 2 << 30 and os.access("/dev/shm", os.W_OK) else None


class PgServer:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.tmp = tempfile.mkdtemp(prefix="ringrift-pg-", dir=_memory_dir())
        os.chmod(self.tmp, 0o755)
        self.data = os.path.join(self.tmp, "data")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.tmp, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.version: int | None = None
        self.admin_url = f"postgresql://ringrift@127.0.0.1:{self.port}/postgres"
        self._initdb()

    def _log(self):  # noqa: ANN202
        return open(os.path.join(self.tmp, "server.log"), "ab")

    def _initdb(self) -> None:
        with self._log() as log:
            subprocess.run(
                self.as_user
                + [
                    os.path.join(self.bindir, "initdb"),
                    "-D",
                    self.data,
                    "-U",
                    "ringrift",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                stdout=log,
                stderr=log,
                check=True,
            )

    def start(self) -> None:
        with self._log() as log:
            self.proc = subprocess.Popen(
                self.as_user
                + [
                    os.path.join(self.bindir, "postgres"),
                    "-D",
                    self.data,
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.tmp}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                    "-c",  # the WAL kept between checkpoints: in /dev/shm it is memory
                    "max_wal_size=64MB",
                    "-c",
                    "min_wal_size=32MB",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited; see {self.tmp}/server.log")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("postgres did not accept connections in 60 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown of the postmaster (SIGINT), keeping the data directory."""
        if self.proc is None:
            return
        try:  # the postmaster itself: runuser, our child, does not pass signals on
            with open(os.path.join(self.data, "postmaster.pid")) as handle:
                os.kill(int(handle.readline()), signal.SIGINT)
        except (OSError, ValueError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database: empty, or a copy of ``template`` (a database nobody is connected to).

        A copy is made file by file (``STRATEGY FILE_COPY``, PostgreSQL 15+; with fsync off
        about as fast as the default WAL-logged copy of a small database, never slower here).
        """
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            sql = f'CREATE DATABASE "{name}"'
            if template is not None:
                sql += f' TEMPLATE "{template}"'
                if self._version(conn) >= 150000:
                    sql += " STRATEGY FILE_COPY"
            conn.execute(sql)
        return f"postgresql://ringrift@127.0.0.1:{self.port}/{name}"

    def _version(self, conn) -> int:  # noqa: ANN001
        """``server_version_num`` (150004 for 15.4), read once."""
        if self.version is None:
            row = conn.execute("SHOW server_version_num").fetchone()
            self.version = int(row[0]) if row is not None else 0
        return self.version

    def drop_database(self, name: str) -> None:
        """Drop a test's database, closing what is still connected to it (best effort: the
        server may be stopped, or a test may have dropped it itself)."""
        import psycopg

        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=2) as conn:
                force = " WITH (FORCE)" if self._version(conn) >= 130000 else ""
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
        except psycopg.Error as exc:  # a warning in pytest's summary: the test itself is over
            warnings.warn(f"pgserver: database {name} not dropped: {exc}", stacklevel=2)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
