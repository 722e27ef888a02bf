"""Hardware-aware self-play caps: how many self-play jobs a node's hardware can carry.

A GPU node carries its GPU model's jobs per GPU (``hardware.gpu_jobs``: H100 24, A100 16, …;
``hardware.default_gpu_jobs`` for a model not listed) times its GPU count; every node, GPU or
not, is also bounded by its CPUs (``hardware.jobs_per_cpu`` per logical CPU) and its memory
(one job per ``hardware.memory_gb_per_job`` GiB). A GH200's 48 per GPU is therefore bounded
by its cores, and a CPU-only node carries one job per core. An unknown figure bounds nothing.
Pure functions: no store, no I/O.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings


def _normal(name: str) -> str:
    return " ".join(name.upper().replace("-", " ").replace("_", " ").split())


def gpu_model(gpu_name: str | None, table: dict[str, int]) -> str | None:
    """The key of ``table`` that names ``gpu_name``: the longest key found in it, case and
    spacing ignored ("NVIDIA H100 80GB HBM3" → "H100", "NVIDIA GeForce RTX 4090" →
    "RTX 4090"); None when no key matches."""
    if not gpu_name:
        return None
    name = f" {_normal(gpu_name)} "
    found = [key for key in table if f" {_normal(key)}" in name]
    return max(found, key=len) if found else None


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
    if has_gpu is None:
        has_gpu = gpus > 0 or bool(gpu_name)
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
    found = max_selfplay(
        gpu_name=reading.get("gpu_name"),
        gpu_count=reading.get("gpu_count"),
        cpus=reading.get("cpus"),
        memory_gb=reading.get("memory_gb"),
        has_gpu=None,
        settings=settings,
    )
    cap: int | None = found["max_selfplay_jobs"]
    return cap
