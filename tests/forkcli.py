"""Run ``ringrift-coord`` command lines as forks of an interpreter that has already imported
the CLI, for the test suite's ``Coord`` (conftest).

Most of a test's time is the ~2,000 command lines it runs, and most of a command line's time
is the interpreter starting and importing Typer, Rich and this package (~150 ms of CPU each on
the 2-core CI machine, against ~10 ms of work). One server per pytest worker imports them
once; each command line is then a fork of it: a real process with its own pid, the caller's
pipes on fds 0-2 (and no other descriptor), the caller's environment, working directory and
umask, that runs the program's entry point (``console_main``) from argv on and exits with its
exit code, as ``python -m ringrift_coord`` does after its imports. Python's own
``os.register_at_fork`` hooks reseed ``random`` in each fork.

What a fork cannot give is what the interpreter reads before its first import: ``PYTHON*``,
the locale variables, ``TZ``, and what Typer and Rich read when they are imported. A command
line whose environment differs from the server's in any variable outside ``RUNTIME_VARS``
runs as a new interpreter (``subprocess.run``), as does every command line when
``RINGRIFT_TEST_FORK_CLI=0``. Tests that measure the start itself (imports, start-up cost)
start their own interpreters and never come here.

Known differences from a new interpreter, none of which the program's behaviour depends on:
stdout's buffer (8 KiB here, the pipe's 4 KiB there: the program flushes before it exits),
``sys.path[0]`` (tests/), one string-hash seed for every fork, ``getppid()`` (the server, as
long-lived as the worker), and resource limits and ignored signals fixed when the server
started.

    python tests/forkcli.py SOCKET      # the server (started by ``Client``)
"""

from __future__ import annotations

import array
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

# Variables read when the program runs, not when it is imported (Rich reads the terminal's
# when a console is made; pytest's own is read by nobody): a difference in these alone is one
# the fork honours (it sets its environment before the entry point runs).
RUNTIME_VARS = (
    *("HOME", "USER", "LOGNAME", "PATH", "PWD", "SHELL", "TMPDIR", "PYTEST_CURRENT_TEST"),
    *("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR"),
    *("TTY_COMPATIBLE", "TTY_INTERACTIVE"),
)
RUNTIME_PREFIXES = ("RINGRIFT_", "_RINGRIFT", "XDG_")


def forkable(env: Mapping[str, str], base: Mapping[str, str]) -> bool:
    """True if ``env`` differs from the server's ``base`` only in run-time variables."""
    for key in set(env) ^ set(base) | {k for k in env if k in base and env[k] != base[k]}:
        if key not in RUNTIME_VARS and not key.startswith(RUNTIME_PREFIXES):
            return False
    return True


# --------------------------------------------------------------------------- the client


class Client:
    """One server per process (pytest worker), started on first use, gone with the process."""

    def __init__(self, base_env: Mapping[str, str]) -> None:
        self.base_env = dict(base_env)
        self._dir = tempfile.mkdtemp(prefix="ringrift-forkcli-")
        atexit.register(shutil.rmtree, self._dir, True)
        self.path = os.path.join(self._dir, "sock")
        self._server: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        with self._lock:
            if self._server is not None:
                if self._server.poll() is None:
                    return
                self._server = None  # it died (reaped by poll): start another on a new name
            if os.path.exists(self.path):
                os.unlink(self.path)
            self._server = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), self.path],
                stdin=subprocess.PIPE,  # the server ends when this process does (EOF)
                stdout=subprocess.DEVNULL,
                env=self.base_env,
            )
            deadline = time.monotonic() + 60
            while not os.path.exists(self.path):
                if self._server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fork server of tests/forkcli.py did not start")
                time.sleep(0.01)

    def run(
        self,
        shown: list[str],
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        timeout: float | None,
        input: str | None,
    ) -> subprocess.CompletedProcess[str]:
        """``subprocess.run(shown, env=env, capture_output=True, text=True, ...)`` where
        ``shown`` is ``python -m ringrift_coord ARGS``."""
        self._ensure()
        deadline = None if timeout is None else time.monotonic() + timeout
        if input is None:  # stdin: nothing to read (a pytest worker's own stdin is its channel)
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), -1
        else:
            in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            umask = os.umask(0)
            os.umask(umask)
            request = {"argv": list(args), "env": dict(env), "cwd": os.getcwd(), "umask": umask}
            fds = array.array("i", [in_r, out_w, err_w])
            conn.sendmsg(
                [json.dumps(request).encode() + b"\n"],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
            )
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                if fd >= 0:
                    os.close(fd)
            conn.close()
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        reply = conn.makefile("rb")
        writer = None
        try:
            _line(conn, reply, deadline)  # {"pid": N}: forked
            if in_w >= 0:
                writer = threading.Thread(target=_feed, args=(in_w, input or ""), daemon=True)
                writer.start()
                in_w = -1
            out, err = _drain(out_r, err_r, deadline)
            status = int(_line(conn, reply, deadline)["status"])
        except subprocess.TimeoutExpired:
            try:  # the server signals its child by pidfd (no pid reuse) and then answers
                conn.sendall(b"kill\n")  # with its status: gone, as subprocess.run leaves it
                _line(conn, reply, time.monotonic() + 10)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                pass
            raise subprocess.TimeoutExpired(shown, timeout or 0) from None
        finally:
            for fd in (in_w, out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            if writer is not None:
                writer.join(timeout=5)
            reply.close()
            conn.close()
        return subprocess.CompletedProcess(shown, status, _text(out), _text(err))


def _feed(fd: int, text: str) -> None:
    """Write ``input`` to the child's stdin and close it (as ``communicate`` does)."""
    try:
        import locale

        data = text.encode(locale.getpreferredencoding(False))  # as subprocess.run encodes
        while data:
            data = data[os.write(fd, data) :]
    except OSError:  # the child did not read it all: as subprocess.run ignores a broken pipe
        pass
    finally:
        os.close(fd)


def _drain(out_r: int, err_r: int, deadline: float | None) -> tuple[bytes, bytes]:
    import selectors

    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired([], 0)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])


def _line(conn: socket.socket, reply: object, deadline: float | None) -> dict[str, object]:
    """The server's next line (JSON) before the deadline, else ``TimeoutExpired``."""
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:  # a zero timeout would make the socket non-blocking
        raise subprocess.TimeoutExpired([], 0)
    conn.settimeout(left)
    try:
        line = reply.readline()  # type: ignore[attr-defined]
    except TimeoutError:
        raise subprocess.TimeoutExpired([], 0) from None
    finally:
        conn.settimeout(None)
    if not line:
        raise RuntimeError("the fork server of tests/forkcli.py went away")
    found = json.loads(line)
    assert isinstance(found, dict)
    return found


def _text(data: bytes) -> str:
    """As ``subprocess.run(..., text=True)`` decodes: the locale's encoding, newlines
    translated."""
    import locale

    enc = locale.getpreferredencoding(False)
    return data.decode(enc).replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- the server


def serve(path: str) -> dict[str, object] | None:
    """Accept requests until stdin closes; in a fork, return its request (the caller runs it).

    Each request has its own number: a readiness event is looked up by it, so an event left
    over from a request already finished (its child and connection both readable in one
    ``select``), or a descriptor number reused by a newer request, is skipped. A bad request
    is answered by closing its connection; the server goes on."""
    import itertools
    import selectors

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the client waits for the name: it appears when ready
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("accept", 0))
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, ("parent", 0))
    numbers = itertools.count(1)
    live: dict[int, tuple[int, int, socket.socket]] = {}  # number -> (pid, pidfd, connection)
    while True:
        for key, _ in sel.select():
            what, number = key.data
            if what == "parent":
                if not os.read(sys.stdin.fileno(), 4096):
                    for _pid, pidfd, _conn in live.values():
                        _kill(pidfd)
                    return None
            elif what == "accept":
                conn, _ = listener.accept()
                request = _receive(conn)
                if request is None:
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    request["conn"] = conn.detach()
                    return request
                for fd in request["fds"]:  # type: ignore[attr-defined]
                    os.close(fd)
                number = next(numbers)
                pidfd = os.pidfd_open(pid)
                live[number] = (pid, pidfd, conn)
                sel.register(pidfd, selectors.EVENT_READ, ("child", number))
                sel.register(conn, selectors.EVENT_READ, ("conn", number))
                try:
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:  # the client is gone: its child is not wanted
                    _kill(pidfd)
            elif number not in live:
                continue  # a finished request's event from the same select
            elif what == "conn":  # the client's deadline passed ("kill") or it went away
                _pid, pidfd, conn = live[number]
                _kill(pidfd)
                sel.unregister(conn)
            elif what == "child":
                pid, pidfd, conn = live.pop(number)
                _, wstatus = os.waitpid(pid, 0)
                sel.unregister(pidfd)
                os.close(pidfd)
                if conn in (k.fileobj for k in sel.get_map().values()):
                    sel.unregister(conn)
                try:
                    status = os.waitstatus_to_exitcode(wstatus)
                    conn.sendall(json.dumps({"status": status}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


def _receive(conn: socket.socket) -> dict[str, object] | None:
    """One request: its JSON line and its three descriptors; None (and the descriptors
    closed) if it is not whole."""
    fds = array.array("i")
    try:
        msg, anc, _flags, _addr = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * 4))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        while not msg.endswith(b"\n"):  # a long environment comes in pieces
            more = conn.recv(1 << 20)
            if not more:
                break
            msg += more
        request = json.loads(msg)
        if not isinstance(request, dict) or len(fds) != 3:
            raise ValueError("not a request")
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        return None
    request["fds"] = list(fds)
    return request


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def become(request: dict[str, object]) -> None:
    """In the fork: take the request's descriptors, environment, directory and umask, and run
    the program's entry point as ``python -m ringrift_coord ARGV`` does."""
    import io

    fds = request["fds"]
    assert isinstance(fds, list) and len(fds) == 3
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # as subprocess's close_fds: nothing else
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(request["cwd"]))
    os.umask(int(request["umask"]))  # type: ignore[call-overload]
    tempfile.tempdir = None  # TMPDIR is read again on first use
    # fds 0-2 as the interpreter's start-up makes them (stderr always line-buffered)
    streams = []
    for fd, mode, like in (
        (0, "rb", sys.__stdin__),
        (1, "wb", sys.__stdout__),
        (2, "wb", sys.__stderr__),
    ):
        assert like is not None
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        streams.append(
            io.TextIOWrapper(
                buffered,  # type: ignore[arg-type]
                encoding=like.encoding,
                errors=like.errors,
                newline="\n",
                line_buffering=fd == 2 or (fd == 1 and raw.isatty()),
            )
        )
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    import ringrift_coord.__main__ as entry

    argv = request["argv"]
    assert isinstance(argv, list)
    sys.argv = [str(entry.__file__), *argv]
    entry.console_main()


def preload() -> None:
    """What a command line imports before it runs: the entry point, the fast path, the
    Typer app and the views behind it, the Click command tree Typer builds from the app
    (built once per process either way), and psycopg where it is installed (a command line on
    PostgreSQL imports it when it opens the store: ~250 ms)."""
    import ringrift_coord.__main__  # noqa: F401
    import ringrift_coord.cli.hot  # noqa: F401
    from ringrift_coord.cli.main import click_command

    click_command()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pass


if __name__ == "__main__":
    preload()
    req = serve(sys.argv[1])
    if req is None:
        sys.exit(0)
    become(req)
