"""``report`` and ``resources``: node readings in, readings against the thresholds out.

``report`` samples this host (psutil, and NVML when there is one: no NVML or no GPU is a
normal case) and stores the reading for ``--node``; with figures given by hand
(``--cpu/--gpu/--mem/--disk/--load`` and the hardware options) it stores those instead, for
nodes reported from elsewhere. ``resources`` only reads: every node's latest reading against
the ``thresholds`` section, the sample's age (``STALE`` past ``resources.max_sample_age``:
admission ignores it), the hardware and the node's effective caps; for this host also its
live readings.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ringrift_coord.cli import views
from ringrift_coord.cli.common import (
    FormatOpt,
    NoHeaderOpt,
    check_hardware,
    done,
    globals_of,
    not_blank,
    table_output,
)
from ringrift_coord.cli.hot import emit_json, say
from ringrift_coord.errors import UsageError

MAX_LOAD = 1e6  # past any node (--cpus is at most 1000000); a larger figure is a mistake


def _percent(option: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 100.0:  # also refuses nan
        raise UsageError(f"option {option}: {value:g} is not a percentage from 0 to 100")


def register(app: typer.Typer) -> None:
    """Add ``report``, ``resources`` and ``forget-node`` to the app."""
    app.command("report")(report)
    app.command("resources")(resources)
    app.command(
        "forget-node",
        short_help="Drop a retired, renamed or mistyped node's stored reading (its history stays).",
    )(forget_node)


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
    from ringrift_coord import readings, safeguards

    g = globals_of(ctx)
    for option, value in (("--cpu", cpu), ("--gpu", gpu), ("--mem", mem), ("--disk", disk)):
        _percent(option, value)
    if load is not None and not (0.0 <= load <= MAX_LOAD):  # also refuses nan
        raise UsageError(f"option --load: {load!r} is not a load average from 0 to {MAX_LOAD:.0f}")
    check_hardware(gpu_count, cpus, memory_gb)
    not_blank("--gpu-name", gpu_name)
    node = not_blank("--node", node)
    figures = {"cpu": cpu, "gpu": gpu, "memory": mem, "disk": disk, "load_avg": load}
    hardware = {"gpu_name": gpu_name, "gpu_count": gpu_count, "cpus": cpus, "memory_gb": memory_gb}
    with g.context() as c:
        stored = safeguards.store_reading(c, node, figures, hardware)
        alerts = readings.alerts(stored, c.settings.get("thresholds"))
    if g.json:
        emit_json(stored)
    else:
        views.reported(stored)
    for message in views.reading_alerts(alerts, stored["node"]):
        say(message)  # on stderr, with --json too: what the stored reading does to admission
    done()


# --------------------------------------------------------------------------- resources


def resources(
    ctx: typer.Context,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Every node's latest reading against the thresholds, its hardware and effective caps;
    a node that a reading blocks says BLOCKED, one past a warning level says warn."""
    from ringrift_coord import reports

    g = globals_of(ctx)
    table_output(fmt, no_header)
    node = not_blank("--node", node)
    with g.context(create=False) as c:
        doc = reports.resources(c, node)
    if g.json:
        emit_json(doc)
    else:
        views.resources_table(doc, node)
    done()


# --------------------------------------------------------------------------- forget-node


def forget_node(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", help="The node whose reading to drop.")],
) -> None:
    """Drop a retired, renamed or mistyped node's stored reading, so that `resources`,
    `metrics` (its per-node series) and the readings-stale alert forget it. Only the reading
    goes: tasks, breakers, caps, history and the denial counters stay. A node with no
    reading is refused (exit 2, with the closest stored name). A node that reports again
    is back."""
    from ringrift_coord import readings
    from ringrift_coord.inputs import did_you_mean

    g = globals_of(ctx)
    if not node.strip():
        raise UsageError("NODE must not be empty")
    with g.context(create=False) as c, c.store.write() as tx:
        row = readings.latest(tx, node)
        if row is None:
            hint = did_you_mean(node, [r["node"] for r in readings.all_latest(tx)])
            raise UsageError(
                f"node {node!r} has no stored reading{hint} (`resources` lists the nodes)"
            )
        readings.forget(tx, node)
        at, now = float(row["at"]), tx.now()
    doc = {"node": node, "forgotten": 1, "reading_at": at}
    if g.json:
        emit_json(doc)
    else:
        say(f"forgot the reading of {node} ({views.age(now - at)} old)")
    done()
