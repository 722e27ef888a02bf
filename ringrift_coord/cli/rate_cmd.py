"""``rate`` and ``distribution``: the negotiated self-play rate and its config-weighted split.

``rate show`` (also ``rate`` alone) only reads: the current rate, its last action and
confidence, when and by whom it was set, and its history newest first. ``rate negotiate RATE
--reason R --requestor Q`` asks for a rate and stores the approved, bounded one
(``optimizer.negotiate``). ``distribution`` splits the rate, or a node's self-play slots,
across the board configs by their weights (``optimizer.distribution``).
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
from ringrift_coord.errors import UsageError

rate_app = typer.Typer(help="The negotiated self-play rate: show it and its history, negotiate.")

LimitOpt = Annotated[
    int, typer.Option("--limit", metavar="N", help="History rows to show, newest first.")
]


MAX_RATE = 1e9  # games per hour: far above any cluster, far below where floats lose units


def _number(raw: str, what: str) -> float:
    """A positive finite number written as one (``2000``, ``1.5e3``), else a usage error."""
    from ringrift_coord.inputs import strict_float

    value = strict_float(raw.strip()) if raw.strip() == raw else None
    if value is None:
        raise UsageError(f"{what}: {raw!r} is not a number")
    if not 0 < value < float("inf"):
        raise UsageError(f"{what}: {raw} is not a finite positive number of games per hour")
    if value > MAX_RATE:
        raise UsageError(f"{what}: {raw} is more than {MAX_RATE:g} games per hour")
    return value


# --------------------------------------------------------------------------- rate


@rate_app.callback(invoke_without_command=True)
def rate_default(
    ctx: typer.Context,
    limit: LimitOpt = 20,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """``rate`` alone is ``rate show``."""
    if ctx.invoked_subcommand is None:
        rate_show(ctx, limit=limit, fmt=fmt, no_header=no_header)
    elif limit != 20:
        raise UsageError("--limit goes after the subcommand: rate show --limit N")


@rate_app.command("show")
def rate_show(
    ctx: typer.Context,
    limit: LimitOpt = 20,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """The current self-play rate, its last action and confidence, and its history."""
    from ringrift_coord.optimizer import negotiate

    g = globals_of(ctx)
    table_output(fmt, no_header, ctx)
    if not 1 <= limit <= 10_000:
        raise UsageError(f"option --limit: {limit} is not a number of rows from 1 to 10000")
    with g.context(create=False) as c:
        doc = negotiate.history(c, limit)
    if g.json:
        emit_json(doc)
    else:
        views.rate_screen(doc)
    done()


@rate_app.command("negotiate")
def rate_negotiate(
    ctx: typer.Context,
    rate: Annotated[
        str, typer.Argument(metavar="RATE", help="The self-play rate asked for, games per hour.")
    ],
    reason: Annotated[str, typer.Option("--reason", metavar="R", help="Why (logged).")],
    requestor: Annotated[
        str, typer.Option("--requestor", metavar="Q", help="Who asks, e.g. unified_loop (logged).")
    ],
) -> None:
    """Ask for a self-play rate; the approved one (within the configured bounds, moved by at
    most optimizer.max_change, not raised while the cluster is over target) is stored."""
    from ringrift_coord.optimizer import negotiate

    g = globals_of(ctx)
    asked = _number(rate, "argument RATE")
    with g.context() as c:
        doc = negotiate.negotiate_in(c, asked, reason, requestor)
    if g.json:
        emit_json(doc)
    else:
        views.rate_negotiated(doc)
    done()


# --------------------------------------------------------------------------- distribution


def distribution(
    ctx: typer.Context,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate", metavar="R", help="Split this rate (games per hour), not the current one."
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", metavar="N", help="Split this node's self-play slots.")
    ] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Split the self-play rate (or a node's self-play slots) across the board configs by
    their selfplay_configs weights, by largest remainder: the parts sum to the whole."""
    from ringrift_coord.optimizer import distribution as dist

    g = globals_of(ctx)
    table_output(fmt, no_header)
    node = not_blank("--node", node)
    if rate is not None and node is not None:
        raise UsageError("distribution: give --rate or --node, not both")
    asked = None if rate is None else _number(rate, "option --rate")
    with g.context(create=False) as c:
        if asked is not None:  # a given rate needs no store
            doc = dist.distribution(None, c.settings, 0.0, rate=asked)
        else:
            with c.store.read() as tx:
                doc = dist.distribution(tx, c.settings, tx.now(), node=node)
    if g.json:
        emit_json(doc)
    else:
        views.distribution_table(doc)
    done()


def register(app: typer.Typer) -> None:
    """Add ``rate`` and ``distribution`` to the app."""
    app.add_typer(rate_app, name="rate")
    app.command("distribution")(distribution)
