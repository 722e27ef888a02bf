"""A short soak (``bench/soak.py``) on each engine: 6 simulated nodes x 2 CLI workers and one
in-process launch loop each, 15 s, with halts, breaker trips and wrapper kills mixed in; the
soak's own invariants (never above a limit, counts exact and never negative, every admitted
task in the history once, nothing left running after the final reap, quick_check ok, no
busy exit of ``run --wait``, no traceback) must all hold. Marked ``stress``: it runs in CI's
stress step (``pytest -m stress``), not in the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENGINES = ("sqlite", "postgres")
SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.stress
def test_a_short_soak_holds_every_invariant(engine: str, request: pytest.FixtureRequest) -> None:
    argv = [sys.executable, str(SOAK), "--json", "--engine", engine, "--seconds", "15"]
    argv += ["--nodes", "6", "--workers", "2", "--loops", "1", "--chaos-every", "1", "--seed", "12"]
    if engine == "postgres":
        argv += ["--pg-url", request.getfixturevalue("pg_url")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGRIFT")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.stdout, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    (row,) = doc["rows"]
    assert row["violations"] == [], row["violations"]
    assert done.returncode == 0, done.stderr[-2000:]
    assert row["busy_exits_run_wait"] == 0 and row["tracebacks"] == 0
    assert row["admitted"] > 20 and row["monitor_checks"] >= 10
    assert row["latency"]["decision_in_process"]["n"] > 0
    # faults were mixed in (how many depends on the machine: each halt, trip or kill takes
    # a few commands' time)
    chaos = {k: v for k, v in row["counts"].items() if k.startswith("chaos:")}
    assert sum(chaos.values()) >= 1, row["counts"]
    if engine == "sqlite":
        assert row["quick_check"] == "ok"
