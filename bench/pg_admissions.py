#!/usr/bin/env python3
"""Admissions per second on PostgreSQL, as a ratio to the store's raw ceiling in the same run.

One *pair* = one admission (acquire a selfplay slot: the whole rule set in one advisory-locked
transaction, decision logged) + one release. Measured in-process with 1 and with N client
processes (each its own connection, all on the same node, limit 8), against
``peers/store_ceiling.py``'s ``pg-1`` and ``pg-N`` modes (a bare ``SELECT ... FOR UPDATE`` on
one counter row + insert/delete), on one throw-away server started here (default durability:
fsync on, synchronous_commit on), or on ``--pg-url``.

    python bench/pg_admissions.py [--seconds 3] [--clients 8] [--pg-url URL] [--json]

Needs psycopg 3 (pip install -e '.[postgres]') and PostgreSQL's initdb/postgres binaries.
Exit: 0 ok, 1 a mode failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402  (bench/_common.py, which puts bench/peers/ on sys.path)
import store_ceiling  # noqa: E402  (vendored peer harness: raw modes)


def ringrift_worker(url, state_dir, seconds, start, out):
    try:
        from ringrift_coord.context import Context
        from ringrift_coord.task_coordinator import Holder, TaskCoordinator

        ctx = Context.open(
            db=url,
            state_dir=state_dir,
            config=None,
            env={"USER": "bench"},
            overrides=["task_limits.selfplay.per_node=8", "rate_limits.selfplay.per_minute=null"],
        )
        coord = TaskCoordinator(ctx)
        me = Holder(pid=os.getpid())
        coord.check("selfplay", "n1")  # connect and warm up before the clock starts
        lat, denied = [], 0
        start.wait()
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            decision = coord.acquire("selfplay", "n1", holder=me)
            if decision.allowed:
                coord.unregister_task(decision.task_id, token=decision.lease_token)
            else:
                denied += 1
            lat.append(time.perf_counter() - t0)
        ctx.close()
        out.put({"pairs": len(lat), "denied": denied, "lat": lat})
    except Exception as exc:  # report, do not hang the parent
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def ringrift_mode(name, url, clients, seconds):
    state = tempfile.mkdtemp(prefix="pg-admissions-")
    os.chmod(state, 0o700)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=ringrift_worker, args=(url, state, seconds, start, out))
        for _ in range(clients)
    ]
    try:
        for p in procs:
            p.start()
        time.sleep(1.0 + 0.3 * clients)  # imports and connections before the clock starts
        t0 = time.perf_counter()
        start.set()
        results = [out.get(timeout=seconds + 120) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(10)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"mode": name, "clients": clients, "error": errors[0]}
    lat = sorted(x for r in results for x in r["lat"])
    pairs = sum(r["pairs"] for r in results)
    return {
        "mode": name,
        "clients": clients,
        "seconds": round(wall, 2),
        "pairs": pairs,
        "pairs_per_s": round(pairs / wall, 1),
        "txn_per_s": round(2 * pairs / wall, 1),
        "p50_ms": round(statistics.median(lat) * 1e3, 3) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 3) if lat else None,
        "denied": sum(r["denied"] for r in results),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--pg-url", help="an existing server (its database gets our tables)")
    p.add_argument("--json", action="store_true", help="one JSON document at the end")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.clients < 1:
        p.error("--seconds must be > 0 and --clients >= 1")
    try:
        import psycopg
    except ImportError:
        print("psycopg 3 is not installed: pip install -e '.[postgres]'", file=sys.stderr)
        return 1
    reason = None if a.pg_url else _common.postgres_missing()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    rows: list[dict] = []
    with _common.server_url(a.pg_url) as (url, version):
        store_ceiling.pg_setup(url)
        for clients in (1, a.clients):
            raw = store_ceiling.run_mode(f"raw pg-{clients}", "pg", url, clients, False, a.seconds)
            ours = ringrift_mode(f"ringrift pg-{clients}", url, clients, a.seconds)
            if "error" not in raw and "error" not in ours:
                ours["ratio_to_raw"] = round(ours["pairs_per_s"] / raw["pairs_per_s"], 3)
            rows += [raw, ours]
            if not a.json:
                for row in (raw, ours):
                    print(json.dumps(row), flush=True)
        store_ceiling.pg_drop(url)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "postgresql": version,
        "psycopg": psycopg.__version__,
        "seconds_per_mode": a.seconds,
        "rows": rows,
    }
    if a.json:
        print(json.dumps(summary))
    else:
        print(
            f"\n# PostgreSQL {version}, psycopg {psycopg.__version__}, {os.cpu_count()} cores, "
            f"{a.seconds:g} s per mode"
        )
        print(
            f"{'mode':<18} {'clients':>7} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}"
        )
        for r in rows:
            if "error" in r:
                print(f"{r['mode']:<18} {r.get('clients', ''):>7} {r['error']}")
                continue
            ratio = r.get("ratio_to_raw")
            print(
                f"{r['mode']:<18} {r['clients']:>7} {r['pairs_per_s']:>9.1f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {'' if ratio is None else f'{ratio:.2f}':>6}"
            )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
