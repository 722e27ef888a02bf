"""``capacity``: how many self-play jobs a node's hardware can carry, and what bounds it.

Three sources of hardware, one at a time: ``--node N`` (the hardware of N's latest stored
reading, of any age: hardware does not go stale), ``--detect`` (this host: psutil for CPUs
and memory, NVML for the GPU model and count; no NVML is a CPU-only host), or the figures
given by hand (``--gpu-name``, ``--gpu-count``, ``--cpus``, ``--memory-gb``). Without any,
``--detect``. The cap itself is ``optimizer.capacity``'s.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ringrift_coord.cli import views
from ringrift_coord.cli.common import check_hardware, done, globals_of, not_blank
from ringrift_coord.cli.hot import emit_json
from ringrift_coord.errors import StateError, UsageError


def register(app: typer.Typer) -> None:
    """Add ``capacity`` to the app."""
    app.command("capacity")(capacity)


def _manual(
    gpu_name: str | None, gpu_count: int | None, cpus: int | None, memory_gb: float | None
) -> dict[str, Any]:
    from ringrift_coord.optimizer import capacity

    check_hardware(gpu_count, cpus, memory_gb)
    capacity.check_inputs(gpu_count, gpu_name, cpus, memory_gb)
    return {"gpu_name": gpu_name, "gpu_count": gpu_count, "cpus": cpus, "memory_gb": memory_gb}


def _detect() -> dict[str, Any]:
    """This host's hardware: CPUs and memory through psutil, GPUs through NVML."""
    import os

    import psutil

    from ringrift_coord import readings

    gpus = readings.gpu_readings()
    found = {
        "gpu_name": gpus.get("gpu_name"),
        "gpu_count": gpus.get("gpu_count") or 0,
        "cpus": psutil.cpu_count(logical=True) or os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    if gpus.get("gpu_note"):
        found["gpu_note"] = gpus["gpu_note"]
    return found


def capacity(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Option("--node", help="The hardware of this node's latest stored reading."),
    ] = None,
    detect: Annotated[
        bool,
        typer.Option(
            "--detect", help="Sample this host (psutil, NVML): the default without options."
        ),
    ] = False,
    gpu_name: Annotated[
        str | None,
        typer.Option(
            "--gpu-name", metavar="NAME", help="GPU model, e.g. H100 or as NVML names it."
        ),
    ] = None,
    gpu_count: Annotated[
        int | None, typer.Option("--gpu-count", metavar="K", help="Number of GPUs (0: none).")
    ] = None,
    cpus: Annotated[int | None, typer.Option("--cpus", metavar="C", help="Logical CPUs.")] = None,
    memory_gb: Annotated[
        float | None, typer.Option("--memory-gb", metavar="M", help="Memory, GiB.")
    ] = None,
) -> None:
    """The most self-play jobs a node's hardware can carry (GPU model and count, CPUs,
    memory) and what bounds it: of a node's stored reading, this host, or figures by hand."""
    from ringrift_coord import readings
    from ringrift_coord.optimizer import capacity as cap

    g = globals_of(ctx)
    node = not_blank("--node", node)
    not_blank("--gpu-name", gpu_name)
    manual = [
        name
        for name, value in (
            ("--gpu-name", gpu_name),
            ("--gpu-count", gpu_count),
            ("--cpus", cpus),
            ("--memory-gb", memory_gb),
        )
        if value is not None
    ]
    chosen = [name for name, on in (("--node", node is not None), ("--detect", detect)) if on]
    if manual:
        chosen.append(manual[0])
    if len(chosen) > 1:
        raise UsageError(
            f"options {chosen[0]} and {chosen[1]} cannot be used together: give --node N, "
            "--detect, or the hardware by hand (--gpu-name, --gpu-count, --cpus, --memory-gb)"
        )
    extra: dict[str, Any] = {}
    if manual:
        hardware = _manual(gpu_name, gpu_count, cpus, memory_gb)
        source = "manual"
    elif node is None:  # --detect, or nothing given
        hardware = _detect()
        source = "detect"
    else:
        source = "node"
    with g.context(create=False) as c:
        settings = c.settings
        settings.require("hardware")  # a bad hardware section stops the command that uses it
        if node is not None:
            with c.store.read() as tx:
                reading = readings.latest(tx, node)
                now = tx.now()
            if reading is None:
                raise StateError(
                    f"no reading stored for node {node}: run `ringrift-coord report --node "
                    f"{node}` there (or elsewhere with its hardware by hand), or give the "
                    "hardware here (--gpu-name, --gpu-count, --cpus, --memory-gb)"
                )
            hardware = {key: reading.get(key) for key in readings.HARDWARE}
            extra = {
                "node": node,
                "reading_at": reading["at"],
                "age": round(now - reading["at"], 3),
            }
        gpu_note = hardware.pop("gpu_note", None)
        found = cap.max_selfplay(
            gpu_name=hardware["gpu_name"],
            gpu_count=hardware["gpu_count"],
            cpus=hardware["cpus"],
            memory_gb=hardware["memory_gb"],
            has_gpu=None,
            settings=settings,
        )
        hw = settings.get("hardware")
        enforced = bool(hw["cap_selfplay"])
        per_node = settings.task_limit("selfplay", "per_node")
    if found["max_selfplay_jobs"] is None and source == "manual":
        raise UsageError(
            "nothing bounds the cap: give a GPU (--gpu-name, --gpu-count), --cpus or --memory-gb"
        )
    has_gpu = "gpu" in found["bounds"]
    inputs = {**extra, **hardware, "has_gpu": has_gpu}
    if gpu_note:
        inputs["gpu_note"] = gpu_note
    doc = {
        "max_selfplay_jobs": found["max_selfplay_jobs"],
        "bounded_by": found["bounded_by"],
        "per_gpu": found["per_gpu"],
        "gpu_model": found["gpu_model"],
        "bounds": found["bounds"],
        "inputs": inputs,
        "source": source,
        "enforced": enforced and found["max_selfplay_jobs"] is not None,
    }
    if g.json:
        emit_json(doc)
    else:
        views.capacity_report(
            doc,
            jobs_per_cpu=float(hw["jobs_per_cpu"]),
            memory_gb_per_job=float(hw["memory_gb_per_job"]),
            per_node_limit=per_node,
        )
    done()
