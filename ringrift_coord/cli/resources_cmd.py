"""``report`` and ``resources``: node readings in, readings against the thresholds out.

``report`` samples this host (psutil, and NVML when there is one: no NVML or no GPU is a
normal case) and stores the reading for ``--node``; with figures given by hand
(``--cpu/--gpu/--mem/--disk/--load`` and the hardware options) it stores those instead, for
nodes reported from elsewhere. ``resources`` only reads: every node's latest reading against
the ``thresholds`` section, the sample's age (``STALE`` past ``resources.max_sample_age``:
admission ignores it), the hardware and the node's effective caps; for this host also its
live readings. ``limits`` shows the OOM-lowered caps and backpressure through
``caps_in_force`` below.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any

import typer

from ringrift_coord.cli.hot import Globals, emit_json
from ringrift_coord.errors import UsageError

HARDWARE = ("gpu_name", "gpu_count", "cpus", "memory_gb")
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", None: ""}


def _g(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def _text(option: str, value: str | None) -> None:
    if value is not None and (not value.strip() or any(ch < " " or ch == "\x7f" for ch in value)):
        raise UsageError(f"option {option}: {value!r} must be non-empty text on one line")


def _percent(option: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 100.0:  # also refuses nan
        raise UsageError(f"option {option}: {value:g} is not a percentage from 0 to 100")


def _node(node: str | None) -> str:
    from ringrift_coord.task_coordinator import default_node

    _text("--node", node)
    return node or default_node()


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``resources`` to the app."""
    app.command("report")(report)
    app.command("resources")(resources)


# --------------------------------------------------------------------------- report


def report(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Option(
            "--node", help="Node the reading is for (default: $RINGRIFT_NODE_ID, else host name)."
        ),
    ] = None,
    cpu: Annotated[
        float | None,
        typer.Option("--cpu", metavar="P", help="Manual figure: CPU utilisation, percent."),
    ] = None,
    gpu: Annotated[
        float | None,
        typer.Option("--gpu", metavar="P", help="Manual figure: GPU utilisation, percent."),
    ] = None,
    mem: Annotated[
        float | None,
        typer.Option("--mem", metavar="P", help="Manual figure: memory used, percent."),
    ] = None,
    disk: Annotated[
        float | None, typer.Option("--disk", metavar="P", help="Manual figure: disk used, percent.")
    ] = None,
    load: Annotated[
        float | None,
        typer.Option("--load", metavar="L", help="Manual figure: 1-minute load average."),
    ] = None,
    gpu_name: Annotated[
        str | None,
        typer.Option("--gpu-name", metavar="NAME", help="Manual hardware: GPU model, e.g. H100."),
    ] = None,
    gpu_count: Annotated[
        int | None,
        typer.Option("--gpu-count", metavar="K", help="Manual hardware: number of GPUs."),
    ] = None,
    cpus: Annotated[
        int | None, typer.Option("--cpus", metavar="C", help="Manual hardware: logical CPUs.")
    ] = None,
    memory_gb: Annotated[
        float | None, typer.Option("--memory-gb", metavar="M", help="Manual hardware: memory, GiB.")
    ] = None,
) -> None:
    """Sample this host (psutil, NVML) and store it; or store figures given by hand."""
    from ringrift_coord import readings

    g = _g(ctx)
    for option, value in (("--cpu", cpu), ("--gpu", gpu), ("--mem", mem), ("--disk", disk)):
        _percent(option, value)
    if load is not None and not (0.0 <= load < math.inf):
        raise UsageError(f"option --load: {load:g} is not a load average (0 or more)")
    if memory_gb is not None and not (0.0 <= memory_gb < 1e9):
        raise UsageError(f"option --memory-gb: {memory_gb:g} is not a size in GiB")
    for option, count in (("--gpu-count", gpu_count), ("--cpus", cpus)):
        if count is not None and not 0 <= count <= 1_000_000:
            raise UsageError(f"option {option}: {count} is not a count from 0 to 1000000")
    _text("--gpu-name", gpu_name)
    target = _node(node)
    figures = {"cpu": cpu, "gpu": gpu, "memory": mem, "disk": disk, "load_avg": load}
    hardware = {"gpu_name": gpu_name, "gpu_count": gpu_count, "cpus": cpus, "memory_gb": memory_gb}
    manual = any(v is not None for v in (*figures.values(), *hardware.values()))
    with g.context() as c:
        if not manual:
            paths = [c.state_dir, *c.settings.get("resources.data_paths")]
            reading = readings.sample(paths)
        with c.store.write() as tx:
            now = tx.now()
            if manual:
                # hardware does not change between reports: what is not given is kept
                previous = readings.latest(tx, target) or {}
                reading = {**figures, "source": "manual"}
                for key in HARDWARE:
                    reading[key] = hardware[key] if hardware[key] is not None else previous.get(key)
            readings.store_reading(tx, target, reading, now)
            stored = readings.decode(readings.latest(tx, target))
    assert stored is not None
    if g.json:
        emit_json(stored)
    else:
        sys.stdout.write(f"reported {target} ({stored['source']}): {_summary(stored)}\n")
    raise typer.Exit(0)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _summary(r: dict[str, Any]) -> str:
    load = "-" if r.get("load_avg") is None else f"{r['load_avg']:.2f}"
    return (
        f"cpu {_pct(r.get('cpu'))}, mem {_pct(r.get('memory'))}, disk {_pct(r.get('disk'))}, "
        f"gpu {_pct(r.get('gpu'))}, load {load}; {_hardware(r)}"
    )


def _hardware(r: dict[str, Any]) -> str:
    parts = []
    if r.get("gpu_count"):
        parts.append(f"{r.get('gpu_name') or 'GPU'} x{r['gpu_count']}")
    elif r.get("gpu_count") == 0:
        parts.append("no GPU")
    elif r.get("gpu_name"):
        parts.append(str(r["gpu_name"]))
    if r.get("cpus"):
        parts.append(f"{r['cpus']} cpus")
    if r.get("memory_gb"):
        parts.append(f"{r['memory_gb']:g} GB")
    return ", ".join(parts) or "hardware unknown"


# --------------------------------------------------------------------------- resources


def resources(
    ctx: typer.Context,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
) -> None:
    """Every node's latest reading against the thresholds, its hardware and effective caps."""
    from ringrift_coord.safeguards import resource_overview

    g = _g(ctx)
    _text("--node", node)
    with g.context() as c, c.store.read() as tx:
        doc = resource_overview(tx, c.settings, tx.now(), node=node, state_dir=c.state_dir)
    if g.json:
        emit_json(doc)
    else:
        _resources_table(doc, node)
    raise typer.Exit(0)


def _cell(value: Any, level: str | None, text: str, stale: bool) -> str:
    if value is None:
        return "-"
    style = "dim" if stale else LEVEL_STYLE[level]
    return f"[{style}]{text}[/]" if style else text


def _caps(caps: dict[str, Any]) -> str:
    parts = []
    for name, limit in caps["effective"].items():
        configured = caps["per_node"].get(name)
        if name in caps["lowered"]:
            was = "∞" if configured is None else configured
            parts.append(f"[red]{name} {limit}[/] (OOM, was {was})")
        else:
            parts.append(f"{name} {limit}")
    if caps["backpressure"] < 1.0:
        parts.append(f"[yellow]rate ×{caps['backpressure']:.2f}[/] (backpressure)")
    return ", ".join(parts) or "-"


def _resources_table(doc: dict[str, Any], node: str | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ringrift_coord.cli.views import age, console

    t = doc["thresholds"]
    title = (
        f"resources (critical blocks the node: disk {t['disk']['critical']}%, memory "
        f"{t['memory']['critical']}%, cpu {t['cpu']['critical']}%, gpu "
        f"{t['gpu']['critical']}%, load {t['load_avg_critical_per_cpu']:g}×cpus; samples "
        f"older than {doc['max_sample_age']:g} s are stale)"
    )
    table = Table(title=title, title_justify="left")
    for col in ("node", "source", "age", "cpu", "mem", "disk", "gpu", "load", "hardware", "caps"):
        table.add_column(col)
    entries = list(doc["nodes"])
    if doc["live"] is not None:
        entries.append(doc["live"])
    for r in entries:
        stale, lv = r["stale"], r["levels"]
        live = r is doc["live"]
        name = escape(str(r["node"])) + (" (live)" if live else "")
        if live:
            when = "now" + ("" if r["used_by_admission"] else " (not used by admission)")
        elif stale:
            when = f"[red]STALE[/] {age(r['age'])}"
        else:
            when = age(r["age"])
        load = "-" if r["load_avg"] is None else f"{r['load_avg']:.2f}"
        if r["load_critical"] is not None and r["load_avg"] is not None:
            load += f"/{r['load_critical']:g}"
        table.add_row(
            name,
            escape(str(r["source"] or "-")),
            when,
            _cell(r["cpu"], lv["cpu"], _pct(r["cpu"]), stale),
            _cell(r["memory"], lv["memory"], _pct(r["memory"]), stale),
            _cell(r["disk"], lv["disk"], _pct(r["disk"]), stale),
            _cell(r["gpu"], lv["gpu"], _pct(r["gpu"]), stale),
            _cell(r["load_avg"], lv["load_avg"], load, stale),
            escape(_hardware(r)),
            _caps(r["caps"]),
        )
    out = console()
    out.print(table)
    if not doc["nodes"]:
        which = f"node {node}" if node else "any node"
        out.print(f"no reading stored for {escape(which)} (ringrift-coord report stores one)")


# --------------------------------------------------------------------------- limits


def caps_in_force(c: Any) -> dict[str, Any]:
    """``limits``' extra: the OOM-lowered caps and backpressure factors in force (read-only)."""
    from ringrift_coord import safeguards

    with c.store.read() as tx:
        return safeguards.caps_in_force(tx, c.settings, tx.now())


def print_caps(doc: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ringrift_coord.cli.views import console, ts

    out = console()
    if not doc["lowered_caps"] and not doc["backpressure"]:
        out.print("no OOM-lowered caps or backpressure in force")
        return
    if doc["lowered_caps"]:
        table = Table(title="caps lowered after repeated OOMs", title_justify="left")
        for col in ("node", "type", "cap", "configured", "OOMs", "lowered at"):
            table.add_column(col)
        for r in doc["lowered_caps"]:
            table.add_row(
                escape(r["node"]),
                r["task_type"],
                f"[red]{r['cap']}[/]",
                "∞" if r["configured"] is None else str(r["configured"]),
                str(r["ooms"]),
                ts(r["lowered_at"]),
            )
        out.print(table)
    if doc["backpressure"]:
        table = Table(title="backpressure (spawn-rate factor per node)", title_justify="left")
        for col in ("node", "factor", "updated"):
            table.add_column(col)
        for r in doc["backpressure"]:
            table.add_row(escape(r["node"]), f"[yellow]×{r['factor']:.2f}[/]", ts(r["updated_at"]))
        out.print(table)
