"""``breakers``: list, reset and feed the circuit breakers per (node, task type).

``breakers list`` (the default) only reads: it never writes to the store, so looking at a
breaker never moves its recovery timer. ``reset`` closes breakers by hand; ``record-failure``
and ``record-success`` let scripts that run jobs outside ``run``/``register`` feed them.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ringrift_coord.cli.hot import Globals, emit_json
from ringrift_coord.errors import UsageError
from ringrift_coord.tasktypes import TASK_TYPE_NAMES, TaskType

breakers_app = typer.Typer(
    help="Circuit breakers per (node, task type): list, reset, record outcomes."
)


def _complete_types(incomplete: str) -> list[str]:
    return [t for t in TASK_TYPE_NAMES if t.startswith(incomplete)]


def _g(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def _one_line(option: str, value: str | None) -> None:
    if value is not None and any(ch < " " or ch == "\x7f" for ch in value):
        raise UsageError(f"option {option}: {value!r} contains control characters")


def _selector_node(node: str | None) -> str | None:
    if node is None:
        return None
    if not node.strip():
        raise UsageError("--node must not be empty")
    _one_line("--node", node)
    return node


def _node_or_default(node: str | None) -> str:
    from ringrift_coord.task_coordinator import default_node

    return _selector_node(node) or default_node()


def _type(task_type: str | None) -> str | None:
    return None if task_type is None else TaskType.parse(task_type).value


def _done(code: int = 0) -> None:
    raise typer.Exit(int(code))


# --------------------------------------------------------------------------- list


@breakers_app.callback(invoke_without_command=True)
def breakers_default(ctx: typer.Context) -> None:
    """Circuit breakers per (node, task type): list (default), reset, record outcomes."""
    if ctx.invoked_subcommand is None:
        breakers_list(ctx)


@breakers_app.command("list")
def breakers_list(
    ctx: typer.Context,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    task_type: Annotated[
        str | None,
        typer.Option("--type", help="Only this task type.", autocompletion=_complete_types),
    ] = None,
) -> None:
    """Every breaker: state, failures in the window, last reason, when it may retry."""
    from ringrift_coord import breakers
    from ringrift_coord.breakers import BreakerConfig

    g = _g(ctx)
    node, ttype = _selector_node(node), _type(task_type)
    with g.context() as c:
        cfg = BreakerConfig.from_settings(c.settings)
        with c.store.read() as tx:  # reading only: never restarts a timer
            now = tx.now()
            rows = [
                b.to_dict(now, cfg)
                for b in breakers.load_all(tx)
                if (node is None or b.node == node) and (ttype is None or b.task_type == ttype)
            ]
    if g.json:
        emit_json(rows)
    else:
        breakers_table(rows, now)
    _done()


_COLOURS = {"closed": "green", "open": "red", "half_open": "yellow"}


def breakers_table(rows: list[dict[str, Any]], now: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ringrift_coord.cli import views

    if not rows:
        views.console().print("no circuit breakers recorded (every node and type is closed)")
        return
    table = Table(title=f"circuit breakers ({len(rows)})", title_justify="left")
    for col in (
        "node",
        "type",
        "state",
        "failures in window",
        "last reason",
        "opened at",
        "retry at / in",
    ):
        table.add_column(col)
    for r in rows:
        colour = _COLOURS.get(r["state"], "white")
        state = f"[{colour}]{r['state']}[/]"
        if r["state"] == "half_open" and r.get("trials_in_flight"):
            state += f" ({r['trials_in_flight']} trial(s) running)"
        retry = "-"
        if r["retry_at"] is not None:
            retry = f"{views.ts(r['retry_at'])} (in {views.age(max(0.0, r['retry_at'] - now))})"
        elif r["state"] == "half_open":
            retry = "now (trial)"
        table.add_row(
            escape(r["node"]),
            r["task_type"],
            state,
            str(r["failures"]),
            escape(r["last_reason"] or "-"),
            views.ts(r["opened_at"]),
            retry,
        )
    views.console().print(table)


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
            autocompletion=_complete_types,
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Close every breaker.")] = False,
) -> None:
    """Close breakers by hand: one (--node and --type), a node's, a type's, or --all."""
    from ringrift_coord import breakers

    g = _g(ctx)
    node, ttype = _selector_node(node), _type(task_type)
    if all_ and (node is not None or ttype is not None):
        raise UsageError("breakers reset: --all takes no --node or --type")
    if not all_ and node is None and ttype is None:
        raise UsageError("breakers reset needs --node N and/or --type T, or --all")
    with g.context() as c, c.store.write() as tx:
        rows = breakers.reset(tx, node=node, task_type=ttype)
    if g.json:
        emit_json({"reset": rows})
        _done()
    for r in rows:
        sys.stdout.write(f"reset {r['task_type']} on {r['node']} (was {r['state']})\n")
    scope = (
        "every breaker"
        if all_
        else " ".join(
            part
            for part in (f"node {node}" if node else "", f"type {ttype}" if ttype else "")
            if part
        )
    )
    sys.stdout.write(f"{len(rows)} breaker(s) reset ({scope})\n")
    _done()


# --------------------------------------------------------------------------- record


def _record(
    ctx: typer.Context, node: str | None, task_type: str, ok: bool, reason: str | None
) -> None:
    from ringrift_coord import guards
    from ringrift_coord.breakers import BreakerConfig

    g = _g(ctx)
    _one_line("--reason", reason)
    if reason is not None and len(reason) > 300:
        raise UsageError("--reason: at most 300 characters")
    ttype = TaskType.parse(task_type).value
    the_node = _node_or_default(node)
    with g.context() as c:
        cfg = BreakerConfig.from_settings(c.settings)
        with c.store.write() as tx:
            now = tx.now()
            breaker = guards.record_manual(
                tx,
                c.settings,
                the_node,
                ttype,
                now,
                ok=ok,
                reason=None if ok else (reason or "failure recorded by a script"),
            )
            doc = breaker.to_dict(now, cfg)
    if g.json:
        emit_json(doc)
        _done()
    extra = ""
    if doc["state"] == "open" and doc["retry_after"] is not None:
        extra = f", retry in {doc['retry_after']:.0f} s"
    sys.stdout.write(
        f"recorded {'success' if ok else 'failure'} for {ttype} on {the_node}: breaker "
        f"{doc['state']} ({doc['failures']} failure(s) in the window{extra})\n"
    )
    _done()


@breakers_app.command("record-failure")
def breakers_record_failure(
    ctx: typer.Context,
    task_type: Annotated[
        str,
        typer.Option("--type", help="Task type of the failed job.", autocompletion=_complete_types),
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
            "--type", help="Task type of the job that succeeded.", autocompletion=_complete_types
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
