"""Hardware-aware self-play caps: ``get_max_selfplay_for_node``, the ``capacity`` command,
the admission rule ``hardware_cap`` (``hardware.cap_selfplay``) and the cap in ``resources``.

The pure cap and the command's own input checks run on SQLite only (``local``); what the
store takes part in (a node's stored reading, admission, ``resources``) runs on both engines.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import Coord
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord import safeguards
from ringrift_coord.clock import ManualClock
from ringrift_coord.config import load_settings
from ringrift_coord.errors import UsageError
from ringrift_coord.optimizer import capacity
from ringrift_coord.optimizer.capacity import get_max_selfplay_for_node
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")
DEFAULTS = load_settings(None, {}, use_default_file=False)
TABLE = DEFAULTS.get("hardware.gpu_jobs")


@pytest.fixture
def local(tmp_path) -> Coord:
    """The CLI on SQLite only, for what does not depend on the engine."""
    return Coord(tmp_path)


def js(result) -> dict:
    assert result.stdout, (result.returncode, result.stderr)
    return json.loads(result.stdout)


def error_line(result) -> str:
    """The one line a refused command says on stderr (never a traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --------------------------------------------------------------------------- the cap

# (gpu_count, gpu_name, cpu_count, memory_gb) -> (cap, bounded_by)
MUST_SHOW = [
    ((1, "H100", 32, 64), (24, "gpu")),
    ((1, "RTX 3070", None, None), (4, "gpu")),
    ((1, "RTX 3070", 8, 32), (4, "gpu")),
    ((2, "A100", 64, 256), (32, "gpu")),
    ((1, "GH200", 32, None), (32, "cpu")),  # 48 per GPU, bounded by its cores
    ((1, "NVIDIA GH200 480GB", 72, 480), (48, "gpu")),  # enough cores: its 48
    ((0, None, 16, None), (16, "cpu")),  # CPU-only: one job per core
    ((0, None, 16, 64), (16, "cpu")),
    ((0, None, 16, 8), (4, "memory")),  # 8 GiB at 2 GiB a job
]


@pytest.mark.parametrize(("figures", "expected"), MUST_SHOW)
def test_get_max_selfplay_for_node(figures, expected) -> None:
    gpus, name, cpus, memory = figures
    cap = get_max_selfplay_for_node("n1", gpus, name, cpus, memory, bool(gpus), DEFAULTS)
    assert cap == expected[0]
    found = capacity.max_selfplay(
        gpu_name=name, gpu_count=gpus, cpus=cpus, memory_gb=memory, has_gpu=None, settings=DEFAULTS
    )
    assert (found["max_selfplay_jobs"], found["bounded_by"]) == expected


def test_the_reference_call_uses_the_effective_settings(monkeypatch, tmp_path) -> None:
    """Without settings: defaults < YAML < environment, like every façade."""
    config = tmp_path / "coord.yaml"
    config.write_text("{}\n")
    monkeypatch.setenv("RINGRIFT_COORD_CONFIG", str(config))
    monkeypatch.delenv("RINGRIFT_COORD_SET", raising=False)
    cap = get_max_selfplay_for_node(
        node_id="vast-h100", gpu_count=1, gpu_name="H100", cpu_count=32, memory_gb=64, has_gpu=True
    )
    assert cap == 24
    config.write_text("hardware: {gpu_jobs: {H100: 12}}\n")
    assert get_max_selfplay_for_node("n", 1, "H100", 32, 64, True) == 12
    monkeypatch.setenv("RINGRIFT_COORD_SET", "hardware.default_gpu_jobs=3")
    assert get_max_selfplay_for_node("n", 2, "Tesla V100", 32, 64, True) == 6


# real NVML names -> the table's key (None: not in the table)
NVML_NAMES = [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA GH200 480GB", "GH200"),  # a GH200, never an H200
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100-PCIE-40GB", "A100"),
    ("NVIDIA L40", "L40"),
    ("NVIDIA L40S", "L40"),  # the L40's chip and memory: its 16
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 4080 SUPER", "RTX 4080"),
    ("NVIDIA GeForce RTX 3070 Laptop GPU", "RTX 3070"),
    ("nvidia geforce rtx-3070", "RTX 3070"),  # case, dashes and spacing ignored
    ("NVIDIA RTX A1000", None),  # no A100
    ("NVIDIA A10", None),
    ("NVIDIA L4", None),
    ("NVIDIA GeForce RTX 3070 Ti", "RTX 3070"),
    ("Tesla V100-SXM2-16GB", None),
    ("", None),
]


@pytest.mark.parametrize(("name", "model"), NVML_NAMES)
def test_gpu_names_as_nvml_reports_them(name, model) -> None:
    assert capacity.gpu_model(name, TABLE) == model


def test_an_unknown_model_gets_default_gpu_jobs() -> None:
    found = capacity.max_selfplay(
        gpu_name="Tesla V100-SXM2-16GB",
        gpu_count=4,
        cpus=None,
        memory_gb=None,
        has_gpu=None,
        settings=DEFAULTS,
    )
    assert found["gpu_model"] is None and found["per_gpu"] == 8
    assert (found["max_selfplay_jobs"], found["bounded_by"]) == (32, "gpu")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, "H100", 8, 16.0), "gpu_count"),
        ((1, "H100", -8, 16.0), "cpu_count"),
        ((1, "H100", 8, math.nan), "memory_gb"),
        ((1, "H100", 8, math.inf), "memory_gb"),
        ((1, "H100", 8, -1.0), "memory_gb"),
        ((1.5, "H100", 8, 16.0), "gpu_count"),
        ((1, "H100", "8", 16.0), "cpu_count"),
        ((True, "H100", 8, 16.0), "gpu_count"),
        ((1, 100, 8, 16.0), "gpu_name"),
    ],
)
def test_bad_figures_are_usage_errors_naming_the_field(args, field) -> None:
    gpus, name, cpus, memory = args
    with pytest.raises(UsageError) as caught:
        get_max_selfplay_for_node("n", gpus, name, cpus, memory, None, DEFAULTS)
    assert caught.value.field == field


def test_nothing_known_is_no_number() -> None:
    with pytest.raises(UsageError, match="nothing is known about the hardware of node n9"):
        get_max_selfplay_for_node("n9", 0, None, None, None, False, DEFAULTS)
    # a GPU named but not counted is one GPU
    assert get_max_selfplay_for_node("n", None, "RTX 4090", None, None, None, DEFAULTS) == 10
    # a count of 0 says no GPU, whatever the name
    assert get_max_selfplay_for_node("n", 0, "RTX 4090", 4, None, None, DEFAULTS) == 4


@settings(max_examples=300, deadline=None)
@given(
    gpus=st.none() | st.integers(0, 64),
    name=st.none() | st.sampled_from([*TABLE, "NVIDIA GH200 480GB", "Tesla V100", "RTX A1000"]),
    cpus=st.none() | st.integers(0, 4096),
    memory=st.none() | st.floats(0, 1e6, allow_nan=False),
    has_gpu=st.none() | st.booleans(),
    per_cpu=st.sampled_from([0.5, 1, 2]),
    per_job=st.sampled_from([0.5, 2, 4, 0]),
)
def test_the_cap_is_at_least_one_and_never_above_a_bound(
    gpus, name, cpus, memory, has_gpu, per_cpu, per_job
) -> None:
    cfg = load_settings(None, {}, use_default_file=False)
    cfg.set("hardware.jobs_per_cpu", per_cpu, "test")
    cfg.set("hardware.memory_gb_per_job", per_job, "test")
    found = capacity.max_selfplay(
        gpu_name=name, gpu_count=gpus, cpus=cpus, memory_gb=memory, has_gpu=has_gpu, settings=cfg
    )
    bounds, cap = found["bounds"], found["max_selfplay_jobs"]
    if not bounds:
        assert cap is None and found["bounded_by"] == "unknown"
        return
    assert cap >= 1
    assert all(cap <= bound for bound in bounds.values())
    assert cap == bounds[found["bounded_by"]] == min(bounds.values())
    if cpus:
        assert bounds["cpu"] == max(1, math.floor(cpus * per_cpu))


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--gpu-name", "H100", "--gpu-count", "1", "--cpus", "32", "--memory-gb", "64"), 24),
        (("--gpu-name", "RTX 3070", "--gpu-count", "1"), 4),
        (("--gpu-name", "A100", "--gpu-count", "2", "--cpus", "64", "--memory-gb", "256"), 32),
        (("--gpu-name", "NVIDIA GH200 480GB", "--gpu-count", "1", "--cpus", "32"), 32),
        (("--gpu-count", "0", "--cpus", "16", "--memory-gb", "128"), 16),
    ],
)
def test_capacity_by_hand(local, argv, expected) -> None:
    doc = js(local("--json", "capacity", *argv))
    assert doc["max_selfplay_jobs"] == expected and doc["source"] == "manual"
    assert doc["enforced"] is False
    text = local("capacity", *argv)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith(f"max self-play jobs: {expected} (bounded by")


def test_capacity_says_what_bounds_it(local) -> None:
    doc = js(local("--json", "capacity", "--gpu-name", "GH200", "--gpu-count", "1", "--cpus", "32"))
    assert doc["bounded_by"] == "cpu" and doc["gpu_model"] == "GH200" and doc["per_gpu"] == 48
    assert doc["bounds"] == {"gpu": 48, "cpu": 32}
    assert doc["inputs"] == {
        "gpu_name": "GH200",
        "gpu_count": 1,
        "cpus": 32,
        "memory_gb": None,
        "has_gpu": True,
    }
    out = local("capacity", "--gpu-name", "GH200", "--gpu-count", "1", "--cpus", "32").stdout
    assert "max self-play jobs: 32 (bounded by cpu)" in out
    assert "1 x GH200: 48 per GPU" in out and "32 cpus x 1 per cpu" in out
    assert "admission: not enforced (hardware.cap_selfplay is false)" in out
    cpu_only = js(local("--json", "capacity", "--cpus", "16"))
    assert (cpu_only["max_selfplay_jobs"], cpu_only["bounded_by"]) == (16, "cpu")
    assert cpu_only["gpu_model"] is None and cpu_only["per_gpu"] is None


def test_capacity_of_an_unknown_model_names_the_default(local) -> None:
    argv = ("capacity", "--gpu-name", "Tesla V100-SXM2-16GB", "--gpu-count", "2", "--cpus", "64")
    doc = js(local("--json", *argv))
    assert (doc["max_selfplay_jobs"], doc["gpu_model"], doc["per_gpu"]) == (16, None, 8)
    out = local(*argv).stdout
    assert "not in hardware.gpu_jobs: default_gpu_jobs 8 per GPU" in out
    local.write_config("hardware: {default_gpu_jobs: 3}\n")
    assert js(local("--json", *argv))["max_selfplay_jobs"] == 6


def test_capacity_detects_this_host_by_default(local) -> None:
    import psutil

    for argv in (("capacity",), ("capacity", "--detect")):
        doc = js(local("--json", *argv))
        assert doc["source"] == "detect"
        assert doc["inputs"]["cpus"] == psutil.cpu_count(logical=True)
        assert doc["max_selfplay_jobs"] >= 1
        assert doc["max_selfplay_jobs"] <= doc["bounds"]["cpu"]
        if not doc["inputs"]["gpu_count"]:  # no NVML or no GPU: a CPU-only host
            assert "gpu" not in doc["bounds"] and doc["inputs"]["has_gpu"] is False
    assert not local.db.exists()  # nothing stored, no store created


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--node", "n1", "--detect"), "options --node and --detect cannot be used together"),
        (("--detect", "--cpus", "8"), "options --detect and --cpus cannot be used together"),
        (("--node", "n1", "--gpu-name", "H100"), "--node and --gpu-name cannot be used"),
        (("--memory-gb", "nan"), "option --memory-gb"),
        (("--memory-gb", "inf"), "option --memory-gb"),
        (("--memory-gb", "-1"), "option --memory-gb"),
        (("--gpu-count", "-1"), "option --gpu-count: -1 is not a count"),
        (("--cpus", "-4"), "option --cpus: -4 is not a count"),
        # a node has a CPU: report refuses 0 too (one check, cli.common.check_hardware)
        (("--gpu-count", "1", "--cpus", "0"), "option --cpus: 0 is not a count from 1 to"),
        (("--cpus", "2.5"), "option --cpus"),
        (("--gpu-count", "two"), "option --gpu-count"),
        (("--cpus", "1_000"), "write 1000"),
        (("--gpu-name", " "), "option --gpu-name must not be empty"),
        (("--node", ""), "option --node must not be empty"),
        (("--gpu-count", "0"), "nothing bounds the cap"),
    ],
)
def test_capacity_usage_errors(local, argv, says) -> None:
    result = local("capacity", *argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert says in error_line(result)
    assert result.stdout == ""
    doc = js(local("--json", "capacity", *argv))
    assert doc["exit_code"] == 2 and says in doc["error"]


def test_capacity_of_a_node_without_a_reading_is_a_state_error(coord) -> None:
    if coord.engine == "sqlite":
        missing = coord("capacity", "--node", "n1")  # no store yet: none is created
        assert missing.returncode == 3 and "no store at" in error_line(missing)
        assert not coord.db.exists()
    assert coord("report", "--node", "n2", "--cpus", "4").returncode == 0
    missing = coord("capacity", "--node", "n1")
    assert missing.returncode == 3
    line = error_line(missing)
    assert "no reading stored for node n1" in line
    assert "ringrift-coord report --node n1" in line


def test_capacity_of_a_node_uses_its_stored_hardware(coord) -> None:
    hardware = ("--gpu-name", "NVIDIA GeForce RTX 3070", "--gpu-count", "1", "--cpus", "8")
    assert coord("report", "--node", "g1", *hardware, "--memory-gb", "32").returncode == 0
    doc = js(coord("--json", "capacity", "--node", "g1"))
    assert (doc["max_selfplay_jobs"], doc["bounded_by"], doc["gpu_model"]) == (4, "gpu", "RTX 3070")
    assert doc["source"] == "node" and doc["inputs"]["node"] == "g1"
    assert doc["inputs"]["age"] >= 0 and doc["inputs"]["cpus"] == 8
    assert doc["bounds"] == {"gpu": 4, "cpu": 8, "memory": 16}
    # a later reading of figures only keeps the hardware
    assert coord("report", "--node", "g1", "--cpu", "20").returncode == 0
    assert js(coord("--json", "capacity", "--node", "g1"))["max_selfplay_jobs"] == 4
    out = coord("--set", "hardware.cap_selfplay=true", "capacity", "--node", "g1").stdout
    assert "node g1's latest reading" in out
    assert "admission: enforced for selfplay (hardware.cap_selfplay is true)" in out
    # a reading with no hardware: no cap (admission does not limit it), exit 0
    assert coord("report", "--node", "bare", "--cpu", "20").returncode == 0
    bare = coord("--json", "capacity", "--node", "bare")
    assert bare.returncode == 0
    assert js(bare)["max_selfplay_jobs"] is None and js(bare)["bounded_by"] == "unknown"
    assert "unknown" in coord("capacity", "--node", "bare").stdout


# --------------------------------------------------------------------------- admission

RTX_3070 = ("--gpu-name", "RTX 3070", "--gpu-count", "1", "--cpus", "8", "--memory-gb", "32")
ON = ("--set", "hardware.cap_selfplay=true")


def test_hardware_cap_rule_on_and_off(coord) -> None:
    pid = str(os.getpid())
    assert coord("report", "--node", "n1", *RTX_3070).returncode == 0
    for _ in range(4):  # the cap of an RTX 3070: 4
        assert coord(*ON, "register", "selfplay", "--node", "n1", "--pid", pid).returncode == 0
    denied = coord(*ON, "--json", "can-spawn", "selfplay", "--node", "n1")
    assert denied.returncode == 1
    (reason,) = js(denied)["reasons"]
    assert reason["rule"] == "hardware_cap"
    assert (reason["requested"], reason["used"], reason["limit"]) == (1, 4, 4)
    assert reason["retry_after"] > 0
    assert reason["details"]["bounded_by"] == "gpu" and reason["details"]["configured"] == 32
    assert "hardware cap 4" in reason["message"] and "bounded by gpu" in reason["message"]
    refused = coord(*ON, "register", "selfplay", "--node", "n1", "--pid", pid)
    assert refused.returncode == 1 and "hardware cap 4 for selfplay on n1" in refused.stderr
    # off (the default): the per-node limit alone
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    # self-play only; other nodes (no reading: hardware unknown) are not limited
    assert coord(*ON, "can-spawn", "training", "--node", "n1").returncode == 0
    assert coord(*ON, "can-spawn", "selfplay", "--node", "n2").returncode == 0
    # the per-node limit already refuses: it alone says so
    low = coord(*ON, "--set", "task_limits.selfplay.per_node=3", "--json", "can-spawn", "selfplay",
                "--node", "n1")  # fmt: skip
    assert [r["rule"] for r in js(low)["reasons"]] == ["node_limit"]
    # resources shows the cap and whether admission enforces it
    for flags, enforced in (((), False), (ON, True)):
        doc = js(coord(*flags, "--json", "resources", "--node", "n1"))
        (node,) = doc["nodes"]
        assert node["caps"]["hardware_cap"] == {
            "max_selfplay_jobs": 4,
            "bounded_by": "gpu",
            "enforced": enforced,
        }
    table = coord(*ON, "resources", "--format", "plain").stdout
    assert "hw cap 4 by gpu (enforced)" in table
    # at 80 columns the caps column still fits (wrapped), every line within the width
    narrow = coord(*ON, "resources", "--format", "table", env={"COLUMNS": "80"}).stdout
    assert "hw cap 4 by gpu" in " ".join(narrow.split())
    assert max(len(x) for x in narrow.splitlines()) <= 80


def test_a_bad_hardware_section_is_read_by_admission_while_the_cap_is_on(coord) -> None:
    """Rule hardware_cap reads ``hardware`` while ``cap_selfplay`` is on: a bad value in the
    file leaves the layers below in force, and the warning says so; with the cap off too,
    since admission reads the switch itself from that section (a bad value anywhere in it
    sends ``cap_selfplay`` to the layers below); a command that does not admit does not."""
    coord.write_config("hardware: {memory_gb_per_job: -1}\n")
    assert coord("report", "--node", "n1", *RTX_3070).returncode == 0
    used = coord(*ON, "can-spawn", "selfplay", "--node", "n1")
    assert used.returncode == 0, used.stderr
    assert "hardware.memory_gb_per_job" in used.stderr
    assert used.stderr.endswith("(ignored: this command goes on with the values below it)\n")
    switch = coord("can-spawn", "selfplay", "--node", "n1")
    assert switch.stderr.endswith("(ignored: this command goes on with the values below it)\n")
    unused = coord("tasks")
    assert unused.stderr.endswith("(ignored: this command does not use it)\n"), unused.stderr


def test_hardware_cap_holds_with_a_reading_of_any_age(engine_db) -> None:
    """Hardware does not go stale: a reading far past resources.max_sample_age still caps
    the node (the thresholds rule ignores it), on a manual clock."""
    clock = ManualClock()
    ctx = engine_db.context("hardware: {cap_selfplay: true}\n", clock)
    safeguards.store_reading(ctx, "n1", {"cpu": 99.0}, {"gpu_count": 0, "cpus": 2})
    coord = TaskCoordinator(ctx)
    assert not coord.check("selfplay", "n1").allowed  # fresh: cpu 99 % is critical
    clock.advance(10 * float(ctx.settings.get("resources.max_sample_age")))
    for _ in range(2):
        coord.register_task(None, "selfplay", "n1")
    decision = coord.check("selfplay", "n1")
    assert [r.rule for r in decision.reasons] == ["hardware_cap"]
    (reason,) = decision.reasons
    assert (reason.used, reason.limit) == (2, 2) and reason.details["bounded_by"] == "cpu"
    assert coord.check("evaluation", "n1").allowed
    overview = safeguards.resource_overview
    with ctx.store.read() as tx:
        doc = overview(tx, ctx.settings, tx.now(), node="n1", live=False)
    (node,) = doc["nodes"]
    assert node["stale"] is True
    assert node["caps"]["hardware_cap"] == {
        "max_selfplay_jobs": 2,
        "bounded_by": "cpu",
        "enforced": True,
    }
