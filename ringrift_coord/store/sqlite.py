"""The embedded SQLite engine: WAL, a busy timeout, ``BEGIN IMMEDIATE`` for every write.

A database file is created only by building it completely under a temporary name and
publishing it with ``link(2)``, which fails if the name exists: many processes starting at
once on a fresh state directory initialise it exactly once, and none sees a half-made file.
An existing file is never re-created, repaired or written to unless it is a ringrift-coord
database: a corrupt, truncated or foreign file is refused (exit 3) and left as it was.

A store is never silently re-created either: each one gets a random id when it is created
(kept in the database header's ``application_id``) and a marker file beside it, ``PATH.id``,
that records it. A path whose marker exists but whose database is missing, or carries another
id, is refused (exit 3) until an operator restores the file or removes the marker; a process
that has the store open checks before each transaction that the path still names the file it
opened (a store deleted or moved away under it is said, never written into).
"""

from __future__ import annotations

import _thread
import errno
import os
import stat
import time

import ringrift_coord.store.gate as gate
from ringrift_coord.clock import SYSTEM_CLOCK, Clock
from ringrift_coord.durations import human
from ringrift_coord.errors import StateError, StoreBusy
from ringrift_coord.store.base import (
    CORRUPT_ADVICE,
    NoStore,
    Row,
    Store,
    StoreCorrupt,
    StoreGone,
    StoreUnwritable,
    Tx,
)
from ringrift_coord.store.migrations import MIGRATION_NAMES, MIGRATIONS, statements

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence
    from typing import Any

    from ringrift_coord.wake import Doorbell
else:
    # The C module itself, which is all this engine uses (connect, Connection, the error
    # classes: the very same objects). The ``sqlite3`` package adds only the default
    # datetime adapters and converters, which nothing here passes or declares, and its
    # ``import datetime`` costs ~2.5 ms of every one-shot command.
    try:
        import _sqlite3 as sqlite3
    except ImportError:  # an interpreter that only has the package
        import sqlite3

SQLITE_MAGIC = b"SQLite format 3\x00"
# Small pages: every admission and release rewrites a handful of pages into the WAL, so the
# bytes written per transaction (and the checkpoints that follow) scale with the page size;
# 1 KiB pages measured ~1.4x the acquire+release rate of the 4 KiB default on this workload.
PAGE_SIZE = 1024
# The WAL's bound once no reader holds it back: twice what the autocheckpoint lets it reach.
WAL_LIMIT = 8 << 20
WAL_CUT_RETRY = 1.0  # seconds between tries to cut back a WAL a reader still holds
# a wait for the write gate longer than this shortens BEGIN IMMEDIATE's own busy timeout
GATE_SLACK = 0.001
# a read-only open that finds a -wal without its -shm looks again this often, this long
# apart, before refusing (a writer through another mount creates the -shm just after)
RO_SHM_LOOKS, RO_SHM_WAIT = 20, 0.01


# a wake directory that cannot be written (permissions, a full or read-only disk): a waiter
# polls instead of refusing to wait
_POLL_INSTEAD = frozenset((errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT))


class SQLiteTx(Tx):
    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        # one cursor for the whole transaction rather than a new one per statement (each
        # query's rows are all fetched before the next statement runs)
        self._cursor = store._conn.cursor()
        self._now: float | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._cursor.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise self._store._translate(exc) from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            cursor = self._cursor.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise self._store._translate(exc) from None

    def now(self) -> float:
        if self._now is None:  # one moment for the whole transaction, as on every engine
            self._now = self._store.clock.time()
        return self._now


def file_uri(path: str) -> str:
    """``path`` as a SQLite ``file:`` URI: its bytes as they are, but ``%``, ``?``, ``#``,
    spaces, control and non-ASCII bytes percent-encoded; an absolute path behind an empty
    authority (``file:///...``), so that one starting ``//`` is not read as a host. Built by
    hand: ``urllib.parse`` (and the ``ipaddress`` it loads) would cost every launch ~5 ms."""
    text = "".join(
        chr(b) if 0x21 <= b < 0x7F and b not in b"%?#" else f"%{b:02X}" for b in os.fsencode(path)
    )
    return f"file://{text}" if text.startswith("/") else f"file:{text}"


class SQLiteStore(Store):
    engine = "sqlite"
    # the write gate (store/gate.py): its descriptor, opened at the first write (-2: not yet;
    # gate.NONE: none here), and whether this store holds it now
    _gate = -2
    _gate_line = False  # whether its writers line up in arrival order (gate.queues)
    _gated = False
    _gate_create = True  # (False: a read-only open, doctor's, which makes no file)

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
        shared_gid: int | None = None,
        migrate: bool = True,
        read_only_ok: bool = False,
    ):
        """``migrate=False`` (``doctor``): open an existing store as it is, never creating,
        migrating or adopting anything: ``applied_migrations`` says how far its schema is.

        ``read_only_ok`` (the commands that only read, and ``doctor``): on a filesystem
        mounted read-only (a disk that failed over to ``errors=remount-ro``, a read-only
        mount of the state directory) the store is opened read-only instead of refused:
        reads work, a write says why it cannot (``read_only``: that reason, else None)."""
        self.path = os.path.abspath(path)
        self.read_only: str | None = None
        self._read_only_ok = read_only_ok
        self.busy_timeout = float(busy_timeout)
        self.clock = clock
        self.shared_gid = shared_gid
        self._query_only = False
        self._next_wal_cut = 0.0
        if not migrate:
            self._gate_create = False
        if not os.path.lexists(self.path):
            gone = deleted_store(self.path)  # (it looks for the file again: see there)
            if gone is not None:
                raise gone
            if not migrate:
                raise NoStore(f"no store at {self.path} (nothing recorded there yet)")
            _create_database(self.path, clock, shared_gid)
        store_id, pin = _check_and_pin(self.path, shared_gid)
        self._pin: tuple[int, int] | None = pin
        try:
            self._open(store_id, migrate)
        except BaseException:
            conn = self.__dict__.get("_conn")
            if conn is not None:
                conn.close()
            if self._gate >= 0:  # opened by a migration's write
                gate.close(self._gate)
                self._gate = gate.NONE
            self._pin = None
            _unpin(pin)
            raise

    def _open(self, store_id: int, migrate: bool) -> None:
        shared_gid = self.shared_gid
        recorded = read_store_id(self.path)
        if recorded is not None and store_id and store_id != recorded:
            raise self._replaced(store_id, recorded)
        holder = foreign_wal_holder(self.path)
        if holder is not None:
            raise StoreGone(
                f"{self.path}-wal and {self.path}-shm belong to a deleted store that process "
                f"{holder} still has open (SQLite would replay its pages into {self.path}): "
                f"stop every process using it, remove {self.path}-wal and {self.path}-shm, "
                "then try again"
            )
        mounted_ro = self._read_only_ok and _mounted_read_only(self.path)
        self._conn = self._connect_read_only() if mounted_ro else self._connect()
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        if mounted_ro:
            self.read_only = why_read_only(self.path) or "its filesystem is mounted read-only"
            migrate = False  # (nothing can be written: the schema is read as it is)
            self.applied_migrations = self._applied()
            behind = [name for name in MIGRATION_NAMES if name not in self.applied_migrations]
            if behind:
                self._conn.close()
                raise StateError(
                    f"the store {self.path} is read-only here ({self.read_only}) and its "
                    f"schema is behind this version's (migration {behind[0]} not applied): "
                    "read it with the version that wrote it, or remount it read-write"
                )
        elif migrate:
            self._migrate()
        else:
            self.applied_migrations = self._applied()
        if not store_id:  # the header may be behind the WAL, or a store without an id
            # A ringrift-coord store (migrated above) whose id is 0: one made before stores
            # had ids, a backup of this store taken then, or one salvaged with sqlite3's
            # .dump / .recover. It is adopted: the marker's id when there is one, else new
            # (never by a read-only open: it writes nothing).
            store_id = self._store_id(adopt=migrate, adopt_as=recorded)
            if recorded is not None and store_id and store_id != recorded:
                self._conn.close()
                raise self._replaced(store_id, recorded)
        if recorded is None and store_id and migrate:
            write_store_id(self.path, store_id, shared_gid)
        self.store_id = store_id

    # -- identity -----------------------------------------------------------------------

    def _replaced(self, found: int, recorded: int) -> StoreGone:
        marker = self.path + ID_SUFFIX
        return StoreGone(
            f"state store {self.path} was replaced by another store (its id is {found:08x}, "
            f"{marker} records {recorded:08x}); {restore_advice(self.path)}, or remove "
            f"{marker} to start using this one as a new store"
        )

    def _store_id(self, adopt: bool, adopt_as: int | None) -> int:
        """The id in the header as this connection sees it; with ``adopt``, a store without
        one gets one now (once, whoever races): ``adopt_as``, or a new id when None. 0: it
        could not be written here (read-only, busy): the next process that can write adopts
        it."""
        try:
            found = int(self._conn.execute("PRAGMA application_id").fetchone()[0])
            if found or not adopt:
                return found
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                found = int(self._conn.execute("PRAGMA application_id").fetchone()[0])
                if not found:
                    found = adopt_as or new_store_id()
                    self._conn.execute(f"PRAGMA application_id = {found}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return found
        except sqlite3.Error:
            return 0  # read-only here, or busy: adopted by the next process that can write

    def _check_still_here(self) -> None:
        """Refuse to go on with a file that is no longer the one at the path (deleted, or
        another moved over it): writes would land in a file no one else sees."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            how = "deleted"
        except OSError:
            return  # the engine says what is wrong
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return
            how = "replaced"
        marker = self.path + ID_SUFFIX
        raise StoreGone(
            f"state store {self.path} was {how} while this process had it open; nothing more "
            f"is written to the lost file: {restore_advice(self.path)}, or remove {marker} to "
            "start a new empty store"
        )

    def check_integrity(self, tables: Sequence[str]) -> None:
        """``PRAGMA quick_check(table)`` of each of ``tables`` that exists, in one read
        transaction (no write lock held: admissions go on meanwhile). A table and its
        indexes only: a whole-file check of a large store takes seconds."""
        problems: list[str] = []
        with self.read() as tx:  # a page too damaged to read: StoreCorrupt from _translate
            known = {
                r["name"] for r in tx.query("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            for table in tables:
                if table in known:
                    found = tx.query(f'PRAGMA quick_check("{table}")')
                    problems += [str(r["quick_check"]) for r in found]
        problems = [p for p in problems if p != "ok"]
        if problems:
            raise StoreCorrupt(
                f"state store {self.path} is corrupt: {'; '.join(problems)[:300]}",
                CORRUPT_ADVICE,
            )

    # -- connection ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The store checked (and pinned) by ``_check_and_pin``, opened ``mode=rw``: a file
        moved away or deleted between that check and this open is refused, not re-created
        empty at the path (a bare connect would, and leave a 0-byte file a later open
        takes for a foreign database)."""
        try:
            conn = sqlite3.connect(
                f"{file_uri(self.path)}?mode=rw",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            # checkpoint (two fsyncs) every 4000 WAL pages (4 MB of 1 KiB pages) rather than
            # every 1000: a busy library user pays fewer of them; the WAL stays small
            conn.execute("PRAGMA wal_autocheckpoint=4000")
            # a WAL that a long reader let grow is cut back to this once a checkpoint has
            # caught up (else it keeps its largest size until every connection closes)
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            return conn
        except sqlite3.Error as exc:
            if not os.path.lexists(self.path):  # gone since it was checked a moment ago
                raise deleted_store(self.path) or StoreGone(
                    f"state store {self.path} was moved away or deleted while it was being "
                    "opened; nothing was created in its place: put it back, or try again"
                ) from None
            raise self._translate(exc) from None

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes, to a store on a read-only filesystem (made anew
        for each transaction: the files may change through another mount). With no
        ``-wal`` (or an empty one) the file is the whole store: opened immutable (SQLite
        would otherwise need to create ``-shm``). With a ``-wal`` (a writer ended without
        closing: a crash, or the remount itself) its changes are read through the ``-shm``
        left beside it; without that ``-shm`` they cannot be read at all."""
        wal, shm = self.path + "-wal", self.path + "-shm"
        for look in range(RO_SHM_LOOKS):
            try:
                has_wal = os.stat(wal).st_size > 0
            except OSError:
                has_wal = False
            if not has_wal or os.path.lexists(shm):
                break
            if look + 1 < RO_SHM_LOOKS:  # a writer through another mount makes it next
                self.clock.sleep(RO_SHM_WAIT)
        else:
            raise StateError(
                f"the store {self.path} is read-only here ({why_read_only(self.path)}) and "
                f"its last changes are in {wal}, which cannot be read without {shm}: "
                f"copy {self.path} and {wal} to a writable directory and read the copy "
                "with --db PATH, or remount it read-write"
            )
        flags = "mode=ro" if has_wal else "mode=ro&immutable=1"
        try:
            return sqlite3.connect(
                f"{file_uri(self.path)}?{flags}",
                uri=True,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from None

    def _migrate(self) -> None:
        applied = self._applied()
        if len(applied) < len(MIGRATION_NAMES):
            with self.write() as tx:
                done = {r["name"] for r in tx.query("SELECT name FROM schema_migrations")}
                apply_migrations(tx, done, self.engine)
        self.applied_migrations = set(MIGRATION_NAMES)

    def _applied(self) -> set[str]:
        """The migrations the store records (a read, no lock held after it); refuses a
        database that is not a ringrift-coord store, or one a newer version wrote."""
        try:
            rows = self._conn.execute("SELECT name FROM schema_migrations").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                self._conn.close()
                raise StateError(
                    f"{self.path} is a SQLite database but not a ringrift-coord one (no "
                    "schema_migrations table); it was left untouched: point --db elsewhere"
                ) from None
            raise self._translate(exc) from None
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        applied = {row[0] for row in rows}
        unknown = applied - set(MIGRATION_NAMES)
        if unknown:
            raise StateError(
                f"{self.path} was written by a newer ringrift-coord (migrations "
                f"{', '.join(sorted(unknown))}); upgrade this node"
            )
        return applied

    def _busy(self) -> StoreBusy:
        from ringrift_coord.diagnose import busy_hint  # (the failure path only)

        return StoreBusy(
            f"state store {self.path} is still locked after the {human(self.busy_timeout)} "
            f"busy timeout{busy_hint(self.path)}; nothing was decided, try again"
        )

    def _translate(self, exc: sqlite3.Error) -> Exception:
        text = str(exc)
        name = getattr(exc, "sqlite_errorname", "") or ""
        if self.read_only is not None and name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            # a read of a read-only open: its -wal or -shm came or went meanwhile (a writer
            # through another mount of the same files)
            return StoreBusy(
                f"state store {self.path} changed under this read-only open ({self.read_only}"
                "; a writer through another mount?): nothing was read, try again"
            )
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return self._busy()
        name = getattr(exc, "sqlite_errorname", "") or ""
        room = _free_bytes(os.path.dirname(self.path) or ".")
        if "FULL" in name or (
            name.startswith("SQLITE_IOERR") and room is not None and room < 1 << 16
        ):
            return StoreUnwritable(
                f"disk full: the filesystem of {self.path} has "
                f"{'no' if not room else f'{room} bytes of'} free space left; nothing was "
                "decided: free space there and try again"
            )
        read_only = name.startswith("SQLITE_READONLY") or "readonly" in text
        if read_only or name.startswith("SQLITE_CANTOPEN"):
            why = why_read_only(self.path)
            if why is not None or read_only:
                return StoreUnwritable(
                    f"the store {self.path} is read-only here "
                    f"({why or 'SQLite refused to write it'}); nothing was written"
                )
        if "malformed" in text or "not a database" in text or "corrupt" in text:
            return StoreCorrupt(f"state store {self.path} is corrupt: {text}", CORRUPT_ADVICE)
        return StateError(f"cannot use database {self.path}: {text}")

    # -- transactions -------------------------------------------------------------------

    def _begin(self, write: bool) -> Tx:
        if self.read_only is not None:
            if write:
                raise StoreUnwritable(
                    f"the store {self.path} is read-only here ({self.read_only}); nothing was "
                    "written"
                )
            self._conn.close()  # a view of the files as they are now (see _connect_read_only)
            self._conn = self._connect_read_only()
            self._query_only = False
        if self._conn.in_transaction and self._stale_transaction():
            self._rollback()  # one a signal's exception left open between two lines
        self._check_still_here()
        try:
            if write:
                if self._query_only:  # a read interrupted before it could turn it off
                    self._conn.execute("PRAGMA query_only = OFF")
                    self._query_only = False
                try:
                    waited = self._enter_gate()
                    if waited > GATE_SLACK:  # the gate's wait + BEGIN within the busy timeout
                        left = max(int((self.busy_timeout - waited) * 1000), 0)
                        try:
                            self._conn.execute(f"PRAGMA busy_timeout = {left}")
                            self._conn.execute("BEGIN IMMEDIATE")
                        finally:
                            restore = int(self.busy_timeout * 1000)
                            self._conn.execute(f"PRAGMA busy_timeout = {restore}")
                    else:
                        self._conn.execute("BEGIN IMMEDIATE")
                finally:
                    # In line (gate.queues), the gate is held to the COMMIT: the next in
                    # line then finds SQLite's lock free, instead of sleeping in its busy
                    # handler (1, 2, 5 ... ms) until it notices the COMMIT, and a writer that
                    # comes back draws a ticket behind it. Without the line, let go once
                    # SQLite's lock is ours (or not to be had): a writer that let go at its
                    # COMMIT could take it straight back, ahead of the woken waiters (flock
                    # wakes them all to race).
                    if self._gated and not (self._gate_line and self._conn.in_transaction):
                        self._leave_gate()
            else:
                self._conn.execute("BEGIN")
                # a read transaction refuses to write (as PostgreSQL's READ ONLY does) instead
                # of losing the write silently at its rollback
                self._query_only = True
                self._conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._translate(exc) from None
        except BaseException:  # a signal's exception (run --wait's SIGHUP) mid-way: roll back
            self._rollback()
            raise
        return SQLiteTx(self)

    def _enter_gate(self) -> float:
        """Queue for the write gate (store/gate.py) and take it: the seconds waited (0 when
        there is no gate to take here). StoreBusy when it stays held past the busy timeout."""
        fd = self._gate
        if fd == -2:
            fd = self._gate = gate.open_gate(self.path, self.shared_gid, self._gate_create)
            self._gate_line = gate.queues(fd)
        if fd < 0:
            return 0.0
        if self._gated:  # still held: an end interrupted between its COMMIT and letting go
            self._leave_gate()
        self._gated = True  # (first: a signal's exception from here on still lets it go)
        try:
            waited = gate.acquire(fd, self.busy_timeout, self._gate_line)
        except gate.GateTimeout:
            self._gated = False
            raise self._busy() from None
        if waited is None:  # the gate cannot be used here: SQLite's busy handler alone
            self._gated = False
            return 0.0
        return waited

    def _leave_gate(self) -> None:
        gate.release(self._gate)
        self._gated = False  # (after: a release a signal interrupted is done again)

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._translate(exc) from None
        finally:
            # (a signal's exception is raised once COMMIT returns, with it landed: the gate
            # held to the COMMIT must be let go on that path too, or every writer waits)
            if self._gated:
                self._leave_gate()
        try:
            big = os.stat(self.path + "-wal").st_size > WAL_LIMIT  # ~1 us: every commit
        except OSError:
            big = False
        if big and self.clock.monotonic() >= self._next_wal_cut:
            self._truncate_wal()

    def _truncate_wal(self) -> None:
        """Cut a WAL that a long reader let grow back to nothing, now if no reader holds it
        (a checkpoint that never waits: with a reader still there it gives up at once, and a
        commit a second later tries again; a try costs a few ms, so not at every commit)."""
        done = False
        try:
            self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                row = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                done = row is not None and row[0] == 0
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except sqlite3.Error:
            pass  # the change has landed; the WAL is cut another time
        if not done:
            self._next_wal_cut = self.clock.monotonic() + WAL_CUT_RETRY

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        finally:
            if self._gated:
                self._leave_gate()
        if self._query_only:
            try:
                self._conn.execute("PRAGMA query_only = OFF")
                self._query_only = False
            except sqlite3.Error:
                pass

    # -- wake-ups (run --wait) ----------------------------------------------------------

    def ring(self, tx: Tx, targets: set[tuple[str | None, str | None]]) -> None:
        path, gid = self.path + "-wake", self.shared_gid

        def ring_after_commit() -> None:
            if os.path.isdir(path):  # nobody ever waited here: nothing to import or list
                from ringrift_coord.wake import ring_fifos

                ring_fifos(path, targets, gid)

        tx.after_commit(ring_after_commit)

    def doorbell(self, kind: str, seq: int, node: str) -> Doorbell:
        from ringrift_coord.wake import Doorbell, FifoDoorbell, wake_dir

        directory = wake_dir(self.path)
        try:
            return FifoDoorbell(directory, kind, seq, node, self.clock, self.shared_gid)
        except ValueError as exc:
            raise StateError(str(exc)) from None
        except OSError as exc:
            if exc.errno in _POLL_INSTEAD:  # the waiter can still wait: by polling
                bell = Doorbell(self.clock)
                bell.note = (
                    f"cannot use the wake directory {directory} ({exc.strerror or exc}); "
                    "waiting by polling the store (run.wake_poll) instead"
                )
                return bell
            raise StateError(
                f"cannot use the wake directory {directory}: {exc.strerror or exc}"
            ) from None

    def limit_lock_wait(self, seconds: float) -> float:
        before = super().limit_lock_wait(seconds)  # (the write gate's wait reads it too)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except sqlite3.Error:
            pass  # (a closed connection: nothing waits on it)
        return before

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
        if self._gate >= 0:
            self._gated = False
            gate.close(self._gate)  # (lets go of the gate if held)
            self._gate = gate.NONE
        pin, self._pin = self._pin, None
        if pin is not None:
            _unpin(pin)  # after the connection: it no longer holds a lock of its own

    def describe(self) -> dict[str, Any]:
        doc = {"engine": self.engine, "path": self.path, "store_scope": self.scope}
        if self.read_only is not None:
            doc["read_only"] = self.read_only
        return doc

    @property
    def scope(self) -> str:
        # one file on one host: a halt here stops only the users of this file
        return f"this host's store sqlite:{self.path}"


def apply_migrations(tx: Tx, done: set[str], engine: str) -> None:
    for name, scripts in MIGRATIONS:
        if name in done:
            continue
        for statement in statements(scripts[engine]):
            tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, tx.now())
        )


# The database files this process has open through a store, by (st_dev, st_ino): a
# descriptor kept open on each (a list: more than one only after a race) and how many stores
# use it. On Linux, closing ANY descriptor of a file drops ALL of the process's POSIX locks
# on it, SQLite's own included (the read lock every WAL connection holds on the database
# file): a header read with open() + close() while another store of this process has the
# file open would silently drop that store's locks, and another process could then take the
# exclusive lock, checkpoint and delete the -wal and -shm under the live connection. So the
# header is read through this descriptor, which is closed only once the last store of this
# process using the file has closed its connection (SQLite keys its own descriptors by
# inode for the same reason).
_PINS: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
_PINS_LOCK = _thread.allocate_lock()


def _pin(path: str, st: os.stat_result) -> tuple[tuple[int, int], int]:
    """A descriptor on the database file at ``path`` (``st``: its stat) kept open until
    ``_unpin``: (the file's key, the descriptor)."""
    key = (st.st_dev, st.st_ino)
    with _PINS_LOCK:
        pinned = _PINS.get(key)
        if pinned is not None:
            pinned[1][0] += 1
            return key, pinned[0][0]
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        fst = os.fstat(fd)
        key = (fst.st_dev, fst.st_ino)  # the file opened: the path may name another now
        pinned = _PINS.get(key)
        if pinned is not None:  # (a race) never closed while a store of ours uses it
            pinned[0].append(fd)
            pinned[1][0] += 1
            return key, pinned[0][0]
        _PINS[key] = ([fd], [1])
        return key, fd


def _unpin(key: tuple[int, int]) -> None:
    with _PINS_LOCK:
        pinned = _PINS.get(key)
        if pinned is None:
            return
        pinned[1][0] -= 1
        if pinned[1][0] > 0:
            return
        del _PINS[key]
    for fd in pinned[0]:
        try:
            os.close(fd)
        except OSError:
            pass


def check_database_file(path: str, shared_gid: int | None = None) -> int:
    """Refuse anything at ``path`` that is not a whole SQLite database, without touching it,
    or that another user could have written: the file and its ``-wal`` and ``-shm`` must be
    owned by you (or be in the store's shared group), writable by no one else, with one name.
    Returns the store id its header carries (0: none, or not yet checkpointed into it)."""
    store_id, key = _check_and_pin(path, shared_gid)
    _unpin(key)
    return store_id


def _check_and_pin(path: str, shared_gid: int | None) -> tuple[int, tuple[int, int]]:
    """``check_database_file``, reading through a pinned descriptor (``_pin``): (the store
    id, the key to ``_unpin`` once the store is closed)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StateError(f"cannot open database {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"database {path} is not a regular file")
    _check_trust(path, st, shared_gid)
    try:
        key, fd = _pin(path, st)
    except OSError as exc:
        raise StateError(f"cannot read database {path}: {exc.strerror}") from None
    try:
        return _check_header(path, fd), key
    except BaseException:
        _unpin(key)
        raise


def _check_header(path: str, fd: int) -> int:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # (replaced since it was looked at)
            raise StateError(f"database {path} is not a regular file")
        header = os.pread(fd, 100, 0)
    except OSError as exc:
        raise StateError(f"cannot read database {path}: {exc.strerror}") from None
    advice = "it was left untouched: restore it from a backup or move it aside"
    if len(header) == 0:
        raise StateError(
            f"database {path} is empty (0 bytes), not a ringrift-coord store; {advice}"
        )
    if header[:16] != SQLITE_MAGIC[: len(header)] or len(header) < 16:
        raise StateError(f"{path} is not a SQLite database (foreign or corrupt file); {advice}")
    if len(header) < 100:
        raise StateError(f"database {path} is truncated ({len(header)} bytes); {advice}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = header[24:28] == header[92:96] and pages > 0
    if page_size < 512 or page_size & (page_size - 1):
        raise StateError(f"database {path} has a corrupt header; {advice}")
    if header_size_valid and st.st_size < pages * page_size:
        short = _stays_short(path, fd)
        if short is not None:
            raise StateError(
                f"database {path} is truncated ({short[0]} of {short[1]} bytes); {advice}"
            )
    return int.from_bytes(header[68:72], "big")


ID_SUFFIX = ".id"
_ID_PREFIX = "ringrift-coord store "


def new_store_id() -> int:
    """A random, non-zero 31-bit id (SQLite's application_id is a signed 32-bit integer)."""
    return int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF or 1


def read_store_id(path: str) -> int | None:
    """The id the marker beside ``path`` records; None when there is no marker."""
    marker = path + ID_SUFFIX
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise StateError(f"cannot read the store marker {marker}: {why}") from None
    try:
        text = os.read(fd, 200).decode("ascii", "replace").strip()
    except OSError as exc:
        raise StateError(f"cannot read the store marker {marker}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        if not text.startswith(_ID_PREFIX):
            raise ValueError
        return int(text[len(_ID_PREFIX) :], 16)
    except ValueError:
        raise StateError(
            f"the store marker {marker} is unreadable ({text[:40]!r}); if {path} is the right "
            f"store, remove {marker} (it is written again)"
        ) from None


def write_store_id(path: str, store_id: int, shared_gid: int | None = None) -> None:
    """Record ``store_id`` in the marker beside ``path``: written under a temporary name with
    the store's mode, then renamed over (never half-written, never through a symlink)."""
    from ringrift_coord.statedir import create_file

    marker = path + ID_SUFFIX
    tmp = f"{marker}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        fd = create_file(tmp, shared_gid)
        try:
            os.write(fd, f"{_ID_PREFIX}{store_id:08x}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, marker)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # a read-only directory: the next process that can write records it


def _check_trust(path: str, st: os.stat_result, shared_gid: int | None) -> None:
    from ringrift_coord.statedir import untrusted_file

    # a database being published has a moment's second name: the temporary one it was built
    # under, in this same directory, which its publisher unlinks right after link(2)
    publishing = st.st_nlink == 2 and _publishing(path, st)
    why = untrusted_file(path, st, shared_gid, second_name_ok=publishing)
    for side in ("-wal", "-shm"):
        if why is None:
            try:
                side_st = os.lstat(path + side)
            except OSError:
                continue
            why = untrusted_file(path + side, side_st, shared_gid)
    if why is not None:
        raise StateError(f"refusing database {path}: {why}")


def _publishing(path: str, st: os.stat_result) -> bool:
    """Whether the second name of ``path`` is (or just was) the temporary one it is being
    published from: a ``.init-`` name in the same directory with the same inode, or none left
    at all when we look again (the publisher has unlinked it meanwhile)."""
    directory, name = os.path.split(path)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(name + ".init-")]
    except OSError:
        return False
    for other in names:
        try:
            ost = os.lstat(os.path.join(directory, other))
        except OSError:
            continue
        if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
            return True
    try:
        again = os.lstat(path)
    except OSError:
        return False
    return (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino) and again.st_nlink == 1


def _stays_short(path: str, fd: int) -> tuple[int, int] | None:
    """(size, expected) if the file is still shorter than its header says, a few reads apart.

    Another process's checkpoint (WAL mode) writes page 1, with the new page count, before
    the pages that grow the file: a short file is only truncated if it stays short while no
    WAL is in use. None when it is (or has become) whole, or cannot be judged.
    """
    for attempt in range(5):
        if attempt:
            time.sleep(0.05 * attempt)
        try:
            if os.stat(path + "-wal").st_size > 0:
                return None  # in use: the file alone is not the whole database
        except OSError:
            pass
        try:  # through the pinned descriptor (``_pin``): never a close of the file
            header = os.pread(fd, 100, 0)
            size = os.fstat(fd).st_size
        except OSError:
            return None
        page_size = int.from_bytes(header[16:18], "big")
        expected = (65536 if page_size == 1 else page_size) * int.from_bytes(header[28:32], "big")
        if len(header) < 100 or header[24:28] != header[92:96] or size >= expected:
            return None
    return size, expected


def _create_database(path: str, clock: Clock, shared_gid: int | None = None) -> None:
    """Build a complete database under a temporary name, then publish it atomically.

    The file is made with the store's mode (0600, or 0660 in a shared store) whatever the
    umask, and SQLite gives its ``-wal`` and ``-shm`` files the same mode."""
    from ringrift_coord.statedir import create_file

    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StateError(f"directory {directory} for database {path} does not exist")
    orphan = orphaned_wal(path)
    if orphan is not None:
        raise orphan
    tmp = f"{path}.init-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.close(create_file(tmp, shared_gid))
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute(f"PRAGMA application_id={new_store_id()}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            for name, scripts in MIGRATIONS:
                for statement in statements(scripts["sqlite"]):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (name, clock.time()),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints the WAL into the file and removes it
        try:
            os.link(tmp, path)  # atomic publish; fails if another process won the race
        except FileExistsError:
            pass
    except sqlite3.Error as exc:
        raise StateError(f"cannot create database {path}: {exc}") from None
    except OSError as exc:
        raise StateError(f"cannot create database {path}: {exc.strerror}") from None
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
            except OSError:
                pass


def _free_bytes(directory: str) -> int | None:
    """Bytes an unprivileged writer may still use on ``directory``'s filesystem (None:
    unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _mounted_read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def why_read_only(path: str) -> str | None:
    """Why this process cannot write the store at ``path``, in words (None: no reason seen)."""
    directory = os.path.dirname(path) or "."
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"its filesystem is mounted read-only: {directory}"
    except OSError:
        pass
    for suffix, what in (("", "the file"), ("-wal", "its -wal file"), ("-shm", "its -shm file")):
        if os.path.exists(path + suffix) and not os.access(path + suffix, os.W_OK):
            if os.geteuid() == 0:  # root passes every mode: an immutable or append-only file
                return (
                    f"{what} cannot be written even by root, immutable or append-only: "
                    "lsattr shows it"
                )
            return f"{what} is not writable by this user"
    if not os.access(directory, os.W_OK):
        return f"the directory {directory} is not writable by this user"
    return None


def deleted_store(path: str) -> StoreGone | None:
    """The refusal for a SQLite path whose store is missing although its marker
    (``PATH.id``) says one was created there; None when no marker exists, or the file
    exists (again) after all."""
    marker = os.path.abspath(path) + ID_SUFFIX
    if not os.path.lexists(marker):
        return None
    # a store created meanwhile: its creator publishes the file, then writes the marker, so
    # a marker found after "no file" may be that new store's; look for the file again
    if os.path.lexists(path):
        return None
    try:
        recorded = read_store_id(os.path.abspath(path))
        which = "" if recorded is None else f"store id {recorded:08x}, "
    except StateError:
        which = ""
    return StoreGone(
        f"state store {os.path.abspath(path)} was deleted ({which}recorded in {marker}); "
        f"{restore_advice(os.path.abspath(path))}, or remove {marker} to start a new empty store"
    )


def orphaned_wal(path: str) -> StateError | None:
    """The refusal for a WAL with no database beside it: left from a store deleted under a
    process that still has it open, a new file would take its pages as its own (the old
    store's rows would reappear in it, or its pages be damaged). Checked in this order, a
    WAL that appears with a store published meanwhile is never taken for one."""
    if os.path.lexists(path + "-wal") and not os.path.lexists(path):
        return StateError(
            f"{path}-wal is left from a deleted store (a process may still have it open); "
            f"a new store is not made beside it: once no process uses it (fuser {path}-wal),"
            f" remove {path}-wal and {path}-shm, then try again"
        )
    return None


LOCKS_FILE = "/proc/locks"


def foreign_wal_holder(path: str, locks_file: str = LOCKS_FILE) -> int | None:
    """A process that holds ``path``'s WAL index (``-shm``) but not the file at ``path``:
    it has a store open that was deleted (or moved away) and a file restored in its place,
    and SQLite would replay that store's WAL into the restored file. None: none seen.

    Every SQLite connection in WAL mode holds a read lock on its database file and one on
    its ``-shm`` while open (taken in that order, released in the other), as POSIX locks
    that ``/proc/locks`` lists by inode: ~30 us to read, and only where a ``-shm`` exists; a
    process that holds the ``-shm`` only is then confirmed by its open descriptors.
    """
    try:
        shm = os.stat(path + "-shm").st_ino
        db = os.stat(path).st_ino
        with open(locks_file, "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    on_shm, on_db = set(), set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == b"->":  # a waiter holds nothing yet
            continue
        try:
            pid, ino = int(fields[4]), int(fields[5].rsplit(b":", 1)[1])
        except (ValueError, IndexError):
            continue
        if pid <= 0:  # not visible from this pid namespace: cannot be judged
            continue
        if ino == shm:
            on_shm.add(pid)
        elif ino == db:
            on_db.add(pid)
    # A process can lose its lock on the file without letting go of it (closing any other
    # descriptor of a file drops all of a process's POSIX locks on it): only one seen to
    # have another file open under this name (the deleted one) is taken for a holder.
    for pid in sorted(on_shm - on_db):
        if _has_other_file_open(pid, path, db):
            return pid
    return None


def _has_other_file_open(pid: int, path: str, ino: int) -> bool:
    """Whether ``pid`` has none of its descriptors on the file now at ``path`` (inode
    ``ino``, on ``path``'s device): it holds the ``-shm`` for another database file (the
    deleted one, one moved aside, the same one reached through a symlinked directory is
    still this inode). False where its descriptors cannot be read (another user's process)."""
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
        dev = os.stat(path).st_dev
        shm = os.stat(path + "-shm")
    except OSError:
        return False
    has_shm = False
    for name in names:
        try:
            st = os.stat(f"{fds}/{name}")
        except OSError:
            continue
        if st.st_ino == ino and st.st_dev == dev:
            return False
        has_shm = has_shm or (st.st_ino, st.st_dev) == (shm.st_ino, shm.st_dev)
    # only a live process seen with this -shm open (one that exited meanwhile has no files)
    return has_shm


def missing_store(path: str) -> StateError | None:
    """Why no store may be made at ``path`` where none is (``deleted_store``, then
    ``orphaned_wal``); None: the first admission may create it."""
    return deleted_store(path) or orphaned_wal(os.path.abspath(path))


def restore_advice(path: str) -> str:
    """How to put a store back at ``path`` safely. A process that still has the lost store
    open keeps ``-wal`` and ``-shm`` in place, and SQLite would replay that WAL (the lost
    store's pages) into the restored file: its rows reappear, or its pages are damaged."""
    return (
        f"to restore it, stop every process using it, remove {path}-wal and {path}-shm, then "
        "put the backup in place"
    )
