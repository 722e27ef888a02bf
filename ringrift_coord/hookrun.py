"""The detached runner of the event hooks: ``python -m ringrift_coord.hookrun``.

It reads one job from stdin (``{"event": {...}, "hooks": [{name, command, timeout}], "log":
path, "pythonpath": the publisher's own or null}``), runs every hook at once, each command as a
list of words (never a shell) in its own process group, its stdin a file holding the event's
JSON (never a pipe: a hook, or a child it leaves behind, cannot block the runner), with the
publisher's environment as it was. It kills a hook's whole group at its timeout and appends one
line per failure (exit status, signal, timeout, a program that cannot start) to the log, which
is kept under ``MAX_LOG`` bytes (the previous one is kept as ``.1``): a regular file with the
mode of the state directory's other files, never opened through a symbolic link. The
publisher started it in a new session and never waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ringrift_coord.durations import human

MAX_LOG = 1024 * 1024  # bytes; then hooks.log becomes hooks.log.1
_lock = threading.Lock()


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _clean(text: str, limit: int = 300) -> str:
    from ringrift_coord.inputs import printable

    text = " ".join(printable(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_failure(path: str, hook: str, event: dict[str, Any], what: str) -> None:
    line = (
        f"{_stamp()} hook {_clean(hook, 80)} event {event.get('type')} "
        f"#{event.get('event_id')}: {_clean(what)}\n"
    )
    with _lock:
        fd = _open_log(path)
        if fd is None:
            return
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os.close(fd)


def _open_log(path: str) -> int | None:
    """The log open for appending: a regular file, never through a symbolic link (nor a FIFO
    that would block), created with the mode of the state directory's other files (0600, or
    0660 in a shared directory). Over ``MAX_LOG`` it becomes ``.1`` (a rename: a link planted
    as ``.1`` is replaced, never followed). None: no log (a link or other file in its place)."""
    from ringrift_coord.statedir import create_file, shared_gid_of

    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size > MAX_LOG:
            os.replace(path, path + ".1")
    except OSError:
        pass
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(2):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            try:
                fd = create_file(path, shared_gid_of(os.path.dirname(path) or "."))
            except FileExistsError:
                continue  # another runner created it meanwhile: open that one
            except OSError:
                return None
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
            return fd
        except OSError:  # a symbolic link (ELOOP), a FIFO without a reader, no right...
            return None
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        return None
    return None


def run_hook(
    hook: dict[str, Any],
    data: bytes,
    event: dict[str, Any],
    log: str,
    env: dict[str, str] | None = None,
) -> None:
    """Run one hook to its end or its timeout; log a failure."""
    name, command, timeout = hook["name"], list(hook["command"]), float(hook["timeout"])
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as given:
        given.write(data)
        given.flush()
        given.seek(0)
        try:
            proc = subprocess.Popen(  # noqa: S603 (a list of words from the config, no shell)
                command,
                stdin=given,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except OSError as exc:
            log_failure(log, name, event, f"cannot start {command[0]}: {exc.strerror or exc}")
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            log_failure(log, name, event, f"timed out after {human(timeout)}: killed")
            return
        if proc.returncode == 0:
            return
        err.seek(max(0, err.seek(0, os.SEEK_END) - 300))
        tail = err.read().decode("utf-8", "replace").strip()
        if proc.returncode < 0:
            try:
                what = f"killed by {signal.Signals(-proc.returncode).name}"
            except ValueError:
                what = f"killed by signal {-proc.returncode}"
        else:
            what = f"exit status {proc.returncode}"
        log_failure(log, name, event, what + (f": {tail}" if tail else ""))


def main() -> int:
    # sh starts a background command (the double fork) with SIGINT and SIGQUIT ignored; a hook
    # gets them back, as from a direct exec (a script that stops its children with kill -INT)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    try:
        job = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
        event, hooks, log = job["event"], job["hooks"], job["log"]
    except (ValueError, KeyError, TypeError):
        return 2
    env = dict(os.environ)  # the publisher's, but for the PYTHONPATH it gave this runner
    if "pythonpath" in job:
        if job["pythonpath"] is None:
            env.pop("PYTHONPATH", None)
        else:
            env["PYTHONPATH"] = str(job["pythonpath"])
    data = json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
    threads = [
        threading.Thread(target=run_hook, args=(hook, data, event, log, env)) for hook in hooks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
