"""Many running tasks: what an admission reads of ``tasks`` is found through indexes, and the
cluster count kept by triggers (migration 0007) is exact whoever writes the rows.

The cost itself (one decision with 10,000 running tasks against an empty store) is measured
by ``bench/bigstore.py``, never timed here; these tests pin what makes it cheap: the plans
(SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``) name the indexes, and the counts
match ``COUNT(*)`` after admissions, releases, reaps and rows written by plain SQL.
"""

from __future__ import annotations

import os

import pytest

from ringrift_coord import admission, identity, slots
from ringrift_coord.store.migrations import MIGRATIONS, statements
from ringrift_coord.task_coordinator import Holder, TaskCoordinator

ENGINES = ("sqlite", "postgres")

COLUMNS = "task_id, task_type, node, host, source, started_at, lease_expires, lease_token"
TYPES = ("selfplay", "training", "gauntlet", "sync")


def fill(tx, n: int, now: float, *, prefix: str = "big", lease: float = 10 * 86400.0) -> None:
    """``n`` running tasks of other hosts, leases ``lease`` ahead, by plain SQL."""
    for start in range(0, n, 250):
        rows = [
            (
                f"{prefix}-{i}",
                TYPES[i % len(TYPES)],
                f"node-{i % 97}",
                f"host-{i % 97}",
                "register",
                now,
                now + lease,
                10**9 + i,
            )
            for i in range(start, min(n, start + 250))
        ]
        marks = ",".join("(?,?,?,?,?,?,?,?)" for _ in rows)
        tx.execute(
            f"INSERT INTO tasks ({COLUMNS}) VALUES {marks}",  # noqa: S608
            [v for row in rows for v in row],
        )


def plan(store, sql: str, params) -> str:  # noqa: ANN001
    with store.read() as tx:
        if store.engine == "sqlite":
            rows = tx.query("EXPLAIN QUERY PLAN " + sql, params)
            return "\n".join(str(r["detail"]) for r in rows)
        rows = tx.query("EXPLAIN " + sql, params)
        return "\n".join(str(r["QUERY PLAN"]) for r in rows)


def counts(store) -> tuple[dict[str, int], dict[str, int]]:
    """(task_counts, COUNT(*) per type), types with no running task left out of both."""
    with store.read() as tx:
        kept = {r["task_type"]: int(r["n"]) for r in tx.query("SELECT * FROM task_counts")}
        real = {
            r["task_type"]: int(r["n"])
            for r in tx.query("SELECT task_type, COUNT(*) AS n FROM tasks GROUP BY task_type")
        }
    assert all(n >= 0 for n in kept.values()), kept  # never a negative count
    return {t: n for t, n in kept.items() if n}, real


def test_reaper_and_limits_read_tasks_through_indexes(engine_db) -> None:  # noqa: ANN001
    store = engine_db.open()
    with store.write() as tx:
        now = tx.now()
        fill(tx, 5000, now)
    if store.engine == "postgres":
        with store.write() as tx:
            tx.execute("ANALYZE tasks")  # what autovacuum does within a minute of such a fill
    reap = plan(store, *slots.reap_query(identity.host_name(), now))
    # as admission sends it: the probe and the reaper's read (on PostgreSQL on the clock
    # read in the same round trip)
    with store.write(statements_only=True) as tx:
        admitting = admission.probe_and_reap_query(
            tx, "node-1", "selfplay", identity.host_name(), draw_id=False
        )
    probed = plan(store, *admitting)
    count = plan(
        store,
        "SELECT COUNT(*) AS n FROM tasks WHERE node = ? AND task_type = ?",
        ("node-1", "selfplay"),
    )
    cluster = plan(store, "SELECT n FROM task_counts WHERE task_type = ?", ("selfplay",))
    dead = plan(store, *slots.reap_query(identity.host_name(), now, "host-3"))
    for text in (reap, dead, probed):
        assert "tasks_host" in text and "tasks_lease" in text, text
    assert "tasks_type_node" in count, count
    if store.engine == "sqlite":
        assert "SCAN tasks" not in reap + dead + count + probed, (reap, dead, count, probed)
        assert "task_counts" in cluster and "SCAN" not in cluster, cluster
    else:
        assert "Seq Scan" not in reap + dead + count, (reap, dead, count)
        assert "Index" in cluster, cluster


def test_the_reaper_still_frees_what_it_must_with_many_live_leases(engine_db) -> None:  # noqa: ANN001
    ctx = engine_db.context("task_limits: {selfplay: {per_node: 1000, cluster: 100000}}\n")
    coord = TaskCoordinator(ctx)
    # this host's: one held by this (live) process, one whose process is gone (taken last:
    # the next admission would reap it)
    live = coord.acquire("selfplay", "here", holder=Holder(pid=os.getpid()))
    dead = coord.acquire("selfplay", "here", holder=Holder(pid=2**22 + 12345))
    assert dead.allowed and live.allowed
    with ctx.store.write() as tx:
        now = tx.now()
        fill(tx, 400, now)  # other hosts, live leases: never read, never freed
        fill(tx, 3, now, prefix="expired", lease=-5.0)  # other hosts, leases run out
        tx.execute("UPDATE tasks SET host = ? WHERE task_id = ?", ("gone-host", "big-7"))
    freed = {r["task_id"] for r in coord.reap()}
    assert freed == {"expired-0", "expired-1", "expired-2", dead.task_id}
    freed = {r["task_id"] for r in coord.reap(dead_host="gone-host")}
    assert freed == {"big-7"}
    kept, real = counts(ctx.store)
    assert kept == real and sum(real.values()) == 400 - 1 + 1
    with ctx.store.read() as tx:
        assert tx.one("SELECT 1 AS x FROM tasks WHERE task_id = ?", (live.task_id,))


def test_task_counts_stay_exact_whoever_writes_the_rows(engine_db) -> None:  # noqa: ANN001
    ctx = engine_db.context(
        "task_limits: {selfplay: {per_node: 3, cluster: 5}, training: {per_node: 1, cluster: 2}}\n"
        "rate_limits: {selfplay: {per_minute: null}, training: {per_minute: null}}\n"
    )
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    taken = []
    for node in ("a", "b"):
        for _ in range(4):
            d = coord.acquire("selfplay", node, holder=me)
            if d.allowed:
                taken.append(d)
    assert len(taken) == 5  # the cluster limit, read from task_counts
    refused = coord.acquire("selfplay", "c", holder=me)
    assert not refused.allowed and {r.rule for r in refused.reasons} == {"cluster_limit"}
    assert refused.reasons[0].used == 5
    assert counts(ctx.store) == ({"selfplay": 5}, {"selfplay": 5})
    coord.unregister_task(taken[0].task_id, token=taken[0].lease_token, exit_code=0)
    coord.unregister_task(taken[0].task_id, token=taken[0].lease_token, exit_code=0)  # again
    assert counts(ctx.store) == ({"selfplay": 4}, {"selfplay": 4})
    with ctx.store.write() as tx:  # plain SQL, as an operator or a test would
        now = tx.now()
        fill(tx, 8, now)
        tx.execute("DELETE FROM tasks WHERE task_id IN (?, ?)", ("big-0", "big-1"))
        tx.execute("UPDATE tasks SET task_type = ? WHERE task_id = ?", ("export", "big-2"))
        tx.execute("UPDATE tasks SET task_type = task_type WHERE task_id = ?", ("big-3",))
    kept, real = counts(ctx.store)
    assert kept == real and real["export"] == 1
    with pytest.raises(ZeroDivisionError), ctx.store.write() as tx:  # rolled back: no trace
        tx.execute("DELETE FROM tasks")
        raise ZeroDivisionError
    assert counts(ctx.store) == (kept, real)
    with ctx.store.write() as tx:
        tx.execute("DELETE FROM tasks")
    assert counts(ctx.store) == ({}, {})


def test_an_older_store_counts_its_running_tasks_when_it_upgrades(engine_db) -> None:  # noqa: ANN001
    store = engine_db.open()
    with store.write() as tx:  # back to the schema before 0007, tasks running
        for stmt in (
            "DROP TRIGGER task_counts_insert",
            "DROP TRIGGER task_counts_delete",
            "DROP TRIGGER task_counts_update",
        ) if store.engine == "sqlite" else (
            "DROP TRIGGER task_counts_change ON tasks",
            "DROP TRIGGER task_counts_update ON tasks",
            "DROP FUNCTION ringrift_task_counts()",
        ):  # fmt: skip
            tx.execute(stmt)
        for stmt in ("DROP TABLE task_counts", "DROP INDEX tasks_host", "DROP INDEX tasks_lease"):
            tx.execute(stmt)
        tx.execute("DELETE FROM schema_migrations WHERE name = ?", ("0007_task_counts",))
        fill(tx, 30, tx.now())
    store.close()
    again = engine_db.open()
    kept, real = counts(again)
    assert kept == real and sum(real.values()) == 30
    with again.write() as tx:
        tx.execute("DELETE FROM tasks WHERE task_id = ?", ("big-0",))
    kept, real = counts(again)
    assert kept == real and sum(real.values()) == 29


def test_scripts_with_bodies_split_at_their_statement_lines() -> None:
    assert statements("CREATE TABLE a (x INT);\n CREATE INDEX b ON a (x);\n") == [
        "CREATE TABLE a (x INT)",
        "CREATE INDEX b ON a (x)",
    ]
    body = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\n  SELECT 2;\nEND"
    assert statements(f"\nCREATE TABLE a (x INT)\n--;\n{body}\n  --;  \n") == [
        "CREATE TABLE a (x INT)",
        body,
    ]
    scripts = dict(MIGRATIONS)["0007_task_counts"]
    assert [len(statements(s)) for s in scripts.values()] == [7, 7]
