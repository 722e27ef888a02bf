"""Wake-ups for ``run --wait``: a waiter sleeps on a doorbell instead of polling the store.

A waiter stands in one queue, its ``kind`` (the ``waiters.task_type``: a task type, or
``transfer`` for ``bandwidth run``), with its place ``seq`` and its ``node``. Whatever may
admit somebody (a slot or transfer freed, a halt lifted, a reservation dropped, a breaker
reset, a dead waiter dropped) rings the queue's head once its transaction commits; only the
waiter rung runs an admission. A waiter that is admitted, or that rejoins the line after a
halt lifted, or that is still held back, rings the next one (``ring_next``), so coalesced
capacity and a whole line behind a lifted halt cascade one writer at a time. A ring that is
lost costs at most the waiter's safety poll (``run.wake_poll``).

SQLite (one host): one FIFO per waiter in ``<db>-wake/``, named ``<kind>.<seq>.<nodetag>``
(the node's name is data: only its crc32 is in the name). The FIFO is opened before its
name is published and before the first admission attempt, so a ring during an attempt stays
buffered in the pipe. Nothing here follows a symlink.

PostgreSQL: ``LISTEN ringrift_coord_wake`` on a second connection; a ring is a
``pg_notify`` inside the committing transaction whose payload names the kind and the seqs
rung (delivered at commit, never after a rollback). Where LISTEN cannot work (PgBouncer in
transaction mode, no permission) the waiter polls: the safety net.
"""

from __future__ import annotations

import errno
import os
import stat
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ringrift_coord.clock import Clock

CHANNEL = "ringrift_coord_wake"
WAKE_SUFFIX = "-wake"  # the wake directory beside a SQLite database: <db>-wake/
_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class Doorbell:
    """A waiter's doorbell. This base one never rings: ``wait`` just lets the time pass
    (the engine has no wake-up, or it could not be set up): the waiter polls."""

    live = False  # True: a ring can wake this waiter (its polls are only a safety net)
    note: str | None = None  # why it only polls, said once to the user (a wake-up failed)

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._held = False

    @property
    def held_back(self) -> bool:
        """Out of line (a halt, peak hours): the waiter says so, and stands in the held line."""
        return self._held

    @held_back.setter
    def held_back(self, held: bool) -> None:
        if held != self._held:
            self._step(held)
        self._held = held

    def _step(self, held: bool) -> None:
        """Move to the held line (``held``) or back into the waiting line."""

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds of the clock passed; True when rung."""
        self.clock.sleep(timeout)
        return False

    def ring_next(self) -> None:
        """Ring the waiter of this queue next in line after this one."""

    def ring_held_next(self) -> None:
        """Rung while held back: ring the held-back waiter of this queue after this one (the
        held line follows a lifted halt one by one)."""

    def close(self) -> None:
        """Leave: nobody can ring this doorbell any more."""

    def __enter__(self) -> Doorbell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _real_clock(clock: Clock) -> bool:
    from ringrift_coord.clock import SystemClock

    return isinstance(clock, SystemClock)


# --------------------------------------------------------------------------- SQLite: FIFOs


def kind_part(kind: str) -> str:
    """The kind as it appears in a FIFO's name: itself when it is a plain word, else a hash."""
    if kind and len(kind) <= 64 and set(kind) <= _NAME_SAFE:
        return kind
    return f"k{zlib.crc32(kind.encode('utf-8', 'surrogatepass')):08x}"


def node_tag(node: str) -> str:
    return f"{zlib.crc32(node.encode('utf-8', 'surrogatepass')):08x}"


def wake_dir(db_path: str) -> str:
    return db_path + WAKE_SUFFIX


# a held-back waiter's FIFO: ``held.<kind>.<seq>.<nodetag>``; a ring for a freed slot never
# reaches it (it could not use the slot), an unhalt or a dropped reservation does
HELD_PREFIX = "held."
STALE_TEMP = 60.0  # seconds: a ``.new-*`` temp this old was left by a waiter that died


def _parse(name: str) -> tuple[str, int, str] | None:
    parts = name.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def _trusted_dir(st: os.stat_result, shared_gid: int | None) -> str | None:
    """Why the wake directory cannot be used, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (os.geteuid(), 0) and not (
        shared_gid is not None and st.st_gid == shared_gid
    ):
        return f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and shared_gid is None):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def open_wake_dir(directory: str, shared_gid: int | None, create: bool) -> int | None:
    """A descriptor of the wake directory (never through a symlink), made when missing and
    ``create``; None when it is missing and not to be made. ``OSError``/``ValueError`` when
    it exists but cannot be trusted (the text says why)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        if not create:
            return None
        parent = os.stat(os.path.dirname(directory))
        # the database directory's mode and group: a group-shared store's users all ring
        mode = stat.S_IMODE(parent.st_mode) & 0o3770 if shared_gid is not None else 0o700
        try:
            os.mkdir(directory, 0o700)
            os.chmod(directory, mode, follow_symlinks=False)
            if shared_gid is not None:
                os.chown(directory, -1, shared_gid, follow_symlinks=False)
        except FileExistsError:
            pass  # another waiter made it first: checked below like any other
        st = os.lstat(directory)
    why = _trusted_dir(st, shared_gid)
    if why is not None:
        raise ValueError(f"wake directory {directory} {why}; refusing it")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):  # swapped meanwhile
        os.close(fd)
        raise ValueError(f"wake directory {directory} changed while it was opened; refusing it")
    return fd


def _ring_one(dir_fd: int, name: str, shared_gid: int | None) -> str:
    """Ring the FIFO ``name``: "rung" (or already rung: its pipe is full), "dead" (nobody
    reads it: its waiter died; it was removed), or "skip" (not a FIFO of ours: left alone,
    never written or followed)."""
    try:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody has open for reading
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
            return "dead"
        return "skip"  # gone meanwhile, a symlink (ELOOP), no permission...
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or (
            st.st_uid not in (os.geteuid(), 0)
            and not (shared_gid is not None and st.st_gid == shared_gid)
        ):
            return "skip"
        try:
            os.write(fd, b"!")
        except BlockingIOError:
            pass  # full: rung many times already
        except OSError:
            return "skip"
        return "rung"
    finally:
        os.close(fd)


def _fifos(dir_fd: int, held: bool = False) -> list[tuple[str, int, str, str]]:
    """(kind part, seq, node tag, name) of every waiter's FIFO in line (``held``: of every
    held-back waiter), in seq order."""
    found = []
    for name in os.listdir(dir_fd):
        if held != name.startswith(HELD_PREFIX):
            continue
        parsed = _parse(name[len(HELD_PREFIX) :] if held else name)
        if parsed is not None:
            found.append((*parsed, name))
    found.sort(key=lambda f: f[1])
    return found


def _ours(st: os.stat_result, shared_gid: int | None) -> bool:
    return st.st_uid in (os.geteuid(), 0) or (shared_gid is not None and st.st_gid == shared_gid)


def _remove_if_stale(dir_fd: int, name: str, shared_gid: int | None) -> bool:
    """Remove ``name`` when it is a FIFO of ours that nobody reads (a killed waiter's, left
    with a seq a new or restored store hands out again); True when it was. Anything else (a
    symlink, a regular file, another user's file, a live waiter's FIFO) is left alone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISFIFO(st.st_mode) or not _ours(st, shared_gid):
            return False
        fd = os.open(
            name,
            os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: a FIFO with no reader
            return False
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True
    os.close(fd)  # somebody reads it: a live waiter's
    return False


def _clean_temps(dir_fd: int, shared_gid: int | None) -> None:
    """Remove the ``.new-*`` temps of waiters that died while publishing (a minute old)."""
    import time

    try:
        for name in os.listdir(dir_fd):
            if not name.startswith(".new-"):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (
                    stat.S_ISFIFO(st.st_mode)
                    and _ours(st, shared_gid)
                    and time.time() - st.st_mtime > STALE_TEMP
                ):
                    os.unlink(name, dir_fd=dir_fd)
            except OSError:
                continue
    except OSError:
        pass


def _ring_first(
    dir_fd: int,
    candidates: Iterable[tuple[str, int, str, str]],
    shared_gid: int | None,
    done: set[str],
) -> None:
    """Ring the first live one of ``candidates`` (dead ones are removed on the way)."""
    for _kind, _seq, _tag, name in candidates:
        if name in done:
            return  # rung already by this ringer: it is the head here too
        outcome = _ring_one(dir_fd, name, shared_gid)
        if outcome == "rung":
            done.add(name)
            return


def ring_fifos(
    directory: str, targets: Iterable[tuple[str | None, str | None]], shared_gid: int | None
) -> None:
    """Ring, for each (kind, node) target, the head of the kind's line and the first waiter
    of the kind on that node (kind None: the head of every kind). Never raises."""
    try:
        dir_fd = open_wake_dir(directory, shared_gid, create=False)
    except (OSError, ValueError):
        return
    if dir_fd is None:
        return
    try:
        fifos = _fifos(dir_fd)
        held = _fifos(dir_fd, held=True)
        if not fifos and not held:
            return
        done: set[str] = set()
        for kind, node in targets:
            if kind is None:
                # the head of every line, and of every held line (a halt lifted, a
                # reservation dropped: the held-back ones follow one by one), and the first
                # on the node of each (its slots freed)
                tag = None if node is None else node_tag(node)
                for line in (fifos, held):
                    for part in sorted({f[0] for f in line}):
                        kin = [f for f in line if f[0] == part]
                        _ring_first(dir_fd, kin, shared_gid, done)
                        if tag is not None:
                            on_node = (f for f in kin if f[2] == tag)
                            _ring_first(dir_fd, on_node, shared_gid, done)
                continue
            part = kind_part(kind)
            _ring_first(dir_fd, (f for f in fifos if f[0] == part), shared_gid, done)
            if node is not None:
                tag = node_tag(node)
                same = (f for f in fifos if f[0] == part and f[2] == tag)
                _ring_first(dir_fd, same, shared_gid, done)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class FifoDoorbell(Doorbell):
    """One waiter's FIFO in the wake directory (SQLite)."""

    live = True

    def __init__(
        self,
        directory: str,
        kind: str,
        seq: int,
        node: str,
        clock: Clock,
        shared_gid: int | None,
    ) -> None:
        super().__init__(clock)
        self.directory, self.shared_gid = directory, shared_gid
        self.kind, self.seq = kind_part(kind), int(seq)
        self.name = f"{self.kind}.{self.seq}.{node_tag(node)}"
        self.current = self.name  # its name now: in the held line it is HELD_PREFIX + name
        self.fd: int | None = None
        self.dir_fd = open_wake_dir(directory, shared_gid, create=True)
        assert self.dir_fd is not None
        _clean_temps(self.dir_fd, shared_gid)
        tmp = f".new-{os.getpid()}-{os.urandom(4).hex()}"
        mode = 0o600 if shared_gid is None else 0o660
        try:
            os.mkfifo(tmp, mode, dir_fd=self.dir_fd)  # fails on anything already there
            try:
                # O_RDWR: a ringer closing its end is never an EOF that keeps select() awake
                fd = os.open(
                    tmp,
                    os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=self.dir_fd,
                )
                self.fd = fd
                os.fchmod(fd, mode)
                if shared_gid is not None and os.fstat(fd).st_gid != shared_gid:
                    os.fchown(fd, -1, shared_gid)
                # published only now that it is open: a ring finds a reader or no name at all;
                # link, not rename: a name already there (planted) is refused, not replaced
                if not self._publish(tmp, self.name):
                    raise ValueError(
                        f"wake directory {directory} already holds {self.name}, which is not "
                        "this waiter's doorbell; refusing it"
                    )
            finally:
                os.unlink(tmp, dir_fd=self.dir_fd)
        except BaseException:
            self._close_fds()
            raise

    def _publish(self, src: str, dst: str) -> bool:
        """Link ``src`` as ``dst``; False when ``dst`` is taken by something that is not a
        dead waiter's FIFO (that one is removed first)."""
        assert self.dir_fd is not None
        for _ in range(2):
            try:
                os.link(src, dst, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                return True
            except FileExistsError:
                if not _remove_if_stale(self.dir_fd, dst, self.shared_gid):
                    return False
        return False

    def _step(self, held: bool) -> None:
        if self.dir_fd is None or self.fd is None:
            return
        new = HELD_PREFIX + self.name if held else self.name
        try:
            if not self._publish(self.current, new):
                return  # its name stays: a ring it misses costs one safety poll
            old, self.current = self.current, new
            os.unlink(old, dir_fd=self.dir_fd)
        except OSError:
            pass

    def _drain(self) -> bool:
        assert self.fd is not None
        rung = False
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return rung
            if not chunk:
                return rung
            rung = True

    def wait(self, timeout: float) -> bool:
        assert self.fd is not None
        if self._drain():  # rung while it was busy (an admission attempt)
            return True
        if not _real_clock(self.clock):  # a test's clock: time passes at once, never really
            self.clock.sleep(timeout)
            return self._drain()
        if self.clock.wait_readable([self.fd], timeout):
            return self._drain()
        return False

    def ring_next(self) -> None:
        self._ring_after(held=False)

    def ring_held_next(self) -> None:
        self._ring_after(held=True)

    def _ring_after(self, held: bool) -> None:
        if self.dir_fd is None:
            return
        try:
            line = _fifos(self.dir_fd, held=held)
            later = [f for f in line if f[0] == self.kind and f[1] > self.seq]
            _ring_first(self.dir_fd, later, self.shared_gid, set())
        except OSError:
            pass

    def _close_fds(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def close(self) -> None:
        if self.dir_fd is not None and self.fd is not None:
            try:
                st = os.stat(self.current, dir_fd=self.dir_fd, follow_symlinks=False)
                mine = os.fstat(self.fd)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    os.unlink(self.current, dir_fd=self.dir_fd)
            except OSError:
                pass
        self._close_fds()


# --------------------------------------------------------------------------- PostgreSQL


# One statement, inside the ringing transaction: notify the head of the kind's line, the one
# after it (the head may be a waiter on a host that died: it holds its place until its
# heartbeat ages out, and must not swallow every ring meanwhile) and the first on the node.
RING_SQL = (
    "SELECT pg_notify('" + CHANNEL + "', %s || ' ' || string_agg(seq::text, ' ')) "
    "FROM (SELECT seq FROM (SELECT seq FROM waiters WHERE task_type = %s AND held = 0 "
    "ORDER BY seq LIMIT 2) a "
    "UNION SELECT MIN(seq) FROM waiters WHERE task_type = %s AND node = %s AND held = 0) q "
    "WHERE seq IS NOT NULL HAVING COUNT(seq) > 0"
)
# the head (and the one after it) of every kind's line: an unhalt
RING_ALL_SQL = (
    "SELECT pg_notify('" + CHANNEL + "', task_type || ' ' || string_agg(seq::text, ' ')) "
    "FROM (SELECT task_type, seq, row_number() OVER (PARTITION BY task_type ORDER BY seq) AS n "
    "FROM waiters WHERE held = 0) w WHERE n <= 2 GROUP BY task_type"
)
# a change for a whole node (a reservation released): the node's first waiter of every kind
RING_NODE_SQL = (
    "SELECT pg_notify('" + CHANNEL + "', task_type || ' ' || MIN(seq)::text) FROM waiters "
    "WHERE node = %s AND held = 0 GROUP BY task_type"
)
# a waiter's ring_next: the first after it
RING_NEXT_SQL = (
    "SELECT pg_notify('" + CHANNEL + "', %s || ' ' || MIN(seq)::text) FROM waiters "
    "WHERE task_type = %s AND seq > %s AND held = 0 HAVING MIN(seq) IS NOT NULL"
)


def pg_ring(cur: Any, targets: Iterable[tuple[str | None, str | None]]) -> None:
    """Run the notifications of ``targets`` on ``cur``, inside the committing transaction."""
    everyone = False
    for kind, node in sorted(targets, key=lambda t: (t[0] or "", t[1] or "")):
        if kind is None:
            everyone = True
            if node is not None:
                cur.execute(RING_NODE_SQL, (node,))
            continue
        cur.execute(RING_SQL, (kind, kind, kind, node))
    if everyone:
        cur.execute(RING_ALL_SQL)
        # the waiters a halt held back stand in no line the ringer could read: all of them
        cur.execute("SELECT pg_notify('" + CHANNEL + "', '" + EVERYONE + "')")


EVERYONE = "*"  # the payload that rings every waiter held back (out of line)


def rung_me(payload: str, kind: str, seq: int, held_back: bool) -> bool:
    words = payload.split(" ")
    if payload == EVERYONE:
        return held_back
    return bool(words) and words[0] == kind and str(seq) in words[1:]


class ListenDoorbell(Doorbell):
    """``LISTEN`` on a connection of its own (PostgreSQL)."""

    live = True

    def __init__(self, conn: Any, kind: str, seq: int, clock: Clock) -> None:
        import psycopg

        super().__init__(clock)
        self.conn, self.kind, self.seq = conn, kind, int(seq)
        # only the server's failures end the listening: a signal's exception (SIGTERM while
        # it waits) must reach the waiter
        self._failed = (psycopg.Error, OSError)

    def _collect(self, timeout: float) -> bool:
        """Whether a ring for this waiter came within ``timeout`` (0: those already here)."""
        try:
            if timeout <= 0:
                if not _real_clock(self.clock):
                    # a test's clock: one round trip, so a ring committed before it is here
                    # (the server sends what it has for a session before its answer)
                    self.conn.execute("SELECT 1")
                got = list(self.conn.notifies(timeout=0))
                return any(rung_me(n.payload, self.kind, self.seq, self.held_back) for n in got)
            # select() on the socket for the whole time left, then read what came without
            # waiting: psycopg's own notifies(timeout=...) wakes ten times a second
            monotonic = self.clock.monotonic
            deadline = monotonic() + timeout
            while True:
                left = deadline - monotonic()
                if left <= 0:
                    return False
                if not self.clock.wait_readable([self.conn.fileno()], left):
                    continue
                got = list(self.conn.notifies(timeout=0))
                if any(rung_me(n.payload, self.kind, self.seq, self.held_back) for n in got):
                    return True
                if self.conn.closed or self.conn.broken:
                    raise OSError("the listening connection ended")
        except self._failed:  # the listener's server went away: poll instead
            self.live = False
            return False

    def wait(self, timeout: float) -> bool:
        if not self.live:
            self.clock.sleep(timeout)
            return False
        if self._collect(0):
            return True
        if not _real_clock(self.clock):
            self.clock.sleep(timeout)
            return self._collect(0)
        return self._collect(timeout)

    def ring_next(self) -> None:
        """Best effort, bounded by the connection's reply timeout and statement_timeout (a
        stopped server never keeps an admitted waiter from its job)."""
        if not self.live:
            return
        try:
            self.conn.execute(RING_NEXT_SQL, (self.kind, self.kind, self.seq))
        except self._failed:  # a lost ring costs one safety poll
            self.live = False
            self.close()

    def ring_held_next(self) -> None:
        self.ring_next()  # the held-back ones were all rung at once (``EVERYONE``)

    def close(self) -> None:
        try:
            self.conn.close()
        except self._failed:
            pass
