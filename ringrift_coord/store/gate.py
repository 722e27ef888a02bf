"""The write gate: a fair queue in front of SQLite's write lock.

SQLite's busy handler is not fair: a writer that finds the write lock taken sleeps (1, 2, 5,
10 ... 100 ms) and tries again, and a newcomer that arrives while the lock is free takes it.
Under a herd of writers some lose every race until their busy timeout ends (exit 75), and
the sleepers keep the CPU busy with retries. So every ringrift-coord writer first takes an
exclusive ``flock`` on a small file beside the store, ``PATH-gate``, right before ``BEGIN
IMMEDIATE``, and lets it go once ``BEGIN IMMEDIATE`` has SQLite's lock (or failed): only
the gate's holder waits on SQLite's lock, the others block in the kernel (not runnable, so
the holder has the CPU) and are woken the moment it is let go, never after a sleep. (Held
until ``COMMIT``, the writer that had just let go won the race of the woken waiters again
and again: ``flock`` wakes them all.) The gate only orders ringrift-coord's own writers;
SQLite's lock stays the real guard (the ``sqlite3`` shell, or a writer that could not use
the gate, still write safely, only without the queue).

The wait is bounded by the store's busy timeout: ``flock`` has no timeout, so a waiter arms
``SIGALRM`` (``setitimer``, as util-linux ``flock -w`` does) in the main thread when the
application does not use that signal itself (default handler, not blocked, no timer running).
Anywhere else (another thread; an application that owns SIGALRM) it tries again every few
ms (1, doubling to 20) within the same bound: less fair, but it still queues behind a holder
(and a health check from a thread sees a stopped one). A holder killed (even by SIGKILL)
lets go at once (the kernel drops the lock with its last descriptor); a stopped one holds
every writer up to
the busy timeout, as a stopped SQLite transaction does, and ``doctor`` names it.

The file is made like the store's other side files (its mode and group, never through a
symlink) and refused, with one line (exit 3), when it is a symlink or another user could
write it. When it cannot be made or opened at all (a read-only directory or store, no
permission, a full disk) the writer goes on without it: the gate decides nothing, so its
absence is today's behaviour, never a wrong decision, and the engine says what is wrong with
the store itself if anything is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ringrift_coord.errors import StateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:  # the C module: ``signal`` itself imports enum (start-up time of every command)
    import _signal

GATE_SUFFIX = "-gate"
NONE = -1  # no gate here: the writer goes on without one

# a gate that cannot be made or opened: the writer goes on without it (see above)
_WITHOUT = frozenset((errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT))
_armed = False  # a waiter is blocked in flock now, and SIGALRM ends its wait


class GateTimeout(Exception):
    """The gate was not free within the busy timeout (said as the store being busy)."""


def open_gate(db_path: str, shared_gid: int | None, create: bool = True) -> int:
    """A descriptor on ``db_path``'s gate, made if missing (the store's mode and group;
    unless not ``create``); ``NONE`` when it cannot be made or opened. ``StateError`` for a
    symlink or a file that another user could have made or could write."""
    gate = db_path + GATE_SUFFIX
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(gate, flags)
        except FileNotFoundError:
            if not create:
                return NONE
            from ringrift_coord.statedir import create_file

            try:
                fd = create_file(gate, shared_gid)
            except FileExistsError:  # another writer made it meanwhile
                fd = os.open(gate, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(
                f"refusing the write gate {gate}: it is a symlink (never followed); remove it "
                "(it is made again)"
            ) from None
        if exc.errno in _WITHOUT:
            return NONE
        raise StateError(f"cannot open the write gate {gate}: {exc.strerror or exc}") from None
    from ringrift_coord.statedir import untrusted_file

    try:
        why = untrusted_file(gate, os.fstat(fd), shared_gid)
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why is not None:
        os.close(fd)
        raise StateError(f"refusing the write gate {gate}: {why}; remove it (it is made again)")
    return fd


def _alarm(signum: int, frame: object) -> None:
    if _armed:
        raise GateTimeout


def _can_time_out() -> bool:
    """Whether SIGALRM is free to bound a wait here (see the module's text)."""
    try:
        return (
            _signal.getsignal(_signal.SIGALRM) in (_signal.SIG_DFL, _alarm)
            and _signal.getitimer(_signal.ITIMER_REAL) == (0.0, 0.0)
            and _signal.SIGALRM not in _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
        )
    except (OSError, ValueError):
        return False


def acquire(fd: int, budget: float) -> float | None:
    """Take the gate, waiting at most ``budget`` seconds: the seconds waited, or None when
    the gate cannot be used (the caller goes on without it). ``GateTimeout`` when it stayed
    held. Blocked in the kernel (SIGALRM bounds it) where SIGALRM is free; elsewhere
    (another thread; a program that uses SIGALRM) by trying again every few ms. Any
    exception (a signal's) while waiting leaves it not held; one just after it was taken may
    leave it held: the caller lets it go (``release`` of a gate not held does nothing)."""
    global _armed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return 0.0
    except BlockingIOError:
        pass
    except OSError:
        return None
    if budget <= 0:
        raise GateTimeout
    if not _can_time_out():
        return _poll(fd, budget)
    start = time.monotonic()
    old: object = None
    try:
        try:
            old = _signal.signal(_signal.SIGALRM, _alarm)
        except ValueError:  # not the main thread
            return _poll(fd, budget)
        _armed = True
        _signal.setitimer(_signal.ITIMER_REAL, budget)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # an EINTR is retried unless a handler raises
        except OSError:  # (ENOLCK...): as the first try's, the gate cannot be used here
            return None
    except BaseException:  # the alarm (or a signal's exception), perhaps just as it was granted
        release(fd)
        raise
    finally:
        _armed = False  # from here on, an alarm already on its way does nothing
        if old is not None:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            _signal.signal(_signal.SIGALRM, old)  # type: ignore[arg-type]
    return time.monotonic() - start


def _poll(fd: int, budget: float) -> float | None:
    """Wait for the gate by trying again (1 ms, doubling to 20 ms) for at most ``budget``."""
    start, pause = time.monotonic(), 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return time.monotonic() - start
        except BlockingIOError:
            pass
        except OSError:
            return None
        left = budget - (time.monotonic() - start)
        if left <= 0:
            raise GateTimeout
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # (closed meanwhile: the kernel has let go of it already)
