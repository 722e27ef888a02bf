"""The cluster-wide PostgreSQL engine (``pip install 'ringrift-coord[postgres]'``).

Same schema, same named migrations, same behaviour as SQLite. Every write transaction takes
one transaction-scoped advisory lock (``pg_advisory_xact_lock``) before it reads anything:
admission reads counts across several tables (tasks, waiters, halts, reservations, buckets)
and must also see rows that do not exist yet, which row locks cannot lock (phantoms), and
SERIALIZABLE would need a retry loop in every caller. One lock serialises admissions
cluster-wide exactly like SQLite's ``BEGIN IMMEDIATE``; at a few hundred transactions per
second it is far above what 28 nodes' launch scripts ask for. Leases are timed by the
database clock (``clock_timestamp()``), so hosts with skewed clocks agree on expiry.

A server that cannot be reached, or that goes away mid-transaction, gives ``StoreUnreachable``
(exit 75: decide nothing, retry later; said "unreachable", never "busy"). Nothing waits on
the server forever: every session sets ``statement_timeout`` (the busy timeout plus
``STATEMENT_MARGIN``), TCP keepalives find a peer that vanished, and the client gives up on
a reply that has not come ``REPLY_MARGIN`` seconds after the statement timeout (a server or
backend that is stopped, or a network that drops everything, answers nothing at all). Bad
credentials or a missing database are configuration errors (exit 3). The password never
appears in output: give it through ``PGPASSFILE`` / ``~/.pgpass`` (0600) or ``PGPASSWORD``,
not in the URL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ringrift_coord.clock import Clock
from ringrift_coord.durations import human
from ringrift_coord.errors import ConfigError, StateError, StoreBusy, UsageError
from ringrift_coord.store.base import (
    NoStore,
    OutcomeUnknown,
    Row,
    Store,
    StoreUnreachable,
    StoreUnwritable,
    Tx,
    is_conninfo,
)
from ringrift_coord.store.migrations import MIGRATION_NAMES, MIGRATIONS, statements

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.wake import Doorbell

# the database's clock, seconds since the epoch (leases are timed by it)
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"

# what a commit sent without a known outcome says (a retry could take a second slot)
UNKNOWN_ADVICE = (
    "whether it was decided is unknown; look with `ringrift-coord tasks` before trying "
    "again (a second try may take a second slot)"
)
# the sequences of the BIGSERIAL keys ``Tx.id_ahead`` draws from (fixed names, never input)
_ID_SEQUENCES = {"decisions": "decisions_id_seq"}
# pg_advisory_xact_lock key of every admission write: "ringrift" in ASCII
ADMISSION_LOCK = 0x72696E6772696674
MIGRATION_LOCK = ADMISSION_LOCK + 1
# statement_timeout of a session: the busy timeout (lock_timeout) plus this
STATEMENT_MARGIN = 5.0
# idle_in_transaction_session_timeout of a session (seconds)
IDLE_IN_TRANSACTION = 60
# the client gives up on a reply this long after the statement timeout would have fired
REPLY_MARGIN = 5.0
# TCP keepalives (libpq): probe an idle connection after 10 s, every 5 s, give up after 3
# misses; unacknowledged data is given up on after TCP_USER_TIMEOUT ms
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}

_CONFIG_PROBLEMS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "permission denied",
    "role",
    "authentication",
    "pg_hba.conf",
)


# A password in a URL's user part, in its query (``?password=``) or in a libpq keyword string
# (``password=... `` / ``password='...'``, also ``sslpassword=``): never shown anywhere.
# The user part ends at the first / (the path; "?a=b@c" later is not a password); a query
# value ends at & or #, a keyword string's at the next space (libpq reads "se&cret" whole).
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*):[^/@\s]*@")
_QUOTED = r"'(?:[^'\\]|\\.)*'?"
_QUERY_PASSWORD = re.compile(rf"(password\s*=\s*)({_QUOTED}|[^\s&#]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(rf"(password\s*=\s*)({_QUOTED}|\S*)", re.IGNORECASE)


def redact(url: str) -> str:
    """The address (URL or libpq keyword string) with every password masked as ``***``."""
    keyword = _KEYWORD_PASSWORD if is_conninfo(url) else _QUERY_PASSWORD
    return keyword.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` with each whole appearance of ``secret`` (a password libpq may repeat in its
    own text) masked as ``***``; not inside a longer word: a password ``postgres`` leaves
    ``postgresql://`` whole, ``p`` the word ``port``."""
    if not secret:
        return text
    return re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)


def url_has_password(url: str) -> bool:
    return redact(url) != url


def address_parts(url: str) -> dict[str, str]:
    """host, port and dbname of a URL or keyword string, without connecting ({} when it
    cannot be parsed or psycopg is missing)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return {}
    try:
        parts = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 (any parse error: the address is shown masked instead)
        return {}
    return {k: str(parts[k]) for k in ("host", "port", "dbname", "user") if parts.get(k)}


def password_of(url: str) -> str | None:
    """The password libpq would read from ``url`` (a URL or conninfo), to be masked in any
    text that may repeat it; None without one, or when it cannot be parsed."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        password = conninfo_to_dict(url).get("password")
    except Exception:  # noqa: BLE001 (unparsable: connect says so, masked)
        return None
    return str(password) if password else None


def server_name(host: str | None, port: str | int | None, dbname: str | None) -> str:
    where = host or "localhost"
    if port and str(port) != "5432":
        where += f":{port}"
    return f"{where}/{dbname or '?'}"


# A one-row ``INSERT ... VALUES (...)`` (no RETURNING, ON CONFLICT, SELECT) changes exactly one
# row or fails: nothing waits for its reply, so it is sent with the transaction's next statement
_DEFERRABLE = re.compile(
    r"\s*INSERT\s+INTO\s+\w+\s*\([^()]*\)\s*VALUES\s*\((?:[^();]|\([^();]*\))*\)\s*", re.I
)
_NOT_DEFERRABLE = re.compile(r"\b(RETURNING|CONFLICT|SELECT)\b", re.I)
_deferrable_cache: dict[str, bool] = {}


def _deferrable(sql: str) -> bool:
    found = _deferrable_cache.get(sql)
    if found is None:
        found = _deferrable_cache[sql] = bool(
            _DEFERRABLE.fullmatch(sql) and not _NOT_DEFERRABLE.search(sql)
        )
    return found


class PostgresTx(Tx):
    """One transaction on the store's connection, in as few round trips as it can: under
    the admission lock every round trip is a wake-up of this client while every other
    writer waits (on a loaded host, a wait for a CPU). So plain INSERTs (``_deferrable``)
    and the waiters' notifications go with the next statement or the COMMIT, and a read's
    BEGIN (a ``statements_only`` write's BEGIN and lock) with its first statement, each
    batch as one script (the simple protocol takes several statements; parameters bound by
    psycopg, as literals)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._cur = store._conn.cursor()
        self._now: float | None = None
        self._pending: list[str] = []  # statements sent with the next one, in order
        self._clock_at = -1  # where in _pending the clock reading is
        self._sent = False  # whether the BEGIN has gone to the server
        self._write = False  # a write (INSERTs deferred); a read-only one says "read-only" at once
        store._tx = self

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._sent and self._write and _deferrable(sql):  # (the first goes with the BEGIN)
            self._pending.append(self._store._bind(sql, params))
            return 1
        self._send(sql, params)
        return int(self._cur.rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._send(sql, params)
        if self._cur.description is None:
            return []
        names = [d.name for d in self._cur.description]
        return [dict(zip(names, row, strict=True)) for row in self._cur.fetchall()]

    def _send(self, sql: str | None, params: Sequence[Any] = ()) -> None:
        """Run what is pending, then ``sql`` (None: only what is pending) in one round
        trip; the cursor ends on ``sql``'s result."""
        pending = self._pending
        if not pending:
            if sql is not None:
                self._store._run(self._cur, sql, params)
            return
        script = pending if sql is None else [*pending, self._store._bind(sql, params)]
        self._pending = []
        clock_at, self._clock_at = self._clock_at, -1
        self._sent = True
        self._store._run_script(self._cur, script)
        cur = self._cur
        for i in range(len(script)):
            if i == clock_at:
                self._now = float(cur.fetchone()[0])
            if i < len(script) - 1:
                cur.nextset()

    def defer(self, pg_sql: str, params: Sequence[Any] | None = None) -> None:
        """Send ``pg_sql`` (psycopg's ``%s`` placeholders) with the next statement; its
        result is never read."""
        self._pending.append(self._store._bind_pg(pg_sql, params))

    def defer_begin(self, lock: int | None) -> None:
        """BEGIN (``lock``: a write, which takes that advisory lock and then reads the
        database's clock; None: a read-only snapshot) with the first statement. The key is
        this module's own integer, never text from outside."""
        if lock is None:
            self._pending.append("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return
        self._write = True
        self._pending += ["BEGIN", f"SELECT pg_advisory_xact_lock({int(lock)})"]
        if self._store.clock is None:
            self._clock_at = len(self._pending)
            self._pending.append(_NOW)

    def begin_locked(self, lock: int) -> None:
        """BEGIN, take the advisory lock ``lock`` and read the transaction's moment once
        the lock is held: one round trip, now."""
        self.defer_begin(lock)
        self._send(None)

    def clock_sql(self) -> tuple[str, tuple[float, ...]]:
        if self._now is None and self._clock_at >= 0:  # read with the next statement
            return f"({_NOW})", ()  # (an uncorrelated subquery: evaluated once, later)
        return "?", (self.now(),)

    def id_ahead(self, table: str) -> str | None:
        if table not in _ID_SEQUENCES:
            raise ValueError(f"no id sequence known for table {table!r}")
        return f"nextval('{_ID_SEQUENCES[table]}')"

    def now(self) -> float:
        if self._now is None and self._clock_at >= 0:
            self._send(None)  # the BEGIN and its clock reading, with what else is pending
        if self._now is None:
            if self._store.clock is not None:
                self._now = self._store.clock.time()
            else:
                row = self.one(f"{_NOW} AS now")
                assert row is not None
                self._now = float(row["now"])
        return self._now


class PostgresStore(Store):
    engine = "postgres"

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        clock: Clock | None = None,
        statement_timeout: float | None = None,
        migrate: bool = True,
    ) -> None:
        """``migrate=False`` (``doctor``): read the schema's state, never create or migrate
        it (``NoStore`` for a database without one; ``applied_migrations`` says how far)."""
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "the PostgreSQL engine needs psycopg 3: pip install 'ringrift-coord[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._secret = password_of(url)  # masked in any text the server or libpq returns
        self.busy_timeout = float(busy_timeout)
        self.connect_timeout = max(1, int(round(connect_timeout)))
        # ``serve`` bounds each statement by its store_timeout; else the busy timeout + margin
        self.statement_timeout = statement_timeout or self.busy_timeout + STATEMENT_MARGIN
        self.clock = clock  # None: the database's clock (tests may inject one)
        self._sql_cache: dict[str, str] = {}
        self._conn: Any = None
        self._tx: PostgresTx | None = None  # the transaction open on the connection
        self._binder: Any = None  # a client-side binding cursor of the connection
        self._connect()
        if migrate:
            self._migrate()
            self.applied_migrations = set(MIGRATION_NAMES)
        else:
            try:
                self.applied_migrations = self._applied()
            except BaseException:
                self.close()
                raise

    # -- connection ---------------------------------------------------------------------

    def _connect(self) -> None:
        psycopg = self._psycopg
        try:
            self._conn = _connection_class(psycopg).connect(
                self.url,
                connect_timeout=self.connect_timeout,
                autocommit=True,
                application_name="ringrift-coord",
                **_keepalives(psycopg, self.url),
            )
            self._conn.reply_timeout = self.statement_timeout + REPLY_MARGIN  # psycopg >= 3.3
            settings = [
                f"SET lock_timeout = {int(self.busy_timeout * 1000)}",
                f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION * 1000}",
                f"SET statement_timeout = {max(1, int(self.statement_timeout * 1000))}",
            ]
            with self._conn.cursor() as cur:
                # All in one round trip: a query without parameters goes by the simple
                # protocol, which takes several statements. (Not the connection's ``options``
                # parameter: PgBouncer refuses it for settings it does not track.)
                cur.execute("; ".join(settings))
        except psycopg.Error as exc:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise self._translate(exc) from None

    def _translate(self, exc: Exception) -> Exception:
        psycopg = self._psycopg
        # libpq puts each sentence on its own line ("Connection refused\n\tIs the server
        # running..."): one line, the sentences kept apart
        lines = (" ".join(part.split()) for part in str(exc).splitlines())
        text = "; ".join(part for part in lines if part) or type(exc).__name__
        text = redact(mask_secret(text, self._secret))
        where = self._where()
        if isinstance(exc, psycopg.errors.LockNotAvailable) or "lock timeout" in text:
            return StoreBusy(
                f"state store {where} is still locked after the {human(self.busy_timeout)} busy "
                "timeout; nothing was decided, try again"
            )
        if isinstance(exc, _WAIT_TIMEOUT(psycopg)):
            return StoreUnreachable(
                f"PostgreSQL {where} is unreachable: no answer in "
                f"{human(self.statement_timeout + REPLY_MARGIN)} (server or network stopped); "
                "nothing was decided, try again later"
            )
        state = getattr(exc, "sqlstate", None) or ""
        if state == "57014":  # query_canceled: the statement timeout
            return StoreBusy(
                f"PostgreSQL {where} did not finish a statement within the "
                f"{human(self.statement_timeout)} statement timeout ({text[:200]}); nothing "
                "was decided, try again"
            )
        if state in ("40P01", "40001"):  # deadlock, serialization failure: rolled back
            return StoreBusy(
                f"PostgreSQL {where} rolled the transaction back ({text[:200]}); nothing was "
                "decided, try again"
            )
        if state == "53100":  # disk full: the server answered, it is not unreachable
            return StoreUnwritable(
                f"disk full on the PostgreSQL server {where} ({text[:200]}); nothing was "
                "decided: free space there and try again"
            )
        if state in ("53300", "53000", "53200"):  # too many connections, out of resources
            return StoreBusy(
                f"PostgreSQL {where} is busy ({text[:200]}); nothing was decided, try again later"
            )
        if state.startswith("08") or state in ("57P01", "57P02", "57P03"):
            return StoreUnreachable(
                f"PostgreSQL {where} is unreachable ({text[:200]}); nothing was decided, "
                "try again later"
            )
        if state.startswith("28") or state == "3D000":
            return StateError(f"PostgreSQL {where} refused us: {text[:300]}")
        lowered = text.lower()
        if any(problem in lowered for problem in _CONFIG_PROBLEMS) and not isinstance(
            exc, psycopg.errors.UndefinedTable
        ):
            return StateError(f"PostgreSQL {where} refused us: {text[:300]}")
        # Unreachable: only what says the server did not answer (no SQLSTATE: libpq's own
        # connection failures, a closed connection); a server's own error is said as its own
        if isinstance(exc, psycopg.OperationalError) and not state:
            return StoreUnreachable(
                f"PostgreSQL {where} is unreachable ({text[:200]}); nothing was decided, "
                "try again later"
            )
        return StateError(f"PostgreSQL {where}: {text[:300]}")

    def _where(self) -> str:
        """The server as said in a message: the URL without its password."""
        where = redact(self.url)
        return mask_secret(where, self._secret)

    def _run(self, cur: Any, sql: str, params: Sequence[Any]) -> None:
        pg_sql = self._sql_cache.get(sql)
        if pg_sql is None:
            pg_sql = self._sql_cache[sql] = sql.replace("?", "%s")
        try:
            cur.execute(pg_sql, tuple(params))
        except self._psycopg.Error as exc:
            self._drop_if_hung(exc)
            raise self._translate(exc) from None

    def _run_script(self, cur: Any, script: list[str]) -> None:
        """Statements already bound (``_bind``), in one round trip."""
        try:
            cur.execute("; ".join(script))
        except self._psycopg.Error as exc:
            self._drop_if_hung(exc)
            raise self._translate(exc) from None

    def _bind(self, sql: str, params: Sequence[Any]) -> str:
        """``sql`` (``?`` placeholders) with ``params`` bound as literals by psycopg."""
        pg_sql = self._sql_cache.get(sql)
        if pg_sql is None:
            pg_sql = self._sql_cache[sql] = sql.replace("?", "%s")
        return self._bind_pg(pg_sql, params)

    def _bind_pg(self, pg_sql: str, params: Sequence[Any] | None) -> str:
        if not params:
            return pg_sql
        binder = self._binder
        if binder is None or binder.connection is not self._conn:
            binder = self._binder = _binder(self._psycopg, self._conn)
        try:
            return str(binder.mogrify(pg_sql, tuple(params)))
        except self._psycopg.Error as exc:
            raise self._translate(exc) from None

    def _drop_if_hung(self, exc: Exception) -> None:
        """A reply that never came leaves the session in an unknown state: drop it (the next
        transaction connects anew)."""
        if isinstance(exc, _WAIT_TIMEOUT(self._psycopg)) and self._conn is not None:
            try:
                self._conn.pgconn.finish()  # no goodbye: the server may answer nothing
            except Exception:  # noqa: BLE001, S110 (closing a connection already lost)
                pass
            self.close()

    def _up_to_date(self) -> bool:
        """True when every known migration is recorded: a read-only look, so a store that is
        already migrated costs no lock, no DDL and no write privilege (a monitoring role with
        SELECT only can read it). A missing table or a newer store says False: the locked path
        below creates or refuses."""
        try:
            # one statement in autocommit: its own read-only snapshot, one round trip (an
            # explicit read-only transaction around it cost two more)
            with self._conn.cursor() as cur:
                self._run(cur, "SELECT name FROM schema_migrations", ())
                done = {row[0] for row in cur.fetchall()}
        except StateError:
            return False  # no schema_migrations yet (or no right to read it): the full path
        self._refuse_newer(done)  # said here too: a role that may only read never gets further
        return done == set(MIGRATION_NAMES)

    def _applied(self) -> set[str]:
        """The migrations recorded, by reads alone; ``NoStore`` when the database has no
        ringrift-coord schema at all (it is left as it is)."""
        tx = self._begin(write=False)
        try:
            found = tx.one("SELECT to_regclass('schema_migrations') IS NOT NULL AS found")
            if found is None or not found["found"]:
                raise NoStore(
                    f"no ringrift-coord store here: PostgreSQL {self.scope.split()[-1]} has no "
                    "schema_migrations table (nothing recorded there yet; a command that "
                    "writes creates it)"
                )
            done = {r["name"] for r in tx.query("SELECT name FROM schema_migrations")}
        finally:
            self._rollback()
        self._refuse_newer(done)
        return done

    def _refuse_newer(self, done: set[str]) -> None:
        unknown = done - set(MIGRATION_NAMES)
        if unknown:
            raise StateError(
                f"{redact(self.url)} was written by a newer ringrift-coord (migrations "
                f"{', '.join(sorted(unknown))}); upgrade this node"
            )

    def _migrate(self) -> None:
        if self._up_to_date():
            return
        tx = self._begin(write=True, lock=MIGRATION_LOCK)
        try:
            tx.execute("SET LOCAL statement_timeout = 0")  # a migration may take its time
            self._conn.reply_timeout = None
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {r["name"] for r in tx.query("SELECT name FROM schema_migrations")}
            self._refuse_newer(done)
            for name, scripts in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements(scripts["postgres"]):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (name, tx.now()),
                )
        except BaseException:
            self._rollback()
            raise
        finally:
            if self._conn is not None:
                self._conn.reply_timeout = self.statement_timeout + REPLY_MARGIN
        self._commit()

    # -- transactions -------------------------------------------------------------------

    def _open_tx(self, write: bool, statements_only: bool = False) -> Tx:
        # A read's BEGIN goes with its first statement (its snapshot is taken there anyway).
        # A write's lock is held once ``write()`` is entered: its block may serialise more
        # than statements (a file written under the lock), or hold the lock on purpose;
        # unless it says it runs only statements (an admission: its probe goes with the
        # BEGIN and the lock, one round trip fewer under the lock).
        return self._begin(write, lazy=not write or statements_only)

    def _begin(self, write: bool, lock: int = ADMISSION_LOCK, *, lazy: bool = False) -> Tx:
        """The transaction, begun (a write: its advisory lock held) when this returns;
        ``lazy``: begun with its first statement instead (``PostgresTx.defer_begin``)."""
        conn = self._conn
        if (
            conn is not None
            and not conn.closed
            and not conn.broken
            and conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE
            and self._stale_transaction()
        ):
            self._rollback()  # one a signal's exception left open between two lines
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._connect()  # the server came back (or ended that session): a fresh one
        tx = PostgresTx(self)
        tx.defer_begin(lock if write else None)
        if not lazy:
            try:
                tx._send(None)
            except BaseException:
                self._rollback()
                raise
        return tx

    def _commit(self) -> None:
        tx, self._tx = self._tx, None
        script = ["COMMIT"]
        if tx is not None and tx._pending:  # (a BEGIN never sent commits nothing but itself)
            script = [*tx._pending, "COMMIT"]
            tx._pending = []
        wrote = tx is None or tx._sent or len(script) > 1  # (else a COMMIT of nothing)
        try:
            with self._conn.cursor() as cur:
                cur.execute("; ".join(script))
        except self._psycopg.Error as exc:
            self._drop_if_hung(exc)
            self._rollback()
            failed = self._translate(exc)
            if wrote and isinstance(failed, StoreUnreachable):  # COMMIT sent, no answer
                if isinstance(exc, _WAIT_TIMEOUT(self._psycopg)):
                    waited = human(self.statement_timeout + REPLY_MARGIN)
                    how = f"did not answer the commit in {waited}"
                else:
                    how = "went away during the commit"
                raise OutcomeUnknown(
                    f"PostgreSQL {self._where()} {how}: {UNKNOWN_ADVICE}"
                ) from None
            raise failed from None
        except BaseException as exc:  # Ctrl-C or a signal's exception while it was out
            if wrote:
                # the server has the COMMIT (or part of the script before it): psycopg's
                # cancel on Ctrl-C may or may not come before it commits, so what the
                # connection says afterwards cannot tell either; the caller says "unknown"
                exc.add_note(
                    f"the commit to PostgreSQL {self._where()} had been sent: {UNKNOWN_ADVICE}"
                )
            conn = self._conn
            if conn is not None and not conn.closed:
                if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                    conn.close()  # a reply still owed (a signal's exception): a fresh one next
            raise

    def _rollback(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            tx._pending = []
            if not tx._sent and (
                self._conn is None
                or self._conn.info.transaction_status == self._psycopg.pq.TransactionStatus.IDLE
            ):
                return  # its BEGIN never went out: nothing to roll back
        if self._conn is None or self._conn.closed:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute("ROLLBACK")
        except self._psycopg.Error:
            try:
                self._conn.close()
            except self._psycopg.Error:
                pass

    # -- wake-ups (run --wait) ----------------------------------------------------------

    def ring(self, tx: Tx, targets: set[tuple[str | None, str | None]]) -> None:
        from ringrift_coord.wake import pg_ring

        assert isinstance(tx, PostgresTx)
        pg_ring(_Deferred(tx), targets)  # sent with the COMMIT

    def doorbell(self, kind: str, seq: int, node: str) -> Doorbell:
        """LISTEN on a connection of its own; where that fails (PgBouncer in transaction
        mode, a server that refuses it), the poll-only doorbell: the safety net."""
        from ringrift_coord.wake import CHANNEL, Doorbell, ListenDoorbell

        clock = self._wake_clock()
        conn = None
        try:
            # the store's bounds: keepalives, the reply timeout, statement_timeout (its
            # ring_next must not hang on a stopped server after the waiter was admitted)
            conn = _connection_class(self._psycopg).connect(
                self.url,
                connect_timeout=self.connect_timeout,
                autocommit=True,
                application_name="ringrift-coord-wait",
                **_keepalives(self._psycopg, self.url),
            )
            conn.reply_timeout = self.statement_timeout + REPLY_MARGIN
            conn.execute(f"SET statement_timeout = {max(1, int(self.statement_timeout * 1000))}")
            conn.execute(f"LISTEN {CHANNEL}")
        except Exception:  # noqa: BLE001 (no LISTEN here: waiting polls instead)
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001, S110
                    pass
            return Doorbell(clock)
        return ListenDoorbell(conn, kind, seq, clock)

    def limit_lock_wait(self, seconds: float) -> float:
        before = super().limit_lock_wait(max(seconds, 0.001))  # (lock_timeout 0: no limit)
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SET lock_timeout = {max(1, int(self.busy_timeout * 1000))}")
            except self._psycopg.Error:
                self.close()  # the next transaction reconnects, with the limit in force
        return before

    def idle(self) -> None:
        self.close()  # 28 nodes x 32 jobs must not hold ~900 idle server connections

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except self._psycopg.Error:
                pass
            self._conn = None

    def _info(self) -> Any:
        """The open connection's info (host, port, database, user); None without one (not
        yet connected, or closed by an interrupt: the next transaction reconnects)."""
        conn = self._conn
        return conn.info if conn is not None and not conn.closed else None

    def describe(self) -> dict[str, Any]:
        info = self._info()
        server = redact(self.url)
        if info is not None:
            server = f"{info.host}:{info.port}/{info.dbname}"
        return {
            "engine": self.engine,
            "server": server,
            "user": None if info is None else info.user,
            "store_scope": self.scope,
        }

    @property
    def scope(self) -> str:
        # every host that uses this database shares its halts and limits
        info = self._info()
        if info is not None:
            where = server_name(info.host, info.port, info.dbname)
        else:
            parts = address_parts(self.url)
            where = (
                server_name(parts.get("host"), parts.get("port"), parts.get("dbname"))
                if parts
                else redact(self.url)
            )
        return f"cluster-wide on postgres {where}"


class _Deferred:
    """A cursor's ``execute`` whose statements go out with the transaction's next one."""

    def __init__(self, tx: PostgresTx) -> None:
        self.execute = tx.defer


def _binder(psycopg: Any, conn: Any) -> Any:
    """A cursor of ``conn`` that binds parameters as literals (``mogrify``); a float as a
    float8 literal, as the server-side binding types it (a bare ``1.5`` is numeric)."""
    from psycopg.types.numeric import FloatDumper

    class Float8Literal(FloatDumper):
        def quote(self, obj: Any) -> bytes:
            return b"'" + str(obj).encode() + b"'::float8"  # (inf, nan: 'inf'::float8)

    cur = psycopg.ClientCursor(conn)
    cur.adapters.register_dumper(float, Float8Literal)
    return cur


_CONNECTION_CLASS: Any = None


def _keepalives(psycopg: Any, url: str) -> dict[str, int]:
    """KEEPALIVES, less those the address sets itself (the user's choice wins), and less
    ``tcp_user_timeout`` where libpq is older than 12 (it would refuse the whole connection
    string)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        given = set(conninfo_to_dict(url))
    except Exception:  # noqa: BLE001 (unparsable: connect says so, masked)
        given = set()
    old_libpq = psycopg.pq.version() < 120000
    return {
        k: v
        for k, v in KEEPALIVES.items()
        if k not in given and not (old_libpq and k == "tcp_user_timeout")
    }


def _WAIT_TIMEOUT(psycopg: Any) -> Any:  # noqa: N802 (read as the exception class it gives)
    """psycopg's exception for a reply that did not come in time (none before 3.3)."""
    return getattr(psycopg.errors, "_WaitTimeout", ())


def _connection_class(psycopg: Any) -> Any:
    """psycopg's Connection whose waits for a reply end after ``reply_timeout`` seconds
    (``errors._WaitTimeout``) instead of never: a server or backend that is stopped, or a
    network that drops every packet, answers nothing, and keepalives only help the last."""
    global _CONNECTION_CLASS
    if _CONNECTION_CLASS is None:
        _CONNECTION_CLASS = psycopg.Connection
        if "timeout" in psycopg.Connection.wait.__code__.co_varnames:  # psycopg >= 3.3

            class BoundedConnection(psycopg.Connection):
                reply_timeout: float | None = None

                def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
                    # only where no timeout was given at all: an explicit None (a LISTEN's
                    # notifies(timeout=None): wait for ever) is kept
                    if len(args) < 2 and "timeout" not in kwargs:
                        kwargs["timeout"] = self.reply_timeout
                    return super().wait(gen, *args, **kwargs)

            _CONNECTION_CLASS = BoundedConnection
    return _CONNECTION_CLASS


def check_url(url: str, *, from_flag: bool) -> None:
    """Refuse a password on the command line (it would show in ``ps`` and shell history),
    and a keyword string libpq cannot read (said without the text: it may hold a password)."""
    if from_flag and url_has_password(url):
        raise UsageError(
            "do not put the password in --db (it shows in ps and shell history); use "
            "PGPASSFILE/~/.pgpass (mode 0600) or PGPASSWORD"
        )
    if not is_conninfo(url):
        return
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return  # PostgresStore says what to install
    try:
        conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 (psycopg.ProgrammingError and kin)
        message = (
            f"{redact(url)!r} is not a valid PostgreSQL keyword string "
            "(host=H port=P dbname=D user=U; quote values with spaces in single quotes)"
        )
        if from_flag:
            raise UsageError(message) from None
        raise ConfigError(f"RINGRIFT_COORD_DB: {message}") from None
