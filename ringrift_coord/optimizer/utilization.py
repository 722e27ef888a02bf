"""Cluster utilization from the nodes' stored readings, and the scaling questions asked of it.

Only fresh readings count (age at most ``resources.max_sample_age``); stale ones are left
out, counted and named. CPU utilization is averaged over the fresh nodes weighted by each
node's logical CPUs (1 when unknown), so a 64-core node weighs 64 times a 1-core one: the
figure is the share of the cluster's cores in use. GPU and GPU-memory utilization are
averaged over the GPU nodes weighted by their GPU count (1 when unknown): the share of the
cluster's GPUs in use. A GPU node is a fresh reading with a GPU count above 0 or a GPU
figure; the other fresh nodes are CPU nodes. Running jobs are the tasks holding slots (and,
separately, the self-play ones).

The controlling resource is the bottleneck: of CPU and GPU, those with data, the one
furthest above its optimal target (``utilization - target``). ``should_scale_up(r)``: its
utilization is below ``resource_targets.scale_up_below``; ``should_scale_down(r)``: above
``scale_down_above``; both False without data.
"""

from __future__ import annotations

from ringrift_coord import readings, slots
from ringrift_coord.optimizer import state as opt_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

RESOURCES = ("cpu", "gpu")


def targets(settings: Settings) -> dict[str, Any]:
    """The utilization targets: per resource ``min``, ``target`` (optimal), ``max``,
    ``scale_up_below``, ``scale_down_above``. A bad ``resource_targets`` setting raises here
    (the commands that steer by it refuse; admission never reads it)."""
    settings.require("resource_targets")
    rt = settings.get("resource_targets")
    return {
        res: {
            "min": float(rt[f"{res}_min"]),
            "target": float(rt[f"{res}_target"]),
            "max": float(rt[f"{res}_max"]),
            "scale_up_below": float(rt["scale_up_below"]),
            "scale_down_above": float(rt["scale_down_above"]),
        }
        for res in RESOURCES
    }


def _weighted(pairs: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return sum(v * w for v, w in pairs) / total


def _is_gpu_node(row: Row) -> bool:
    return bool(row.get("gpu_count")) or row.get("gpu") is not None


def cluster(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """The cluster's utilization as of ``now`` (see the module's docstring).

    Keys: ``cpu``, ``gpu``, ``gpu_memory`` (percent, None without data), ``gpu_nodes``,
    ``cpu_nodes``, ``fresh_nodes``, ``stale_nodes``, ``stale_names``, ``running_jobs``,
    ``selfplay_jobs`` and ``nodes`` (one row per stored reading: node, at, age, stale, cpu,
    gpu, gpu_memory, cpus, gpu_count, gpu_name, kind, running_jobs, selfplay_jobs)."""
    max_age = float(settings.get("resources.max_sample_age"))
    jobs: dict[str, int] = {}
    selfplay: dict[str, int] = {}
    for row in slots.counts(tx):
        jobs[row["node"]] = jobs.get(row["node"], 0) + int(row["n"])
        if row["task_type"] == "selfplay":
            selfplay[row["node"]] = selfplay.get(row["node"], 0) + int(row["n"])
    cpu: list[tuple[float, float]] = []
    gpu: list[tuple[float, float]] = []
    gpu_mem: list[tuple[float, float]] = []
    nodes: list[dict[str, Any]] = []
    stale_names: list[str] = []
    gpu_nodes = cpu_nodes = 0
    for row in readings.all_latest(tx):
        if row.get("source") == "live":
            continue  # a host's live reading is admission's, not the cluster's
        age = now - float(row["at"])
        stale = age > max_age or age < -max_age  # far in the future: no reading either
        is_gpu = _is_gpu_node(row)
        nodes.append(
            {
                "node": row["node"],
                "at": row["at"],
                "age": age,
                "stale": stale,
                "kind": "gpu" if is_gpu else "cpu",
                "cpu": row.get("cpu"),
                "gpu": row.get("gpu"),
                "gpu_memory": row.get("gpu_memory"),
                "cpus": row.get("cpus"),
                "gpu_count": row.get("gpu_count"),
                "gpu_name": row.get("gpu_name"),
                "running_jobs": jobs.get(row["node"], 0),
                "selfplay_jobs": selfplay.get(row["node"], 0),
            }
        )
        if stale:
            stale_names.append(row["node"])
            continue
        if is_gpu:
            gpu_nodes += 1
        else:
            cpu_nodes += 1
        if row.get("cpu") is not None:
            cpu.append((float(row["cpu"]), float(row.get("cpus") or 1)))
        if is_gpu:
            weight = float(row.get("gpu_count") or 1)
            if row.get("gpu") is not None:
                gpu.append((float(row["gpu"]), weight))
            if row.get("gpu_memory") is not None:
                gpu_mem.append((float(row["gpu_memory"]), weight))
    return {
        "cpu": _weighted(cpu),
        "gpu": _weighted(gpu),
        "gpu_memory": _weighted(gpu_mem),
        "gpu_nodes": gpu_nodes,
        "cpu_nodes": cpu_nodes,
        "fresh_nodes": gpu_nodes + cpu_nodes,
        "stale_nodes": len(stale_names),
        "stale_names": stale_names,
        "running_jobs": sum(jobs.values()),
        "selfplay_jobs": sum(selfplay.values()),
        "nodes": nodes,
    }


def should_scale_up(util: dict[str, Any], tgt: dict[str, Any], resource: str) -> bool:
    """``resource``'s utilization is below the scale-up point (False without data)."""
    value = util.get(resource)
    return value is not None and value < tgt[resource]["scale_up_below"]


def should_scale_down(util: dict[str, Any], tgt: dict[str, Any], resource: str) -> bool:
    """``resource``'s utilization is above the scale-down point (False without data)."""
    value = util.get(resource)
    return value is not None and value > tgt[resource]["scale_down_above"]


def in_range(util: dict[str, Any], tgt: dict[str, Any], resource: str) -> bool | None:
    """Inside ``min``..``max`` (None without data)."""
    value = util.get(resource)
    if value is None:
        return None
    return bool(tgt[resource]["min"] <= value <= tgt[resource]["max"])


def controlling(util: dict[str, Any], tgt: dict[str, Any]) -> str | None:
    """The bottleneck: of the resources with data, the one furthest above its optimal
    target (None: no data at all). On a tie, GPU (the cluster's reason to exist)."""
    found = [r for r in ("gpu", "cpu") if util.get(r) is not None]
    if not found:
        return None
    return max(found, key=lambda r: float(util[r]) - tgt[r]["target"])


def status(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """The utilization status document (``utilization``; ``get_utilization_status``):
    ``at``, ``utilization`` (the cluster figures, no per-node rows), ``targets`` per resource,
    ``in_range``, ``scale_up``, ``scale_down`` (per resource), ``controlling``, the optimizer's
    ``rate``, ``action``, ``confidence``, ``reason``, ``updated_at``, ``updated_by``, ``age``
    (seconds since the last adjust; None: never), ``stored`` (false: nothing adjusted yet,
    the initial rate), ``selfplay_targets`` (each node's target, cap, at, and ``in_force``)
    and ``nodes`` (per-node rows)."""
    tgt = targets(settings)
    settings.require("optimizer")  # the rate's bounds, the targets' lifetime
    util = cluster(tx, settings, now)
    nodes = util.pop("nodes")
    saved = opt_state.load(tx, settings)
    ttl = float(settings.get("optimizer.state_ttl"))
    node_targets = []
    for row in opt_state.targets(tx):
        age = now - float(row["at"])
        node_targets.append(
            {
                "node": row["node"],
                "target": row["target"],
                "cap": row["cap"],
                "at": row["at"],
                "in_force": -60.0 <= age <= ttl,
            }
        )
    updated = saved.get("updated_at")
    return {
        "at": now,
        "utilization": util,
        "targets": tgt,
        "in_range": {r: in_range(util, tgt, r) for r in RESOURCES},
        "scale_up": {r: should_scale_up(util, tgt, r) for r in RESOURCES},
        "scale_down": {r: should_scale_down(util, tgt, r) for r in RESOURCES},
        "controlling": controlling(util, tgt),
        "rate": saved["rate"],
        "action": saved["action"],
        "confidence": saved["confidence"],
        "reason": saved["reason"],
        "updated_at": updated,
        "updated_by": saved["updated_by"],
        "age": None if updated is None else now - float(updated),
        "stored": saved["stored"],
        "selfplay_targets": node_targets,
        "nodes": nodes,
    }


def summary(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """``status``'s optimizer part: ``status`` without the per-node rows, and ``problem``
    (a bad optimizer setting's message; the rest is then empty)."""
    from ringrift_coord.errors import CoordError

    try:
        doc = status(tx, settings, now)
    except CoordError as exc:
        return {"problem": exc.message}
    doc.pop("nodes", None)
    doc.pop("at", None)
    doc["problem"] = None
    return doc
