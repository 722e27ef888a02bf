"""The detached runner of the event hooks: ``python -m ringrift_coord.hookrun``.

It reads one job from stdin (``{"event": {...}, "hooks": [{name, command, timeout}], "log":
path}``), runs every hook at once, each command as a list of words (never a shell) in its own
process group with the event's JSON on stdin, kills a hook's whole group at its timeout, and
appends one line per failure (exit status, signal, timeout, a program that cannot start) to
the log, which is kept under ``MAX_LOG`` bytes (the previous one is kept as ``.1``). The
publisher started it in a new session and never waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

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
        f"{_stamp()} hook {_clean(hook, 80)} event {event.get('type')} #{event.get('id')}: "
        f"{_clean(what)}\n"
    )
    with _lock:
        try:
            if os.path.getsize(path) > MAX_LOG:
                os.replace(path, path + ".1")
        except OSError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        finally:
            os.close(fd)


def run_hook(hook: dict[str, Any], data: bytes, event: dict[str, Any], log: str) -> None:
    """Run one hook to its end or its timeout; log a failure."""
    name, command, timeout = hook["name"], list(hook["command"]), float(hook["timeout"])
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(  # noqa: S603 (a list of words from the config, no shell)
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            log_failure(log, name, event, f"cannot start {command[0]}: {exc.strerror or exc}")
            return
        try:
            proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            log_failure(log, name, event, f"timed out after {timeout:g} s: killed")
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
    try:
        job = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
        event, hooks, log = job["event"], job["hooks"], job["log"]
    except (ValueError, KeyError, TypeError):
        return 2
    data = json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
    threads = [threading.Thread(target=run_hook, args=(hook, data, event, log)) for hook in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
