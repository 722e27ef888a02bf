#!/usr/bin/env python3
"""Start-up cost of one ringrift-coord call, as a ratio to a bare interpreter start.

Every launch script starts a fresh interpreter for ``can-spawn`` / ``run``, so what matters
is how many bare ``python -c pass`` starts one call costs. Rows (median wall time over
--runs, after --warmup, the rows interleaved so that drift of a noisy VM hits all alike):

  python -c pass                               this interpreter, the baseline
  floor: bare sqlite3 admission                this interpreter running a bare script that
                                               opens SQLite (WAL, synchronous=NORMAL, 1 KiB
                                               pages, as the store) and does the same INSERT
                                               into decisions in one transaction: the least
                                               any tool can pay
  ringrift-coord can-spawn selfplay --node n1  fast parser, one read-only decision
  ringrift-coord run selfplay --node n1 -- true
                                               fast parser, register + fork/exec + release
  ringrift-coord bandwidth run h1 -- true      fast parser, a transfer: start + fork/exec
                                               (stdout teed) + end
  ringrift-coord status                        the Typer path (Typer + Rich)

ringrift-coord is the script next to this interpreter (the venv's bin/, not a PATH shim),
run with a fresh temp RINGRIFT_COORDINATOR_DIR and a temp config without a selfplay rate
limit (so 30 quick runs are not throttled). Nothing of the caller's RINGRIFT_* is used.

    /path/to/venv/bin/python bench/startup.py [--runs 30] [--warmup 3] [--json] [--check]

Goal: can-spawn / python -c pass <= 2.5x (the floor is ~1.7x); acceptable <= 7x (--check
exits 1 above that).
Use a regular install (``pip install .``): an editable install's import hook runs in every
interpreter start and inflates the baseline (the script says so when it finds one).
Exit: 0 ok, 1 a command failed (or --check and over 7x), 2 usage.
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

GOAL, LIMIT = 2.5, 7.0
CONFIG = "rate_limits:\n  selfplay: {per_minute: null}\n"

# The floor row: a bare script that opens a SQLite file set up as the store sets up its own
# and writes the same decision-log row in one BEGIN IMMEDIATE transaction.
FLOOR = """
import os, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=5.0, isolation_level=None)
conn.execute("PRAGMA synchronous=NORMAL")
conn.execute("BEGIN IMMEDIATE")
conn.execute(
    "INSERT INTO decisions (at, action, task_type, node, host, pid, who, allowed, rules, "
    "retry_after, task_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    (time.time(), "can-spawn", "selfplay", "n1", "h", os.getpid(), "bench", 1, "[]", None, None),
)
conn.execute("COMMIT")
conn.close()
"""


def floor_db(path: Path) -> str:
    """The floor row's database: WAL, 1 KiB pages and the decisions table, as the store."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=1024")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, at DOUBLE PRECISION NOT "
        "NULL, action TEXT NOT NULL, task_type TEXT NOT NULL, node TEXT NOT NULL, host TEXT "
        "NOT NULL, pid INTEGER, who TEXT, allowed INTEGER NOT NULL, rules TEXT NOT NULL, "
        "retry_after DOUBLE PRECISION, task_id TEXT)"
    )
    conn.close()
    return str(path)


def editable_finder() -> bool:
    """True when an editable install's import hook runs at every interpreter start.

    setuptools' editable finder (``__editable__.*.pth`` importing ``*_finder``) imports
    pathlib, re, importlib.util ... in *every* start, ``python -c pass`` included, which
    inflates the baseline (~20 ms here) and so understates the ratio. Measure a regular
    install (``pip install .``) for the figure that a node sees.
    """
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    for directory in dirs:
        for pth in Path(directory).glob("__editable__*.pth"):
            try:
                if "import " in pth.read_text():
                    return True
            except OSError:
                pass
    return False


def coord_exe(explicit: str | None) -> str:
    """``--exe``, or the ringrift-coord next to this interpreter (exit when there is none)."""
    exe = explicit or str(Path(sys.executable).parent / "ringrift-coord")
    if not os.access(exe, os.X_OK):
        script = Path(sys.argv[0]).name
        sys.exit(f"{script}: {exe} not found; run with the venv's python or pass --exe")
    return exe


def rows(exe: str, floor: str) -> list[tuple[str, list[str]]]:
    py = sys.executable
    return [
        ("python -c pass", [py, "-c", "pass"]),
        ("floor: bare sqlite3 admission", [py, "-c", FLOOR, floor]),
        ("can-spawn selfplay --node n1", [exe, "can-spawn", "selfplay", "--node", "n1"]),
        ("run selfplay --node n1 -- true", [exe, "run", "selfplay", "--node", "n1", "--", "true"]),
        ("bandwidth run h1 -- true", [exe, "bandwidth", "run", "h1", "--", "true"]),
        ("status (Typer path)", [exe, "status"]),
    ]


def time_once(argv: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    """Wall time of one run of ``argv`` (RuntimeError, with its stderr, when it fails)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])}{' ...' if len(argv) > 4 else ''} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[:300]}"
        )
    return elapsed


def measure(exe: str, runs: int, warmup: int) -> list[dict[str, object]]:
    work = tempfile.mkdtemp(prefix="rrc-startup-")
    try:
        config = Path(work, "coord.yaml")
        config.write_text(CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))}
        env.update(
            {
                "RINGRIFT_COORDINATOR_DIR": str(Path(work, "state")),
                "RINGRIFT_COORD_CONFIG": str(config),
                "XDG_CONFIG_HOME": str(Path(work, "xdg-config")),
                "COLUMNS": "120",
            }
        )
        table = rows(exe, floor_db(Path(work, "floor.db")))
        times: dict[str, list[float]] = {name: [] for name, _ in table}
        for i in range(warmup + runs):
            for name, argv in table:
                elapsed = time_once(argv, env)
                if i >= warmup:
                    times[name].append(elapsed)
        return [
            {
                "row": name,
                "argv": argv,
                "runs": runs,
                "median_ms": round(statistics.median(times[name]) * 1e3, 2),
                "min_ms": round(min(times[name]) * 1e3, 2),
                "max_ms": round(max(times[name]) * 1e3, 2),
            }
            for name, argv in table
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=30, help="timed runs per row (30)")
    p.add_argument("-w", "--warmup", type=int, default=3, help="untimed runs per row first (3)")
    p.add_argument("--exe", help="ringrift-coord to time (default: next to this interpreter)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--check", action="store_true", help=f"exit 1 if can-spawn > {LIMIT:g}x")
    a = p.parse_args(argv)
    if a.runs < 1 or a.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    exe = coord_exe(a.exe)
    try:
        results = measure(exe, a.runs, a.warmup)
    except RuntimeError as exc:
        print(f"startup.py: {exc}", file=sys.stderr)
        return 1
    base = results[0]["median_ms"]
    for r in results:
        r["ratio"] = round(float(r["median_ms"]) / float(base), 2)
    ratio = next(r["ratio"] for r in results if str(r["row"]).startswith("can-spawn"))
    floor = results[1]["ratio"]
    verdict = (
        "meets the goal"
        if ratio <= GOAL
        else "within the limit"
        if ratio <= LIMIT
        else "OVER the limit"
    )
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "exe": exe,
        "rows": results,
        "editable_finder": editable_finder(),
        "can_spawn_ratio": ratio,
        "floor_ratio": floor,
        "goal": GOAL,
        "limit": LIMIT,
        "verdict": verdict,
    }
    if a.json:
        print(json.dumps(document, indent=2))
    else:
        print(
            f"# startup: {a.runs} runs, {a.warmup} warm-up, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, {exe}"
        )
        print(f"{'row':34} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'x python':>9}")
        for r in results:
            print(
                f"{r['row']:34} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} "
                f"{r['max_ms']:>8.2f} {r['ratio']:>8.2f}x"
            )
        print(
            f"can-spawn / python -c pass = {ratio:.2f}x (goal <= {GOAL:g}x, limit <= "
            f"{LIMIT:g}x): {verdict}; the floor (a bare sqlite3 admission) = {floor:.2f}x"
        )
        if document["editable_finder"]:
            print(
                "note: this venv has an editable install whose import hook runs in every "
                "interpreter start, python -c pass included; the ratio is understated. "
                "Measure a regular install (pip install .) for the real figure."
            )
    return 1 if a.check and ratio > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
