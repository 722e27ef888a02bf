#!/usr/bin/env python3
"""A soak: N simulated nodes x W workers claiming, running and releasing slots through the real
CLI on one shared store, with halts, breaker trips and wrapper kills mixed in, and invariants
checked throughout by a separate reader and at the end.

Each simulated node has its own node id (``RINGRIFT_NODE_ID``), its own state directory
(``RINGRIFT_COORDINATOR_DIR``) and its own host name (``RINGRIFT_COORD_HOST``: a holder on
another node is judged by its lease, as across real hosts); all share ONE store: one SQLite
file, or one PostgreSQL database (a throw-away server from ``tests/pgserver.py`` unless
``--pg-url`` is given). Small limits make queues form.

Each worker loops over a mix of the commands operators run, through the ``ringrift-coord``
next to this interpreter: ``run TYPE --wait -q -- JOB`` (60 %; the job writes its start
time, sleeps 0.05-0.4 s, now and then 2-3 s, and exits 1 in 3 % of runs, which feeds the
breakers), ``can-spawn TYPE`` (25 %) and ``register`` + ``unregister`` (15 %). Besides the
CLI workers, each node runs ``--loops`` in-process launch loops (``TaskCoordinator.acquire``
then release, as a node's launcher daemon would): their decision latency is the one the
goal is about. On a timer, a chaos thread halts and unhalts (the whole store, one node, one
type), trips a breaker (``breakers record-failure`` until it opens, then ``breakers
reset``), and SIGKILLs a ``run`` wrapper whose job has started (the job lives on in its own
process group; its slot must be reaped once it ends). Like an operator, it tries a command
that exits 75 ("nothing was done, try again") again, for up to a minute; the workers' busy
``unregister`` likewise. Every exit 75 is counted (``exit75:COMMAND``).

Invariants, checked every ~0.5 s by a monitor on its own read connection and at the end:
never more running than a per-node or cluster limit; ``task_counts`` (when the store has it)
equal to ``COUNT(*)`` and never negative; no negative breaker counts; after the run and a
final ``tasks reap`` on every simulated host: no running task and no waiter left, every
admitted task id (the decision log's) in the history exactly once, no history row without
an admission, every id ``register`` printed among them; SQLite ``PRAGMA quick_check`` ok;
zero exit-75 "busy" exits of ``run --wait``; zero tracebacks. Exit 1 on any violation.

Latencies (ms; p50 / p99 / max): the wall time of each ``can-spawn`` and ``register`` (a
whole command: interpreter start, imports, connection, decision), the wait of each ``run
--wait`` (request to the job's first instruction), and each in-process decision. Goal on
PostgreSQL with 28 concurrent launch loops: in-process decision p99 < 50 ms.

    python bench/soak.py [--engine sqlite|postgres|both] [--seconds 600] [--nodes 28]
        [--workers 4] [--loops 1] [--chaos-every 4] [--pg-url URL] [--json] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TYPES = ("selfplay", "training", "evaluation")
TYPE_WEIGHTS = (0.75, 0.10, 0.15)
JOB = 'printf %s "$EPOCHREALTIME" > "$1"; sleep "$2"; exit "$3"'


def limits_for(nodes: int) -> dict[str, dict[str, int | None]]:
    """Small limits, so that queues form per node and across the cluster."""
    return {
        "selfplay": {"per_node": 2, "cluster": max(2, (nodes * 2 * 3) // 4)},
        "training": {"per_node": 1, "cluster": max(1, min(3, nodes))},
        "evaluation": {"per_node": 1, "cluster": None},
    }


def config_text(nodes: int) -> str:
    limits = limits_for(nodes)

    def val(v: int | None) -> str:
        return "null" if v is None else str(v)

    lines = ["task_limits:"]
    for t, lim in limits.items():
        lines.append(f"  {t}: {{per_node: {val(lim['per_node'])}, cluster: {val(lim['cluster'])}}}")
    lines += [
        "rate_limits:",
        "  selfplay: {per_minute: null}",
        "  training: {per_minute: null}",
        "circuit_breaker: {failure_threshold: 3, window: 60, recovery_timeout: 3,",
        "                  half_open_trials: 1, success_threshold: 1}",
        "run: {kill_grace: 2}",
        "resources: {live_host: false}",
        "durations: {selfplay: 1, training: 2, evaluation: 1}",
        "",
    ]
    return "\n".join(lines)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def summary_ms(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": None if not values else round(statistics.median(values) * 1e3, 1),
        "p99_ms": None if not values else round(pct(values, 0.99) * 1e3, 1),  # type: ignore[operator]
        "max_ms": None if not values else round(max(values) * 1e3, 1),
    }


# --------------------------------------------------------------------------- in-process loop


def launch_loop(args: dict) -> int:
    """One in-process launch loop (a child process): acquire, hold, release until the
    deadline; writes its latencies and counts as JSON to ``args['out']``."""
    os.environ.update(args.get("env", {}))
    sys.path.insert(0, str(ROOT))
    from ringrift_coord.context import Context
    from ringrift_coord.errors import CoordError
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    rng = random.Random(args["seed"])
    ctx = Context.open()
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    lat: list[float] = []
    result = {"admitted": 0, "denied": 0, "busy": 0, "errors": [], "ids": []}
    try:
        try:
            coord.check("selfplay", args["node"])  # connect before measuring
        except CoordError as exc:  # a busy store: the loop counts what it meets from now on
            result["errors" if exc.exit_code != 75 else "busy_warmup"] = [str(exc)]
        while time.time() < args["deadline"]:
            ttype = rng.choices(TYPES, TYPE_WEIGHTS)[0]
            t0 = time.perf_counter()
            try:
                d = coord.acquire(ttype, args["node"], holder=me, source="api")
            except CoordError as exc:  # a busy store (exit 75) is counted, others kept
                if exc.exit_code == 75:
                    result["busy"] += 1  # type: ignore[operator]
                else:
                    result["errors"].append(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
                time.sleep(0.2)
                continue
            lat.append(time.perf_counter() - t0)
            if d.allowed:
                result["admitted"] += 1  # type: ignore[operator]
                result["ids"].append(d.task_id)  # type: ignore[attr-defined]
                time.sleep(rng.uniform(0.05, 0.4))
                for attempt in range(60):  # a busy store: retried, as `run` retries a release
                    try:
                        coord.unregister_task(d.task_id, token=d.lease_token, exit_code=0)
                        break
                    except CoordError as exc:
                        if exc.exit_code != 75 or attempt == 59:
                            result["errors"].append(f"release: {type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
                            break
                        result["busy"] += 1  # type: ignore[operator]
                        time.sleep(0.5)
            else:
                result["denied"] += 1  # type: ignore[operator]
                time.sleep(rng.uniform(0.1, 0.5))
    finally:
        result["lat"] = lat
        with open(args["out"], "w") as handle:
            json.dump(result, handle)
        ctx.close()
    return 0


# --------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, engine: str, db: str, a: argparse.Namespace, root: str) -> None:
        self.engine, self.db, self.a, self.root = engine, db, a, root
        self.exe = a.exe or os.path.join(os.path.dirname(sys.executable), "ringrift-coord")
        self.limits = limits_for(a.nodes)
        self.cfg = os.path.join(root, "soak.yaml")
        Path(self.cfg).write_text(config_text(a.nodes))
        self.jobs = os.path.join(root, "jobs")
        os.makedirs(self.jobs)
        self.nodes = [f"soak-node-{i:02d}" for i in range(a.nodes)]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.lat: dict[str, list[float]] = {"can-spawn": [], "register": [], "run-wait": []}
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []  # invariant violations
        self.notes: list[str] = []  # unexpected but not invariants (samples)
        self.registered: set[str] = set()
        self.running: dict[int, tuple[subprocess.Popen, str]] = {}  # run wrappers by pid
        self.killed: set[int] = set()
        self.max_seen: dict[str, int] = {}
        self.monitor_checks = 0
        self.rng = random.Random(a.seed)

    # -- helpers -------------------------------------------------------------------------

    def env(self, i: int | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGRIFT")}
        name = "soak-control" if i is None else self.nodes[i]
        state = os.path.join(self.root, "state", name)
        os.makedirs(state, mode=0o700, exist_ok=True)
        env.update(
            RINGRIFT_COORDINATOR_DIR=state,
            RINGRIFT_COORD_DB=self.db,
            RINGRIFT_COORD_CONFIG=self.cfg,
            RINGRIFT_NODE_ID=name,
            RINGRIFT_COORD_HOST=f"{name}-host",
            RINGRIFT_COORD_SET="resources.live_host=false",
            USER=env.get("USER", "soak"),
        )
        return env

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def note(self, text: str) -> None:
        with self.lock:
            if len(self.notes) < 50:
                self.notes.append(text)

    def look_at(self, what: str, rc: int, err: str) -> None:
        """Tracebacks and busy exits, whatever the command."""
        if "Traceback" in err:
            self.count("tracebacks")
            self.problem(f"traceback from {what} (exit {rc}): {err.strip()[-300:]}")
        if rc == 75:
            self.count(f"exit75:{what}")

    def cli(self, i: int | None, *argv: str) -> tuple[int, str, str, float]:
        timeout = self.a.command_timeout
        t0 = time.perf_counter()
        p = subprocess.run(
            [self.exe, *argv],
            env=self.env(i),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        wall = time.perf_counter() - t0
        self.look_at(next((a for a in argv if not a.startswith("-")), ""), p.returncode, p.stderr)
        return p.returncode, p.stdout, p.stderr, wall

    # -- workers -------------------------------------------------------------------------

    def worker(self, i: int, w: int) -> None:
        rng = random.Random(self.rng.random() + i * 1000 + w)
        env = self.env(i)
        while not self.stop.is_set():
            ttype = rng.choices(TYPES, TYPE_WEIGHTS)[0]
            r = rng.random()
            try:
                if r < 0.60:
                    self.run_wait(i, env, ttype, rng)
                elif r < 0.85:
                    rc, _, err, wall = self.cli(i, "can-spawn", ttype, "-q")
                    self.count(f"can-spawn:{rc}")
                    if rc in (0, 1):
                        with self.lock:
                            self.lat["can-spawn"].append(wall)
                    elif rc != 75:
                        self.note(f"can-spawn exit {rc}: {err.strip()[:200]}")
                else:
                    self.register_cycle(i, ttype, rng)
            except subprocess.TimeoutExpired as exc:
                self.problem(f"a command ran past --command-timeout: {exc.cmd[1:3]}")
            time.sleep(rng.uniform(0.0, 0.2))

    def run_wait(self, i: int, env: dict[str, str], ttype: str, rng: random.Random) -> None:
        jobfile = os.path.join(self.jobs, f"{i}-{os.urandom(6).hex()}")
        secs = rng.uniform(2.0, 3.0) if rng.random() < 0.05 else rng.uniform(0.05, 0.4)
        code = 1 if rng.random() < 0.03 else 0
        t0 = time.time()
        argv = [self.exe, "run", ttype, "--wait", "-q", "--", "bash", "-c", JOB, "job"]
        p = subprocess.Popen(
            [*argv, jobfile, f"{secs:.3f}", str(code)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        with self.lock:
            self.running[p.pid] = (p, jobfile)
        try:
            _, err = p.communicate(timeout=self.a.seconds + 600)
        finally:
            with self.lock:
                self.running.pop(p.pid, None)
        rc = p.returncode
        self.look_at("run --wait", rc, err)
        killed = p.pid in self.killed
        self.count("run:killed" if killed else f"run:{rc}")
        if rc == 75:
            self.problem(f"run --wait exited 75: {err.strip()[:200]}")
        elif not killed and rc not in (0, 1):
            self.note(f"run exit {rc}: {err.strip()[:200]}")
        try:
            started = float(Path(jobfile).read_text().replace(",", "."))
        except (OSError, ValueError):
            return
        with self.lock:
            self.lat["run-wait"].append(max(0.0, started - t0))

    def register_cycle(self, i: int, ttype: str, rng: random.Random) -> None:
        rc, out, err, wall = self.cli(i, "register", ttype, "--pid", str(os.getpid()), "-q")
        self.count(f"register:{rc}")
        if rc in (0, 1):
            with self.lock:
                self.lat["register"].append(wall)
        if rc != 0:
            if rc not in (1, 75):
                self.note(f"register exit {rc}: {err.strip()[:200]}")
            return
        task_id = out.strip()
        with self.lock:
            self.registered.add(task_id)
        time.sleep(rng.uniform(0.05, 0.3))
        for _ in range(20):  # a busy store is retried: the slot must be released
            rc, _, err, _ = self.cli(i, "unregister", task_id, "--exit-code", "0")
            self.count(f"unregister:{rc}")
            if rc != 75:
                break
            time.sleep(0.5)
        if rc != 0:
            self.problem(f"unregister {task_id} exit {rc}: {err.strip()[:200]}")

    # -- chaos ---------------------------------------------------------------------------

    def chaos(self) -> None:
        rng = random.Random(self.rng.random())
        actions = ("halt", "halt_node", "halt_type", "breaker", "kill", "kill")
        while not self.stop.wait(rng.uniform(0.5, 1.5) * self.a.chaos_every):
            action = rng.choice(actions)
            i = rng.randrange(len(self.nodes))
            node, ttype = self.nodes[i], rng.choice(TYPES)
            try:
                if action == "halt":
                    self.control("halt", "--reason", "soak chaos", "--ttl", "60")
                    self.stop.wait(rng.uniform(0.5, 2.0))
                    self.control("unhalt")
                elif action == "halt_node":
                    self.control("halt", "--node", node, "--reason", "soak chaos")
                    self.stop.wait(rng.uniform(0.5, 2.0))
                    self.control("unhalt", "--node", node)
                elif action == "halt_type":
                    self.control("halt", "--type", ttype, "--reason", "soak chaos", "--ttl", "60")
                    self.stop.wait(rng.uniform(0.5, 2.0))
                    self.control("unhalt", "--type", ttype)
                elif action == "breaker":
                    self.trip(node, ttype)
                else:
                    self.kill_one(rng)
            except subprocess.TimeoutExpired as exc:
                self.problem(f"a control command hung: {exc.cmd[1:3]}")
            self.count(f"chaos:{action}")

    def control(self, *argv: str) -> str:
        """An operator's command: 75 ("nothing was done, try again") is tried again, as the
        exit code asks and as ``unregister`` is (each 75 is counted); anything else that is
        not 0, or 75 for a whole minute, is a violation."""
        deadline = time.monotonic() + 60
        while True:
            rc, out, err, _ = self.cli(None, *argv)
            if rc != 75 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if rc != 0:
            self.problem(f"control {' '.join(argv)} exit {rc}: {err.strip()[:200]}")
        return out

    def trip(self, node: str, ttype: str) -> None:
        """Record failures until the breaker opens, hold it open a moment, reset it."""
        for _ in range(6):
            if self.stop.is_set():
                break  # the soak ends: reset what was recorded, leave the store clean
            out = self.control(
                "--json",
                "breakers",
                "record-failure",
                "--type",
                ttype,
                "--node",
                node,
                "--reason",
                "soak",
            )
            # the state the recorded failure left, in the same transaction: a later `breakers
            # list` can come after the 3 s recovery and a successful trial closed it again
            # (a command takes seconds under the soak's load)
            try:
                state = json.loads(out)["state"]
            except (ValueError, KeyError, TypeError):
                state = None
            if state == "open":
                self.count("breaker_opened")
                break
        else:
            if not self.stop.is_set():
                self.problem(f"breaker {node}/{ttype} did not open after 6 recorded failures")
        self.stop.wait(1.0)
        self.control("breakers", "reset", "--node", node, "--type", ttype)

    def kill_one(self, rng: random.Random) -> None:
        with self.lock:
            started = [
                (pid, p) for pid, (p, jobfile) in self.running.items() if os.path.exists(jobfile)
            ]
        if not started:
            return
        pid, p = rng.choice(started)
        if p.poll() is None:
            with self.lock:
                self.killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                self.count("wrappers_killed")
            except ProcessLookupError:
                pass

    # -- monitor -------------------------------------------------------------------------

    def connect(self):  # noqa: ANN201
        if self.engine == "sqlite":
            import sqlite3

            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
            conn.isolation_level = None
            return conn
        import psycopg

        return psycopg.connect(self.db, autocommit=True)

    def snapshot(self, conn, sql_list: list[str]) -> list[list[tuple]]:  # noqa: ANN001
        """Run the queries in one read transaction (one consistent snapshot)."""
        if self.engine == "sqlite":
            cur = conn.cursor()
            cur.execute("BEGIN")
            try:
                return [cur.execute(sql).fetchall() for sql in sql_list]
            finally:
                cur.execute("ROLLBACK")
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            out = [conn.execute(sql).fetchall() for sql in sql_list]
        return out

    def has_counts(self, conn) -> bool:  # noqa: ANN001
        sql = (
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'task_counts'"
            if self.engine == "sqlite"
            else "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'task_counts'"
        )
        return bool(self.snapshot(conn, [sql])[0][0][0])

    def check_state(self, conn, counts_table: bool, when: str) -> None:  # noqa: ANN001
        queries = [
            "SELECT task_type, node, COUNT(*) FROM tasks GROUP BY task_type, node",
            "SELECT COUNT(*) FROM breakers WHERE trials_in_flight < 0 OR trial_successes < 0",
        ]
        if counts_table:
            queries.append("SELECT task_type, n FROM task_counts")
        found = self.snapshot(conn, queries)
        per_type: dict[str, int] = {}
        for ttype, node, n in found[0]:
            per_type[ttype] = per_type.get(ttype, 0) + n
            lim = self.limits.get(ttype, {}).get("per_node")
            if lim is not None and n > lim:
                self.problem(f"{when}: {n} {ttype} running on {node} > per-node limit {lim}")
        for ttype, n in per_type.items():
            lim = self.limits.get(ttype, {}).get("cluster")
            if lim is not None and n > lim:
                self.problem(f"{when}: {n} {ttype} running > cluster limit {lim}")
            with self.lock:
                self.max_seen[ttype] = max(self.max_seen.get(ttype, 0), n)
        if found[1][0][0]:
            self.problem(f"{when}: a breaker with a negative count")
        if counts_table:
            kept = {t: n for t, n in found[2]}
            if any(n < 0 for n in kept.values()):
                self.problem(f"{when}: a negative task count: {kept}")
            if {t: n for t, n in kept.items() if n} != per_type:
                self.problem(f"{when}: task_counts {kept} != running {per_type}")

    def monitor(self) -> None:
        conn = self.connect()
        counts_table = self.has_counts(conn)
        try:
            while not self.stop.wait(0.5):
                try:
                    self.check_state(conn, counts_table, f"t={time.time() - self.t0:.1f}s")
                    self.monitor_checks += 1
                except Exception as exc:  # a busy store: the next look will do
                    self.count("monitor_errors")
                    self.note(f"monitor: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict:
        a = self.a
        rc, _, err, _ = self.cli(None, "can-spawn", "selfplay", "-q")  # creates the store
        if rc not in (0, 1):
            raise RuntimeError(f"the store could not be created: {err.strip()}")
        self.t0 = time.time()
        deadline = self.t0 + a.seconds
        loops, loop_files = [], []
        for i in range(len(self.nodes)):
            for k in range(a.loops):
                out = os.path.join(self.root, f"loop-{i}-{k}.json")
                spec = {
                    "node": self.nodes[i],
                    "deadline": deadline,
                    "seed": self.rng.random(),
                    "out": out,
                }
                loops.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--_loop", json.dumps(spec)],
                        env=self.env(i),
                        stdin=subprocess.DEVNULL,
                    )
                )
                loop_files.append(out)
        threads = [
            threading.Thread(target=self.worker, args=(i, w), daemon=True)
            for i in range(len(self.nodes))
            for w in range(a.workers)
        ]
        side = [
            threading.Thread(target=self.monitor, daemon=True),
            threading.Thread(target=self.chaos, daemon=True),
        ]
        for t in threads + side:
            t.start()
        while time.time() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
            if not a.json and int(time.time() - self.t0) % 30 == 0:
                with self.lock:
                    done = sum(v for k, v in self.counts.items() if k.startswith("run:"))
                print(
                    f"  {self.engine}: {time.time() - self.t0:5.0f} s, {done} runs, "
                    f"{len(self.problems)} violation(s)",
                    file=sys.stderr,
                    flush=True,
                )
        self.stop.set()
        for t in side:
            t.join()  # the chaos thread lifts its halt and resets its breaker first
        end_by = time.time() + 180
        for t in threads:
            t.join(max(0.1, end_by - time.time()))
        stuck = [t for t in threads if t.is_alive()]
        if stuck:
            self.problem(f"{len(stuck)} worker(s) still busy 180 s after the end")
            with self.lock:
                for p, _ in self.running.values():
                    p.kill()
        loop_results = []
        for p, out in zip(loops, loop_files, strict=True):
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                self.problem("an in-process loop did not end")
            try:
                loop_results.append(json.loads(Path(out).read_text()))
            except (OSError, ValueError):
                self.problem(f"an in-process loop left no result ({out})")
        time.sleep(3.5)  # the orphans of killed wrappers end (jobs sleep at most 3 s)
        for i in [*range(len(self.nodes)), None]:
            rc, _, err, _ = self.cli(i, "tasks", "reap")
            if rc != 0:
                self.problem(f"final tasks reap exit {rc}: {err.strip()[:200]}")
        return self.final(loop_results)

    def final(self, loops: list[dict]) -> dict:
        conn = self.connect()
        try:
            counts_table = self.has_counts(conn)
            self.check_state(conn, counts_table, "end")
            q = self.snapshot(
                conn,
                [
                    "SELECT task_id FROM tasks",
                    "SELECT COUNT(*) FROM waiters",
                    "SELECT task_id FROM decisions WHERE allowed = 1 AND task_id IS NOT NULL",
                    "SELECT task_id, status FROM task_history",
                ],
            )
            if self.engine == "sqlite":
                check = conn.execute("PRAGMA quick_check").fetchall()
            else:
                check = [("n/a",)]
        finally:
            conn.close()
        left, waiters, admitted_rows, history = q
        if left:
            self.problem(f"end: {len(left)} task(s) still running after the final reap")
        if waiters[0][0]:
            self.problem(f"end: {waiters[0][0]} waiter(s) left in the queue")
        admitted = [r[0] for r in admitted_rows]
        hist: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for task_id, status in history:
            hist[task_id] = hist.get(task_id, 0) + 1
            statuses[status] = statuses.get(status, 0) + 1
        if len(set(admitted)) != len(admitted):
            self.problem("end: a task id admitted twice")
        dup = [t for t, n in hist.items() if n > 1]
        if dup:
            self.problem(f"end: {len(dup)} task id(s) with more than one history row: {dup[:3]}")
        lost = set(admitted) - set(hist)
        if lost:
            self.problem(
                f"end: {len(lost)} admitted task(s) with no history row: {sorted(lost)[:3]}"
            )
        extra = {t for t in hist if not t.startswith("recorded-")} - set(admitted)
        if extra:
            self.problem(f"end: {len(extra)} history row(s) never admitted: {sorted(extra)[:3]}")
        missing = self.registered - set(admitted)
        if missing:
            self.problem(f"end: {len(missing)} registered id(s) not in the decision log")
        loop_ids = {t for r in loops for t in r.get("ids", [])}
        if loop_ids - set(admitted):
            self.problem("end: an in-process admission not in the decision log")
        if check != [("ok",)] and self.engine == "sqlite":
            self.problem(f"end: PRAGMA quick_check: {check[:3]}")
        loop_lat = [x for r in loops for x in r.get("lat", [])]
        for r in loops:
            for e in r.get("errors", [])[:3]:
                self.note(f"loop: {e}")
        busy_wait = sum(v for k, v in self.counts.items() if k == "exit75:run --wait")
        decision = summary_ms(loop_lat)
        goal = None
        if self.engine == "postgres" and decision["p99_ms"] is not None:
            goal = decision["p99_ms"] < 50.0
        return {
            "engine": self.engine,
            "seconds": self.a.seconds,
            "nodes": self.a.nodes,
            "workers_per_node": self.a.workers,
            "loops_per_node": self.a.loops,
            "limits": self.limits,
            "monitor_checks": self.monitor_checks,
            "max_running_seen": self.max_seen,
            "admitted": len(admitted),
            "history_statuses": statuses,
            "quick_check": check[0][0] if check else None,
            "counts": dict(sorted(self.counts.items())),
            "busy_exits_run_wait": busy_wait,
            "tracebacks": self.counts.get("tracebacks", 0),
            "latency": {
                "decision_in_process": decision,
                "can-spawn_command": summary_ms(self.lat["can-spawn"]),
                "register_command": summary_ms(self.lat["register"]),
                "run_wait_to_job_start": summary_ms(self.lat["run-wait"]),
            },
            "loop_busy": sum(r.get("busy", 0) for r in loops),
            "loop_admitted": sum(r.get("admitted", 0) for r in loops),
            "pg_goal_p99_under_50ms": goal,
            "violations": self.problems,
            "notes": self.notes,
        }


def run_engine(engine: str, a: argparse.Namespace) -> dict:
    root = tempfile.mkdtemp(prefix=f"soak-{engine}-")
    os.chmod(root, 0o755)
    server = None
    try:
        if engine == "sqlite":
            db = os.path.join(root, "shared", "tasks.db")
            os.makedirs(os.path.dirname(db), mode=0o700)
        elif a.pg_url:
            db = a.pg_url
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            import pgserver

            bindir = pgserver.find_pg_bin()
            if bindir is None:
                raise RuntimeError("PostgreSQL binaries (initdb, postgres) not found")
            server = pgserver.PgServer(bindir)
            server.start()
            db = server.create_database("soak")
        return Soak(engine, db, a, root).run()
    finally:
        if server is not None:
            server.destroy()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--_loop"]:
        return launch_loop(json.loads(argv[1]))
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--nodes", type=int, default=28)
    p.add_argument("--workers", type=int, default=4, help="CLI workers per node")
    p.add_argument("--loops", type=int, default=1, help="in-process launch loops per node")
    p.add_argument("--chaos-every", type=float, default=4.0, help="seconds between faults (about)")
    p.add_argument(
        "--command-timeout",
        type=float,
        default=600.0,
        help="a command (other than run --wait) running longer than this is a violation",
    )
    p.add_argument("--pg-url", help="an existing PostgreSQL database (its tables get used)")
    p.add_argument("--exe", help="the ringrift-coord to run (default: next to this python)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.nodes < 1 or a.workers < 0 or a.loops < 0 or a.chaos_every <= 0:
        p.error("--seconds and --chaos-every must be > 0, --nodes >= 1, --workers/--loops >= 0")
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    engines = ["sqlite", "postgres"] if a.engine == "both" else [a.engine]
    load0 = os.getloadavg()[0]
    rows = []
    for engine in engines:
        try:
            rows.append(run_engine(engine, a))
        except Exception as exc:
            rows.append({"engine": engine, "violations": [f"{type(exc).__name__}: {exc}"]})
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_avg_1m_start": round(load0, 2),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "seed": a.seed,
        "rows": rows,
    }
    bad = any(r.get("violations") for r in rows)
    if a.json:
        print(json.dumps(doc, indent=1))
        return 1 if bad else 0
    print(
        f"# soak {doc['date']}, {doc['cores']} cores, load {doc['load_avg_1m_start']} -> "
        f"{doc['load_avg_1m_end']}, seed {a.seed}: {a.nodes} nodes x {a.workers} CLI workers "
        f"+ {a.loops} in-process loop(s) per node, {a.seconds:g} s per engine"
    )
    print(f"{'engine':<9} {'latency (ms)':<26} {'n':>6} {'p50':>8} {'p99':>8} {'max':>8}")
    for r in rows:
        for name, s in r.get("latency", {}).items():
            print(
                f"{r['engine']:<9} {name:<26} {s['n']:>6} {fmt(s['p50_ms']):>8} "
                f"{fmt(s['p99_ms']):>8} {fmt(s['max_ms']):>8}"
            )
    for r in rows:
        if "admitted" in r:
            goal = r["pg_goal_p99_under_50ms"]
            print(
                f"{r['engine']}: admitted {r['admitted']}, history {r['history_statuses']}, "
                f"max running {r['max_running_seen']}, {r['monitor_checks']} monitor checks, "
                f"quick_check {r['quick_check']}, run --wait exit-75 {r['busy_exits_run_wait']}, "
                f"tracebacks {r['tracebacks']}, loop busy {r['loop_busy']}"
                + ("" if goal is None else f"; p99 < 50 ms: {'met' if goal else 'MISSED'}")
            )
            print(f"  chaos/commands: {r['counts']}")
        for v in r.get("violations", []):
            print(f"VIOLATION {r['engine']}: {v}")
        for n in r.get("notes", [])[:10]:
            print(f"note {r['engine']}: {n}")
    print("invariants: " + ("VIOLATED" if bad else "all held"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
