"""Jobs killed by SIGKILL: OOM evidence, the breaker's reason, lowered caps, backpressure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringrift_coord.clock import ManualClock
from ringrift_coord.launcher import run_command
from ringrift_coord.procs import oom_kill_count
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")


def breaker(coord, node: str, ttype: str) -> dict:
    rows = json.loads(coord("breakers", "list", "--json").stdout)["breakers"]
    (row,) = [r for r in rows if r["node"] == node and r["task_type"] == ttype]
    return row


def test_self_sigkill_is_killed_with_its_evidence(coord):
    result = coord("run", "evaluation", "--node", "n1", "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 137, result.stderr
    history = json.loads(coord("tasks", "history", "--json").stdout)["tasks"][0]
    assert (history["exit_code"], history["status"]) == (137, "killed")
    assert "no OOM evidence" in history["reason"]
    row = breaker(coord, "n1", "evaluation")
    assert row["failures"] == 1 and row["state"] == "closed"
    assert "SIGKILL" in row["last_reason"] and "OOM" in row["last_reason"]


def test_sigkill_at_critical_memory_is_an_oom_and_repeated_ooms_lower_the_cap(coord):
    coord.write_config("""
        task_limits: {evaluation: {per_node: 8, cluster: null}}
        oom: {lower_after: 2, window: 3600, factor: 0.5, decay_interval: 3600}
        circuit_breaker: {failure_threshold: 5}
    """)
    # this host's memory is above a critical level of 0.1 %: a SIGKILL is then an OOM
    low = ("--set", "thresholds.memory.warning=0", "--set", "thresholds.memory.critical=0.1")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for _ in range(3):  # some running evaluation jobs on n1
            assert (
                coord("register", "evaluation", "--node", "n1", "--pid", str(holder.pid)).returncode
                == 0
            )
        for _ in range(2):
            result = coord(
                *low, "run", "evaluation", "--node", "n1", "--", "sh", "-c", "kill -KILL $$"
            )
            assert result.returncode == 137
        history = json.loads(coord("tasks", "history", "--json").stdout)["tasks"]
        assert [h["status"] for h in history[:2]] == ["oom", "oom"]
        assert "memory at" in history[0]["reason"] and ">= critical 0.1%" in history[0]["reason"]
        assert breaker(coord, "n1", "evaluation")["last_reason"].startswith("OOM-killed")
        # 3 running when the second OOM came: the cap for evaluation on n1 is now 1 (3+1 x 0.5)
        denied = coord("can-spawn", "evaluation", "--node", "n1", "--json")
        assert denied.returncode == 1
        rule = json.loads(denied.stdout)["reasons"][0]
        assert rule["rule"] == "oom_cap" and rule["limit"] == 2
        assert coord("can-spawn", "evaluation", "--node", "n2").returncode == 0
        limits = json.loads(coord("limits", "--json").stdout)
        assert any(
            c["node"] == "n1" and c["task_type"] == "evaluation" and c["cap"] == 2
            for c in limits["lowered_caps"]
        ), limits.get("lowered_caps")
    finally:
        holder.kill()
        holder.wait()


def test_failures_lower_the_node_rate_and_successes_restore_it(engine_db):
    """``run --wait`` of real jobs, in-process on a manual clock: waiting for the spawn-rate
    bucket steps the clock (about 9 s of it) instead of sleeping through it."""
    clock = ManualClock()
    coord = TaskCoordinator(
        engine_db.context(
            """
            rate_limits: {sync: {per_minute: 60, burst: 1}}
            backpressure: {decrease: 0.5, increase: 0.25, min_factor: 0.1, recovery_half_life: 0}
            circuit_breaker: {failure_threshold: 50}
            """,
            clock,
        )
    )
    poll = float(coord.ctx.settings.get("run.poll_interval"))

    def run_waiting(*argv: str) -> tuple[int, float]:
        """(exit code, clock seconds it waited for its slot)"""
        before = clock.monotonic()
        result = run_command(coord, "sync", "n1", list(argv), wait=True, warn=pytest.fail)
        assert result.duration == 0.0  # the job itself took no clock time
        return result.exit_code, clock.monotonic() - before

    # the first failure halves the node's rate (60 -> 30 per minute): the second waits 2 s
    assert run_waiting("sh", "-c", "exit 1") == (1, 0.0)  # the burst token
    code, waited = run_waiting("sh", "-c", "exit 1")
    assert code == 1 and 2.0 - 1e-6 <= waited <= 2.0 + poll + 1e-6
    denied = coord.check("sync", "n1")
    (rate,) = [r for r in denied.reasons if r.rule == "rate"]
    assert rate.details["backpressure"] == 0.25
    assert rate.details["per_minute"] == 15  # 60/min x 0.5 x 0.5
    assert coord.check("sync", "n2").allowed  # another node keeps its full rate
    # additive increase: 0.25 -> 0.5 -> 0.75 -> 1.0; each run waits one token at the rate of
    # its moment: 60 / 15, 60 / 30, 60 / 45 seconds
    for per_minute in (15, 30, 45):
        code, waited = run_waiting("true")
        expected = 60 / per_minute
        assert code == 0 and expected - 1e-6 <= waited <= expected + poll + 1e-6, (
            per_minute,
            waited,
        )
    # the rate is whole again: right after a spawn the bucket (burst 1) is empty, and the
    # refusal names the full rate of 60 per minute, no backpressure left
    again = coord.check("sync", "n1")
    (rate,) = [r for r in again.reasons if r.rule == "rate"]
    assert (rate.details["backpressure"], rate.details["per_minute"]) == (1.0, 60)
    assert [h["status"] for h in coord.history()] == ["ok"] * 3 + ["failed"] * 2


CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def _own_memory_cgroup() -> Path | None:
    count, where = oom_kill_count()
    if count is None or where is None or not where.endswith("memory.oom_control"):
        return None
    directory = Path(where).parent
    return directory if os.access(directory, os.W_OK) else None


@pytest.mark.skipif(
    _own_memory_cgroup() is None, reason="needs a writable cgroup v1 memory controller"
)
def test_real_oom_kill_in_a_memory_cgroup(coord, tmp_path):
    parent = _own_memory_cgroup()
    assert parent is not None
    group = parent / f"ringrift-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(200 * 2**20))
        hog = "b = bytearray(600 * 2**20); import time; time.sleep(5)"
        script = (
            f"echo $$ > {group}/cgroup.procs && exec {' '.join(coord.argv())} run "
            f"training --node n1 -- {sys.executable} -c '{hog}'"
        )
        result = subprocess.run(
            ["sh", "-c", script], env=coord.env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 137, result.stderr
        history = json.loads(coord("tasks", "history", "--json").stdout)["tasks"][0]
        assert history["status"] == "oom", history
        assert "oom_kill 0 -> 1" in history["reason"] and "memory.oom_control" in history["reason"]
        assert breaker(coord, "n1", "training")["last_reason"].startswith("OOM-killed")
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        group.rmdir()


def test_an_operator_stop_is_not_a_failure(coord, tmp_path):
    import signal
    import time

    ready = tmp_path / "ready"
    wrapper = coord.popen(
        "run", "evaluation", "--node", "n1", "--", "sh", "-c", f"touch {ready}; exec sleep 60"
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline and wrapper.poll() is None
        time.sleep(0.05)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 143
    history = json.loads(coord("tasks", "history", "--json").stdout)["tasks"][0]
    assert history["status"] == "stopped" and "forwarded SIGTERM" in history["reason"]
    # neither the breaker nor the node's spawn rate pays for an operator's stop
    assert json.loads(coord("breakers", "list", "--json").stdout)["breakers"] == []


@pytest.mark.parametrize(
    "reason",
    [
        "OOM",
        "oom: worker 3",
        "oom-kill",
        "oom_killed",
        "OOMKilled",
        "Out of memory: Killed process 4242 (python) total-vm:1024kB (oom-kill)",
        "invoked oom-killer: gfp_mask=0x140cca",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA out of memory",
        "CUDA_ERROR_OUT_OF_MEMORY",
        "java.lang.OutOfMemoryError: Java heap space",
        "ran out of memory",
        "MemoryError",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "fork: Cannot allocate memory",
        "not an OOM",  # negations are not parsed (the README says so)
    ],
)
def test_reasons_that_say_oom(reason: str) -> None:
    from ringrift_coord.feedback import is_oom

    assert is_oom(reason)


@pytest.mark.parametrize(
    "reason",
    [
        "zoom-kill",
        "room kill switch",
        "boom killed",
        "zoom",
        "bloom filter",
        "oom_score_adj too low",
        "test_oom failed",
        "check_oom: assertion",
        "oom score 900",
        "oom-score-adj",
        "timeout of memory copy",  # "out of memory" inside another word
        "segfault",
        "",
        None,
    ],
)
def test_reasons_that_do_not_say_oom(reason: str | None) -> None:
    from ringrift_coord.feedback import is_oom

    assert not is_oom(reason)
