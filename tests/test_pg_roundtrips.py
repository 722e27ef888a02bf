"""Round trips per transaction on PostgreSQL: every round trip of a write is a wake-up of
the client while every other writer waits on the admission lock, so plain INSERTs and the
waiters' notifications go with the next statement or the COMMIT (and a read's BEGIN with its
first statement). Counted on a real server: each call of the connection's ``wait``
(psycopg's one way to the server and back) is one round trip."""

from __future__ import annotations

import math
import os

import pytest
from conftest import EngineDB

from ringrift_coord.errors import StateError, StoreBusy

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits:
  selfplay: {per_node: 2, cluster: 40}
rate_limits:
  selfplay: {per_minute: null}
"""

# acquire: BEGIN + lock + clock with the probe (side tables, counts, target, the decision's
# id drawn ahead: the fencing token) and the reaper's read in one statement; the INSERTs
# (decision, task) + COMMIT
ACQUIRE_BUDGET = 2
# release: BEGIN + lock + clock with the DELETE ... RETURNING (and the outcome probe), the
# history INSERT + notifications + COMMIT
RELEASE_BUDGET = 2


class Trips:
    """Counts the round trips of one store's connection while active."""

    def __init__(self, store: object) -> None:
        self.store, self.n = store, 0

    def __enter__(self) -> Trips:
        conn = self.store._conn  # type: ignore[attr-defined]
        real = conn.wait

        def wait(*args: object, **kwargs: object) -> object:
            self.n += 1
            return real(*args, **kwargs)

        conn.wait = wait
        self._conn = conn
        return self

    def __exit__(self, *exc: object) -> None:
        del self._conn.wait


def test_an_acquire_and_a_release_stay_within_their_round_trip_budget(
    engine_db: EngineDB,
) -> None:
    if engine_db.engine == "sqlite":
        pytest.skip("an embedded engine has no round trips")
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    ctx = engine_db.context(CONFIG)
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    warm = coord.acquire("selfplay", "n1", holder=me)  # connected, migrated, prepared
    coord.unregister_task(warm.task_id, token=warm.lease_token, exit_code=0)  # type: ignore[arg-type]
    for _ in range(3):  # (a prune now and then costs two statements more: the best of three)
        with Trips(ctx.store) as acquired:
            decision = coord.acquire("selfplay", "n1", holder=me)
        assert decision.allowed, decision.summary()
        with Trips(ctx.store) as renewed:
            assert coord.renew_lease(decision.task_id, decision.lease_token)  # type: ignore[arg-type]
        with Trips(ctx.store) as released:
            row = coord.unregister_task(
                decision.task_id,  # type: ignore[arg-type]
                token=decision.lease_token,
                exit_code=0,
            )
        assert row is not None and row["task_id"] == decision.task_id
        if acquired.n <= ACQUIRE_BUDGET and released.n <= RELEASE_BUDGET and renewed.n <= 2:
            break
    assert acquired.n <= ACQUIRE_BUDGET, f"acquire took {acquired.n} round trips"
    assert released.n <= RELEASE_BUDGET, f"release took {released.n} round trips"
    # a renewal (BEGIN + lock + clock with the UPDATE on that clock; COMMIT)
    assert renewed.n <= 2, f"a lease renewal took {renewed.n} round trips"
    # and what they did landed: the slot is free, its history row is there once
    with ctx.store.read() as tx:
        assert tx.one("SELECT COUNT(*) AS n FROM tasks")["n"] == 0  # type: ignore[index]
        n = tx.one(  # type: ignore[index]
            "SELECT COUNT(*) AS n FROM task_history WHERE task_id = ?", (decision.task_id,)
        )["n"]
        assert n == 1
        # the token drawn ahead is the id of the admission's own log entry
        entry = tx.one(
            "SELECT allowed, task_id, action FROM decisions WHERE id = ?", (decision.lease_token,)
        )
    assert entry == {"allowed": 1, "task_id": decision.task_id, "action": "api"}


def test_the_decision_id_is_drawn_once_however_many_slots_the_reaper_reads(
    engine_db: EngineDB,
) -> None:
    """The probe's row is joined to every slot the reaper reads (this host's): the id it
    draws (``nextval``) is still drawn once per admission, and is the slot's token."""
    if engine_db.engine == "sqlite":
        pytest.skip("SQLite gives the id with the INSERT")
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    ctx = engine_db.context(CONFIG.replace("per_node: 2", "per_node: 8"))
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    held = [coord.acquire("selfplay", "n1", holder=me) for _ in range(4)]  # 3 read, then 4
    tokens = [d.lease_token for d in held]
    assert all(d.allowed for d in held) and tokens == sorted(set(tokens)), tokens  # type: ignore[type-var]
    assert [tokens[i + 1] - tokens[i] for i in range(3)] == [1, 1, 1], tokens  # type: ignore[operator]
    with ctx.store.read() as tx:
        drawn = tx.one("SELECT last_value FROM decisions_id_seq")["last_value"]  # type: ignore[index]
        logged = tx.one("SELECT max(id) AS id FROM decisions")["id"]  # type: ignore[index]
    assert drawn == logged == tokens[-1], (drawn, logged, tokens)


def _table(store: object) -> None:
    with store.write() as tx:  # type: ignore[attr-defined]
        tx.execute(
            "CREATE TABLE IF NOT EXISTS rt_probe (k TEXT PRIMARY KEY, v DOUBLE PRECISION, "
            "n BIGINT, note TEXT)"
        )


def test_an_insert_sent_later_fails_the_transaction_as_it_would_have_at_once(
    engine_db: EngineDB,
) -> None:
    """A duplicate key in an INSERT sent with the COMMIT: the whole write fails with the
    store's own error (exit 3, never a driver traceback) and nothing of it is kept."""
    store = engine_db.open()
    _table(store)
    with store.write() as tx:
        tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("a", 1))
    with pytest.raises(StateError) as raised, store.write() as tx:
        tx.execute("UPDATE rt_probe SET n = ? WHERE k = ?", (2, "a"))  # sent at once
        tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("b", 1))
        tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("a", 3))  # the duplicate
    assert raised.value.exit_code == 3
    with store.read() as tx:
        rows = tx.query("SELECT k, n FROM rt_probe ORDER BY k")
    assert rows == [{"k": "a", "n": 1}]
    with store.write() as tx:  # the store carries on
        tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("b", 2))
    with store.read() as tx:
        assert tx.one("SELECT n FROM rt_probe WHERE k = ?", ("b",)) == {"n": 2}


HOSTILE = "it's a \\ back'slash?; DROP TABLE rt_probe; -- %s %(x)s ? $1 \u00e9\u4e2d"


def test_values_sent_later_arrive_exactly(engine_db: EngineDB) -> None:
    """Text with quotes, backslashes, placeholders and SQL stays data; floats keep every
    bit (bound as float8, not numeric), big integers and NULL stay what they were."""
    store = engine_db.open()
    _table(store)
    values = [
        ("t", 1764576000.1234567, 2**62, HOSTILE),
        ("tiny", 5e-324, -(2**62), None),
        ("neg", -0.1, -1, "-1"),
        ("inf", math.inf, 0, ""),
    ]
    with store.write() as tx:
        tx.execute("SELECT COUNT(*) FROM rt_probe")  # the BEGIN goes out with this one
        for row in values:  # these go with the COMMIT
            tx.execute("INSERT INTO rt_probe (k, v, n, note) VALUES (?, ?, ?, ?)", row)
    with store.read() as tx:
        got = {r["k"]: r for r in tx.query("SELECT k, v, n, note FROM rt_probe")}
    for k, v, n, note in values:
        assert got[k]["v"] == v and type(got[k]["v"]) is float, (k, got[k])
        assert got[k]["n"] == n and got[k]["note"] == note, (k, got[k])
    with store.write() as tx:  # a float in an expression is a float, as bound on the server
        row = tx.one("SELECT ? + 0 AS x, ? AS y", (0.5, 2.25))
    assert row == {"x": 0.5, "y": 2.25} and type(row["x"]) is float  # type: ignore[index]


def test_a_write_holds_the_lock_from_its_start(engine_db: EngineDB) -> None:
    """Entering ``write()`` takes the admission lock before the block runs, statement or
    not (a block may serialise work besides statements): another writer waits its turn."""
    holder, late = engine_db.open(), engine_db.open(busy_timeout=0.2)
    with holder.write():
        with pytest.raises(StoreBusy), late.write() as tx:
            tx.execute("SELECT 1")


def test_a_statements_only_write_takes_the_lock_with_its_first_statement(
    engine_db: EngineDB,
) -> None:
    """``write(statements_only=True)`` (admission, release) sends its BEGIN and the lock
    with its first statement: held elsewhere, that statement waits its turn and gives up
    with StoreBusy after the busy timeout; nothing of the block lands."""
    holder, late = engine_db.open(), engine_db.open(busy_timeout=0.2)
    _table(holder)
    with holder.write():
        with pytest.raises(StoreBusy), late.write(statements_only=True) as tx:
            tx.execute("UPDATE rt_probe SET n = 1")
            tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("late", 1))
    with late.write(statements_only=True) as tx:  # free again: it lands
        tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("late", 2))
    with holder.read() as tx:
        assert tx.query("SELECT k, n FROM rt_probe") == [{"k": "late", "n": 2}]


def test_a_read_transaction_still_refuses_an_insert_at_once(engine_db: EngineDB) -> None:
    store = engine_db.open()
    _table(store)
    with pytest.raises(StateError), store.read() as tx:
        tx.execute("INSERT INTO rt_probe (k, n) VALUES (?, ?)", ("r", 1))
    with store.read() as tx:
        assert tx.one("SELECT COUNT(*) AS n FROM rt_probe")["n"] == 0  # type: ignore[index]
