"""The reference's debug commands, troubleshooting steps and usage snippets, run as written.

Each snippet is the reference's text with the module path ``app.coordination.X`` replaced by
``ringrift_coord.X``, run by a fresh ``python -c`` against the test's state directory (and,
on the PostgreSQL engine, its database through ``RINGRIFT_COORD_DB``). Where the reference
leaves a name to the reader (``node_id``, ``task_id``, ``run_training``, ``logger``) a
prelude defines it; a snippet the reference writes inside a function (``return``, ``await``)
is run inside one. Nothing else is changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import Coord

ENGINES = ("sqlite", "postgres")


def py(coord: Coord, code: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    source = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", source],
        env=coord.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


# --------------------------------------------------------------------------- debug commands

CHECK_COORDINATOR = """
from ringrift_coord.task_coordinator import get_coordinator
import json
print(json.dumps(get_coordinator().get_stats(), indent=2))
"""

CHECK_SAFEGUARDS = """
from ringrift_coord.safeguards import Safeguards
import json
print(json.dumps(Safeguards.get_instance().get_stats(), indent=2, default=str))
"""

CHECK_OPTIMIZER = """
from ringrift_coord.resource_optimizer import get_utilization_status
import json
print(json.dumps(get_utilization_status(), indent=2))
"""


def test_debug_commands_print_json(coord: Coord) -> None:
    assert coord("can-spawn", "selfplay", "--node", "node-1", "-q").returncode == 0
    coord("report", "--node", "node-1", "--cpu", "50", "--gpu", "70", "--mem", "30")
    stats = json.loads(ok(py(coord, CHECK_COORDINATOR)))
    assert stats["state"] == "running" and "by_type" in stats
    guards = json.loads(ok(py(coord, CHECK_SAFEGUARDS)))
    assert guards["circuit_breakers"] == {} and guards["emergency_active"] is False
    status = json.loads(ok(py(coord, CHECK_OPTIMIZER)))  # no default=str: JSON-able as is
    assert status["utilization"]["gpu"] is not None and status["rate"] > 0


# --------------------------------------------------------------------------- troubleshooting

NOT_SPAWNING = """
from ringrift_coord.task_coordinator import get_coordinator, TaskType
from ringrift_coord.safeguards import Safeguards
node_id = "node-1"
"""

NOT_SPAWNING_STEPS = """
coordinator = get_coordinator()
print(coordinator.get_state())  # Should be RUNNING
allowed, reason = coordinator.can_spawn_task(TaskType.SELFPLAY, node_id)
print(f"Allowed: {allowed}, Reason: {reason}")
safeguards = Safeguards.get_instance()
print(safeguards.get_stats())
"""


def test_tasks_not_spawning_steps(coord: Coord) -> None:
    out = ok(py(coord, NOT_SPAWNING_STEPS, NOT_SPAWNING)).splitlines()
    assert "RUNNING" in out[0]
    assert out[1] == "Allowed: True, Reason: "
    assert coord("halt", "--type", "selfplay", "--reason", "bad model").returncode == 0
    out = ok(py(coord, NOT_SPAWNING_STEPS, NOT_SPAWNING)).splitlines()
    assert out[1].startswith("Allowed: False, Reason: ") and "bad model" in out[1]
    assert "'emergency_active': True" in out[2]


UTILIZATION_STEPS = """
from ringrift_coord.resource_optimizer import get_resource_optimizer
optimizer = get_resource_optimizer()
status = optimizer.get_utilization_status()
print(status)
from ringrift_coord.resource_optimizer import apply_feedback_adjustment
new_rate = apply_feedback_adjustment()
print(f"New rate: {new_rate}")
"""


def test_high_low_utilization_steps(coord: Coord) -> None:
    for node in ("n1", "n2"):
        done = coord("report", "--node", node, "--cpu", "20", "--gpu", "20", "--mem", "20")
        assert done.returncode == 0, done.stderr
    out = ok(py(coord, UTILIZATION_STEPS)).splitlines()
    assert out[0].startswith("{") and "'scale_up'" in out[0]
    assert out[1].startswith("New rate: ")
    assert float(out[1].split()[-1]) > 0
    rate = json.loads(coord("--json", "rate", "show").stdout)
    assert rate["rate"] == float(out[1].split()[-1])  # the step was stored


BREAKER_STEPS = """
from ringrift_coord.safeguards import Safeguards
safeguards = Safeguards.get_instance()
for _ in range(3):
    safeguards.record_failure("selfplay", "node-1", "exit code 3")
stats = safeguards.get_stats()
print(stats["circuit_breakers"])
"""


def test_circuit_breaker_open_steps(coord: Coord) -> None:
    out = ok(py(coord, BREAKER_STEPS))
    assert "'selfplay:node-1'" in out and "'state': 'open'" in out
    assert coord("halt", "--reason", "look").returncode == 0
    stats = json.loads(ok(py(coord, CHECK_SAFEGUARDS.replace(", default=str", ""))))
    assert stats["circuit_breakers"]["selfplay:node-1"]["state"] == "open"
    assert stats["emergency_active"] is True and stats["open_breakers"] == 1
    assert coord("unhalt").returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "node-1").returncode == 1
    # the reference's manual reset (clearing a private dict) is `breakers reset` here
    assert coord("breakers", "reset", "--node", "node-1", "--type", "selfplay").returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "node-1", "-q").returncode == 0


CLEAR_EMERGENCY = (
    "from ringrift_coord.safeguards import Safeguards; "
    "Safeguards.get_instance().deactivate_emergency()"
)


def test_emergency_halt_steps(coord: Coord) -> None:
    assert coord("halt", "--reason", "bad model pushed").returncode == 0
    halt_file = coord.state_dir / "EMERGENCY_HALT"
    assert json.loads(halt_file.read_text())["reason"] == "bad model pushed"  # `cat` it
    assert coord("halt", "--check").returncode == 1
    ok(py(coord, CLEAR_EMERGENCY))
    assert coord("halt", "--check").returncode == 0
    assert not halt_file.exists()


# --------------------------------------------------------------------------- usage snippets

TASK_COORDINATOR = """
from ringrift_coord.task_coordinator import (
    TaskCoordinator,
    TaskType,
    CoordinatedTask,
    get_coordinator,
)

coordinator = get_coordinator()

# Check if spawn is allowed
allowed, reason = coordinator.can_spawn_task(TaskType.SELFPLAY, "node-1")
if allowed:
    coordinator.register_task(task_id, TaskType.SELFPLAY, "node-1", pid=1234)
    # ... run task ...
    coordinator.unregister_task(task_id)
"""

CONTEXT_MANAGER = """
async def main():
    async with CoordinatedTask(TaskType.TRAINING, "node-1") as task:
        if task.allowed:
            await run_training()

asyncio.run(main())
"""


def test_register_task_with_a_pid_not_alive_here_says_why(coord: Coord) -> None:
    if os.path.exists("/proc/1234"):
        pytest.skip("pid 1234 is alive on this machine")
    done = py(coord, TASK_COORDINATOR, 'task_id = "selfplay-ref-1"\n')
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ringrift_coord.errors.UsageError: pid: no running process with")
    assert "pid 1234 on this host" in last and "the reaper frees the slot" in last
    tasks = json.loads(coord("--json", "tasks").stdout)
    assert tasks["tasks"] == []  # nothing was registered
    # the same snippet with a holder that is alive here works, and releases
    holder = subprocess.Popen(["sleep", "600"])
    try:
        code = TASK_COORDINATOR.replace("pid=1234", f"pid={holder.pid}")
        ok(py(coord, code, 'task_id = "selfplay-ref-2"\n'))
    finally:
        holder.kill()
        holder.wait()
    history = json.loads(coord("--json", "tasks", "history").stdout)["tasks"]
    assert [(h["task_id"], h["status"]) for h in history] == [("selfplay-ref-2", "ok")]


def test_coordinated_task_context_manager(coord: Coord) -> None:
    prelude = """
    import asyncio
    from ringrift_coord.task_coordinator import CoordinatedTask, TaskType

    async def run_training():
        print("training ran")
    """
    out = ok(py(coord, CONTEXT_MANAGER, prelude))
    assert out == "training ran\n"
    history = json.loads(coord("--json", "tasks", "history").stdout)["tasks"]
    assert [(h["task_type"], h["status"]) for h in history] == [("training", "ok")]


SAFEGUARDS_USAGE = """
from ringrift_coord.safeguards import Safeguards, check_before_spawn

safeguards = Safeguards.get_instance()

# Check before spawning
if safeguards.allow_spawn("selfplay", "node-1"):
    safeguards.record_spawn("selfplay", "node-1")
    # ... spawn task ...
else:
    print(f"Blocked: {safeguards.get_block_reason()}")

# Record failures
safeguards.record_failure("selfplay", "node-1", "OOM")

# Emergency controls
safeguards.activate_emergency()
safeguards.deactivate_emergency()
"""


def test_safeguards_usage_and_a_recorded_oom_lowers_the_cap(coord: Coord) -> None:
    ok(py(coord, SAFEGUARDS_USAGE))
    limits = json.loads(coord("--json", "limits").stdout)
    assert limits["lowered_caps"] == []  # one OOM: oom.lower_after is 2
    history = json.loads(coord("--json", "tasks", "history").stdout)["tasks"]
    assert [(h["status"], h["reason"]) for h in history] == [("oom", "OOM")]
    assert history[0]["task_id"].startswith("recorded-")
    ok(py(coord, SAFEGUARDS_USAGE))  # the second OOM within oom.window
    limits = json.loads(coord("--json", "limits").stdout)
    caps = [(c["node"], c["task_type"]) for c in limits["lowered_caps"]]
    assert caps == [("node-1", "selfplay")]
    assert coord("halt", "--check").returncode == 0  # activate + deactivate: no halt left
    # a failure whose reason is not an OOM does not count toward the cap
    coord("breakers", "reset", "--all")
    code = SAFEGUARDS_USAGE.replace('"node-1", "OOM"', '"node-2", "exit code 3"')
    for _ in range(2):
        ok(py(coord, code))
    limits = json.loads(coord("--json", "limits").stdout)
    assert [c["node"] for c in limits["lowered_caps"]] == ["node-1"]


def test_cli_record_failure_with_reason_oom_counts_too(coord: Coord) -> None:
    for _ in range(2):
        done = coord("breakers", "record-failure", "--type", "selfplay", "--node", "g1",
                     "--reason", "CUDA out of memory")  # fmt: skip
        assert done.returncode == 0, done.stderr
    limits = json.loads(coord("--json", "limits").stdout)
    assert [(c["node"], c["task_type"]) for c in limits["lowered_caps"]] == [("g1", "selfplay")]


OPTIMIZER_USAGE = """
from ringrift_coord.resource_optimizer import (
    get_resource_optimizer,
    should_scale_up,
    should_scale_down,
    negotiate_selfplay_rate,
    get_max_selfplay_for_node,
)

optimizer = get_resource_optimizer()

# Check scaling decisions
if should_scale_up("gpu"):
    # Increase GPU selfplay jobs
    pass

# Negotiate selfplay rate
approved = negotiate_selfplay_rate(
    requested_rate=2000,
    reason="momentum_accelerating",
    requestor="unified_loop",
)

# Get hardware-aware limits
max_jobs = get_max_selfplay_for_node(
    node_id="vast-h100",
    gpu_count=1,
    gpu_name="H100",
    cpu_count=32,
    memory_gb=64,
    has_gpu=True,
)
print(approved, max_jobs)
"""


def test_resource_optimizer_usage(coord: Coord) -> None:
    approved, max_jobs = ok(py(coord, OPTIMIZER_USAGE)).split()
    assert float(approved) > 0 and int(max_jobs) > 0


MASTER_LOOP = """
# In master_loop.py
from ringrift_coord.task_coordinator import get_coordinator, TaskType
from ringrift_coord.resource_optimizer import (
    get_resource_optimizer,
    apply_feedback_adjustment,
)

coordinator = get_coordinator()
optimizer = get_resource_optimizer()

# Before spawning selfplay
if coordinator.can_spawn_task(TaskType.SELFPLAY, node_id)[0]:
    coordinator.register_task(task_id, TaskType.SELFPLAY, node_id)

# Periodic utilization adjustment
apply_feedback_adjustment("unified_loop")
"""

P2P = """
def before_spawning():
    # In p2p_orchestrator.py
    from ringrift_coord.safeguards import Safeguards, check_before_spawn

    safeguards = Safeguards.get_instance()

    # Before spawning
    allowed, reason = check_before_spawn("selfplay", node_id)
    if not allowed:
        logger.warning(f"Spawn blocked: {reason}")
        return
    print("spawn allowed")

before_spawning()
"""


def test_integration_points(coord: Coord) -> None:
    prelude = 'node_id = "node-7"\ntask_id = "selfplay-loop-1"\n'
    ok(py(coord, MASTER_LOOP, prelude))
    # the holder was the snippet's own process: its slot is freed once it is gone
    shown = json.loads(coord("--json", "tasks", "show", "selfplay-loop-1").stdout)
    assert shown["node"] == "node-7"
    rate = json.loads(coord("--json", "rate", "show").stdout)
    assert rate["rate"] > 0
    prelude += "import logging\nlogging.basicConfig()\nlogger = logging.getLogger('p2p')\n"
    assert ok(py(coord, P2P, prelude)) == "spawn allowed\n"
    assert coord("halt", "--type", "selfplay", "--reason", "drain").returncode == 0
    done = py(coord, P2P, prelude)
    assert done.returncode == 0 and done.stdout == ""
    assert "WARNING:p2p:Spawn blocked: " in done.stderr and "drain" in done.stderr
