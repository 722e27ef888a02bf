"""bench/compare.py cannot rot: a tiny run of the real command (SQLite only, every peer that is
installed), its JSON shape, and its limit checks. Nothing here is timed: the figures are the
benchmark's business, these tests only check that it runs and that it sees an over-admission.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "compare.py"
TINY = [
    "--quick",
    "--json",
    "--engine",
    "sqlite",
    "--runs",
    "1",
    "--warmup",
    "0",
    "-C",
    "2",
    "-J",
    "3",
    "-L",
    "2",
    "--waiters",
    "2",
    "--idle-seconds",
    "0.5",
    "--settle",
    "0.3",
    "--settle-max",
    "0",
]


def compare(*args: str) -> tuple[int, str, str]:
    exe = Path(sys.executable).parent / "ringrift-coord"
    if not os.access(exe, os.X_OK):
        pytest.skip(f"no ringrift-coord next to {sys.executable} (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "_RINGRIFT"))}
    done = subprocess.run(
        [sys.executable, str(COMPARE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


def rows_by_tool(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["tool"] + (f"/{r['engine']}" if r["engine"] else ""): r for r in rows}


def test_a_tiny_run_has_every_section_and_every_tool_kept_to_the_limit(tmp_path: Path) -> None:
    rc, out, err = compare(*TINY)
    assert rc == 0, err
    doc = json.loads(out)

    machine = doc["machine"]
    assert machine["cores"] == os.cpu_count()
    assert machine["cpu_model"] and machine["date"]
    assert len(machine["loadavg"]) == 3 and len(doc["loadavg_end"]) == 3
    assert doc["engines"] == ["sqlite"]
    assert doc["params"]["limit"] == 2 and doc["params"]["launchers"] == 2

    expected = {"ringrift/sqlite", "flock", "portalocker", "sem"}
    for section in ("decision", "wrapped"):
        rows = rows_by_tool(doc[section])
        assert set(rows) == expected | {"python -c pass"}
        assert rows["python -c pass"]["x_python"] == 1.0
        assert rows["flock"]["x_flock"] == 1.0
        ringrift = rows["ringrift/sqlite"]
        assert ringrift["median_ms"] > 0 and ringrift["x_python"] > 0
        for name, row in rows.items():  # measured, or said why not (a peer not installed)
            assert ("median_ms" in row) != ("skipped" in row), (name, row)

    contention = rows_by_tool(doc["contention"])
    assert set(contention) == expected | {"direct"}
    for name, row in contention.items():
        if "skipped" in row:
            assert name in ("sem", "portalocker"), row
            continue
        assert row["completed"] == 6 and row["failed"] == 0, row
        assert 1 <= row["max_concurrent"] <= 2 and row["limit_ok"] is True, row
        assert row["mean_concurrency"] > 0 and row["overhead_ms_per_job"] is not None
    # the baseline's own ratio: 1, or none where a loaded machine ran the tiny run's jobs
    # slower than their nominal time (an overhead <= 0 is no base for a ratio)
    flock = contention["flock"]
    assert flock["x_flock_overhead"] == (1.0 if flock["overhead_ms_per_job"] > 0 else None)

    idle = rows_by_tool(doc["idle"])
    assert set(idle) == expected
    for name, row in idle.items():
        if "skipped" in row:
            continue
        assert row["started_during_hold"] == 0 and row["limit_ok"] is True, (name, row)
        assert row["cpu_s"] >= 0 and row["cpu_pct_of_core"] >= 0 and row["waiters"] == 2

    goals = {g["goal"]: g for g in doc["goals"]}
    assert set(goals) == {
        "can-spawn x python -c pass",
        "overhead per job x flock",
        "mean busy slots of 2",
        "idle waiters % of one core",
    }
    assert all(g["engine"] == "sqlite" and g["checked"] for g in goals.values())
    assert all(isinstance(g["ok"], bool) for g in goals.values())
    assert doc["limit_ok"] is True and doc["violations"] == []

    # the saved document prints again, as text or as the README's table, measuring nothing
    saved = tmp_path / "run.json"
    saved.write_text(out)
    rc, text, err = compare("--from-json", str(saved))
    assert rc == 0, err
    assert "3. Contention: 2 launchers x 3 jobs through 2 slots" in text
    assert "every tool kept to its limit" in text
    rc, _, err = compare("--from-json", str(saved), "--check")  # exit 1 on a missed goal
    assert rc == (0 if all(g["ok"] for g in goals.values()) else 1), err
    rc, table, err = compare("--from-json", str(saved), "--markdown")
    assert rc == 0, err
    lines = table.splitlines()
    assert lines[0] == "| row | ringrift SQLite | flock | portalocker | GNU sem |"
    assert lines[2].startswith("| 1. decision, median ms (× `python -c pass` ")
    assert any(line.startswith("| 3. max concurrency (limit 2) | ") for line in lines)
    assert lines[-1].startswith("| 4. 2 idle waiters, % of one core ")


def test_a_tool_over_the_limit_fails_the_run(tmp_path: Path) -> None:
    # the control 'none' runs the jobs with no wrapper: 3 launchers x 1 job, 1 slot (jobs of
    # 300 ms, so that they overlap even on a loaded machine), and the idle waiters start at
    # once beside the holder; ringrift-coord beside it keeps the limit
    rc, out, err = compare(
        *TINY,
        *("--sections", "contention,idle", "--peers", "none", "-C", "3", "-L", "1"),
        *("-J", "1", "-S", "300", "--idle-seconds", "2"),
    )
    assert rc == 1, err
    doc = json.loads(out)
    assert doc["limit_ok"] is False
    contention = rows_by_tool(doc["contention"])
    peak = contention["none"]["max_concurrent"]
    assert peak >= 2 and contention["none"]["limit_ok"] is False
    assert f"none: {peak} jobs ran at once, over the limit 1" in doc["violations"]
    assert "idle none: 2 waiters started while the only slot was held" in doc["violations"]
    assert contention["ringrift/sqlite"]["max_concurrent"] == 1
    assert contention["ringrift/sqlite"]["failed"] == 0
    assert rows_by_tool(doc["idle"])["ringrift/sqlite"]["started_during_hold"] == 0
    saved = tmp_path / "run.json"
    saved.write_text(out)
    rc, text, _ = compare("--from-json", str(saved))
    assert rc == 1 and f"LIMIT OR RUN FAILURE: none: {peak} jobs ran at once" in text


@pytest.mark.parametrize(
    "args",
    [
        ["--engine", "mysql"],
        ["--peers", "flock,slurm"],
        ["-L", "0"],
        ["--idle-seconds", "0"],
        ["--from-json"],  # a file that is not a compare.py document
    ],
)
def test_bad_options_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    if args == ["--from-json"]:
        (tmp_path / "not.json").write_text("{}")
        args = ["--from-json", str(tmp_path / "not.json")]
    rc, out, err = compare(*args)
    assert rc == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("compare.py: ")
    assert "Traceback" not in err
