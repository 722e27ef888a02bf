#!/usr/bin/env python3
"""wake_halt.py - N ``run --wait`` launchers queued behind a halt, then ``unhalt``.

Everything is halted; N waiters (default 200) start one after another (each once the one
before it has asked, so arrival order is known) for one slot type with a per-node limit L
(default 8), each running a short job that logs its name. Then ``unhalt``. Reports how
many exited 0 and how many 75 (none may: nobody has a ``--timeout``), the seconds from the
unhalt to the last exit, and whether they were admitted in arrival order (SQLite: the
wake-up cascade admits them one by one; on PostgreSQL the halted waiters all retry at
once, so arrival order among them is not promised).

    python bench/wake_halt.py [-n 200] [-L 8] [--db URL] [--json]

A benchmark, not a test; it prints the 1-minute load average with its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

JOB = 'echo "$1" >> "$0"; sleep 0.05'


def asked(state: str, db: str | None) -> int:
    """How many admissions have been asked (each waiter's first one is logged)."""
    sql = "SELECT COUNT(*) FROM decisions WHERE action = 'run'"
    if db:
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0
    path = os.path.join(state, "tasks.db")
    if not os.path.exists(path):
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def admitted_pids(state: str, db: str | None) -> list[int]:
    """The pids of the admitted ``run``s, in the order they were admitted."""
    sql = "SELECT pid FROM decisions WHERE action = 'run' AND allowed = 1 ORDER BY id"
    if db:
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            return [int(r[0]) for r in conn.execute(sql).fetchall()]
    conn = sqlite3.connect(f"file:{os.path.join(state, 'tasks.db')}?mode=ro", uri=True)
    try:
        return [int(r[0]) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--waiters", type=int, default=200)
    p.add_argument("-L", "--limit", type=int, default=8)
    p.add_argument("--db", default=None, help="postgresql://... (default: SQLite)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--patience", type=float, default=600, help="seconds (600) before a stall")
    a = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="wake-halt-")
    state, log = os.path.join(tmp, "state"), os.path.join(tmp, "log")
    config = os.path.join(tmp, "coord.yaml")
    with open(config, "w") as handle:
        handle.write(
            f"task_limits: {{selfplay: {{per_node: {a.limit}, cluster: 5000}}}}\n"
            "rate_limits: {selfplay: {per_minute: null}}\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGRIFT_")}
    env.update(
        RINGRIFT_COORDINATOR_DIR=state,
        RINGRIFT_COORD_CONFIG=config,
        RINGRIFT_COORD_SET="resources.live_host=false",
    )
    if a.db:
        env["RINGRIFT_COORD_DB"] = a.db
    coord = [sys.executable, "-m", "ringrift_coord"]
    waiters: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*coord, "halt"], env=env, check=True, capture_output=True)
        for i in range(a.waiters):
            waiters.append(
                subprocess.Popen(
                    [*coord, "run", "selfplay", "--node", "n1", "--wait", "--",
                     "sh", "-c", JOB, log, str(i)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while asked(state, a.db) < i + 1:
                if time.monotonic() > deadline or waiters[-1].poll() is not None:
                    raise SystemExit(f"waiter {i} never asked for a slot")
                time.sleep(0.02)
        subprocess.run([*coord, "unhalt"], env=env, check=True, capture_output=True)
        lifted = time.monotonic()
        try:
            codes = [w.wait(timeout=a.patience) for w in waiters]
        except subprocess.TimeoutExpired:
            stuck = [i for i, w in enumerate(waiters) if w.poll() is None]
            print(f"stalled: waiters {stuck} still waiting; state kept in {tmp}", file=sys.stderr)
            tmp = ""  # kept for a look
            raise SystemExit(1) from None
        seconds = time.monotonic() - lifted
        index = {w.pid: i for i, w in enumerate(waiters)}
        order = [index[pid] for pid in admitted_pids(state, a.db) if pid in index]
        inversions = sum(1 for x, y in zip(order, order[1:], strict=False) if y < x)
        doc = {
            "engine": "postgres" if a.db else "sqlite",
            "waiters": a.waiters,
            "limit": a.limit,
            "exit_0": codes.count(0),
            "exit_75": codes.count(75),
            "other_exits": sorted({c for c in codes if c not in (0, 75)}),
            "seconds_unhalt_to_last_exit": round(seconds, 2),
            "admitted_in_arrival_order": order == sorted(order),
            "order_inversions": inversions,
            "loadavg_1m": os.getloadavg()[0],
        }
        if a.json:
            print(json.dumps(doc))
        else:
            for key, value in doc.items():
                print(f"{key:30} {value}")
        return 0 if doc["exit_0"] == a.waiters else 1
    finally:
        for w in waiters:
            if w.poll() is None:
                w.kill()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
