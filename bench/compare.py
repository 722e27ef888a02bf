#!/usr/bin/env python3
"""ringrift-coord against its peers, in one run: medians and ratios, limits checked.

Peers: GNU parallel ``sem``, a flock semaphore (``peers/flocksem.sh``) and portalocker's
BoundedSemaphore (``peers/pl_sem.py``); ringrift-coord on SQLite and on PostgreSQL (a
throw-away server on 127.0.0.1, skipped with a note where PostgreSQL is not installed).

  1. decision    one admission decision: ``ringrift-coord can-spawn selfplay --node n1``;
                 the peers' non-waiting acquire + release of a slot around a no-op
                 (``flocksem.sh -w DIR L :``, ``pl_sem.py -w DIR L true``, ``sem ... :``)
  2. wrapped     one wrapped short job: ``ringrift-coord run selfplay --node n1 -- true``,
                 ``flocksem.sh DIR L true``, ``pl_sem.py DIR L true``, ``sem ... true``
                 (1 and 2: median wall time, rows interleaved; baseline ``python -c pass``)
  3. contention  C launchers x J jobs (a ~60 ms python job) through L slots, each launcher
                 waiting for a slot (``run --wait``): overhead per job, jobs/s, mean busy
                 slots, max concurrency (``peers/contention.py``; baseline flock; ``direct``
                 = no wrapper at all, the floor)
  4. idle        W waiters blocked for T seconds behind a held slot (limit 1): their CPU
                 (utime + stime of each waiter's process tree) as % of one core; no waiter
                 may start while the slot is held

    /path/to/venv/bin/python bench/compare.py [--quick] [--json] [--check] [--engine ...]

ringrift-coord is the script next to this interpreter; each measurement gets a fresh state
directory (and, on PostgreSQL, a fresh database), a config with the selfplay rate bucket
lifted, and this host's live readings off (``resources.live_host=false``) unless the caller
sets RINGRIFT_COORD_SET: the run loads the machine past the safeguard's critical level, and
this measures the semaphore, not that safeguard.

Goals (checked on SQLite; PostgreSQL's figures are reported beside them): can-spawn <= 2.5x
``python -c pass``; overhead per job <= 1.5x flock's; mean busy slots >= L/2; idle waiters
< 2 % of one core. Exit: 0 ok; 1 a tool exceeded a limit, a job or row failed, or (--check)
a goal was missed; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import _common  # bench/_common.py (puts bench/ and bench/peers/ on sys.path)
import contention  # bench/peers/contention.py, vendored: the contention harness

PEERS = ("flock", "portalocker", "sem")
CONTROL = "none"  # no wrapper at all: must exceed every limit (the checks' own self-check)
SECTIONS = ("decision", "wrapped", "contention", "idle")
ENGINES = ("sqlite", "postgres")
GOAL_CAN_SPAWN = 2.5  # x python -c pass
GOAL_OVERHEAD = 1.5  # x flock's overhead per job
GOAL_BUSY = 0.5  # of the slots
GOAL_IDLE_PCT = 2.0  # % of one core, all waiters together
HOLD_JOB = 'touch "$1"; exec sleep 3600'
WAITER_JOB = 'touch "$1"'


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a short version (fewer runs and jobs)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the README's table (rows x tools) instead of the text tables",
    )
    p.add_argument(
        "--from-json",
        metavar="FILE",
        help="measure nothing: print a document saved with --json (as text, --markdown or "
        "--json) and exit as that run would have",
    )
    p.add_argument(
        "--engine",
        action="append",
        metavar="E",
        help="sqlite, postgres (repeat or comma-separate; default both)",
    )
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="peers to measure, comma-separated (default flock,portalocker,sem; '' for none; "
        "'none' adds a control with no wrapper at all, which must exceed the limits: the run "
        "then exits 1, which shows that the checks see an over-admission)",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="what to measure (default decision,wrapped,contention,idle)",
    )
    p.add_argument("--runs", type=int, help="timed runs per row in 1-2 (30; --quick 5)")
    p.add_argument("--warmup", type=int, help="untimed runs per row first (3; --quick 1)")
    p.add_argument("-C", "--launchers", type=int, default=16, help="contention launchers (16)")
    p.add_argument("-J", "--jobs", type=int, help="jobs per launcher (25; --quick 6)")
    p.add_argument("-L", "--limit", type=int, default=8, help="slots (8)")
    p.add_argument("-S", "--sleep-ms", type=float, default=50.0, help="job sleep in ms (50)")
    p.add_argument("--waiters", type=int, default=16, help="idle waiters (16)")
    p.add_argument(
        "--idle-seconds", type=float, help="seconds the waiters are measured (60; --quick 10)"
    )
    p.add_argument(
        "--settle",
        type=float,
        help="seconds at least between starting the waiters and measuring them (3; --quick 1)",
    )
    p.add_argument(
        "--settle-max",
        type=float,
        default=30.0,
        help="then up to this many seconds more until the waiters' CPU rate is steady: what "
        "their interpreters spend starting is not waiting (30; 0 = measure right after --settle)",
    )
    a = p.parse_args(argv)
    a.runs = a.runs if a.runs is not None else (5 if a.quick else 30)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    a.jobs = a.jobs if a.jobs is not None else (6 if a.quick else 25)
    a.idle_seconds = a.idle_seconds if a.idle_seconds is not None else (10 if a.quick else 60)
    a.settle = a.settle if a.settle is not None else (1 if a.quick else 3)
    a.engines = _words(p, a.engine or [",".join(ENGINES)], ENGINES, "engine")
    a.peers = _words(p, [a.peers], (*PEERS, CONTROL), "peer")
    a.sections = _words(p, [a.sections], SECTIONS, "section")
    for name in ("runs", "launchers", "jobs", "limit", "waiters"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if min(a.warmup, a.sleep_ms, a.settle, a.settle_max) < 0 or a.idle_seconds <= 0:
        p.error("--warmup, --sleep-ms, --settle, --settle-max must be >= 0, --idle-seconds > 0")
    return a


def _words(
    p: argparse.ArgumentParser, items: list[str], allowed: tuple[str, ...], what: str
) -> list[str]:
    out: list[str] = []
    for item in items:
        for word in item.split(","):
            word = word.strip()
            if word and word not in allowed:
                p.error(f"unknown {what} {word!r} (choose from {', '.join(allowed)})")
            if word and word not in out:
                out.append(word)
    return [w for w in allowed if w in out]  # a fixed order, whatever was typed


# ------------------------------------------------------------------------------ environment
@contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the block; the contention
    harness reads os.environ."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.py = sys.executable
        self.exe = str(Path(self.py).parent / "ringrift-coord")
        self.work = Path(tempfile.mkdtemp(prefix="rrc-compare-"))
        self.pg: _common.Postgres | None = None
        self.notes: list[str] = []
        self.n = 0

    def fresh(self, name: str) -> Path:
        self.n += 1
        path = self.work / f"{self.n:02d}-{name}"
        path.mkdir(mode=0o700)
        return path

    def harness_args(self, limit: int) -> argparse.Namespace:
        a = self.a
        return contention.parse_args(
            [
                "-C",
                str(a.launchers),
                "-J",
                str(a.jobs),
                "-L",
                str(limit),
                "-S",
                str(a.sleep_ms),
                "--python",
                self.py,
            ]
        )

    @staticmethod
    def base_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))}
        env["RINGRIFT_COORD_SET"] = os.environ.get(
            "RINGRIFT_COORD_SET", "resources.live_host=false"
        )
        return env

    def wrapper(self, tool: str, engine: str, limit: int) -> tuple[list[str], dict[str, str]]:
        """The harness's own wrapper argv and environment for TOOL, in a fresh directory;
        ringrift-coord gets a fresh state directory and, on PostgreSQL, a fresh database."""
        work = self.fresh(f"{tool}-{engine}")
        db = None
        if tool == "ringrift" and engine == "postgres":
            assert self.pg is not None
            db = self.pg.new_database("rrc_bench")
        with environ(BENCH_COORD_DB=db):
            prefix, extra = contention.wrapper_for(tool, str(work), limit, self.py)
        env = self.base_env()
        env.update(extra)
        env["XDG_STATE_HOME"] = str(work / "xdg-state")
        env["XDG_CONFIG_HOME"] = str(work / "xdg-config")
        if db is not None:
            env["RINGRIFT_COORDINATOR_DIR"] = str(work / "coord")
            os.makedirs(env["RINGRIFT_COORDINATOR_DIR"], mode=0o700)
        if tool == "ringrift":
            prefix = [self.exe, *prefix[1:]]
        return prefix, env

    def missing(self, tool: str) -> str | None:
        return contention.missing_reason(tool, self.py)

    # ------------------------------------------------------------------------ 1 and 2
    def startup_rows(self) -> dict[str, list[dict[str, Any]]]:
        a = self.a
        base_env = self.base_env()
        rows: dict[str, list[tuple[dict[str, Any], list[str], dict[str, str]]]] = {
            "decision": [],
            "wrapped": [],
        }
        baseline = {"tool": "python -c pass", "engine": "", "command": "python -c pass"}
        todo: list[tuple[str, list[str], dict[str, str]]] = [
            ("baseline", [self.py, "-c", "pass"], base_env)
        ]
        tools = [("ringrift", e) for e in a.engines] + [(t, "") for t in a.peers]
        for section in ("decision", "wrapped"):
            if section not in a.sections:
                continue
            rows[section].append((baseline, [], {}))
            for tool, engine in tools:
                row: dict[str, Any] = {"tool": tool, "engine": engine}
                reason = "no wrapper: measured in 3 and 4 only" if tool == CONTROL else None
                reason = reason or self.missing(tool)
                if reason:
                    row["skipped"] = reason
                    rows[section].append((row, [], {}))
                    continue
                prefix, env = self.wrapper(tool, engine or "sqlite", a.limit)
                if tool == "ringrift":
                    if section == "decision":
                        argv = [self.exe, "can-spawn", "selfplay", "--node", "n1"]
                    else:
                        argv = [self.exe, "run", "selfplay", "--node", "n1", "--", "true"]
                elif section == "decision":  # a slot taken and given back around a no-op
                    head = prefix[:2] + ["-w"] + prefix[2:] if tool != "sem" else prefix
                    argv = head + ([":"] if tool in ("flock", "sem") else ["true"])
                else:
                    argv = prefix + ["true"]
                row["command"] = " ".join(
                    Path(w).name if w in (self.py, self.exe) or w.startswith("/") else w
                    for w in argv
                )
                key = f"{section}:{tool}:{engine}"
                row["key"] = key
                rows[section].append((row, argv, env))
                todo.append((key, argv, env))
        if len(todo) == 1:
            return {}
        measured = _common.median_times(todo, a.runs, a.warmup)
        base = measured["baseline"].get("median_ms")
        out: dict[str, list[dict[str, Any]]] = {}
        for section, entries in rows.items():
            if not entries:
                continue
            flock = measured.get(f"{section}:flock:", {}).get("median_ms")
            result = []
            for entry, _, _ in entries:
                row = dict(entry)
                key = "baseline" if entry is baseline else row.pop("key", "")
                got = measured.get(key)
                if got:
                    row.update(got)
                ms = row.get("median_ms")
                row["x_python"] = _ratio(ms, base)
                row["x_flock"] = None if entry is baseline else _ratio(ms, flock)
                result.append(row)
            out[section] = result
        return out

    # ------------------------------------------------------------------------------ 3
    def contention_rows(self) -> list[dict[str, Any]]:
        a = self.a
        h = self.harness_args(a.limit)
        try:
            job_s = contention.bare_job_seconds(h)
        except (OSError, subprocess.CalledProcessError) as exc:
            return [{"tool": "direct", "engine": "", "error": f"the bare job fails: {exc}"}]
        tools = [("direct", ""), *((t, "") for t in a.peers)]
        tools += [("ringrift", e) for e in a.engines]
        rows = []
        for tool, engine in tools:
            db = None
            if tool == "ringrift" and engine == "postgres":
                assert self.pg is not None
                db = self.pg.new_database("rrc_contention")
            state = self.fresh(f"contention-{tool}-{engine}")
            load = round(os.getloadavg()[0], 2)
            with environ(
                BENCH_COORD_DB=db,
                XDG_STATE_HOME=str(state),  # a PostgreSQL run's halt file, never the caller's
                RINGRIFT_COORD_SET=self.base_env()["RINGRIFT_COORD_SET"],
            ):
                row = contention.run_tool(tool, h, job_s)
            row["engine"] = engine
            row["loadavg_1m"] = load
            if "error" in row and self.missing(tool):
                row["skipped"] = row.pop("error")
            rows.append(row)
        flock = next((r for r in rows if r["tool"] == "flock" and "completed" in r), None)
        for r in rows:
            if "completed" not in r:
                continue
            r["x_flock_overhead"] = _ratio(
                r["overhead_ms_per_job"], flock["overhead_ms_per_job"] if flock else None
            )
            r["x_flock_jobs_per_s"] = _ratio(
                r["jobs_per_s"], flock["jobs_per_s"] if flock else None
            )
            r["mean_busy_share"] = round(r["mean_concurrency"] / a.limit, 3)
        return rows

    # ------------------------------------------------------------------------------ 4
    def idle_rows(self) -> list[dict[str, Any]]:
        a = self.a
        tools = [("ringrift", e) for e in a.engines] + [(t, "") for t in a.peers]
        rows = []
        for tool, engine in tools:
            row: dict[str, Any] = {"tool": tool, "engine": engine, "waiters": a.waiters}
            row["loadavg_1m"] = round(os.getloadavg()[0], 2)
            reason = self.missing(tool)
            if reason:
                row["skipped"] = reason
            else:
                try:
                    row.update(self.idle_one(tool, engine or "sqlite"))
                except RuntimeError as exc:
                    row["error"] = str(exc)
            rows.append(row)
        return rows

    def idle_one(self, tool: str, engine: str) -> dict[str, Any]:
        a = self.a
        prefix, env = self.wrapper(tool, engine, 1)
        marks = self.fresh(f"idle-marks-{tool}-{engine}")
        procs: list[subprocess.Popen[bytes]] = []

        def start(argv: list[str]) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(proc)
            return proc

        try:
            held = marks / "holder"
            holder = start(prefix + ["sh", "-c", HOLD_JOB, "sh", str(held)])
            deadline = time.monotonic() + 60
            while not held.exists():
                if holder.poll() is not None:
                    raise RuntimeError(f"the holder exited {holder.returncode} before its job ran")
                if time.monotonic() > deadline:
                    raise RuntimeError("the holder's job did not start in 60 s")
                time.sleep(0.05)
            waiters = [
                start(prefix + ["sh", "-c", WAITER_JOB, "sh", str(marks / f"waiter-{i}")])
                for i in range(a.waiters)
            ]
            pids = [p.pid for p in waiters]
            settled = self.settle(pids)
            # on PostgreSQL the server's backends answer the waiters too: measured apart
            server = [self.pg.server.pid] if engine == "postgres" and self.pg else []
            s0 = _common.tree_cpu_seconds(server)
            t0, c0 = time.monotonic(), _common.tree_cpu_seconds(pids)
            time.sleep(a.idle_seconds)
            t1, c1 = time.monotonic(), _common.tree_cpu_seconds(pids)
            s1 = _common.tree_cpu_seconds(server)
            ran = sorted(p.name for p in marks.iterdir() if p.name.startswith("waiter-"))
            gone = [p.returncode for p in waiters if p.poll() is not None]
            window = t1 - t0
            return {
                "seconds": round(window, 2),
                "settle_s": round(settled, 2),
                "cpu_s": round(c1 - c0, 3),
                "cpu_pct_of_core": round((c1 - c0) / window * 100, 2),
                "server_cpu_pct_of_core": (round((s1 - s0) / window * 100, 2) if server else None),
                "started_during_hold": len(ran),
                "exited_during_hold": len(gone),
                "limit_ok": not ran,
            }
        finally:
            _stop(procs)

    def settle(self, pids: list[int]) -> float:
        """Wait --settle seconds, then until the waiters' CPU rate over one second is steady
        (within 25 % or 0.5 % of a core of the second before), at most --settle-max seconds
        more: what their interpreters spend starting is not waiting."""
        t_start = time.monotonic()
        time.sleep(self.a.settle)
        last = None
        stop = time.monotonic() + self.a.settle_max
        c = _common.tree_cpu_seconds(pids)
        while time.monotonic() < stop:
            time.sleep(1.0)
            c2 = _common.tree_cpu_seconds(pids)
            rate, c = c2 - c, c2
            if last is not None and abs(rate - last) <= max(0.25 * last, 0.005):
                break
            last = rate
        return time.monotonic() - t_start

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group we started, then SIGKILL what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except OSError:
                pass
        end = time.monotonic() + wait
        for p in live:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs:  # the job a wrapper started is in the same group: killpg reached it
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


def _ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or base <= 0:
        return None
    return round(value / base, 2)


# ------------------------------------------------------------------------- goals, tables
def goals(doc: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Each goal per engine; checked (``--check``) on SQLite only."""

    def find(rows: list[dict[str, Any]], engine: str) -> dict[str, Any]:
        return next((r for r in rows if r["tool"] == "ringrift" and r["engine"] == engine), {})

    out = []
    for engine in doc["engines"]:
        checked = engine == "sqlite"
        decision = find(doc.get("decision") or [], engine)
        busy = find(doc.get("contention") or [], engine)
        idle = find(doc.get("idle") or [], engine)
        for name, measured, value, goal, kind in (
            ("can-spawn x python -c pass", "decision" in doc, decision.get("x_python"),
             GOAL_CAN_SPAWN, "<="),
            ("overhead per job x flock", "contention" in doc, busy.get("x_flock_overhead"),
             GOAL_OVERHEAD, "<="),
            (f"mean busy slots of {limit}", "contention" in doc, busy.get("mean_concurrency"),
             round(GOAL_BUSY * limit, 2), ">="),
            ("idle waiters % of one core", "idle" in doc, idle.get("cpu_pct_of_core"),
             GOAL_IDLE_PCT, "<"),
        ):  # fmt: skip
            if not measured:
                continue
            ok = None
            if isinstance(value, int | float):
                ok = {"<=": value <= goal, ">=": value >= goal, "<": value < goal}[kind]
            out.append(
                {
                    "goal": name,
                    "engine": engine,
                    "value": value,
                    "target": f"{kind} {goal:g}",
                    "ok": ok,
                    "checked": checked,
                }
            )
    return out


def violations(doc: dict[str, Any], limit: int, n_jobs: int) -> tuple[list[str], list[str]]:
    """(limits exceeded, runs that failed)."""
    over: list[str] = []
    out: list[str] = []
    for r in doc.get("contention") or []:
        if "completed" not in r:
            if "error" in r:
                out.append(f"contention {r['tool']} {r['engine']}: {r['error']}".strip())
            continue
        label = f"{r['tool']}{' ' + r['engine'] if r['engine'] else ''}"
        if r["max_concurrent"] > limit:
            over.append(f"{label}: {r['max_concurrent']} jobs ran at once, over the limit {limit}")
        if r["failed"] or r["completed"] != n_jobs:
            out.append(f"{label}: {r['failed']} jobs failed, {r['completed']}/{n_jobs} completed")
    for r in doc.get("idle") or []:
        label = f"{r['tool']}{' ' + r['engine'] if r['engine'] else ''}"
        if "error" in r:
            out.append(f"idle {label}: {r['error']}")
        elif r.get("started_during_hold"):
            over.append(
                f"idle {label}: {r['started_during_hold']} waiters started while the only "
                "slot was held"
            )
    for section in ("decision", "wrapped"):
        for r in doc.get(section) or []:
            if "error" in r:
                out.append(f"{section} {r['tool']} {r['engine']}: {r['error']}")
    return over, out


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec) if spec else str(value)


def render(doc: dict[str, Any]) -> str:
    m, p = doc["machine"], doc["params"]
    lines = [
        f"# ringrift-coord against its peers, {m['date']}",
        f"# machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; Python {m['python']}, SQLite {m['sqlite']}"
        + (f", PostgreSQL {doc['postgresql']}" if doc.get("postgresql") else "")
        + (f", psycopg {doc['psycopg']}" if doc.get("psycopg") else ""),
        f"# load average (1/5/15 min): {' / '.join(map(str, m['loadavg']))} at the start, "
        f"{' / '.join(map(str, doc['loadavg_end']))} at the end; {doc['elapsed_s']:.0f} s",
        f"# ringrift-coord: {doc['exe']}",
    ]
    for note in doc["notes"]:
        lines.append(f"# note: {note}")

    def load(r: dict[str, Any]) -> str:
        return _fmt(r.get("loadavg_1m"), ".1f")

    def label(r: dict[str, Any]) -> str:
        return f"{r['tool']}{' (' + r['engine'] + ')' if r['engine'] else ''}"

    for section, title in (
        ("decision", "1. One admission decision"),
        ("wrapped", "2. One wrapped short job"),
    ):
        rows = doc.get(section)
        if not rows:
            continue
        lines += [
            "",
            f"{title}: median of {p['runs']} runs ({p['warmup']} warm-up), rows interleaved",
            f"{'tool':22} {'median ms':>10} {'min ms':>8} {'x python':>9} {'x flock':>8}  command",
        ]
        for r in rows:
            if "median_ms" not in r:
                lines.append(f"{label(r):22} {r.get('skipped') or r.get('error')}")
                continue
            lines.append(
                f"{label(r):22} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} "
                f"{_fmt(r['x_python'], '.2f'):>9} {_fmt(r['x_flock'], '.2f'):>8}  {r['command']}"
            )
    rows = doc.get("contention")
    if rows:
        job = next((r.get("job_s") for r in rows if r.get("job_s")), None)
        lines += [
            "",
            f"3. Contention: {p['launchers']} launchers x {p['jobs']} jobs through {p['limit']} "
            f"slots, each waiting for a slot (python job, {p['sleep_ms']:g} ms sleep, bare job "
            f"{_fmt(job and round(job * 1e3, 1))} ms)",
            f"{'tool':22} {'max conc':>8} {'jobs/s':>7} {'wall s':>7} {'ovh ms/job':>10} "
            f"{'x flock':>8} {'mean busy':>9} {'failed':>6} {'load':>5}",
        ]
        for r in rows:
            if "completed" not in r:
                lines.append(f"{label(r):22} {r.get('skipped') or r.get('error')}")
                continue
            conc = f"{r['max_concurrent']}{'' if r['limit_ok'] else '!'}"
            lines.append(
                f"{label(r):22} {conc:>8} {r['jobs_per_s']:>7} {r['wall_s']:>7.2f} "
                f"{r['overhead_ms_per_job']:>10.1f} {_fmt(r['x_flock_overhead'], '.2f'):>8} "
                f"{r['mean_concurrency']:>9.2f} {r['failed']:>6} {load(r):>5}"
            )
    rows = doc.get("idle")
    if rows:
        lines += [
            "",
            f"4. Idle waiters: {p['waiters']} waiters blocked {p['idle_seconds']:g} s behind a "
            "held slot (limit 1)",
            f"{'tool':22} {'cpu s':>7} {'% of a core':>11} {'server %':>8} {'started':>8} "
            f"{'settle s':>8} {'load':>5}",
        ]
        for r in rows:
            if "cpu_s" not in r:
                lines.append(f"{label(r):22} {r.get('skipped') or r.get('error')}")
                continue
            lines.append(
                f"{label(r):22} {r['cpu_s']:>7.2f} {r['cpu_pct_of_core']:>11.2f} "
                f"{_fmt(r.get('server_cpu_pct_of_core'), '.2f'):>8} "
                f"{r['started_during_hold']:>8} {r['settle_s']:>8.1f} {load(r):>5}"
            )
    if doc["goals"]:
        lines += ["", "Goals (checked on SQLite; PostgreSQL reported):"]
        for g in doc["goals"]:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[g["ok"]]
            if not g["checked"]:
                verdict = f"({verdict}, not checked)"
            lines.append(
                f"  {g['goal']:30} {g['engine']:9} {_fmt(g['value']):>8} {g['target']:>7}  "
                f"{verdict}"
            )
    lines.append("")
    if doc["violations"]:
        lines += [f"LIMIT OR RUN FAILURE: {v}" for v in doc["violations"]]
    else:
        lines.append(
            "every tool kept to its limit (max concurrency <= slots; no waiter started while "
            "the slot was held) and no job failed"
        )
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    """The README's table: one column per tool, one row per figure, ratios in brackets."""
    p = doc["params"]
    cols = [("ringrift", e) for e in doc["engines"]] + [(t, "") for t in p["peers"]]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    heads = [
        f"ringrift {names[e]}" if t == "ringrift" else {"sem": "GNU sem"}.get(t, t) for t, e in cols
    ]

    def pick(section: str, tool: str, engine: str) -> dict[str, Any]:
        rows = doc.get(section) or []
        return next((r for r in rows if r["tool"] == tool and r["engine"] == engine), {})

    def cell(value: Any, ratio: Any = None, spec: str = ".1f", rspec: str = ".2f") -> str:
        if not isinstance(value, int | float):
            return "–"
        text = format(value, spec)
        return text + (f" ({ratio:{rspec}}×)" if isinstance(ratio, int | float) else "")

    base = pick("decision", "python -c pass", "") or pick("wrapped", "python -c pass", "")
    direct = pick("contention", "direct", "")
    lim = p["limit"]
    lines = [
        "| row | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    spec: list[tuple[str, str, Any]] = []
    if doc.get("decision"):
        spec.append(
            (
                f"1. decision, median ms (× `python -c pass` {cell(base.get('median_ms'))} ms)",
                "decision",
                lambda r: cell(r.get("median_ms"), r.get("x_python")),
            )
        )
    if doc.get("wrapped"):
        spec.append(
            (
                "2. wrapped `true`, median ms (× `python -c pass`)",
                "wrapped",
                lambda r: cell(r.get("median_ms"), r.get("x_python")),
            )
        )
    if doc.get("contention"):
        spec += [
            (
                f"3. max concurrency (limit {lim})",
                "contention",
                lambda r: cell(r.get("max_concurrent"), spec="d"),
            ),
            (
                f"3. jobs/s (direct, no wrapper: {_fmt(direct.get('jobs_per_s'))})",
                "contention",
                lambda r: cell(r.get("jobs_per_s")),
            ),
            (
                "3. overhead ms per job (× flock)",
                "contention",
                lambda r: cell(r.get("overhead_ms_per_job"), r.get("x_flock_overhead")),
            ),
            (
                f"3. mean busy slots of {lim}",
                "contention",
                lambda r: cell(r.get("mean_concurrency"), spec=".2f"),
            ),
        ]
    if doc.get("idle"):
        spec.append(
            (
                f"4. {p['waiters']} idle waiters, % of one core (PostgreSQL: + its server's)",
                "idle",
                lambda r: (
                    cell(r.get("cpu_pct_of_core"))
                    + (
                        f" (+ {r['server_cpu_pct_of_core']:.1f})"
                        if isinstance(r.get("server_cpu_pct_of_core"), int | float)
                        else ""
                    )
                ),
            )
        )
    for title, section, fmt in spec:
        lines.append(f"| {title} | " + " | ".join(fmt(pick(section, t, e)) for t, e in cols) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.from_json:
        try:
            with open(a.from_json) as handle:
                saved = json.load(handle)
            # a document this script wrote, or refused here rather than half printed
            verdict = saved["goals_met"]
            if not isinstance(saved["violations"], list) or not isinstance(verdict, bool):
                raise ValueError("no violations list or goals_met verdict")
            render(saved)
            markdown(saved)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(
                f"compare.py: {a.from_json}: not a compare.py --json document: {exc}",
                file=sys.stderr,
            )
            return 2
        return report(saved, a)
    bench = Bench(a)
    if not os.access(bench.exe, os.X_OK):
        print(f"compare.py: no ringrift-coord next to {sys.executable}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server, remove files
    t0 = time.monotonic()
    doc: dict[str, Any] = {
        "machine": _common.machine(),
        "exe": bench.exe,
        "params": {
            k: getattr(a, k)
            for k in (
                "quick",
                "runs",
                "warmup",
                "launchers",
                "jobs",
                "limit",
                "sleep_ms",
                "waiters",
                "idle_seconds",
                "settle",
                "engines",
                "peers",
                "sections",
            )
        },  # fmt: skip
    }
    if doc["machine"]["editable_install"]:
        bench.notes.append(
            "an editable install's import hook runs in every interpreter start, python -c "
            "pass included: the x python ratios are understated (use pip install .)"
        )
    for tool in a.peers:
        reason = bench.missing(tool)
        if reason:
            bench.notes.append(f"{reason}: skipped")
    try:
        # the harness runs `ringrift-coord` from PATH: this interpreter's, never another one
        with environ(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"):
            with _maybe_postgres(bench) as pg:
                if pg is not None:
                    doc["postgresql"], doc["psycopg"] = pg.version, pg.psycopg
                doc["engines"] = [e for e in a.engines if e == "sqlite" or pg is not None]
                bench.a.engines = doc["engines"]
                took = doc["section_s"] = {}
                t = time.monotonic()
                doc.update(bench.startup_rows())
                took["decision+wrapped"] = round(time.monotonic() - t, 1)
                if "contention" in a.sections:
                    t = time.monotonic()
                    doc["contention"] = bench.contention_rows()
                    took["contention"] = round(time.monotonic() - t, 1)
                if "idle" in a.sections:
                    t = time.monotonic()
                    doc["idle"] = bench.idle_rows()
                    took["idle"] = round(time.monotonic() - t, 1)
    except KeyboardInterrupt:
        return 130
    finally:
        bench.close()
    doc["notes"] = bench.notes
    doc["loadavg_end"] = _common.loadavg()
    doc["elapsed_s"] = round(time.monotonic() - t0, 1)
    doc["goals"] = goals(doc, a.limit)
    over, failed = violations(doc, a.limit, a.launchers * a.jobs)
    doc["limit_ok"] = not over
    doc["violations"] = over + failed
    doc["goals_met"] = not [g for g in doc["goals"] if g["checked"] and g["ok"] is False]
    return report(doc, a)


def report(doc: dict[str, Any], a: argparse.Namespace) -> int:
    """Print DOC as asked; the exit status of its run."""
    if a.json:
        print(json.dumps(doc, indent=2))
    elif a.markdown:
        print(markdown(doc))
    else:
        print(render(doc))
    if doc["violations"]:
        return 1
    return 1 if a.check and not doc["goals_met"] else 0


@contextmanager
def _maybe_postgres(bench: Bench) -> Iterator[_common.Postgres | None]:
    if "postgres" not in bench.a.engines:
        yield None
        return
    reason = _common.postgres_missing()
    if reason:
        bench.notes.append(f"PostgreSQL skipped: {reason}")
        yield None
        return
    with ExitStack() as stack:
        try:
            bench.pg = stack.enter_context(_common.postgres())
        except Exception as exc:  # the server did not start: say so, measure SQLite
            bench.notes.append(f"PostgreSQL skipped: {type(exc).__name__}: {exc}")
        yield bench.pg


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
