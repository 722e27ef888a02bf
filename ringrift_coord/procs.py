"""Process identity on this host: is a slot's holder still alive?

A holder is (pid, start time), so a reused pid is never mistaken for it; a ``run`` job is
watched by its process group, so grandchildren keep the slot as long as they live. On Linux
this reads ``/proc`` directly (cheap: the hot path calls it); elsewhere it uses psutil.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:  # the C module (see signal_name)
    import _signal

_LINUX = sys.platform.startswith("linux")
_BOOT_ID: str | None = None


def boot_id() -> str | None:
    """This boot's id: a holder recorded under another boot of this host is gone."""
    global _BOOT_ID
    if _BOOT_ID is None and _LINUX:
        try:
            with open("/proc/sys/kernel/random/boot_id") as handle:
                _BOOT_ID = handle.read().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID or None


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, the name ``signal.Signals`` gives (of aliases, the first in
    alphabetical order: SIGABRT, SIGCHLD, SIGIO); ``SIGRTMIN+N`` for a real-time signal,
    ``signal N`` for a number with no name. Read from the C module: ``signal`` imports enum
    (start-up time of every ``run``)."""
    names = [
        name
        for name, value in vars(_signal).items()
        if value == signum and name.startswith("SIG") and name[3:].isalnum()
    ]
    if names:
        return min(names)
    low, high = getattr(_signal, "SIGRTMIN", 0), getattr(_signal, "SIGRTMAX", 0)
    if low < signum < high:
        return f"SIGRTMIN+{signum - low}"
    return f"signal {signum}"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def state(pid: int) -> str | None:
    """The process's state letter on Linux (``R``, ``S``, ``T`` stopped, ``Z`` ...), or None
    when it cannot be read here (gone, hidden, not Linux)."""
    fields = _stat_fields(pid) if _LINUX and pid > 0 else None
    return fields[0] if fields else None


_OWN_START: dict[int, int | None] = {}


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot on Linux), or None if it is gone."""
    if pid <= 0:
        return None
    if pid == os.getpid():  # our own start time never changes: read it once
        if pid not in _OWN_START:
            _OWN_START.clear()  # after a fork, forget the parent's
            _OWN_START[pid] = _start_time(pid)
        return _OWN_START[pid]
    return _start_time(pid)


def _start_time(pid: int) -> int | None:
    if _LINUX:
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z":
            return None
        return int(fields[19])
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return int(proc.create_time() * 100)
    except Exception:  # psutil.Error, or psutil missing: treat as gone only if no such pid
        return None if not _pid_exists(pid) else 0


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int | None, started: int | None) -> bool:
    """True while the process ``pid`` that started at ``started`` still runs."""
    if not pid:
        return False
    now_start = start_time(pid)
    if now_start is None:
        return False
    return started is None or now_start == started


def group_alive(pgid: int | None, leader_start: int | None) -> bool:
    """True while any live process of the job's process group remains.

    The leader is checked first; if it has gone, the group may still hold its children, so
    /proc is scanned for members started no earlier than the leader. A process that now has
    the leader's pid but another start time means the group is gone: the kernel never hands
    out a pid while a process group of that number still has members, so the pid (and any
    group of that number) belongs to a stranger.
    """
    if not pgid:
        return False
    if pid_alive(pgid, leader_start):
        return True
    if leader_start is not None and _taken_by_another(pgid, leader_start):
        return False
    if not _LINUX:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # cannot tell: keep the slot rather than free a live job's
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or fields[0] == "Z":
            continue
        if int(fields[2]) == pgid and (leader_start is None or int(fields[19]) >= leader_start):
            return True
    return False


def _taken_by_another(pid: int, started: int) -> bool:
    """Some process other than the one that started at ``started`` has the number ``pid`` now
    (a zombie counts: the leader itself, not yet reaped, does not)."""
    if _LINUX:
        fields = _stat_fields(pid)
        return fields is not None and int(fields[19]) != started
    return _pid_exists(pid) and start_time(pid) not in (None, started)


def owner_uid(pid: int) -> int | None:
    """The real uid of process ``pid``, or None when it is gone or cannot be read."""
    if _LINUX:
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as handle:
                for entry in handle:
                    if entry.startswith("Uid:"):
                        return int(entry.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None
    try:
        import psutil

        return int(psutil.Process(pid).uids().real)
    except Exception:  # psutil.Error, or psutil missing
        return None


def not_signallable(pids: list[int]) -> tuple[int, int | None] | None:
    """The first of ``pids`` this process may not signal, with its owner's uid; None when it
    may signal every one (or they have gone)."""
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            return pid, owner_uid(pid)
    return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group ``pgid`` (Linux; empty elsewhere)."""
    if not _LINUX:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def oom_kill_count() -> tuple[int | None, str | None]:
    """The kernel's OOM-kill counter of this process's memory cgroup, and the file it is in.

    cgroup v2: ``oom_kill`` in ``memory.events``; v1: ``oom_kill`` in ``memory.oom_control``.
    (None, None) when neither can be read (not Linux, no memory controller).
    """
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None, None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        path = path.lstrip("/")
        if controllers == "":  # the v2 unified hierarchy
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                candidates.append(os.path.join(root, path, "memory.events"))
        elif "memory" in controllers.split(","):
            candidates.append(os.path.join("/sys/fs/cgroup/memory", path, "memory.oom_control"))
    for candidate in candidates:
        try:
            with open(candidate, encoding="utf-8", errors="replace") as handle:
                for entry in handle.read().splitlines():
                    key, _, value = entry.partition(" ")
                    if key == "oom_kill" and value.strip().isdigit():
                        return int(value), candidate
        except OSError:
            continue
    return None, None
