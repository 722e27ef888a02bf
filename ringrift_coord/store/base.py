"""The store interface the domain code uses; engines live beside it.

Domain code writes portable SQL with ``?`` placeholders and reads rows as dicts. It never
knows which engine it has: a write transaction is serialised against every other write
transaction that reads-then-writes admission state (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: a transaction-scoped advisory lock), and ``now()`` is the store's clock.
"""

from __future__ import annotations

import _thread
from abc import ABC, abstractmethod

from ringrift_coord.errors import SignalError, StateError, StoreBusy

Row = dict  # dict[str, Any]: one row, column name -> value


class StoreUnreachable(StoreBusy):
    """A server that could not be reached, or stopped answering (exit 75, as busy: nothing
    was decided, retry later), said as "unreachable", never as "busy"."""


class OutcomeUnknown(StateError):
    """A COMMIT was sent and no answer came (the server stopped answering, or the connection
    broke after it went out): the server may still have committed it. Exit 3, not 75: "try
    again" could take a second slot; look first (``ringrift-coord tasks``)."""


class StoreCorrupt(StateError):
    """The store's pages are damaged (exit 3). ``problem``: "state store X is corrupt: ..."
    without the advice, for callers that say what they did about it."""

    def __init__(self, problem: str, advice: str) -> None:
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


CORRUPT_ADVICE = (
    "nothing was written: run `ringrift-coord doctor`; to restore it from a backup, stop every "
    "process using it, remove its -wal and -shm files, then put the backup in place (or move "
    "all three aside)"
)


class StoreUnwritable(StateError):
    """The store cannot be written here (exit 3): its file, directory or filesystem is
    read-only (or immutable), or the disk under it is full. Nothing was written; reading may
    still work (a read-only filesystem is read without writing)."""


class NoStore(StateError):
    """A read-only command found no store where one was named (exit 3): no SQLite file, or
    a PostgreSQL database without the schema (``doctor``, which never creates one)."""


class StoreGone(StateError):
    """The store that existed at a path was deleted or replaced (exit 3): never silently
    re-created, and a process that had it open stops writing into the lost file."""


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from ringrift_coord.clock import Clock
    from ringrift_coord.wake import Doorbell


class Tx(ABC):
    """One open transaction.

    ``after_commit(fn)`` runs ``fn()`` once the write transaction has committed (never after a
    rollback): work that must not hold the write lock or must not happen for a change that did
    not land, such as starting an event's hooks. Its exceptions are swallowed: the change is
    already made.
    """

    def after_commit(self, fn: Callable[[], object]) -> None:
        self.__dict__.setdefault("_after_commit", []).append(fn)

    def ring(self, kind: str | None, node: str | None = None) -> None:
        """Wake the waiters of queue ``kind`` (``waiters.task_type``; None: every queue)
        whose turn it may be, once this transaction commits: call it wherever a change may
        admit a waiter (a slot or transfer freed on ``node``, a halt lifted...). A ring of
        a rolled-back transaction is never heard; many rings of one transaction are one."""
        self.__dict__.setdefault("_rings", set()).add((kind, node))

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; return every row as a dict."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    @abstractmethod
    def now(self) -> float:
        """The store's clock, seconds since the epoch (leases are timed by it)."""

    def clock_sql(self) -> tuple[str, tuple[float, ...]]:
        """The store's clock for a statement: ``("?", (now,))``; or, where the transaction
        has not read it yet and will with its next statement (a server's clock read after
        its lock, in the same round trip), an SQL expression for it, read no earlier than
        ``now()`` will be, and no parameter (``(expression, ())``). A filter on it must
        therefore keep every row it would keep for ``now()``: check again in Python."""
        return "?", (self.now(),)

    def id_ahead(self, table: str) -> str | None:
        """An SQL expression a query can carry that draws the next id of ``table``'s key,
        so that the row's INSERT names its id instead of asking for it back (a round trip
        saved under a server's lock); None where ids come only with the INSERT (SQLite)."""
        return None


class Store(ABC):
    engine: str = "?"
    # the migrations the store records (every known one once opened with migrate=True)
    applied_migrations: set[str]
    busy_timeout: float  # seconds a transaction waits for the lock (then StoreBusy)

    @abstractmethod
    def _begin(self, write: bool) -> Tx: ...

    def _open_tx(self, write: bool, statements_only: bool = False) -> Tx:
        """The transaction ``write()``/``read()`` run in: ``_begin`` here. An engine may
        defer a read's BEGIN, and a ``statements_only`` write's BEGIN and lock, to the
        transaction's first statement, sent together with it; ``_begin`` itself always
        returns with the transaction begun."""
        return self._begin(write=write)

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    def _thread_lock(self) -> Any:
        # One connection, one transaction at a time: threads sharing a store (asyncio's
        # to_thread in CoordinatedTask) take turns instead of interleaving statements.
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", _thread.RLock())
        return lock

    def _stale_transaction(self) -> bool:
        """True when no ``write``/``read`` of this store is open: a transaction the
        connection is still in was left by a signal's exception between a BEGIN and the code
        that would end it, and ``_begin`` rolls it back (never one a caller holds)."""
        return not self.__dict__.get("_depth", 0)

    def write(self, *, statements_only: bool = False) -> _Transaction:
        """A serialised read-then-write transaction; commits on success.

        ``statements_only``: the block does nothing under the lock before its first
        statement (no file written, no lock held on purpose), so a server engine may take
        the lock with that statement, in its round trip, rather than on entry."""
        return _Transaction(self, write=True, statements_only=statements_only)

    def read(self) -> _Transaction:
        """A consistent read-only snapshot."""
        return _Transaction(self, write=False)

    def ring(self, tx: Tx, targets: set[tuple[str | None, str | None]]) -> None:  # noqa: B027
        """Deliver ``tx``'s rings (``Tx.ring``) once it commits: PostgreSQL notifies inside
        the transaction, SQLite rings its wake directory after the commit. Here, a no-op."""

    def doorbell(self, kind: str, seq: int, node: str) -> Doorbell:
        """The doorbell of the waiter ``seq`` in queue ``kind`` for ``node``: made before
        its first admission attempt, so no ring is lost. Here: poll only."""
        from ringrift_coord.wake import Doorbell

        return Doorbell(self._wake_clock())

    def _wake_clock(self) -> Clock:
        from ringrift_coord.clock import SYSTEM_CLOCK

        return getattr(self, "clock", None) or SYSTEM_CLOCK

    def probe_write_lock(self) -> None:
        """Take the lock every admission write takes (SQLite: ``BEGIN IMMEDIATE``;
        PostgreSQL: the admission advisory lock), waiting at most the busy timeout, and let
        it go at once by a rollback: writes nothing. ``StoreBusy`` when it is held past the
        busy timeout (health checks: a writer that holds it stalls every admission)."""
        with self._thread_lock():
            self._begin(write=True)
            self._rollback()

    def check_integrity(self, tables: Sequence[str]) -> None:  # noqa: B027 (server: no-op)
        """Refuse (``StoreCorrupt``, exit 3) a store whose pages of ``tables`` (and their
        indexes) are damaged, checked in a read transaction of its own, before any write
        lock is taken: SQLite checks its file (``PRAGMA quick_check(table)``); a server
        guards its own pages."""

    @abstractmethod
    def close(self) -> None: ...

    def limit_lock_wait(self, seconds: float) -> float:
        """Wait at most ``seconds`` for the store's lock in the transactions that follow (a
        caller's deadline nearer than the busy timeout: ``run --wait --timeout``); returns
        the limit it replaced, to be given back the same way. StoreBusy's message names
        the limit in force."""
        before = self.busy_timeout
        self.busy_timeout = max(float(seconds), 0.0)
        return before

    def idle(self) -> None:  # noqa: B027 (an optional hook: a no-op for most engines)
        """About to wait a long while (``run``): release what a server would hold for us.

        The next transaction reconnects if needed. A no-op for an embedded engine.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Engine, location and ``scope``, for ``status`` (never a password)."""

    @property
    @abstractmethod
    def scope(self) -> str:
        """The store's reach as halt, unhalt and status lines say it (never a password):
        "this host's store sqlite:/path/tasks.db" or "cluster-wide on postgres host/db"."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_conninfo(value: str) -> bool:
    """A libpq keyword string (``host=... dbname=...``: it starts with ``keyword=``), which
    names a PostgreSQL server, never a file (a file so named: ``./host=x`` or sqlite:///)."""
    head, sep, _ = value.lstrip().partition("=")
    head = head.rstrip()
    return bool(sep) and head.isascii() and head.isidentifier()


class _Transaction:
    """``with store.write() as tx`` / ``with store.read() as tx``: under the store's thread
    lock, ``_open_tx``; then a write delivers its rings (``Tx.ring``) and commits when the
    block ends normally (and runs its ``after_commit`` callbacks) and rolls back when it
    raises; a read always rolls back.
    A class rather than ``contextlib.contextmanager``: contextlib's import costs every
    one-shot command ~0.6 ms, and its generator machinery every transaction."""

    __slots__ = ("_store", "_write", "_statements_only", "_lock", "_tx")

    def __init__(self, store: Store, *, write: bool, statements_only: bool = False) -> None:
        self._store, self._write, self._statements_only = store, write, statements_only

    def __enter__(self) -> Tx:
        store = self._store
        lock = self._lock = store._thread_lock()
        lock.acquire()
        try:
            tx = self._tx = store._open_tx(self._write, self._statements_only)
        except BaseException:
            lock.release()
            raise
        state = store.__dict__
        state["_depth"] = state.get("_depth", 0) + 1
        return tx

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        store = self._store
        try:
            store.__dict__["_depth"] -= 1
            if kind is not None or not self._write:
                store._rollback()
                return
            rings = self._tx.__dict__.pop("_rings", None)
            if rings:
                try:
                    store.ring(self._tx, rings)  # (PostgreSQL notifies inside the transaction)
                except BaseException:
                    store._rollback()
                    raise
            store._commit()
            signalled: SignalError | None = None
            for fn in self._tx.__dict__.pop("_after_commit", ()):
                try:
                    fn()
                except SignalError as exc:  # a signal's: the rest still run, then it goes on
                    signalled = signalled or exc
                except Exception:  # noqa: S110 (the change has landed; a hook never undoes it)
                    pass
            if signalled is not None:
                raise signalled
        finally:
            self._lock.release()
