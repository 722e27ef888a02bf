"""The Typer app: every command's parsing, help and completion.

Each command parses, calls one core function, renders (``views``) and exits with the
contract's code. Core errors propagate to the one boundary in ``cli/main.py``, which also
runs this app (``run_typer``). The global options and the hot commands are generated from
``cli/spec.py`` (``cli/build.py``), the declaration the fast parser reads too.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC
from typing import Annotated, Any

import typer

from ringrift_coord.cli import build, views
from ringrift_coord.cli.hot import Globals, emit_json
from ringrift_coord.cli.spec import HELP_OPTIONS
from ringrift_coord.errors import ExitCode, UsageError
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

app = typer.Typer(
    name="ringrift-coord",
    help="Coordination layer of the RingRift training cluster: admission, slots, halts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": list(HELP_OPTIONS)},
    cls=build.Group,  # every command's text values pass parser.check_text
)
tasks_app = typer.Typer(help="Running tasks: list them, reap dead holders, show history.")
config_app = typer.Typer(help="Effective configuration and validation.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(config_app, name="config")


def _complete_types(incomplete: str) -> list[str]:
    return [t for t in TASK_TYPE_NAMES if t.startswith(incomplete)]


TypeOpt = Annotated[
    str | None, typer.Option("--type", help="Task type.", autocompletion=_complete_types)
]


def _g(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def _done(code: int = 0) -> None:
    raise typer.Exit(int(code))


def _one_line(option: str, value: str | None) -> None:
    """Refuse control characters in text that later messages print (they must stay one line)."""
    if value is not None and any(ch < " " or ch == "\x7f" for ch in value):
        raise UsageError(f"option {option}: {value!r} contains control characters")


def _ttl_ok(ttl: float | None) -> None:
    """An expiry past what timestamps can show (year 9999) would break every later listing."""
    if ttl is not None and ttl > 1e9:
        raise UsageError(f"--ttl {ttl:g}: at most 1e9 seconds (about 31 years)")


build.install(app)  # the global options and the hot commands, from cli/spec.py


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
        for row in rows:
            sys.stdout.write(
                f"reaped {row['task_id']} ({row['task_type']} on {row['node']}): {row['reason']}\n"
            )
        sys.stdout.write(f"{len(rows)} slot(s) freed\n")
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
    with g.context() as c:
        coord = TaskCoordinator(c)
        if what == "release":
            if not res_id:
                raise UsageError("reserve release needs the reservation ID")
            coord.release_reservation(res_id)
            result: Any = {"released": res_id}
            text = f"released {res_id}"
        elif what == "list":
            result = coord.list_reservations()
            text = None
        else:
            if res_id is not None:
                raise UsageError(f"unexpected extra argument {res_id!r}")
            if not node or slots is None:
                raise UsageError("reserve TYPE needs --node N and --slots K")
            _one_line("--node", node)
            _ttl_ok(ttl)
            if slots > 1_000_000:  # beyond any node, and beyond what the store keeps
                raise UsageError(f"--slots {slots}: at most 1000000")
            result = coord.reserve(what, node, slots, ttl)
            text = result["res_id"]
    if g.json:
        emit_json(result)
    elif text is None:
        views.reservations_table(result)
    else:
        sys.stdout.write(text + "\n")
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
    from ringrift_coord.tasktypes import TaskType

    g = _g(ctx)
    _one_line("--reason", reason)
    _ttl_ok(ttl)
    with g.context() as c:
        if check:
            if reason is not None or ttl is not None:
                raise UsageError("halt --check takes no --reason or --ttl")
            status = safeguards.halt_status(c)
            scope = None if task_type is None else TaskType.parse(task_type).value
            active = [h for h in status["halts"] if scope is None or h["scope"] in ("*", scope)]
            halted = bool(active) or status["halt_file"] is not None
            if g.json:
                emit_json({"halted": halted, **status})
            else:
                views.halt_check(status, halted)
            _done(ExitCode.DENIED if halted else ExitCode.OK)
        record = safeguards.activate_emergency(c, reason, task_type=task_type, ttl=ttl)
    if g.json:
        emit_json(record)
    else:
        what = "every task type" if record["scope"] == "*" else record["scope"]
        until = "" if record["expires_at"] is None else f" until {views.ts(record['expires_at'])}"
        sys.stdout.write(f"halted {what} cluster-wide{until} (by {record['who']})\n")
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
        lifted = ", ".join("all types" if s == "*" else s for s in result["lifted"]) or "nothing"
        extra = " and removed the halt file" if result["removed_halt_file"] else ""
        sys.stdout.write(f"unhalted: {lifted}{extra}\n")
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
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = _g(ctx)
    since_ts = None if since is None else parse_since(since, time.time())
    with g.context() as c:
        rows = TaskCoordinator(c).decisions(
            denied_only=denied, since=since_ts, node=node, task_type=task_type, limit=limit
        )
    for row in rows:
        import json

        row["rules"] = json.loads(row["rules"]) if row["rules"] else []
        row["allowed"] = bool(row["allowed"])
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


def _show_settings(g: Globals, sections: list[str], title: str, extra: Any = None) -> None:
    with g.context() as c:
        settings = c.settings
        more = extra(c) if extra else {}  # limits: OOM-lowered caps and backpressure
    rows = [
        {"key": key, "value": value, "source": source}
        for section in sections
        for key, value, source in settings.flat(section)
    ]
    if g.json:
        emit_json({"config_file": settings.file, "values": rows, **more})
    else:
        views.settings_table(rows, title, settings.file)
        if extra:
            resources_cmd.print_caps(more)


@app.command()
def limits(ctx: typer.Context) -> None:
    """Effective task limits, rate limits, thresholds and store settings, with their source;
    the caps lowered after repeated OOMs and the backpressure factors in force."""
    _show_settings(
        _g(ctx),
        ["task_limits", "rate_limits", "thresholds", "store", "run"],
        "limits",
        extra=resources_cmd.caps_in_force,
    )
    _done()


@app.command()
def targets(ctx: typer.Context) -> None:
    """Effective utilization targets and PID gains, with their source."""
    _show_settings(_g(ctx), ["resource_targets", "durations", "peak_hours"], "targets")
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
        sys.stdout.write(f"{settings.file or 'built-in defaults'}: valid\n")
    _done()


# --------------------------------------------------------------------------- status


@app.command()
def status(ctx: typer.Context) -> None:
    """One screen: halt, tasks against limits per node and type, breakers, reservations."""
    from ringrift_coord import breakers, safeguards
    from ringrift_coord.breakers import BreakerConfig
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = _g(ctx)
    with g.context() as c:
        coord = TaskCoordinator(c)
        stats = coord.get_stats()
        halts = safeguards.halt_status(c)
        tasks = coord.list_tasks()
        cfg = BreakerConfig.from_settings(c.settings)
        with c.store.read() as tx:  # reading never restarts a breaker's timer
            now = tx.now()
            breaker_rows = [b.to_dict(now, cfg) for b in breakers.load_all(tx)]
    document = {**stats, "halt": halts, "tasks": tasks, "breakers": breaker_rows}
    if g.json:
        emit_json(document)
    else:
        views.status_screen(document)
        not_closed = [r for r in breaker_rows if r["state"] != "closed"]
        if not_closed:
            breakers_cmd.breakers_table(not_closed, now)
    _done()


# --------------------------------------------------------------------------- breakers

from ringrift_coord.cli import breakers_cmd  # noqa: E402

breakers_cmd.register(app)

from ringrift_coord.cli import resources_cmd  # noqa: E402  (report, resources)

resources_cmd.register(app)
