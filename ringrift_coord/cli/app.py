"""The Typer app: every command's parsing, help and completion.

Each command parses, calls one core function, renders (``views``) and exits with the
contract's code. Core errors propagate to the one boundary in ``ringrift_coord.entry``.
The hot commands share their implementation with the fast parser (``cli/hot.py``).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC
from typing import Annotated, Any

import typer
from typer import _click as click

from ringrift_coord import __version__
from ringrift_coord.cli import hot, views
from ringrift_coord.cli.common import complete_types as _complete_types
from ringrift_coord.cli.common import done as _done
from ringrift_coord.cli.common import globals_of as _g
from ringrift_coord.cli.common import node_option, one_line
from ringrift_coord.cli.hot import Globals, emit_json
from ringrift_coord.errors import CoordError, ExitCode, UsageError
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

app = typer.Typer(
    name="ringrift-coord",
    help="Coordination layer of the RingRift training cluster: admission, slots, halts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)
tasks_app = typer.Typer(help="Running tasks: list them, reap dead holders, show history.")
config_app = typer.Typer(help="Effective configuration and validation.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(config_app, name="config")


TypeArg = Annotated[
    str,
    typer.Argument(
        metavar="TYPE", help="Task type, e.g. selfplay or training.", autocompletion=_complete_types
    ),
]
NodeOpt = Annotated[
    str | None, typer.Option("--node", help="Node id (default: $RINGRIFT_NODE_ID, else host name).")
]
TypeOpt = Annotated[
    str | None, typer.Option("--type", help="Task type.", autocompletion=_complete_types)
]


@app.callback()
def _main(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Store: a path or sqlite:///path, or postgresql://host/db "
            "(env RINGRIFT_COORD_DB; default: tasks.db in the state directory).",
        ),
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            help="State directory (env RINGRIFT_COORDINATOR_DIR; default: "
            "$XDG_STATE_HOME/ringrift-coord).",
        ),
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="YAML config file (env RINGRIFT_COORD_CONFIG).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one setting, e.g. --set "
            "task_limits.selfplay.per_node=8 (repeatable; above env and config file).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Machine output: one JSON document on stdout.")
    ] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        sys.stdout.write(f"ringrift-coord {__version__}\n")
        raise typer.Exit(0)
    ctx.obj = Globals(db=db, state_dir=state_dir, config=config, json=json_out, overrides=overrides)


# --------------------------------------------------------------------------- hot commands


@app.command("can-spawn")
def can_spawn(ctx: typer.Context, task_type: TypeArg, node: NodeOpt = None) -> None:
    """The whole admission decision, without taking a slot: exit 0 allowed, 1 denied."""
    _done(hot.can_spawn(_g(ctx), task_type, node))


@app.command("spawn-check", hidden=True)
def spawn_check(ctx: typer.Context, task_type: TypeArg, node: NodeOpt = None) -> None:
    """Alias of can-spawn."""
    _done(hot.can_spawn(_g(ctx), task_type, node))


@app.command()
def register(
    ctx: typer.Context,
    task_type: TypeArg,
    node: NodeOpt = None,
    pid: Annotated[
        int | None,
        typer.Option("--pid", help="Holder process (default: the calling shell, $PPID)."),
    ] = None,
    task_id: Annotated[str | None, typer.Option("--task-id", help="Task id to use.")] = None,
    config_name: Annotated[
        str | None, typer.Option("--config-name", help="Board config, e.g. square8_2p.")
    ] = None,
) -> None:
    """Check and register in one atomic step; prints the task id."""
    _done(hot.register(_g(ctx), task_type, node, pid, task_id, config_name))


@app.command()
def unregister(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id from register.")],
    exit_code: Annotated[
        int | None, typer.Option("--exit-code", help="The job's exit code.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="ok, failed, oom, killed or stopped (default from --exit-code)."
        ),
    ] = None,
    token: Annotated[
        int | None,
        typer.Option(
            "--token", help="Fencing token (default $RINGRIFT_LEASE_TOKEN for this task)."
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why it ended.")] = None,
) -> None:
    """Release a slot; records the duration and the exit status."""
    _done(hot.unregister(_g(ctx), task_id, exit_code, status, token, reason))


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    }
)
def run(
    ctx: typer.Context,
    task_type: TypeArg,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- CMD...", help="The command to run while the slot is held."),
    ] = None,
    node: NodeOpt = None,
    config_name: Annotated[
        str | None, typer.Option("--config-name", help="Board config, e.g. square8_2p.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait in a fair queue for a slot.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="With --wait: give up after S seconds (exit 75)."),
    ] = None,
) -> None:
    """Run CMD holding a slot: register, heartbeat, forward signals, release on any exit.

    Exits with CMD's exit code (128+N if it died of signal N, 126/127 if it could not run),
    or 75 when no slot was granted.
    """
    _done(
        hot.run(
            _g(ctx),
            task_type,
            node,
            config_name,
            wait,
            timeout,
            list(command or []) + list(ctx.args),
        )
    )


# --------------------------------------------------------------------------- tasks


@tasks_app.callback(invoke_without_command=True)
def tasks_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        tasks_list(ctx)


@tasks_app.command("list")
def tasks_list(
    ctx: typer.Context,
    task_type: TypeOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
) -> None:
    """Running tasks with age, pid, host and lease."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = _g(ctx)
    with g.context() as c:
        rows = TaskCoordinator(c).list_tasks(task_type, node)
    if g.json:
        emit_json(rows)
    else:
        views.tasks_table(rows)
    _done()


@tasks_app.command("reap")
def tasks_reap(ctx: typer.Context) -> None:
    """Free the slots of dead holders now."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = _g(ctx)
    with g.context() as c:
        rows = TaskCoordinator(c).reap()
    if g.json:
        emit_json({"reaped": rows})
    else:
        views.reaped(rows)
    _done()


@tasks_app.command("history")
def tasks_history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1_000_000, help="How many.")] = 20,
) -> None:
    """Finished tasks: duration, exit code and status, newest first."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = _g(ctx)
    with g.context() as c:
        rows = TaskCoordinator(c).history(limit)
    if g.json:
        emit_json(rows)
    else:
        views.history_table(rows)
    _done()


# --------------------------------------------------------------------------- reserve


@app.command()
def reserve(
    ctx: typer.Context,
    what: Annotated[
        str,
        typer.Argument(
            metavar="TYPE|release|list",
            help="Task type to reserve for, or release ID, or list.",
            autocompletion=lambda incomplete: [
                w for w in (*TASK_TYPE_NAMES, "release", "list") if w.startswith(incomplete)
            ],
        ),
    ],
    res_id: Annotated[str | None, typer.Argument(metavar="[ID]", help="With release.")] = None,
    node: Annotated[str | None, typer.Option("--node", help="Node to hold slots on.")] = None,
    slots: Annotated[int | None, typer.Option("--slots", help="How many slots.")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", help="Expire after S seconds.")] = None,
) -> None:
    """Gauntlet reservation: hold K slots on a node for one task type (reserve release ID)."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = _g(ctx)
    if what == "release":
        if not res_id:
            raise UsageError("reserve release needs the reservation ID")
    elif what != "list":
        if res_id is not None:
            raise UsageError(f"unexpected extra argument {res_id!r}")
        if not node or slots is None:
            raise UsageError("reserve TYPE needs --node N and --slots K")
        node_option(node)
    with g.context() as c:
        coord = TaskCoordinator(c)
        if what == "release":
            assert res_id is not None
            coord.release_reservation(res_id)
            result: Any = {"released": res_id}
        elif what == "list":
            result = coord.list_reservations()
        else:
            assert node is not None and slots is not None
            result = coord.reserve(what, node, slots, ttl)
    if g.json:
        emit_json(result)
    elif what == "release":
        views.line(f"released {res_id}")
    elif what == "list":
        views.reservations_table(result)
    else:
        views.line(result["res_id"])
    _done()


# --------------------------------------------------------------------------- halt


@app.command()
def halt(
    ctx: typer.Context,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept in the audit trail).")
    ] = None,
    task_type: TypeOpt = None,
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Lift by itself after S seconds.")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Only test: exit 1 when halted.")] = False,
) -> None:
    """Emergency stop of every new spawn (or of one type), cluster-wide."""
    from ringrift_coord import safeguards

    g = _g(ctx)
    one_line("--reason", reason)
    if check:
        if reason is not None or ttl is not None:
            raise UsageError("halt --check takes no --reason or --ttl")
        with g.context() as c:
            status = safeguards.halt_status(c, task_type)
        if g.json:
            emit_json(status)
        else:
            views.halt_check(status)
        _done(ExitCode.DENIED if status["halted"] else ExitCode.OK)
    with g.context() as c:
        record = safeguards.activate_emergency(c, reason, task_type=task_type, ttl=ttl)
    if g.json:
        emit_json(record)
    else:
        views.halted(record)
    _done()


@app.command()
def unhalt(ctx: typer.Context, task_type: TypeOpt = None) -> None:
    """Lift the halt (every halt, or only that of --type)."""
    from ringrift_coord import safeguards

    g = _g(ctx)
    with g.context() as c:
        result = safeguards.deactivate_emergency(c, task_type=task_type)
    if g.json:
        emit_json(result)
    else:
        views.unhalted(result)
    _done()


# --------------------------------------------------------------------------- decisions


@app.command()
def decisions(
    ctx: typer.Context,
    denied: Annotated[bool, typer.Option("--denied", help="Only refusals.")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time, or an age like 30m, 2h, 1d.")
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    task_type: TypeOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1_000_000, help="How many, newest first.")
    ] = 50,
) -> None:
    """The persisted log of admission decisions: who asked, what was decided, why."""
    from ringrift_coord import reports

    g = _g(ctx)
    since_ts = None if since is None else parse_since(since, time.time())
    with g.context() as c:
        rows = reports.decisions(
            c, denied_only=denied, since=since_ts, node=node, task_type=task_type, limit=limit
        )
    if g.json:
        emit_json(rows)
    else:
        views.decisions_table(rows)
    _done()


def parse_since(text: str, now: float) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip()
    if raw and raw[-1] in units and raw[:-1].replace(".", "", 1).isdigit():
        return now - float(raw[:-1]) * units[raw[-1]]
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: give an ISO 8601 time or an age like 30m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --------------------------------------------------------------------------- limits, targets


def _show_settings(g: Globals, sections: list[str], title: str) -> None:
    from ringrift_coord import reports

    with g.context() as c:
        doc = reports.settings(c, sections)
    if g.json:
        emit_json(doc)
    else:
        views.settings_table(doc, title)


@app.command()
def limits(ctx: typer.Context) -> None:
    """Effective task limits, rate limits, thresholds and store settings, with their source;
    the caps lowered after repeated OOMs and the backpressure factors in force."""
    from ringrift_coord import reports

    g = _g(ctx)
    with g.context() as c:
        doc = reports.limits(c)
    if g.json:
        emit_json(doc)
    else:
        views.settings_table(doc, "limits")
        views.caps_tables(doc)
    _done()


@app.command()
def targets(ctx: typer.Context) -> None:
    """Effective utilization targets and PID gains, with their source."""
    from ringrift_coord.reports import TARGET_SECTIONS

    _show_settings(_g(ctx), TARGET_SECTIONS, "targets")
    _done()


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Every effective setting and where it came from."""
    from ringrift_coord.config import SCHEMA

    _show_settings(_g(ctx), list(SCHEMA), "configuration")
    _done()


@config_app.command("validate")
def config_validate(
    ctx: typer.Context,
    file: Annotated[
        str | None,
        typer.Argument(
            metavar="[FILE]", help="File to check (default: the effective config file)."
        ),
    ] = None,
) -> None:
    """Check a config file: exit 0 when valid, 3 with the file, line and key when not."""
    from ringrift_coord.config import load_settings

    g = _g(ctx)
    settings = load_settings(file or g.config)
    if g.json:
        emit_json({"valid": True, "file": settings.file})
    else:
        views.line(f"{settings.file or 'built-in defaults'}: valid")
    _done()


# --------------------------------------------------------------------------- status


@app.command()
def status(ctx: typer.Context) -> None:
    """One screen: halt, tasks against limits per node and type, breakers, reservations."""
    from ringrift_coord import reports

    g = _g(ctx)
    with g.context() as c:
        document = reports.status(c)
    if g.json:
        emit_json(document)
    else:
        views.status_screen(document)
    _done()


# --------------------------------------------------------------------------- breakers

from ringrift_coord.cli import breakers_cmd  # noqa: E402

breakers_cmd.register(app)

from ringrift_coord.cli import resources_cmd  # noqa: E402  (report, resources)

resources_cmd.register(app)


# --------------------------------------------------------------------------- entry


def run_app(argv: list[str]) -> int:
    """Run the app without Click's own error printing; the boundary prints one line."""
    command = typer.main.get_command(app)
    if os.environ.get("_RINGRIFT_COORD_COMPLETE"):  # Tab completion (see completions/)
        from typer.completion import completion_init

        completion_init()  # registers Typer's bash/zsh/fish classes (add_completion=False)
    try:
        result = command.main(args=argv, prog_name="ringrift-coord", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # the help is already on stdout
        path = exc.ctx.command_path if exc.ctx is not None else "ringrift-coord"
        raise _ClickUsage(f"missing command (see {path} --help)") from None
    except click.exceptions.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see {exc.ctx.command_path} --help)"
        raise _ClickUsage(f"{exc.format_message()}{hint}") from None
    except click.exceptions.ClickException as exc:
        raise _ClickUsage(exc.format_message()) from None
    except typer.Abort:
        raise KeyboardInterrupt from None
    return int(result or 0) if isinstance(result, int) else 0


class _ClickUsage(CoordError):
    exit_code = ExitCode.USAGE
