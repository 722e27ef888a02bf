"""``adjust`` and ``utilization``: the resource optimizer's feedback step and what it sees.

``adjust`` (from cron or a systemd timer, every few minutes on one node) runs one feedback
step: cluster utilization from the fresh readings, the trend's forecast, the PID controller,
the new self-play rate and the per-node self-play targets that admission's ``optimizer`` rule
enforces. It exits 0 whether it acted, held or found the last adjust too recent (it says
which); ``--dry-run`` computes and prints without storing. ``utilization`` only reads:
utilization against the targets, the scaling flags, the rate and the last action.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ringrift_coord.cli import views
from ringrift_coord.cli.common import (
    FormatOpt,
    NoHeaderOpt,
    done,
    globals_of,
    not_blank,
    table_output,
)
from ringrift_coord.cli.hot import emit_json


def register(app: typer.Typer) -> None:
    """Add ``adjust`` and ``utilization`` to the app."""
    app.command("adjust")(adjust)
    app.command("utilization")(utilization)


def adjust(
    ctx: typer.Context,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Compute and print the step; store nothing."),
    ] = False,
    requestor: Annotated[
        str | None,
        typer.Option(
            "--requestor",
            metavar="R",
            help="Who asks, e.g. cron or unified_loop (logged in the rate's history).",
        ),
    ] = None,
) -> None:
    """One feedback step of the resource optimizer: set the self-play rate and the per-node
    self-play targets from cluster utilization (run it from cron on one node)."""
    from ringrift_coord.identity import host_name, who_am_i
    from ringrift_coord.optimizer import adjust as step

    g = globals_of(ctx)
    requestor = not_blank("--requestor", requestor)
    with g.context(create=not dry_run) as c:  # a dry run creates no store either
        doc = step.adjust(
            c.store,
            c.settings,
            dry_run=dry_run,
            who=who_am_i(c.env),
            host=host_name(),
            requestor=requestor,
        )
    if g.json:
        emit_json(doc)
    else:
        views.adjusted(doc)
    done()


def utilization(
    ctx: typer.Context,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Cluster utilization from the fresh readings against the targets, the scaling flags,
    the self-play rate and the optimizer's last action."""
    from ringrift_coord.optimizer import utilization as util

    g = globals_of(ctx)
    table_output(fmt, no_header)
    with g.context(create=False) as c:
        util.targets(c.settings)  # a bad setting it reads: exit 3 naming its source
        c.settings.require("optimizer")
        with c.store.read() as tx:
            doc = util.status(tx, c.settings, tx.now())
    if g.json:
        emit_json(doc)
    else:
        views.utilization_screen(doc)
    done()
