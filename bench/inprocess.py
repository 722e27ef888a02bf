#!/usr/bin/env python3
"""In-process admission throughput on SQLite, as a ratio to the raw store ceiling.

One *pair* = acquire one selfplay slot + release it: what every job costs the store.

  library   ringrift_coord: TaskCoordinator(ctx).acquire("selfplay", "n1",
            holder=Holder(pid=os.getpid())) then unregister_task(task_id, token=...),
            on one Context (one connection), with the decision log on as in the CLI
  raw       the ceiling: bare sqlite3 on one connection, WAL, synchronous=NORMAL,
            BEGIN IMMEDIATE; count the node's slots; insert one / BEGIN IMMEDIATE; delete
            it (bench/peers' store_ceiling.py "sqlite-1" mode)

Both run for --seconds each, in the same run, on temp files; the rows alternate over
--rounds so that a noisy VM hits both alike. Goal: library >= 0.30 x raw (the best round of
each), a ratio measured in one run rather than an absolute rate, which a busy VM moves.

    /path/to/venv/bin/python bench/inprocess.py [--seconds 3] [--rounds 2] [--json]

Exit: 0 ok, 1 a pair was denied or failed (or --check and under the goal), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL = 0.30  # library pairs/s over raw pairs/s
LIMIT = 8


def raw_pairs(work: Path) -> Callable[[], bool]:
    conn = sqlite3.connect(work / "raw.db", isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS slots (id INTEGER PRIMARY KEY, task TEXT,"
        " node TEXT, pid INTEGER, started REAL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS slots_tn ON slots(task, node)")

    def pair() -> bool:
        conn.execute("BEGIN IMMEDIATE")
        n = conn.execute(
            "SELECT count(*) FROM slots WHERE task=? AND node=?", ("selfplay", "n1")
        ).fetchone()[0]
        if n >= LIMIT:
            conn.execute("COMMIT")
            return False
        sid = conn.execute(
            "INSERT INTO slots (task, node, pid, started) VALUES (?, ?, ?, ?)",
            ("selfplay", "n1", os.getpid(), time.time()),
        ).lastrowid
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM slots WHERE id=?", (sid,))
        conn.execute("COMMIT")
        return True

    return pair


def library_pairs(work: Path) -> Callable[[], bool]:
    from ringrift_coord.context import Context
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    config = work / "coord.yaml"
    config.write_text(
        f"task_limits:\n  selfplay: {{per_node: {LIMIT}, cluster: 500}}\n"
        "rate_limits:\n  selfplay: {per_minute: null}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGRIFT_")}
    ctx = Context.open(state_dir=str(work / "state"), config=str(config), env=env)
    coord = TaskCoordinator(ctx)
    me = os.getpid()

    def pair() -> bool:
        decision = coord.acquire("selfplay", "n1", holder=Holder(pid=me))
        if not decision.allowed:
            return False
        coord.unregister_task(decision.task_id, token=decision.lease_token)
        return True

    return pair


def run_for(pair: Callable[[], bool], seconds: float) -> dict[str, float]:
    for _ in range(20):  # warm-up: open the store, run migrations, fill caches
        if not pair():
            raise RuntimeError("a warm-up pair was denied")
    lat: list[float] = []
    end = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        if not pair():
            raise RuntimeError("a pair was denied: the slot was not released")
        lat.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    lat.sort()
    return {
        "pairs": len(lat),
        "seconds": round(wall, 3),
        "pairs_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(statistics.median(lat) * 1e3, 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per row per round (3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--check", action="store_true", help=f"exit 1 under {GOAL:g} x raw")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.rounds < 1:
        p.error("--seconds must be > 0 and --rounds >= 1")
    work = Path(tempfile.mkdtemp(prefix="rrc-inprocess-"))
    try:
        pairs = {"library": library_pairs(work), "raw": raw_pairs(work)}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in pairs}
        for _ in range(a.rounds):
            for name, pair in pairs.items():
                runs[name].append(run_for(pair, a.seconds))
    except Exception as exc:
        print(f"inprocess.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {name: max(r["pairs_per_s"] for r in rs) for name, rs in runs.items()}
    ratio = round(best["library"] / best["raw"], 3)
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "runs": runs,
        "library_pairs_per_s": best["library"],
        "raw_pairs_per_s": best["raw"],
        "ratio": ratio,
        "goal_ratio": GOAL,
        "meets_goal": ratio >= GOAL,
    }
    if a.json:
        print(json.dumps(document, indent=2))
    else:
        print(
            f"# inprocess: {a.rounds} x {a.seconds:g} s per row, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}"
        )
        print(f"{'row':10} {'round':>5} {'pairs/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for name, rs in runs.items():
            for i, r in enumerate(rs, 1):
                print(
                    f"{name:10} {i:>5} {r['pairs_per_s']:>10,.1f} {r['p50_ms']:>8.3f} "
                    f"{r['p99_ms']:>8.3f}"
                )
        verdict = "meets" if document["meets_goal"] else "MISSES"
        print(
            f"library {best['library']:,.0f} pairs/s = {ratio:.3f} x raw "
            f"{best['raw']:,.0f} pairs/s (best round each); {verdict} the goal of "
            f">= {GOAL:g} x raw"
        )
    return 1 if a.check and not document["meets_goal"] else 0


if __name__ == "__main__":
    sys.exit(main())
