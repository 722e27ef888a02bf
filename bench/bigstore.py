#!/usr/bin/env python3
"""What one admission decision costs with 10,000 running tasks in the store, as a ratio to
the same decision on an empty store, in the same run.

Two stores per engine, same schema, same settings: *empty* (no running task) and *big*
(``--tasks`` running tasks, default 10,000, spread over ``--nodes`` nodes on as many other
hosts and over every task type, leases far in the future, inserted by SQL that matches the
schema). The measured decision is the one ``can-spawn selfplay`` makes, in-process
(``TaskCoordinator.check``: one write transaction that reaps, evaluates every rule and logs
the decision), on a node with no task of its own; ``acquire`` + ``release`` pairs are the
second row. The two stores take turns decision by decision (``--rounds`` x ``--decisions``
each), so drift and load hit both alike; the ratio is of the medians of every decision.
Limits are set high enough that every decision is allowed in both stores (the same code
path; the cluster limit is there, so the cluster rule counts), the rate limit is off, live
host readings are off. PostgreSQL's tables are ANALYZEd after the fill, as autovacuum does
within a minute of it.

    python bench/bigstore.py [--engine sqlite|postgres|both] [--tasks 10000] [--nodes 200]
        [--decisions 200] [--rounds 5] [--pg-url URL] [--explain] [--json]

``--explain`` prints the plan of every statement the decision runs against the big store
(SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``), statements captured from the store's
own connection. PostgreSQL: a throw-away server (``tests/pgserver.py``) unless ``--pg-url``
is given (its databases ``bigstore_empty`` and ``bigstore_big`` are dropped and re-created).
Goal: big / empty <= 1.2. Exit 0, or 1 when a store failed (never for a missed goal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from ringrift_coord.context import Context  # noqa: E402
from ringrift_coord.task_coordinator import Holder, TaskCoordinator, TaskType  # noqa: E402

GOAL = 1.2
NODE = "bench-node"  # the node asking: no task of its own in either store
OVERRIDES = [
    "resources.live_host=false",
    "rate_limits.selfplay.per_minute=null",
    "task_limits.selfplay.per_node=1000000",
    "task_limits.selfplay.cluster=1000000",  # counted: the cluster rule runs
    "store.decision_log_days=30",
]
COLUMNS = (
    "task_id, task_type, node, host, boot_id, pid, pid_start, pgid, wrapper_pid, "
    "wrapper_start, config_name, command, source, started_at, lease_expires, lease_token, trial"
)
BATCH = 200


def fill(ctx: Context, tasks: int, nodes: int) -> None:
    """``tasks`` running rows over ``nodes`` nodes (each on its own host) and every type."""
    types = [t.value for t in TaskType]
    configs = ["square8_2p", "square19_2p", "hex8_3p", None]
    with ctx.store.write() as tx:
        now = tx.now()
        for start in range(0, tasks, BATCH):
            rows = []
            for i in range(start, min(tasks, start + BATCH)):
                node = f"big-node-{i % nodes:04d}"
                rows.append(
                    (
                        f"big-{i:06d}",
                        types[(i // nodes) % len(types)],
                        node,
                        f"big-host-{i % nodes:04d}",
                        None,
                        100000 + i,
                        None,
                        None,
                        None,
                        None,
                        configs[i % len(configs)],
                        None,
                        "register",
                        now - (i % 3600),
                        now + 10 * 365 * 86400.0,  # held: another host's lease, far ahead
                        10**12 + i,
                        0,
                    )
                )
            marks = ",".join("(" + ",".join("?" * 17) + ")" for _ in rows)
            tx.execute(
                f"INSERT INTO tasks ({COLUMNS}) VALUES {marks}",  # noqa: S608 (marks only)
                [v for row in rows for v in row],
            )


def open_ctx(db: str, state: str, extra: list[str]) -> Context:
    return Context.open(
        db=db, state_dir=state, config=None, env={"USER": "bench"}, overrides=OVERRIDES + extra
    )


def capture_sql(ctx: Context, coord: TaskCoordinator) -> list[tuple[str, tuple]]:
    """Run one decision with the engine's Tx.query/execute wrapped: the statements it runs."""
    store = ctx.store
    seen: list[tuple[str, tuple]] = []
    with store.write() as tx:
        cls = type(tx)
    orig_q, orig_e = cls.query, cls.execute

    def q(self, sql, params=()):  # noqa: ANN001, ANN202
        seen.append((sql, tuple(params)))
        return orig_q(self, sql, params)

    def e(self, sql, params=()):  # noqa: ANN001, ANN202
        seen.append((sql, tuple(params)))
        return orig_e(self, sql, params)

    cls.query, cls.execute = q, e  # type: ignore[method-assign]
    try:
        coord.check("selfplay", NODE)
    finally:
        cls.query, cls.execute = orig_q, orig_e  # type: ignore[method-assign]
    return seen


def explain(ctx: Context, statements: list[tuple[str, tuple]]) -> list[dict]:
    out = []
    engine = ctx.store.engine
    for sql, params in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        prefix = "EXPLAIN QUERY PLAN " if engine == "sqlite" else "EXPLAIN "
        with ctx.store.read() as tx:
            rows = tx.query(prefix + sql, params)
        plan = [str(r.get("detail") or r.get("QUERY PLAN") or r) for r in rows]
        out.append({"sql": " ".join(sql.split()), "plan": plan})
    return out


def timed(fn, n: int) -> list[float]:  # noqa: ANN001
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    return lat


def measure(engine: str, dbs: dict[str, str], a: argparse.Namespace) -> dict:
    state = {k: tempfile.mkdtemp(prefix=f"bigstore-{k}-") for k in dbs}
    ctxs = {}
    try:
        for k, db in dbs.items():
            os.chmod(state[k], 0o700)
            ctxs[k] = open_ctx(db, state[k], a.set)
            ctxs[k].store  # noqa: B018 (open and migrate now)
        t0 = time.perf_counter()
        fill(ctxs["big"], a.tasks, a.nodes)
        fill_s = time.perf_counter() - t0
        if engine == "postgres":  # what autovacuum does within a minute of such a fill
            for c in ctxs.values():
                with c.store.write() as tx:
                    tx.execute("ANALYZE tasks")
        coords = {k: TaskCoordinator(c) for k, c in ctxs.items()}
        me = Holder(pid=os.getpid())

        def decide(k: str):  # noqa: ANN202
            def go() -> None:
                d = coords[k].check("selfplay", NODE)
                assert d.allowed, d.reasons

            return go

        def pair(k: str):  # noqa: ANN202
            def go() -> None:
                d = coords[k].acquire("selfplay", NODE, holder=me)
                assert d.allowed, d.reasons
                coords[k].unregister_task(d.task_id, token=d.lease_token)

            return go

        for k in dbs:  # warm up
            timed(decide(k), 20)
            timed(pair(k), 10)
        lat: dict[str, list[float]] = {f"{k}/{w}": [] for k in dbs for w in ("decision", "pair")}
        # one of each in turn (empty, big, big, empty, ...), so drift and load hit both alike
        order = ("empty", "big")
        for r in range(a.rounds):
            for i in range(a.decisions):
                for k in order if (i + r) % 2 == 0 else order[::-1]:
                    lat[f"{k}/decision"] += timed(decide(k), 1)
                    if i % 2 == 0:
                        lat[f"{k}/pair"] += timed(pair(k), 1)
        with ctxs["big"].store.read() as tx:
            running = tx.one("SELECT COUNT(*) AS n FROM tasks")["n"]  # type: ignore[index]
        med = {k: statistics.median(v) * 1e3 for k, v in lat.items()}
        p90 = {k: sorted(v)[int(len(v) * 0.9)] * 1e3 for k, v in lat.items()}
        result = {
            "engine": engine,
            "running_tasks": running,
            "nodes": a.nodes,
            "fill_s": round(fill_s, 2),
            "decisions_per_store": len(lat["empty/decision"]),
            "empty_decision_ms": round(med["empty/decision"], 3),
            "big_decision_ms": round(med["big/decision"], 3),
            "decision_ratio": round(med["big/decision"] / med["empty/decision"], 3),
            "empty_decision_p90_ms": round(p90["empty/decision"], 3),
            "big_decision_p90_ms": round(p90["big/decision"], 3),
            "empty_pair_ms": round(med["empty/pair"], 3),
            "big_pair_ms": round(med["big/pair"], 3),
            "pair_ratio": round(med["big/pair"] / med["empty/pair"], 3),
        }
        result["goal_met"] = result["decision_ratio"] <= GOAL
        if a.explain:
            result["plans"] = explain(ctxs["big"], capture_sql(ctxs["big"], coords["big"]))
        return result
    finally:
        for c in ctxs.values():
            c.close()
        for s in state.values():
            shutil.rmtree(s, ignore_errors=True)


def sqlite_dbs(tmp: str) -> dict[str, str]:
    return {k: os.path.join(tmp, f"{k}.db") for k in ("empty", "big")}


def postgres_dbs(url: str | None, tmp: list) -> dict[str, str]:  # noqa: ANN001
    import psycopg

    if url is None:
        import pgserver

        bindir = pgserver.find_pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries (initdb, postgres) not found")
        server = pgserver.PgServer(bindir)
        tmp.append(server)
        server.start()
        return {k: server.create_database(f"bigstore_{k}") for k in ("empty", "big")}
    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for k in ("empty", "big"):
            conn.execute(f"DROP DATABASE IF EXISTS bigstore_{k}")
            conn.execute(f"CREATE DATABASE bigstore_{k}")
            out[k] = psycopg.conninfo.make_conninfo(url, dbname=f"bigstore_{k}")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--decisions", type=int, default=200, help="per store per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pg-url", help="an existing server (databases bigstore_* re-created)")
    p.add_argument("--explain", action="store_true", help="the big store's plans too")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.tasks < 1 or a.nodes < 1 or a.decisions < 1 or a.rounds < 1:
        p.error("--tasks, --nodes, --decisions and --rounds must be >= 1")
    engines = ["sqlite", "postgres"] if a.engine == "both" else [a.engine]
    rows, failed = [], False
    for engine in engines:
        tmp = tempfile.mkdtemp(prefix="bigstore-")
        servers: list = []
        try:
            dbs = sqlite_dbs(tmp) if engine == "sqlite" else postgres_dbs(a.pg_url, servers)
            rows.append(measure(engine, dbs, a))
        except Exception as exc:  # report the engine, go on with the next
            failed = True
            rows.append({"engine": engine, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            for s in servers:
                s.destroy()
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "goal": GOAL,
        "rows": rows,
    }
    if a.json:
        print(json.dumps(summary, indent=1))
        return 1 if failed else 0
    print(
        f"# {summary['date']}, {summary['cores']} cores, load {summary['load_avg_1m']}; "
        f"median of {a.rounds} x {a.decisions} decisions per store"
    )
    print(
        f"{'engine':<9} {'running':>7} {'empty ms':>9} {'big ms':>8} {'ratio':>6} "
        f"{'pair empty':>10} {'pair big':>9} {'ratio':>6}  goal <= {GOAL}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<9} error: {r['error']}")
            continue
        print(
            f"{r['engine']:<9} {r['running_tasks']:>7} {r['empty_decision_ms']:>9.3f} "
            f"{r['big_decision_ms']:>8.3f} {r['decision_ratio']:>6.2f} {r['empty_pair_ms']:>10.3f} "
            f"{r['big_pair_ms']:>9.3f} {r['pair_ratio']:>6.2f}  "
            f"{'met' if r['goal_met'] else 'MISSED'}"
        )
        for plan in r.get("plans", []):
            print(f"  {plan['sql'][:150]}")
            for line in plan["plan"]:
                print(f"      {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
