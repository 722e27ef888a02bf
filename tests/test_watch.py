"""``status --watch``: driven for real in tmux (an 80 x 30 terminal), on both engines.

The screen is read with ``capture-pane``; Ctrl-C is ``send-keys C-c``; the exit status is
tmux's ``pane_dead_status`` (the pane stays after its command ends: ``remain-on-exit``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Coord, wait_for

ENGINES = ("sqlite", "postgres")

NODE = "gpu-node-h100-us-east-17"

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """One private tmux server (its own socket) running one command in an 80 x 30 pane.

    The pane's shell runs the command and writes its exit status to a file (tmux 3.3's own
    ``pane_dead_status`` is sometimes left empty); the pane stays after it ends
    (``remain-on-exit``), so its last screen can still be read."""

    def __init__(self, coord: Coord, argv: list[str], width: int = 80, height: int = 30) -> None:
        self.socket = f"ringrift-test-{os.getpid()}-{id(self)}"
        self.exit_file = coord.tmp / f"exit-{id(self)}"
        self.env = {**coord.env, "TERM": "xterm-256color"}
        self.env.pop("COLUMNS", None)  # the pane's width, not the tests' 200
        self.env.pop("TMUX", None)
        command = " ".join(shlex.quote(a) for a in argv)
        command += f"; echo $? > {shlex.quote(str(self.exit_file))}"
        self.tmux(
            "-f", "/dev/null", "new-session", "-d", "-s", "w", "-x", str(width),
            "-y", str(height), command, ";", "set-option", "-w", "-t", "w",
            "remain-on-exit", "on",
        )  # fmt: skip

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "w")

    def pid(self) -> int:
        """The command's pid (the child of the pane's shell)."""
        shell = int(self.tmux("display-message", "-p", "-t", "w", "#{pane_pid}").strip())

        def child() -> int:
            path = f"/proc/{shell}/task/{shell}/children"
            with open(path) as handle:
                found = handle.read().split()
            return int(found[0]) if found else 0

        return int(str(wait_for(child, 15, "the command to start")))

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended (128+N: killed by signal N)."""
        try:
            text = self.exit_file.read_text()
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None

    def wait_screen(self, needle: str, timeout: float = 30) -> str:
        def seen() -> str:
            screen = self.screen()
            return screen if needle in screen else ""

        return str(wait_for(seen, timeout, f"{needle!r} on the screen"))

    def close(self) -> None:
        argv = ["tmux", "-L", self.socket, "kill-server"]
        subprocess.run(argv, env=self.env, check=False, capture_output=True)
        base = os.environ.get("TMUX_TMPDIR") or "/tmp"
        Path(base, f"tmux-{os.getuid()}", self.socket).unlink(missing_ok=True)  # left behind


@pytest.fixture
def tmux_of(coord: Coord):  # noqa: ANN201
    made: list[Tmux] = []

    def start(*args: str) -> Tmux:
        t = Tmux(coord, coord.argv(*args))
        made.append(t)
        return t

    yield start
    for t in made:
        t.close()


def _populate(coord: Coord) -> None:
    holder = subprocess.Popen(["sleep", "600"])
    try:
        done = coord("register", "selfplay", "--node", NODE, "--pid", str(holder.pid), "-q")
        assert done.returncode == 0, done.stderr
        done = coord("report", "--node", NODE, "--cpu", "50", "--gpu", "75", "--mem", "40")
        assert done.returncode == 0, done.stderr
    finally:
        holder.kill()  # the task stays until its holder is seen dead: a row for the screen
        holder.wait()


@needs_tmux
def test_watch_renders_at_80_columns_and_ctrl_c_exits_0(coord: Coord, tmux_of) -> None:
    holder = subprocess.Popen(["sleep", "600"])
    try:
        done = coord("register", "selfplay", "--node", NODE, "--pid", str(holder.pid), "-q")
        assert done.returncode == 0, done.stderr
        coord("report", "--node", NODE, "--cpu", "50", "--gpu", "75", "--mem", "40")
        t = tmux_of("status", "--watch", "--interval", "0.5")
        screen = t.wait_screen(NODE)
        lines = screen.splitlines()
        assert "Ctrl-C to quit" in lines[0] and "every 0.5s" in lines[0]
        assert all(len(line) <= 80 for line in lines)
        # the node's row is whole on one line: nothing cut or wrapped into a mess
        row = next(line for line in lines if line.startswith(NODE))
        assert "warn gpu" in row and "selfplay=1/32" in row
        assert any(line.startswith("selfplay") and " 1 " in line for line in lines)
        # it redraws: the time in the header moves on
        first = lines[0]
        wait_for(lambda: t.screen().splitlines()[0] != first, 15, "a redraw")
        t.tmux("send-keys", "-t", "w", "C-c")
        wait_for(lambda: t.exit_status() is not None, 15, "the watch to end")
        assert t.exit_status() == 0
        # the alternate screen is gone: the terminal shows what it showed before
        assert "Ctrl-C to quit" not in t.screen()
        assert "Traceback" not in t.screen()
    finally:
        holder.kill()
        holder.wait()


@needs_tmux
def test_watch_shows_a_store_error_retries_and_sigterm_exits_0(
    coord: Coord, tmux_of, engine: str, request: pytest.FixtureRequest
) -> None:
    """The store goes away under a running watch (SQLite: the file moved away; PostgreSQL:
    the server stopped): the error is on the screen, the last good read below it, and the
    watch recovers by itself once the store is back."""
    coord.write_config("store: {connect_timeout: 1}\n")
    assert coord("halt", "--reason", "maintenance window").returncode == 0
    t = tmux_of("status", "--watch", "--interval", "0.5")
    t.wait_screen("maintenance window")
    moved = coord.tmp / "moved.db"
    server = request.getfixturevalue("pg_server") if engine == "postgres" else None
    if server is None:
        os.rename(coord.db, moved)
    else:
        server.stop()
    try:
        screen = t.wait_screen("store error", timeout=60)
        assert "retrying every 0.5s" in screen
        assert ("was deleted" if server is None else "unreachable") in screen
        assert "maintenance window" in screen  # the last good read stays below the error
        assert t.exit_status() is None
    finally:
        if server is None:
            os.rename(moved, coord.db)
        else:
            server.start()
    wait_for(lambda: "store error" not in t.screen(), 60, "the watch to recover")
    assert "maintenance window" in t.screen()
    os.kill(t.pid(), signal.SIGTERM)
    wait_for(lambda: t.exit_status() is not None, 15, "the watch to end")
    assert t.exit_status() == 0
    assert "Traceback" not in t.screen()


def test_watch_json_lines_until_sigterm(coord: Coord) -> None:
    _populate(coord)
    proc = coord.popen("--json", "status", "--watch", "--interval", "0.5")
    try:
        assert proc.stdout is not None
        docs = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == ""
    for doc in docs:
        assert doc["schema_version"] == 1 and doc["total_tasks"] == 1
    assert docs[0]["at"] < docs[1]["at"]
    assert all(json.loads(line) for line in out.splitlines())  # whole lines only


def test_watch_refuses_a_pipe_and_bad_options(coord: Coord) -> None:
    assert coord("can-spawn", "selfplay", "-q").returncode == 0  # creates the store
    done = coord("status", "--watch")
    assert done.returncode == 2
    assert "needs a terminal" in done.stderr and "--watch --json" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    for args, words in (
        (("--interval", "1"), "only with --watch"),
        (("--watch", "--interval", "0.1"), "at least 0.5"),
        (("--watch", "--interval", "1e300"), "at most 86400"),  # was OverflowError, exit 70
        (("--watch", "--interval", "86401"), "at most 86400"),
        (("--watch", "--format", "tsv"), "no --format"),
    ):
        done = coord("status", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr


def test_watch_without_a_store_fails_as_status_does(coord: Coord, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("a missing store is a SQLite file that is not there")
    done = coord("--json", "status", "--watch")
    assert done.returncode == 3
    assert "no store at" in json.loads(done.stdout)["error"]


def test_watch_json_ends_when_the_reader_goes(coord: Coord) -> None:
    _populate(coord)
    argv = " ".join(shlex.quote(a) for a in coord.argv("--json", "status", "--watch"))
    done = subprocess.run(
        ["bash", "-c", f"{argv} --interval 0.5 | head -1; echo ${{PIPESTATUS[0]}} >&2"],
        env=coord.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stdout)["total_tasks"] == 1
    assert done.stderr == "0\n"  # exit 0, nothing said


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_first_read_exits_0(tmp_path: Path, signum: int) -> None:
    """A PostgreSQL server that never answers holds the first read (the connect timeout):
    Ctrl-C or SIGTERM then ends the watch with exit 0, as the README says."""
    import select
    import socket
    import time

    pytest.importorskip("psycopg")
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        coord = Coord(tmp_path)
        coord.env["RINGRIFT_COORD_DB"] = f"postgresql://x@127.0.0.1:{blackhole.getsockname()[1]}/x"
        proc = coord.popen("--json", "status", "--watch", "--interval", "0.5")
        try:
            assert select.select([blackhole], [], [], 20)[0], "watch never tried to connect"
            conn, _ = blackhole.accept()  # the first read is connecting now
            started = time.monotonic()
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
            conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err
    assert time.monotonic() - started < 5
