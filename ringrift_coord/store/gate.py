"""The write gate: a fair queue in front of SQLite's write lock.

SQLite's busy handler is not fair: a writer that finds the write lock taken sleeps (1, 2, 5,
10 ... 100 ms) and tries again, and a newcomer that arrives while the lock is free takes it.
Under a herd of writers some lose every race until their busy timeout ends (exit 75), and
the sleepers keep the CPU busy with retries. So every ringrift-coord writer first takes an
exclusive ``flock`` on a small file beside the store, ``PATH-gate``, right before ``BEGIN
IMMEDIATE``: only the gate's holder waits on SQLite's lock, the others block in the kernel
(not runnable, so the holder has the CPU) and are woken the moment it is let go, never
after a sleep. The gate only orders ringrift-coord's own writers; SQLite's lock stays the
real guard (the ``sqlite3`` shell, or a writer that could not use the gate, still write
safely, only without the queue).

``flock`` alone is not fair either: it wakes every waiter to race for the lock, and a writer
that comes back at once (a launch loop) or a newcomer wins the race again and again (twelve
writers back to back: one got 1.7 times the turns of another, and under ~140 writers on 2
cores some waited past the busy timeout while the median waited 70 ms). So the writers
line up in arrival order before the ``flock``: each draws a ticket (a counter at the start
of the file, read and advanced under a lock of its bytes), holds a lock on its ticket's own
8 bytes further on (an open-file-description lock, ``F_OFD_SETLK``: the kernel drops it
with the descriptor, so a killed writer leaves the line at once), waits for the previous
ticket's bytes to be let go (writing its pid and pid namespace at its own before it
blocks), then takes the ``flock``, and holds both until its ``COMMIT`` (or rollback): the
next in line then finds SQLite's lock free at once instead of noticing the ``COMMIT`` at
its busy handler's next try, and a writer that comes back draws a ticket behind everyone
waiting. A writer that finds nobody in line (the last ticket's bytes let go) and the
``flock`` free takes it at once, as the first in line would (a lone writer: a ``pread``, a
lock test, the ``flock``).
A writer whose predecessor in line is stopped (SIGSTOP, Ctrl-Z: it holds its place but will
not move) stops waiting for it after ``STOPPED_CHECK`` seconds and goes on to the
``flock``: a stopped waiter costs the one behind it that long, once, never the whole line;
one it cannot judge (its pid written from another pid namespace, a ``/proc`` it cannot read,
no pid written yet) it passes after ``UNSEEN_LOOKS`` looks: fairness is given up for it,
never the busy timeout. Where the line cannot be used (a gate this user can only read;
not 64-bit Linux) the ``flock`` alone orders the writers, let go once ``BEGIN IMMEDIATE``
has SQLite's lock (held to the ``COMMIT``, the writer that had just let go would win the
race of the woken waiters again and again).

The wait is bounded by the store's busy timeout: ``flock`` has no timeout, so a waiter arms
``SIGALRM`` (``setitimer``, as util-linux ``flock -w`` does) in the main thread when the
application does not use that signal itself (default handler, not blocked, no timer running).
Anywhere else (another thread; an application that owns SIGALRM) it tries again every few
ms (1, doubling to 20) within the same bound: less fair, but it still queues behind a holder
(and a health check from a thread sees a stopped one). A holder killed (even by SIGKILL)
lets go at once (the kernel drops the lock with its last descriptor); a stopped one holds
every writer up to the busy timeout, as a stopped SQLite transaction does, and ``doctor``
names it.

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
import sys
import time

from ringrift_coord.errors import StateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable
else:  # the C module: ``signal`` itself imports enum (start-up time of every command)
    import _signal

GATE_SUFFIX = "-gate"
NONE = -1  # no gate here: the writer goes on without one

# a gate that cannot be made or opened: the writer goes on without it (see above)
_WITHOUT = frozenset((errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENOSPC))

# The line (see above): the ticket counter's 8 bytes at COUNTER, then one 8-byte place per
# ticket from PLACES on, PLACE_COUNT of them reused in turn (far more than ever wait at once)
COUNTER, PLACES, PLACE_COUNT = 0, 4096, 4096
STOPPED_CHECK = 0.5  # seconds in line before looking whether the writer ahead is stopped
# looks after which a writer ahead that cannot be seen at all (another pid namespace, a
# hidden /proc) is passed: fairness is given up for it, never the busy timeout
UNSEEN_LOOKS = 2
# the line's byte-range locks: 64-bit Linux (struct flock: see _lock_args)
_OFD = sys.platform.startswith("linux") and sys.maxsize > 2**32 and hasattr(fcntl, "F_OFD_SETLK")
_ORDER = sys.byteorder  # (struct flock in native order, written out: no struct import)

_armed = False  # a waiter is blocked now, and SIGALRM interrupts its wait
_places: dict[int, int] = {}  # gate descriptor -> the offset of the place it holds in line


class GateTimeout(Exception):
    """The gate was not free within the busy timeout (said as the store being busy)."""


class _Tick(Exception):
    """SIGALRM during a wait: the deadline, or time to look at the writer ahead."""


def open_gate(db_path: str, shared_gid: int | None, create: bool = True) -> int:
    """A descriptor on ``db_path``'s gate, made if missing (the store's mode and group;
    unless not ``create``); ``NONE`` when it cannot be made or opened. ``StateError`` for a
    symlink or a file that another user could have made or could write. Open for reading
    and writing where this user may (the line needs it), else for reading (the ``flock``
    alone)."""
    gate = db_path + GATE_SUFFIX
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = _open_either(gate, flags)
        except FileNotFoundError:
            if not create:
                return NONE
            from ringrift_coord.statedir import create_file

            try:
                os.close(create_file(gate, shared_gid))
            except FileExistsError:  # another writer made it meanwhile
                pass
            fd = _open_either(gate, flags)
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


def _open_either(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_RDWR)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    return os.open(path, flags | os.O_RDONLY)


def queues(fd: int) -> bool:
    """Whether writers on this descriptor line up in arrival order (see above)."""
    try:
        if not (_OFD and fd >= 0 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR):
            return False
        fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _COUNTER_LOCK)  # (EINVAL: a kernel without them)
        return True
    except OSError:
        return False


def _alarm(signum: int, frame: object) -> None:
    if _armed:
        raise _Tick


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


def acquire(fd: int, budget: float, line: bool = False) -> float | None:
    """Take the gate, waiting at most ``budget`` seconds: the seconds waited, or None when
    the gate cannot be used (the caller goes on without it). ``GateTimeout`` when it stayed
    held. ``line``: line up first (``queues(fd)``). Blocked in the kernel (SIGALRM bounds it)
    where SIGALRM is free; elsewhere (another thread; a program that uses SIGALRM) by trying
    again every few ms. Any exception (a signal's) lets go of what it took, unless it comes
    just after the gate was taken: the caller lets it go (``release`` of a gate not held does
    nothing)."""
    start = time.monotonic()
    if line and _line_empty(fd):  # nobody waits: take the gate as the first in line would
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 0.0
        except OSError:
            pass
    alarm = _Alarm(start + budget)
    try:
        if line:
            ahead = _take_place(fd, alarm)
            if ahead is not None:
                _wait_for(fd, ahead, alarm)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _publish_pid(fd)
            if not alarm.wait(
                lambda: fcntl.flock(fd, fcntl.LOCK_EX),
                _attempt(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
            ):
                release(fd)
                return None
        except OSError:
            release(fd)
            return None
    except BaseException:  # the deadline (or a signal's exception), perhaps as it was granted
        release(fd)
        raise
    finally:
        alarm.restore()
    return time.monotonic() - start


def _attempt(take: Callable[[], object]) -> Callable[[], bool]:
    """``take`` (a non-blocking lock call) as a try: False while the lock is held elsewhere
    (EAGAIN/EWOULDBLOCK, or EACCES as POSIX allows for byte-range locks)."""

    def attempt() -> bool:
        try:
            take()
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    return attempt


class _Alarm:
    """The waits of one ``acquire``, bounded by ``deadline``: SIGALRM's handler is set up at
    the first wait that blocks (an ``acquire`` that never waits touches no signal), and given
    back by ``restore``."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.blocking: bool | None = None  # (None: not yet looked at)
        self.old: object = None

    def _set_up(self) -> bool:
        if self.blocking is None:
            self.blocking = _can_time_out()
            if self.blocking:
                try:
                    self.old = _signal.signal(_signal.SIGALRM, _alarm)
                except ValueError:  # not the main thread
                    self.blocking = False
        return self.blocking

    def restore(self) -> None:
        if self.old is not None:
            _signal.signal(_signal.SIGALRM, self.old)  # type: ignore[arg-type]
            self.old = None

    def wait(
        self,
        block: Callable[[], object],
        attempt: Callable[[], bool],
        give_up: Callable[[], bool] | None = None,
    ) -> bool:
        """Take a lock that was just found taken: by ``block`` (bounded by SIGALRM) or, where
        SIGALRM cannot be used, by ``attempt`` again every few ms. ``give_up``: asked every
        ``STOPPED_CHECK`` seconds; True ends the wait without the lock (returns True: go
        on). False when the lock cannot be used here (an OSError such as ENOLCK).
        ``GateTimeout`` at the deadline."""
        global _armed
        blocking = self._set_up()
        next_look = time.monotonic() + STOPPED_CHECK
        pause = 0.001
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                raise GateTimeout
            if give_up is not None and now >= next_look:
                if give_up():
                    return True
                next_look = now + STOPPED_CHECK
            until = self.deadline if give_up is None else min(self.deadline, next_look)
            if not blocking:
                time.sleep(min(pause, max(until - now, 0.0)))
                pause = min(pause * 2, 0.02)
                try:
                    if attempt():
                        return True
                except OSError:
                    return False
                continue
            try:
                _armed = True
                _signal.setitimer(_signal.ITIMER_REAL, max(until - now, 0.0001))
                block()  # an EINTR is retried unless the handler raises (armed: it does)
                _armed = False
                return True
            except _Tick:  # (also just after the lock was granted: taking it again is a no-op)
                pass
            except OSError:
                return False
            finally:
                _armed = False  # from here on, an alarm already on its way does nothing
                _signal.setitimer(_signal.ITIMER_REAL, 0)


def _take_place(fd: int, alarm: _Alarm) -> int | None:
    """Draw a ticket and hold its place in line: the offset of the place ahead, or None when
    there is none to wait for (the first ticket; a line that cannot be used here, such as a
    full disk for the counter). Whatever interrupts it (a signal's exception) lets go of the
    counter: a counter left held would hold up every writer."""
    _leave_place(fd)  # (a place an interrupted release kept: let go of it first)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _COUNTER_LOCK)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or not alarm.wait(
                lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _COUNTER_LOCK),
                _attempt(lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _COUNTER_LOCK)),
            ):
                return None
        raw = os.pread(fd, 8, COUNTER)
        ticket = int.from_bytes(raw, "little") if len(raw) == 8 else 0
        place = PLACES + 8 * (ticket % PLACE_COUNT)
        try:
            os.pwrite(fd, (ticket + 1).to_bytes(8, "little"), COUNTER)
            _places[fd] = place  # (first: ``release`` lets go of it, held or not yet)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_args(fcntl.F_WRLCK, place))
        except OSError:  # a full disk; a place still held a whole round of tickets ago
            _places.pop(fd, None)
            return None
    finally:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _COUNTER_UNLOCK)  # (held or not)
        except OSError:
            pass
    return None if ticket == 0 else PLACES + 8 * ((ticket - 1) % PLACE_COUNT)


def _wait_for(fd: int, ahead: int, alarm: _Alarm) -> None:
    """Wait until the writer ahead lets go of its place (it has the gate and SQLite's lock,
    or it left), or is seen stopped."""
    args = _lock_args(fcntl.F_RDLCK, ahead)
    try:
        found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, args)
    except OSError:
        return  # (the line cannot be used here: the flock alone orders)
    if found[:2] == _UNLOCKED_TYPE:  # let go already: the common case, one call
        return
    _publish_pid(fd)
    unseen = 0

    def give_up() -> bool:  # seen stopped, or not seen at all for UNSEEN_LOOKS looks
        nonlocal unseen
        stopped = _stopped(fd, ahead)
        if stopped is None:
            unseen += 1
            return unseen >= UNSEEN_LOOKS
        return stopped

    try:
        alarm.wait(
            lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, args),
            _attempt(lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, args)),
            give_up,
        )
    finally:  # (taken only to learn that it was free; also when the deadline came with it)
        _let_go(fd, ahead)


def _line_empty(fd: int) -> bool:
    """Whether the last ticket drawn has let go of its place (no writer waits in line)."""
    try:
        raw = os.pread(fd, 8, COUNTER)
        if len(raw) < 8 or raw == bytes(8):
            return True
        last = PLACES + 8 * ((int.from_bytes(raw, "little") - 1) % PLACE_COUNT)
        found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _lock_args(fcntl.F_RDLCK, last))
    except OSError:
        return False
    return found[:2] == _UNLOCKED_TYPE


def _publish_pid(fd: int) -> None:
    """Write this pid at the place it holds, before it blocks: the writer behind it looks
    there to see whether it is stopped (a place not yet written holds an earlier ticket's
    pid: at worst the writer behind stops waiting for this one in line)."""
    place = _places.get(fd)
    if place is not None:
        try:
            os.pwrite(fd, _pid_bytes(), place)
        except OSError:
            pass  # (the writer behind cannot see whether this one is stopped: it waits)


def _stopped(fd: int, place: int) -> bool | None:
    """Whether the writer whose pid is written at ``place`` is a stopped process; None when
    this process cannot tell (another pid namespace, a ``/proc`` entry it cannot read, a pid
    not written yet or gone)."""
    try:
        raw = os.pread(fd, 8, place)
    except OSError:
        return None
    pid, namespace = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:8], "little")
    if pid <= 0 or namespace != _pid_namespace() or not namespace:
        return None
    from ringrift_coord.procs import state

    found = state(pid)
    return None if found is None else found in ("T", "t")


def _pid_namespace() -> int:
    """This process's pid namespace (its inode, low 32 bits; 0 when it cannot be read): a
    pid written by a process in another one means another process here."""
    global _namespace
    if _namespace is None:
        try:
            _namespace = os.stat("/proc/self/ns/pid").st_ino & 0xFFFFFFFF
        except OSError:
            _namespace = 0
    return _namespace


_namespace: int | None = None


def _lock_args(kind: int, start: int) -> bytes:
    # short l_type, short l_whence, (4 bytes of padding), off_t l_start, off_t l_len,
    # pid_t l_pid (0, as OFD locks want), (4 bytes of padding): 32 bytes, as "hhqqi4x"
    return (
        kind.to_bytes(2, _ORDER)
        + os.SEEK_SET.to_bytes(2, _ORDER)
        + bytes(4)
        + start.to_bytes(8, _ORDER)
        + (8).to_bytes(8, _ORDER)
        + bytes(8)
    )


_COUNTER_LOCK = _lock_args(fcntl.F_WRLCK, COUNTER)
_COUNTER_UNLOCK = _lock_args(fcntl.F_UNLCK, COUNTER)
_UNLOCKED_TYPE = _lock_args(fcntl.F_UNLCK, 0)[:2]


def _pid_bytes() -> bytes:
    return os.getpid().to_bytes(4, "little") + _pid_namespace().to_bytes(4, "little")


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # (closed meanwhile: the kernel has let go of it already)
    _leave_place(fd)  # (after the flock: the writer behind then finds it free)


def _leave_place(fd: int) -> None:
    place = _places.get(fd)
    if place is not None:
        _let_go(fd, place)
        _places.pop(fd, None)  # (only once let go: an interrupted release is done again)


def _let_go(fd: int, start: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_args(fcntl.F_UNLCK, start))
    except OSError:
        pass  # (closed meanwhile: the kernel has let go of it already)


def close(fd: int) -> None:
    """Close a gate's descriptor (letting go of all it holds)."""
    _places.pop(fd, None)
    os.close(fd)
