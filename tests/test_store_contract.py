"""The store contract: what every engine behind ``ringrift_coord.store.base.Store`` must do.

Each test runs on SQLite and on a real PostgreSQL server (``ENGINES``); a third engine is
added to ``ENGINES`` and to ``conftest.EngineDB.open`` and must pass all of it. The contract:

- **Transactions.** ``write()`` commits when its block ends and rolls everything back when
  the block raises (the exception goes on); ``read()`` never persists anything: a write in it
  is refused (``StateError``), and it reads one consistent snapshot.
- **Serialised writes.** Write transactions take turns with every other write transaction on
  the same database, from any connection or process: read-then-write never loses an update.
  Reads never wait for a writer.
- **Busy.** A writer that cannot get its turn within ``busy_timeout`` gets ``StoreBusy``
  (exit 75: nothing was decided, try again) after waiting that long, and the store stays
  usable.
- **Unreachable.** An engine with a server that cannot be reached, at open or between
  transactions, gives ``StoreBusy`` (exit 75) promptly, and carries on once it is back.
- **Clock.** ``tx.now()`` is the store's clock: an injected clock if one was given, else the
  engine's own (the database server's) or the system clock; one value for the whole
  transaction.
- **Errors.** Driver errors never escape: they become ``StateError`` (exit 3) or
  ``StoreBusy``; a failed statement rolls its write transaction back.
- **Statements.** Portable SQL with ``?`` placeholders; ``execute`` returns the rows changed,
  ``query`` every row as a dict, ``one`` the first or None; ``RETURNING`` works.
- **Schema.** Opening applies the named migrations (``MIGRATIONS``) once and records each by
  name with the store's time; every engine has the same tables and columns; re-opening is
  idempotent; a store with a migration this version does not know is refused (exit 3).
- **Threads.** Threads sharing one store take turns, one transaction at a time.
- ``describe()`` names the engine and where it is, never a password; ``idle()`` releases
  what a server holds for this store, and the next transaction reconnects.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from conftest import EngineDB

from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import StateError, StoreBusy
from ringrift_coord.store.migrations import MIGRATION_NAMES, MIGRATIONS

ENGINES = ("sqlite", "postgres")

PROBE = "CREATE TABLE contract_probe (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"


def at(seconds: float) -> object:
    return pytest.approx(seconds, abs=1e-6)


@pytest.fixture
def db(engine_db: EngineDB) -> EngineDB:
    """The test's database, with a scratch table ``contract_probe (k, v)``."""
    store = engine_db.open()
    with store.write() as tx:
        tx.execute(PROBE)
    store.close()
    return engine_db


def probe(store, k: str = "a") -> int | None:
    with store.read() as tx:
        row = tx.one("SELECT v FROM contract_probe WHERE k = ?", (k,))
    return None if row is None else int(row["v"])


def put(tx, k: str, v: int) -> None:
    tx.execute("INSERT INTO contract_probe (k, v) VALUES (?, ?)", (k, v))


# --------------------------------------------------------------------------- transactions


def test_write_commits_for_every_connection(db: EngineDB) -> None:
    a, b = db.open(), db.open()
    with a.write() as tx:
        put(tx, "a", 1)
        assert probe(b) is None  # not before the commit
    assert probe(a) == 1 and probe(b) == 1


def test_an_exception_rolls_the_write_back_and_goes_on(db: EngineDB) -> None:
    a, b = db.open(), db.open()

    class Boom(Exception):
        pass

    with pytest.raises(Boom), a.write() as tx:
        put(tx, "a", 1)
        tx.execute("CREATE TABLE contract_scratch (x INTEGER)")  # DDL is rolled back too
        raise Boom
    assert probe(a) is None and probe(b) is None
    with a.write() as tx:  # the store carries on
        put(tx, "a", 2)
        tx.execute("CREATE TABLE contract_scratch (x INTEGER)")
    assert probe(b) == 2


def test_a_transaction_a_signal_left_open_is_rolled_back_by_the_next(db: EngineDB) -> None:
    """A signal's exception (``run --wait``'s SIGTERM/SIGHUP) raised between a BEGIN and the
    code that would roll it back leaves the connection in a transaction: the next write on
    the store rolls it back and goes on (before, it failed, and a waiter kept its place)."""
    a, b = db.open(), db.open()
    tx = a._begin(write=True)  # what an interrupted write leaves behind: begun, never ended
    put(tx, "a", 1)
    with a.write() as tx:  # the store carries on, without the abandoned row
        put(tx, "b", 2)
    assert probe(b, "a") is None and probe(b, "b") == 2
    with a.read() as tx:  # a read too
        assert tx.one("SELECT COUNT(*) AS n FROM contract_probe")["n"] == 1


def test_a_read_transaction_refuses_to_write_and_persists_nothing(db: EngineDB) -> None:
    a = db.open()
    with pytest.raises(StateError) as raised, a.read() as tx:
        put(tx, "a", 1)
    assert raised.value.exit_code == 3
    assert probe(a) is None
    with a.write() as tx:  # and a write transaction after it may write
        put(tx, "a", 1)
    assert probe(db.open()) == 1


def test_a_read_transaction_is_one_snapshot(db: EngineDB) -> None:
    a, b = db.open(), db.open()
    with a.read() as tx:
        before = tx.query("SELECT COUNT(*) AS n FROM contract_probe")[0]["n"]
        with b.write() as other:
            put(other, "a", 1)
        assert tx.query("SELECT COUNT(*) AS n FROM contract_probe")[0]["n"] == before == 0
    assert probe(a) == 1  # the next transaction sees it


def test_reads_do_not_wait_for_a_writer(db: EngineDB) -> None:
    a, b = db.open(), db.open(busy_timeout=0.3)
    with a.write() as tx:
        put(tx, "a", 1)
        assert probe(b) is None  # no StoreBusy: a reader sees the last committed state


# --------------------------------------------------------------------------- serialised writes


def test_read_then_write_transactions_never_lose_an_update(db: EngineDB) -> None:
    """Each thread has its own connection; each increment reads, then writes, in one write
    transaction. Without serialised writes, two would read the same value."""
    with db.open().write() as tx:
        put(tx, "n", 0)
    threads, rounds = 3, 20
    stores = [db.open(busy_timeout=30) for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(store) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                with store.write() as tx:
                    row = tx.one("SELECT v FROM contract_probe WHERE k = 'n'")
                    assert row is not None
                    time.sleep(0.001)  # widen the window a lost update would need
                    tx.execute("UPDATE contract_probe SET v = ? WHERE k = 'n'", (row["v"] + 1,))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(s,)) for s in stores]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    assert probe(db.open(), "n") == threads * rounds


def test_threads_sharing_one_store_take_turns(db: EngineDB) -> None:
    shared = db.open(busy_timeout=30)
    with shared.write() as tx:
        put(tx, "n", 0)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with shared.write() as tx:
                    row = tx.one("SELECT v FROM contract_probe WHERE k = 'n'")
                    assert row is not None
                    tx.execute("UPDATE contract_probe SET v = ? WHERE k = 'n'", (row["v"] + 1,))
                with shared.read() as tx:
                    assert tx.one("SELECT v FROM contract_probe WHERE k = 'n'") is not None
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    assert probe(shared, "n") == 60


# --------------------------------------------------------------------------- busy, unreachable


def test_a_writer_kept_out_past_the_busy_timeout_gets_store_busy(db: EngineDB) -> None:
    holder, late = db.open(), db.open(busy_timeout=0.3)
    with holder.write() as tx:
        put(tx, "a", 1)
        started = time.monotonic()
        with pytest.raises(StoreBusy) as raised, late.write() as tx2:
            put(tx2, "b", 2)
        waited = time.monotonic() - started
        assert raised.value.exit_code == 75
        assert "0.3 s" in raised.value.message and "try again" in raised.value.message
        assert waited >= 0.25, f"gave up after {waited:.2f} s: it did not wait its turn"
        # its own 0.3 s, not the 5 s default (generous: a loaded machine wakes it late)
        assert waited < 4, f"gave up only after {waited:.2f} s"
    # nothing of the late writer was kept; once the lock is free it writes again
    assert probe(late, "a") == 1 and probe(late, "b") is None
    with late.write() as tx:
        put(tx, "b", 2)
    assert probe(holder, "b") == 2


def test_an_unreachable_server_is_store_busy(engine_db: EngineDB) -> None:
    if engine_db.engine == "sqlite":
        pytest.skip("an embedded engine has no server to be unreachable")
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreBusy) as raised:
        engine_db.open(url=f"postgresql://ringrift@127.0.0.1:{port}/none")
    assert raised.value.exit_code == 75
    assert "unreachable" in raised.value.message and "try again" in raised.value.message
    assert time.monotonic() - started < 20  # refused, not waited for


def test_a_server_gone_between_transactions_is_busy_then_comes_back(
    engine_db: EngineDB, request: pytest.FixtureRequest
) -> None:
    if engine_db.engine == "sqlite":
        pytest.skip("an embedded engine has no server to go away")
    server = request.getfixturevalue("pg_server")
    store = engine_db.open()
    with store.write() as tx:
        tx.execute(PROBE)
        put(tx, "a", 1)
    server.stop()
    try:
        with pytest.raises(StoreBusy) as raised, store.write() as tx:
            put(tx, "b", 2)
        assert raised.value.exit_code == 75
        with pytest.raises(StoreBusy), store.read() as tx:
            tx.query("SELECT 1 AS x")
    finally:
        server.start()
    assert probe(store) == 1  # the same store reconnects by itself
    assert probe(store, "b") is None


def test_a_left_over_transaction_whose_session_the_server_ended(db: EngineDB) -> None:
    """The transaction a signal left open outlived its session (the server's idle timeout,
    a restart): the next write gets a fresh session, not the driver's raw error."""
    if db.engine == "sqlite":
        pytest.skip("an embedded engine has no session to end")
    store, other = db.open(), db.open()
    tx = store._begin(write=True)
    (pid,) = tx.one("SELECT pg_backend_pid() AS pid").values()
    with other.read() as otx:  # (a write would wait for the left-over one's lock)
        otx.query("SELECT pg_terminate_backend(?)", (pid,))
    with store.write() as tx:  # the store carries on, on a new session
        put(tx, "a", 1)
    assert probe(other) == 1


# --------------------------------------------------------------------------- clock


def test_now_follows_an_injected_clock(db: EngineDB) -> None:
    clock = ManualClock()
    store = db.open(clock=clock)
    with store.write() as tx:
        assert tx.now() == clock.time()
    clock.advance(90.5)
    with store.read() as tx:
        assert tx.now() == at(1_800_000_090.5)
    clock.advance(-3600)  # a clock stepped back: the store's time steps back with it
    with store.write() as tx:
        assert tx.now() == at(1_800_000_090.5 - 3600)


def test_now_is_one_moment_per_transaction(db: EngineDB) -> None:
    clock = ManualClock()
    store = db.open(clock=clock)
    for begin in (store.write, store.read):
        with begin() as tx:
            first = tx.now()
            clock.advance(5)
            tx.query("SELECT COUNT(*) AS n FROM contract_probe")
            assert tx.now() == first
        with begin() as tx:
            assert tx.now() == first + 5
        clock.advance(-5)


def test_now_without_an_injected_clock_is_the_store_clock(db: EngineDB) -> None:
    store = db.open()
    before = time.time()
    with store.write() as tx:
        now = tx.now()
    after = time.time()
    # SQLite: the system clock; PostgreSQL: the server's clock_timestamp() (on this host)
    slack = 0.0 if db.engine == "sqlite" else 1.0
    assert before - slack <= now <= after + slack
    time.sleep(0.01)
    with store.read() as tx:
        assert tx.now() > now  # the store's clock moves on between transactions


# --------------------------------------------------------------------------- errors, statements


def test_driver_errors_become_state_errors_and_roll_back(db: EngineDB) -> None:
    store = db.open()
    with pytest.raises(StateError) as raised, store.write() as tx:
        put(tx, "a", 1)
        tx.query("SELECT * FROM no_such_table")
    assert raised.value.exit_code == 3
    assert probe(store) is None  # the whole transaction went
    with pytest.raises(StateError), store.write() as tx:
        put(tx, "a", 1)
        put(tx, "a", 2)  # a duplicate key
    assert probe(store) is None
    with store.write() as tx:
        put(tx, "a", 3)
    assert probe(store) == 3


def test_after_commit_runs_once_committed_and_never_after_a_rollback(db: EngineDB) -> None:
    store = db.open()
    ran: list[object] = []
    with store.write() as tx:
        put(tx, "a", 1)
        tx.after_commit(lambda: ran.append(probe(store)))  # sees the committed row
        tx.after_commit(lambda: 1 / 0)  # a failing one does not undo the change...
        tx.after_commit(lambda: ran.append("next"))  # ...nor stop the next one
        assert ran == []  # not while the transaction is open
    assert ran == [1, "next"]
    with pytest.raises(StateError), store.write() as tx:
        tx.after_commit(lambda: ran.append("rolled back"))
        put(tx, "a", 2)  # a duplicate key: the transaction rolls back
    with store.write() as tx:
        put(tx, "b", 3)
    assert ran == [1, "next"]  # neither then nor with the next transaction


def test_counters_only_go_up_and_survive_reopening(db: EngineDB) -> None:
    from ringrift_coord import counters

    store = db.open()
    with store.write() as tx:
        counters.add(tx, "denials", {"rule": "node_limit", "type": "training", "node": "n1"})
        counters.add(tx, "denials", {"type": "training", "node": "n1", "rule": "node_limit"})
        counters.add(tx, "transfer_bytes", {"remote": "aws-1"}, 2.5e12)
        with pytest.raises(ValueError):
            counters.add(tx, "transfer_bytes", {"remote": "aws-1"}, -1)
    store.close()
    store = db.open()
    with store.read() as tx:
        assert counters.read(tx, "denials") == [
            ({"node": "n1", "rule": "node_limit", "type": "training"}, 2.0)
        ]
        assert counters.read(tx, "transfer_bytes") == [({"remote": "aws-1"}, 2.5e12)]
        assert counters.read(tx, "nothing") == []


def test_statements_rows_and_placeholders(db: EngineDB) -> None:
    store = db.open()
    with store.write() as tx:
        assert (
            tx.execute("INSERT INTO contract_probe (k, v) VALUES (?, ?), (?, ?)", ("x", 1, "y", 2))
            == 2
        )
        assert tx.execute("UPDATE contract_probe SET v = v + ? WHERE v >= ?", (10, 1)) == 2
        assert tx.execute("DELETE FROM contract_probe WHERE k = ?", ("nobody",)) == 0
        rows = tx.query("INSERT INTO contract_probe (k, v) VALUES (?, ?) RETURNING k, v", ("z", 3))
        assert rows == [{"k": "z", "v": 3}]
    with store.read() as tx:
        assert tx.query("SELECT k, v FROM contract_probe ORDER BY k") == [
            {"k": "x", "v": 11},
            {"k": "y", "v": 12},
            {"k": "z", "v": 3},
        ]
        assert tx.one("SELECT k FROM contract_probe WHERE v > ? ORDER BY v", (10,)) == {"k": "x"}
        assert tx.one("SELECT k FROM contract_probe WHERE k = ?", ("none",)) is None
        text = "it's a 'quoted' ? not a placeholder"
        assert tx.one("SELECT ? AS t", (text,)) == {"t": text}


# --------------------------------------------------------------------------- schema


def applied(store) -> list[tuple[str, float]]:
    with store.read() as tx:
        rows = tx.query("SELECT name, applied_at FROM schema_migrations ORDER BY name")
    return [(r["name"], float(r["applied_at"])) for r in rows]


@pytest.mark.pg_empty
def test_opening_applies_every_migration_once_recorded_by_name_and_time(
    engine_db: EngineDB,
) -> None:
    clock = ManualClock()
    store = engine_db.open(clock=clock)
    assert applied(store) == [(name, clock.time()) for name in sorted(MIGRATION_NAMES)]


def test_every_migration_has_a_script_for_every_engine() -> None:
    assert len(set(MIGRATION_NAMES)) == len(MIGRATION_NAMES)
    assert list(MIGRATION_NAMES) == sorted(MIGRATION_NAMES)  # applied in name order
    for name, scripts in MIGRATIONS:
        assert set(scripts) == {"sqlite", "postgres"}, name
        assert all(script.strip() for script in scripts.values()), name


def test_reopening_is_idempotent(engine_db: EngineDB) -> None:
    clock = ManualClock()
    first = engine_db.open(clock=clock)
    with first.write() as tx:
        tx.execute(PROBE)
        put(tx, "a", 1)
    recorded = applied(first)
    clock.advance(3600)
    again = engine_db.open(clock=clock)  # while the first is still open
    first.close()
    third = engine_db.open(clock=clock)
    for store in (again, third):
        assert applied(store) == recorded  # nothing re-applied, nothing re-stamped
        assert probe(store) == 1


def test_a_store_with_an_unknown_migration_is_refused(engine_db: EngineDB) -> None:
    store = engine_db.open()
    with store.write() as tx:
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
            ("9999_from_the_future", tx.now()),
        )
    with pytest.raises(StateError) as raised:
        engine_db.open()
    assert raised.value.exit_code == 3
    assert "newer ringrift-coord" in raised.value.message and "9999_from_the_future" in (
        raised.value.message
    )


def columns(store) -> dict[str, list[str]]:
    """{table: sorted column names} of the store's own schema."""
    with store.read() as tx:
        if store.engine == "sqlite":
            names = [
                r["name"]
                for r in tx.query(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
            return {
                n: sorted(r["name"] for r in tx.query(f'PRAGMA table_info("{n}")')) for n in names
            }
        rows = tx.query(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    found: dict[str, list[str]] = {}
    for r in rows:
        found.setdefault(r["table_name"], []).append(r["column_name"])
    return {t: sorted(c) for t, c in found.items()}


def test_every_engine_has_the_same_tables_and_columns(tmp_path, request) -> None:
    sqlite = EngineDB("sqlite", tmp_path / "s", request)
    postgres = EngineDB("postgres", tmp_path / "p", request)
    try:
        on_sqlite, on_postgres = columns(sqlite.open()), columns(postgres.open())
    finally:
        sqlite.close()
        postgres.close()
    assert "schema_migrations" in on_sqlite and "tasks" in on_sqlite
    assert on_sqlite == on_postgres


# --------------------------------------------------------------------------- describe, idle


def test_describe_names_the_engine_and_where(db: EngineDB) -> None:
    store = db.open()
    info = store.describe()
    json.dumps(info)  # plain data, for status --json
    assert info["engine"] == store.engine == db.engine
    if db.engine == "sqlite":
        assert info["path"] == os.path.abspath(db.url)
    else:
        assert info["server"].startswith("127.0.0.1:") and info["server"].endswith(
            "/" + db.url.rsplit("/", 1)[1]
        )
        assert info["user"] == "ringrift"


def test_describe_never_shows_a_password(engine_db: EngineDB) -> None:
    if engine_db.engine == "sqlite":
        pytest.skip("an embedded engine has no password")
    url = engine_db.url.replace("ringrift@", "ringrift:s3cret-pw@")  # the server trusts us
    store = engine_db.open(url=url)
    for _ in range(2):
        text = json.dumps(store.describe())
        assert "s3cret" not in text and "ringrift" in text
        store.idle()  # and without a connection, from the URL


def server_connections(db: EngineDB) -> int:
    import psycopg

    dbname = db.url.rsplit("/", 1)[1]
    admin = db.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'ringrift-coord'",
            (dbname,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_idle_lets_go_and_the_next_transaction_carries_on(db: EngineDB) -> None:
    store = db.open()
    with store.write() as tx:
        put(tx, "a", 1)
    if db.engine == "postgres":
        assert server_connections(db) == 1  # this store's
    store.idle()
    if db.engine == "postgres":
        deadline = time.monotonic() + 10  # the server notices the closed socket at once
        while server_connections(db) != 0:
            assert time.monotonic() < deadline, "idle() kept its server connection"
            time.sleep(0.02)
    with store.write() as tx:
        put(tx, "b", 2)
    assert probe(store) == 1 and probe(store, "b") == 2
    store.idle()
    store.idle()  # twice is fine
    assert probe(db.open(), "b") == 2
