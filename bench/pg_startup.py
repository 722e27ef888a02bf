#!/usr/bin/env python3
"""Start-up cost of one ``can-spawn`` on PostgreSQL, as a ratio to a bare interpreter start,
and where it goes.

Rows (median wall time over --runs, after --warmup, interleaved run by run so that drift of a
noisy VM hits all alike), each a fresh process of this interpreter:

  python -c pass                 the baseline
  python -c 'import psycopg'     what the driver's import alone costs
  floor: bare psycopg admission  import psycopg, connect, BEGIN, the advisory lock, the same
                                 INSERT into decisions, COMMIT: what any tool must pay
  ringrift-coord can-spawn       --db URL can-spawn selfplay --node n1 (the fast parser)

Then one instrumented ``can-spawn`` in a child process, repeated --trace-runs times (the
median of each part is shown): how long importing psycopg and ringrift_coord takes, the
connection, every statement sent (each one round trip to the server, with its SQL), and the
rest (rules, config, the state directory, modules imported on the way).

ringrift-coord is the script next to this interpreter (``--exe`` for another), run with a
fresh temp RINGRIFT_COORDINATOR_DIR, a temp config without a selfplay rate limit and none of
the caller's RINGRIFT_*. The server is a throw-away one started here (initdb + postgres on
127.0.0.1, trust authentication; bench/peers/store_ceiling.py's) unless --pg-url names one
(its database gets our tables and a ``bench_floor_decisions`` table, dropped at the end).

    /path/to/venv/bin/python bench/pg_startup.py [--runs 20] [--warmup 3] [--trace-runs 5]
                                                 [--pg-url URL] [--json]

Needs psycopg 3 (``pip install '.[postgres]'``, a regular install: see bench/README.md) and,
without --pg-url, PostgreSQL's initdb/postgres. Exit: 0 ok, 1 a command failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # bench/_common.py (puts bench/ and bench/peers/ on sys.path)
import startup  # bench/startup.py: coord_exe

CAN_SPAWN = ["can-spawn", "selfplay", "--node", "n1"]
CONFIG = "rate_limits:\n  selfplay: {per_minute: null}\n"
FLOOR_TABLE = "bench_floor_decisions"

# The floor: what a bare script doing the same admission write costs (no rules, no checks).
FLOOR = f"""
import os, sys, time
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=5)
conn.execute("BEGIN")
conn.execute("SELECT pg_advisory_xact_lock(%s)", (7235441627061724788,))
conn.execute(
    "INSERT INTO {FLOOR_TABLE} (at, action, task_type, node, host, pid, who, allowed, rules) "
    "VALUES (%s, 'can-spawn', 'selfplay', 'n1', 'h', %s, 'bench', 1, '[]')",
    (time.time(), os.getpid()),
)
conn.execute("COMMIT")
conn.close()
"""

# One can-spawn, instrumented: the parts' times on stderr as one JSON line.
TRACE = """
import json, sys, time
t0 = time.perf_counter()
import psycopg
t1 = time.perf_counter()
calls = []
execute = psycopg.Cursor.execute
def timed_execute(self, query, params=None, **kw):
    t = time.perf_counter()
    try:
        return execute(self, query, params, **kw)
    finally:
        calls.append([str(query), time.perf_counter() - t])
psycopg.Cursor.execute = timed_execute
connect = psycopg.Connection.connect.__func__
def timed_connect(cls, *a, **kw):
    t = time.perf_counter()
    try:
        return connect(cls, *a, **kw)
    finally:
        calls.append(["(connect)", time.perf_counter() - t])
psycopg.Connection.connect = classmethod(timed_connect)
psycopg.connect = psycopg.Connection.connect
from ringrift_coord.cli.main import run_cli
import ringrift_coord.cli.hot, ringrift_coord.task_coordinator, ringrift_coord.store.postgres
t2 = time.perf_counter()
code = run_cli(sys.argv[1:])
t3 = time.perf_counter()
sys.stdout.flush()
print(json.dumps({"code": code, "import_psycopg": t1 - t0, "import_ringrift": t2 - t1,
                  "run": t3 - t2, "calls": calls}), file=sys.stderr)
"""


def floor_setup(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id BIGSERIAL PRIMARY KEY, "
            "at DOUBLE PRECISION NOT NULL, action TEXT NOT NULL, task_type TEXT NOT NULL, "
            "node TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER, who TEXT, "
            "allowed INTEGER NOT NULL, rules TEXT NOT NULL, retry_after DOUBLE PRECISION, "
            "task_id TEXT)"
        )


def floor_drop(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")


def measure(
    exe: str, url: str, env: dict[str, str], cwd: str, runs: int, warmup: int
) -> list[dict[str, object]]:
    py = sys.executable
    table = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import psycopg'", [py, "-c", "import psycopg"]),
        ("floor: bare psycopg admission", [py, "-c", FLOOR, url]),
        (
            "can-spawn selfplay --node n1",
            [exe, "--db", url, "can-spawn", "selfplay", "--node", "n1"],
        ),
    ]
    measured = _common.median_times([(name, cmd, env) for name, cmd in table], runs, warmup, cwd)
    failed = [f"{name}: {got['error']}" for name, got in measured.items() if "error" in got]
    if failed:
        raise RuntimeError("; ".join(failed))
    base = measured[table[0][0]]["median_ms"]
    return [
        {
            "row": name,
            "median_ms": measured[name]["median_ms"],
            "min_ms": measured[name]["min_ms"],
            "ratio": round(measured[name]["median_ms"] / base, 2),
        }
        for name, _ in table
    ]


def trace(url: str, env: dict[str, str], cwd: str, runs: int) -> dict[str, object]:
    """The median of each part of one can-spawn over ``runs`` instrumented children (run in
    ``cwd``, a temp directory: ``python -c`` puts its working directory first on sys.path, and
    a repository checkout there would be measured instead of the installed package)."""
    docs = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", TRACE, "--db", url, *CAN_SPAWN],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        try:
            doc = json.loads(last)
        except ValueError:
            raise RuntimeError(
                f"the traced can-spawn failed: {done.stderr.strip()[:300]}"
            ) from None
        if doc["code"] != 0:
            raise RuntimeError(f"the traced can-spawn exited {doc['code']}")
        docs.append(doc)

    def med(values: list[float]) -> float:
        return round(statistics.median(values) * 1e3, 2)

    calls = [
        {"sql": " ".join(sql.split())[:100], "median_ms": med([d["calls"][i][1] for d in docs])}
        for i, (sql, _) in enumerate(docs[0]["calls"])
        if all(len(d["calls"]) == len(docs[0]["calls"]) for d in docs)
    ]
    in_calls = [sum(c[1] for c in d["calls"]) for d in docs]
    return {
        "runs": runs,
        "import_psycopg_ms": med([d["import_psycopg"] for d in docs]),
        "import_ringrift_ms": med([d["import_ringrift"] for d in docs]),
        "run_ms": med([d["run"] for d in docs]),
        "round_trips": len(docs[0]["calls"]),
        "in_round_trips_ms": med(in_calls),
        "rest_of_run_ms": med([d["run"] - c for d, c in zip(docs, in_calls, strict=True)]),
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=20, help="timed runs per row (20)")
    p.add_argument("-w", "--warmup", type=int, default=3, help="untimed runs per row first (3)")
    p.add_argument("--trace-runs", type=int, default=5, help="instrumented can-spawns (5)")
    p.add_argument("--exe", help="ringrift-coord to time (default: next to this interpreter)")
    p.add_argument("--pg-url", help="an existing server (default: start a throw-away one)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = p.parse_args(argv)
    if a.runs < 1 or a.warmup < 0 or a.trace_runs < 1:
        p.error("--runs and --trace-runs must be >= 1 and --warmup >= 0")
    exe = startup.coord_exe(a.exe)
    try:
        import psycopg
    except ImportError:
        print(
            "pg_startup.py: psycopg 3 is not installed: pip install '.[postgres]'", file=sys.stderr
        )
        return 1
    work = tempfile.mkdtemp(prefix="rrc-pg-startup-")
    try:
        with _common.server_url(a.pg_url) as (url, version):
            floor_setup(url)
            config = Path(work, "coord.yaml")
            config.write_text(CONFIG)
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))
            }
            env.update(
                {
                    "RINGRIFT_COORDINATOR_DIR": str(Path(work, "state")),
                    "RINGRIFT_COORD_CONFIG": str(config),
                    "XDG_CONFIG_HOME": str(Path(work, "xdg-config")),
                    # the shared VM's load average would trip the live-load rule
                    "RINGRIFT_COORD_SET": "resources.live_host=false",
                }
            )
            rows = measure(exe, url, env, work, a.runs, a.warmup)
            parts = trace(url, env, work, a.trace_runs)
            floor_drop(url)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"pg_startup.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "postgresql": version,
        "psycopg": psycopg.__version__,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "exe": exe,
        "rows": rows,
        "can_spawn_ratio": rows[-1]["ratio"],
        "breakdown": parts,
    }
    if a.json:
        print(json.dumps(document, indent=2))
        return 0
    print(
        f"# pg_startup: {a.runs} runs, {a.warmup} warm-up, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, PostgreSQL {version}, "
        f"psycopg {psycopg.__version__}, {exe}"
    )
    print(f"{'row':34} {'median ms':>10} {'min ms':>8} {'x python':>9}")
    for r in rows:
        print(f"{r['row']:34} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['ratio']:>8.2f}x")
    print(f"can-spawn / python -c pass = {rows[-1]['ratio']:.2f}x")
    print(
        f"\n# one can-spawn, median of {parts['runs']} instrumented runs: import psycopg "
        f"{parts['import_psycopg_ms']} ms, import ringrift_coord (hot path) "
        f"{parts['import_ringrift_ms']} "
        f"ms, run {parts['run_ms']} ms = {parts['round_trips']} round trips "
        f"{parts['in_round_trips_ms']} ms + the rest {parts['rest_of_run_ms']} ms"
    )
    for c in parts["calls"]:
        print(f"  {c['median_ms']:>7.2f} ms  {c['sql']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
