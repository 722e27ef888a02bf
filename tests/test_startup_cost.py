"""What one PostgreSQL ``can-spawn`` sends to the server: the round trips cut from start-up
stay cut.

A one-shot command pays every round trip to the server (on a cluster's network each costs a
fraction of a millisecond or more): the session's settings go in one query, the migration
check is one statement, and a write transaction's BEGIN, its advisory lock and the database's
clock are one query. Counted on a real server by wrapping psycopg's ``Cursor.execute``: every
statement still runs as it would, the wrapper only notes its text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ENGINES = ("sqlite", "postgres")  # the engine_db tests below run on both
OVERRIDES = [
    "rate_limits.selfplay.per_minute=null",
    "resources.live_host=false",  # this shared machine's load must not decide the test
]


def test_a_postgres_can_spawn_sends_its_probe_with_the_begin_and_the_lock(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from ringrift_coord.context import Context
    from ringrift_coord.task_coordinator import TaskCoordinator

    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def noting(self, query, params=None, **kw):  # noqa: ANN001, ANN202
        sent.append(" ".join(str(query).split()))
        return execute(self, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", noting)

    def one_shot() -> bool:
        ctx = Context.open(
            db=pg_url,
            state_dir=str(tmp_path / "state"),
            config=None,
            env={"USER": "test"},
            overrides=OVERRIDES,
        )
        try:
            return TaskCoordinator(ctx).check("selfplay", "n1").allowed
        finally:
            ctx.close()

    assert one_shot()  # the first one migrates the fresh database
    for _ in range(5):  # what every later call sends (a log prune, one call in ~64, sends more)
        sent.clear()
        assert one_shot()
        if not any("DELETE FROM decisions" in sql for sql in sent):
            break
    probe = next(i for i, sql in enumerate(sent) if "COUNT(*) FROM halts" in sql)
    setup = sent[:probe]
    assert len(setup) == 2, setup  # two round trips before the lock is asked for
    settings, migrations = setup
    assert settings.startswith("SET lock_timeout = ")
    assert "; SET idle_in_transaction_session_timeout = 60000" in settings
    assert migrations == "SELECT name FROM schema_migrations"
    # the third: BEGIN, the lock, the clock read once it is held, the probe and the
    # decision's id drawn ahead, in one script
    begin, _, probed = sent[probe].partition("; SELECT extract(epoch FROM clock_timestamp())")
    assert begin.startswith("BEGIN; SELECT pg_advisory_xact_lock(")
    assert probed.startswith("::float8; SELECT p.*, t.* FROM (SELECT (SELECT COUNT(*) FROM halts)")
    assert "nextval('decisions_id_seq') AS next_id) AS p LEFT JOIN (SELECT" in probed, probed
    # with the reaper's read, on the clock read in the same script
    assert "FROM tasks WHERE host = " in probed, probed
    assert "lease_expires < (SELECT extract(epoch FROM clock_timestamp())" in probed, probed
    # then the decision's log entry goes with the COMMIT
    assert len(sent) == probe + 2, sent
    assert sent[-1].startswith("INSERT INTO decisions (id, at, ")
    assert sent[-1].endswith("); COMMIT")
    assert not any(sql == "BEGIN" or sql.startswith("ROLLBACK") for sql in sent), sent
    # the decision was logged on the database's clock, read once the lock was held
    with psycopg.connect(pg_url) as conn:
        at, now = conn.execute(
            "SELECT max(at), extract(epoch FROM clock_timestamp())::float8 FROM decisions"
        ).fetchone()
    assert 0 <= now - at < 60


# What one in-process acquire + release sends through the store, on either engine: the
# acquire's one statement that probes the side tables, counts the slots and reads what the
# reaper must look at, its decision-log entry and its slot; the release's one statement that
# deletes the slot and reads it back (with the safeguards' probe), and its history row.
# One write transaction each. A change that adds a statement to this path fails here: every
# statement is a round trip on PostgreSQL, and SQLite time on both.
PAIR_STATEMENTS = {
    "acquire": [
        "SELECT p.*, t.* FROM (SELECT (SELECT COUNT(*) FROM halts)",
        "INSERT INTO decisions",
        "INSERT INTO tasks",
    ],
    "release": ["DELETE FROM tasks", "INSERT INTO task_history"],
}


def test_an_in_process_acquire_and_release_send_five_statements_in_two_transactions(
    engine_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from ringrift_coord.store import base
    from ringrift_coord.store.postgres import PostgresTx
    from ringrift_coord.store.sqlite import SQLiteTx
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    ctx = engine_db.context(
        "task_limits:\n  selfplay: {per_node: 8, cluster: 500}\n"
        "rate_limits:\n  selfplay: {per_minute: null}\n"
    )
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    for _ in range(3):  # the store made and migrated, every cache warm, history present
        warm = coord.acquire("selfplay", "n1", holder=me)
        coord.unregister_task(warm.task_id, token=warm.lease_token)

    sent: list[str] = []
    transactions: list[bool] = []
    tx_class = SQLiteTx if engine_db.engine == "sqlite" else PostgresTx
    query, execute = tx_class.query, tx_class.execute

    def noting_query(self, sql, params=()):  # noqa: ANN001, ANN202
        sent.append(" ".join(sql.split()))
        return query(self, sql, params)

    def noting_execute(self, sql, params=()):  # noqa: ANN001, ANN202
        sent.append(" ".join(sql.split()))
        return execute(self, sql, params)

    monkeypatch.setattr(tx_class, "query", noting_query)
    monkeypatch.setattr(tx_class, "execute", noting_execute)
    enter = base._Transaction.__enter__

    def noting_enter(self):  # noqa: ANN001, ANN202
        transactions.append(self._write)
        return enter(self)

    monkeypatch.setattr(base._Transaction, "__enter__", noting_enter)
    monkeypatch.setattr("os.urandom", lambda n: b"\xff" * n)  # no decision-log prune this time

    def core(statements: list[str]) -> list[str]:
        # what the engine itself sends through its transaction object is not the admission
        # path's: PostgreSQL's start of a write transaction (BEGIN, its advisory lock and the
        # clock in one query) and its delivery of the wake-ups (pg_notify)
        return [s for s in statements if not s.startswith(("BEGIN", "SELECT pg_notify("))]

    decision = coord.acquire("selfplay", "n1", holder=me)
    assert decision.allowed, decision.summary()
    acquired = core(sent)
    sent.clear()
    row = coord.unregister_task(decision.task_id, token=decision.lease_token)
    released = core(sent)

    assert row is not None and row["task_id"] == decision.task_id and "ended_at" in row
    assert "on_end_probe" not in row
    assert transactions == [True, True]
    for got, (what, budget) in zip((acquired, released), PAIR_STATEMENTS.items(), strict=True):
        assert len(got) == len(budget), (what, got)
        for sql, start in zip(got, budget, strict=True):
            assert sql.startswith(start), (what, got)
    with ctx.store.read() as tx:
        assert tx.query("SELECT task_id FROM tasks") == []
        ended = tx.query("SELECT status FROM task_history WHERE task_id = ?", (decision.task_id,))
    assert ended == [{"status": "ok"}]


def test_the_probe_counts_are_read_again_when_the_reaper_frees_a_slot(engine_db) -> None:
    """The probe counts the running slots before the reaper runs: a slot the reaper frees in
    the same admission must not count against the limits (per node and cluster)."""
    import os

    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    ctx = engine_db.context(
        "task_limits:\n  selfplay: {per_node: 1, cluster: 1}\n"
        "rate_limits:\n  selfplay: {per_minute: null}\n"
    )
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    first = coord.acquire("selfplay", "n1", holder=me)
    assert first.allowed
    assert [r.rule for r in coord.acquire("selfplay", "n1", holder=me).reasons] == [
        "node_limit",
        "cluster_limit",
    ]
    with ctx.store.write() as tx:  # its holder is gone: a pid that runs nothing here
        tx.execute(
            "UPDATE tasks SET pid = 2147483000, pid_start = 1 WHERE task_id = ?", (first.task_id,)
        )
    second = coord.acquire("selfplay", "n1", holder=me)
    assert second.allowed, second.summary()
    history = [h for h in coord.history() if h["task_id"] == first.task_id]
    assert history[0]["status"] == "reaped"
    with ctx.store.read() as tx:
        running = tx.query("SELECT task_id FROM tasks")
    assert running == [{"task_id": second.task_id}]
