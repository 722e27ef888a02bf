"""``breakers``: list, reset and feed the circuit breakers per (node, task type).

``breakers list`` (the default) only reads: it never writes to the store, so looking at a
breaker never moves its recovery timer. ``reset`` closes breakers by hand; ``record-failure``
and ``record-success`` let scripts that run jobs outside ``run``/``register`` feed them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ringrift_coord import tasktypes
from ringrift_coord.cli import views
from ringrift_coord.cli.common import (
    FormatOpt,
    NoHeaderOpt,
    complete_types,
    done,
    globals_of,
    not_blank,
    table_output,
)
from ringrift_coord.cli.hot import emit_json, say_if_cut
from ringrift_coord.errors import UsageError

breakers_app = typer.Typer(
    help="Circuit breakers per (node, task type): list, reset, record outcomes."
)


def _type(task_type: str | None) -> str | None:
    return None if task_type is None else tasktypes.parse(task_type)


# --------------------------------------------------------------------------- list


@breakers_app.callback(invoke_without_command=True)
def breakers_default(
    ctx: typer.Context, fmt: FormatOpt = None, no_header: NoHeaderOpt = False
) -> None:
    """Circuit breakers per (node, task type): list (default), reset, record outcomes."""
    if ctx.invoked_subcommand is None:
        breakers_list(ctx, fmt=fmt, no_header=no_header)


@breakers_app.command("list")
def breakers_list(
    ctx: typer.Context,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    task_type: Annotated[
        str | None,
        typer.Option("--type", help="Only this task type.", autocompletion=complete_types),
    ] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Every breaker: state, failures in the window, last reason, when it may retry."""
    from ringrift_coord import reports

    g = globals_of(ctx)
    table_output(fmt, no_header, ctx)
    node, ttype = not_blank("--node", node), _type(task_type)
    with g.context(create=False) as c:
        doc = reports.breaker_list(c, node, ttype)
    if g.json:
        emit_json(doc)
    else:
        views.breakers_table(doc["breakers"], doc["at"], doc["backpressure"])
    done()


# --------------------------------------------------------------------------- reset


@breakers_app.command("reset")
def breakers_reset(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Option("--node", help="The node whose breakers to close (with --type: one breaker)."),
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="The task type whose breakers to close (with --node: one breaker).",
            autocompletion=complete_types,
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Close every breaker.")] = False,
) -> None:
    """Close breakers by hand: one (--node and --type), a node's, a type's, or --all."""
    from ringrift_coord import safeguards

    g = globals_of(ctx)
    node, ttype = not_blank("--node", node), _type(task_type)
    if all_ and (node is not None or ttype is not None):
        raise UsageError("breakers reset: --all takes no --node or --type")
    if not all_ and node is None and ttype is None:
        raise UsageError("breakers reset needs --node N and/or --type T, or --all")
    with g.context() as c:
        result = safeguards.reset(c, node=node, task_type=ttype)
    if g.json:
        emit_json(result)
        done()
    selected = (f"node {node}" if node else "", f"type {ttype}" if ttype else "")
    views.breakers_reset(
        result["reset"],
        "every breaker" if all_ else " ".join(p for p in selected if p),
        result["backpressure_reset"],
    )
    done()


# --------------------------------------------------------------------------- record


def _record(
    ctx: typer.Context, node: str | None, task_type: str, ok: bool, reason: str | None
) -> None:
    from ringrift_coord import safeguards

    g = globals_of(ctx)
    tasktypes.parse(task_type)  # a bad type is a usage error before the store is opened
    node = not_blank("--node", node)
    if not ok:
        from ringrift_coord.feedback import MAX_REASON  # (a breaker keeps one line of 300)

        say_if_cut(reason, MAX_REASON)
    with g.context() as c:
        if ok:
            doc = safeguards.record_success(c, task_type, node)
        else:
            doc = safeguards.record_failure(c, task_type, node, reason)
    if g.json:
        emit_json(doc)
    else:
        views.outcome_recorded(doc, ok)
    done()


@breakers_app.command("record-failure")
def breakers_record_failure(
    ctx: typer.Context,
    task_type: Annotated[
        str,
        typer.Option("--type", help="Task type of the failed job.", autocompletion=complete_types),
    ],
    node: Annotated[
        str | None,
        typer.Option("--node", help="Node id (default: $RINGRIFT_NODE_ID, else host name)."),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why it failed (shown as the breaker's last reason)."),
    ] = None,
) -> None:
    """Feed one failure to the (node, type) breaker, for jobs run outside `run`."""
    _record(ctx, node, task_type, False, reason)


@breakers_app.command("record-success")
def breakers_record_success(
    ctx: typer.Context,
    task_type: Annotated[
        str,
        typer.Option(
            "--type", help="Task type of the job that succeeded.", autocompletion=complete_types
        ),
    ],
    node: Annotated[
        str | None,
        typer.Option("--node", help="Node id (default: $RINGRIFT_NODE_ID, else host name)."),
    ] = None,
) -> None:
    """Feed one success to the (node, type) breaker (a half-open one counts it as a trial)."""
    _record(ctx, node, task_type, True, None)


def register(app: typer.Typer) -> None:
    app.add_typer(breakers_app, name="breakers")
