#!/usr/bin/env python3
"""wake_idle.py - the CPU that N ``run --wait`` waiters use while a slot stays held.

One slot (per-node limit 1) is held by a registered sleeper; N waiters (default 16) queue
for it; once every one has asked once, the script reads their user + system CPU time
(/proc/PID/stat) over S seconds (default 60) and reports the total as a percentage of one
core, against the goal (< 2 %). Then it releases the slot and checks that all N run.

    python bench/wake_idle.py [-n 16] [-s 60] [--db URL] [--json]

``--db``: a PostgreSQL URL (default: a SQLite store in a temp state directory). Run it with
``PYTHONPATH=/path/to/other/checkout`` to measure another version the same way. A benchmark,
not a test: the number depends on the machine; the 1-minute load average is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

GOAL_PCT = 2.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--waiters", type=int, default=16)
    p.add_argument("-s", "--seconds", type=float, default=60.0)
    p.add_argument("--db", default=None, help="postgresql://... (default: SQLite)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="wake-idle-")
    config = os.path.join(tmp, "coord.yaml")
    with open(config, "w") as handle:
        handle.write(
            "task_limits: {selfplay: {per_node: 1, cluster: 500}}\n"
            "rate_limits: {selfplay: {per_minute: null}}\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGRIFT_")}
    env.update(
        RINGRIFT_COORDINATOR_DIR=os.path.join(tmp, "state"),
        RINGRIFT_COORD_CONFIG=config,
        RINGRIFT_COORD_SET="resources.live_host=false",
    )
    if a.db:
        env["RINGRIFT_COORD_DB"] = a.db
    coord = [sys.executable, "-m", "ringrift_coord"]
    holder = subprocess.Popen(["sleep", "3600"])
    waiters: list[subprocess.Popen[bytes]] = []
    try:
        held = subprocess.run(
            [*coord, "register", "selfplay", "--node", "n1", "--pid", str(holder.pid)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for _ in range(a.waiters):
            waiters.append(
                subprocess.Popen(
                    [*coord, "run", "selfplay", "--node", "n1", "--wait", "--", "true"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )
        time.sleep(5 + a.waiters * 0.3)  # every one started, queued and asked once
        before = {w.pid: cpu_seconds(w.pid) for w in waiters}
        started = time.monotonic()
        time.sleep(a.seconds)
        used = sum(cpu_seconds(w.pid) - before[w.pid] for w in waiters)
        elapsed = time.monotonic() - started
        alive = sum(1 for w in waiters if w.poll() is None)
        subprocess.run([*coord, "unregister", held], env=env, check=True, capture_output=True)
        codes = [w.wait(timeout=120) for w in waiters]
        pct = 100.0 * used / elapsed
        doc = {
            "engine": "postgres" if a.db else "sqlite",
            "waiters": a.waiters,
            "still_waiting_while_measured": alive,
            "seconds": round(elapsed, 1),
            "cpu_seconds": round(used, 3),
            "pct_of_one_core": round(pct, 3),
            "goal_pct": GOAL_PCT,
            "all_ran_ok": all(c == 0 for c in codes),
            "loadavg_1m": os.getloadavg()[0],
        }
        if a.json:
            print(json.dumps(doc))
        else:
            for key, value in doc.items():
                print(f"{key:30} {value}")
        return 0 if pct < GOAL_PCT and doc["all_ran_ok"] else 1
    finally:
        for w in waiters:
            if w.poll() is None:
                w.kill()
        holder.kill()
        holder.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
