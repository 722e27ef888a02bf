"""Hardware-aware self-play caps: how many self-play jobs a node's hardware can carry.

A GPU node carries its GPU model's jobs per GPU (``hardware.gpu_jobs``: H100 24, A100 16, …;
``hardware.default_gpu_jobs`` for a model not listed) times its GPU count; every node, GPU or
not, is also bounded by its CPUs (``hardware.jobs_per_cpu`` per logical CPU) and its memory
(one job per ``hardware.memory_gb_per_job`` GiB). A GH200's 48 per GPU is therefore bounded
by its cores, and a CPU-only node carries one job per core. An unknown figure bounds nothing.
Pure functions: no store, no I/O (``get_max_selfplay_for_node`` without settings reads the
effective configuration, as every façade does).
"""

from __future__ import annotations

import math
import re

from ringrift_coord.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings


def _normal(name: str) -> str:
    return " ".join(name.upper().replace("-", " ").replace("_", " ").split())


def gpu_model(gpu_name: str | None, table: dict[str, int]) -> str | None:
    """The key of ``table`` that names ``gpu_name``: the longest key found in it as whole
    words, case, dashes and spacing ignored ("NVIDIA H100 80GB HBM3" → "H100", "NVIDIA
    GeForce RTX 4090" → "RTX 4090", "NVIDIA A100-SXM4-80GB" → "A100"); None when no key
    matches. A key must start a word and may not run on into more digits: "NVIDIA GH200
    480GB" is a GH200, never an H200, and an "RTX A1000" is no A100; letters may follow, so
    an "L40S" is an L40 (the same chip and memory) and an "RTX 4090 D" an RTX 4090."""
    if not gpu_name:
        return None
    name = _normal(gpu_name)
    found = [
        key
        for key in table
        if _normal(key) and re.search(rf"(?<![A-Z0-9]){re.escape(_normal(key))}(?![0-9])", name)
    ]
    return max(found, key=lambda key: (len(_normal(key)), key)) if found else None


def max_selfplay(
    *,
    gpu_name: str | None,
    gpu_count: int | None,
    cpus: int | None,
    memory_gb: float | None,
    has_gpu: bool | None,
    settings: Settings,
) -> dict[str, Any]:
    """The node's self-play cap and what bounds it.

    Returns ``max_selfplay_jobs``, ``bounded_by`` (``gpu``, ``cpu``, ``memory`` or
    ``unknown`` when nothing is known), ``per_gpu``, ``gpu_model`` (the table's key, None for an
    unlisted model) and each bound that applied (``bounds``)."""
    hw = settings.get("hardware")
    table: dict[str, int] = hw["gpu_jobs"]
    gpus = gpu_count or 0
    if has_gpu is None:  # a count says it (0: no GPU, as `report` stores one); else a name
        has_gpu = gpus > 0 if gpu_count is not None else bool(gpu_name)
    if has_gpu and gpus <= 0:
        gpus = 1  # a GPU of unknown count: at least the one named
    model = gpu_model(gpu_name, table) if has_gpu else None
    per_gpu = (table[model] if model else int(hw["default_gpu_jobs"])) if has_gpu else None
    bounds: dict[str, int] = {}
    if has_gpu and per_gpu is not None:
        bounds["gpu"] = per_gpu * gpus
    if cpus:
        bounds["cpu"] = max(1, math.floor(cpus * float(hw["jobs_per_cpu"])))
    per_job = float(hw["memory_gb_per_job"])
    if memory_gb and per_job > 0:
        bounds["memory"] = max(1, math.floor(memory_gb / per_job))
    if not bounds:
        return {
            "max_selfplay_jobs": None,
            "bounded_by": "unknown",
            "per_gpu": per_gpu,
            "gpu_model": model,
            "bounds": bounds,
        }
    order = ("gpu", "cpu", "memory")  # on a tie the first named bounds it
    bounded_by = min(bounds, key=lambda k: (bounds[k], order.index(k)))
    return {
        "max_selfplay_jobs": bounds[bounded_by],
        "bounded_by": bounded_by,
        "per_gpu": per_gpu,
        "gpu_model": model,
        "bounds": bounds,
    }


def node_cap(reading: dict[str, Any] | None, settings: Settings) -> int | None:
    """A node's hardware cap from its stored reading's hardware (None: hardware unknown)."""
    if reading is None:
        return None
    cap: int | None = of_reading(reading, settings)["max_selfplay_jobs"]
    return cap


def of_reading(reading: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``max_selfplay`` of a stored reading's hardware (its GPU model and count, CPUs and
    memory; hardware does not go stale, so a reading of any age will do)."""
    return max_selfplay(
        gpu_name=reading.get("gpu_name"),
        gpu_count=reading.get("gpu_count"),
        cpus=reading.get("cpus"),
        memory_gb=reading.get("memory_gb"),
        has_gpu=None,
        settings=settings,
    )


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"{value!r} is not a whole number", field=name)
    if value < 0:
        raise UsageError(f"{value} is not a count (0 or more)", field=name)
    return int(value)


def _size(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{value!r} is not a number of GiB", field=name)
    if not 0.0 <= float(value) < 1e9:  # also refuses nan and inf
        raise UsageError(f"{value!r} is not a size in GiB (0 or more, finite)", field=name)
    return float(value)


def check_inputs(
    gpu_count: Any, gpu_name: Any, cpu_count: Any, memory_gb: Any
) -> tuple[int | None, str | None, int | None, float | None]:
    """The figures ``get_max_selfplay_for_node`` takes, checked: whole counts of 0 or more,
    a finite size of 0 or more, a name that is text (UsageError naming the field if not)."""
    if gpu_name is not None and not isinstance(gpu_name, str):
        raise UsageError(f"{gpu_name!r} is not a GPU model name", field="gpu_name")
    return (
        _count("gpu_count", gpu_count),
        gpu_name.strip() or None if isinstance(gpu_name, str) else None,
        _count("cpu_count", cpu_count),
        _size("memory_gb", memory_gb),
    )


def get_max_selfplay_for_node(
    node_id: str | None,
    gpu_count: int | None,
    gpu_name: str | None,
    cpu_count: int | None,
    memory_gb: float | None,
    has_gpu: bool | None,
    settings: Settings | None = None,
) -> int:
    """The most self-play jobs a node of this hardware should run (the reference's name).

    ``node_id`` names the node in messages only: the cap depends on the figures alone.
    ``has_gpu`` None: the node has a GPU when a count or a name is given. Without
    ``settings``, the effective configuration (defaults < YAML < environment). Raises
    UsageError for a bad figure, and when nothing bounds the cap (no GPU, no CPU count,
    no memory): there is no number to give."""
    counts = check_inputs(gpu_count, gpu_name, cpu_count, memory_gb)
    if settings is None:
        from ringrift_coord.config import load_settings

        settings = load_settings()
    found = max_selfplay(
        gpu_name=counts[1],
        gpu_count=counts[0],
        cpus=counts[2],
        memory_gb=counts[3],
        has_gpu=has_gpu,
        settings=settings,
    )
    cap = found["max_selfplay_jobs"]
    if cap is None:
        who = f" of node {node_id}" if node_id else ""
        raise UsageError(f"nothing is known about the hardware{who}: give a GPU, CPUs or memory")
    return int(cap)
