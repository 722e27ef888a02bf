"""The Typer app: every command's parsing, help and completion.

Each command parses, calls one core function, renders (``views``) and exits with the
contract's code. Core errors propagate to the one boundary in ``cli/main.py``, which also
runs this app (``run_typer``). The global options and the hot commands are generated from
``cli/spec.py`` (``cli/build.py``), the declaration the fast parser reads too.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ringrift_coord import tasktypes
from ringrift_coord.cli import build, views
from ringrift_coord.cli.common import (
    FormatOpt,
    NoHeaderOpt,
    complete_types,
    done,
    globals_of,
    not_blank,
    table_output,
)
from ringrift_coord.cli.hot import Globals, emit_json, say_if_cut
from ringrift_coord.cli.spec import HELP_OPTIONS
from ringrift_coord.errors import CoordError, ExitCode, UsageError
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
tasks_app = typer.Typer(
    help="Running tasks: list, show or cancel one, reap dead holders, show history."
)
config_app = typer.Typer(help="Effective configuration and validation.")
app.add_typer(tasks_app, name="tasks")
app.add_typer(config_app, name="config")


TypeOpt = Annotated[
    str | None, typer.Option("--type", help="Task type.", autocompletion=complete_types)
]


build.install(app)  # the global options and the hot commands, from cli/spec.py


def known_type(task_type: str | None) -> None:
    """A ``--type`` that names no task type is bad input (exit 2), said before the store
    is opened (a read-only command's "no store at PATH" is exit 3)."""
    if task_type is not None:
        tasktypes.parse(task_type)


# --------------------------------------------------------------------------- tasks


@tasks_app.callback(invoke_without_command=True)
def tasks_default(
    ctx: typer.Context,
    task_type: TypeOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """``tasks`` alone is ``tasks list``, with the same filters."""
    if ctx.invoked_subcommand is None:
        tasks_list(ctx, task_type=task_type, node=node, fmt=fmt, no_header=no_header)
    elif task_type is not None or node is not None:
        sub = ctx.invoked_subcommand
        raise UsageError(f"--type and --node go after the subcommand: tasks {sub} --node N")


@tasks_app.command("list")
def tasks_list(
    ctx: typer.Context,
    task_type: TypeOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Running tasks with age, pid, host and lease."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = globals_of(ctx)
    table_output(fmt, no_header, ctx)
    known_type(task_type)  # bad input is exit 2 before "no store" (exit 3)
    with g.context(create=False) as c:
        rows = TaskCoordinator(c).list_tasks(task_type, node)
    if g.json:
        emit_json({"tasks": rows})
    else:
        views.tasks_table(rows)
    done()


@tasks_app.command("reap")
def tasks_reap(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="H",
            help="Also free every slot held from host H now, leases or not: it died for good "
            "(a live holder on this host is never freed).",
        ),
    ] = None,
) -> None:
    """Free the slots of dead holders now, and end the transfers of dead holders.

    This host's liveness check too: keeps its live holders' leases fresh (run every lease_ttl/3)
    """
    from ringrift_coord import transfers
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = globals_of(ctx)
    host = None if host is None else not_blank("--host", host)
    with g.context() as c:
        coord = TaskCoordinator(c)
        rows = coord.reap(host)
        with c.store.write() as tx:
            gone = transfers.reap(tx, c.settings, tx.now())
        # --host naming this host: its live holders stay, and the operator is told so (a
        # host that died for good cannot be the one running the command)
        kept = 0
        if host is not None:
            from ringrift_coord.identity import host_name

            if host == host_name():
                kept = sum(1 for t in coord.list_tasks() if t["host"] == host)
    if g.json:
        emit_json({"reaped": rows, "reaped_transfers": gone, "kept_live": kept})
    else:
        views.reaped(rows, gone, kept=kept, host=host)
    done()


@tasks_app.command("history")
def tasks_history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1_000_000, help="How many.")] = 20,
    task_type: TypeOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only this status (ok, failed, oom, killed, stopped, spawn_failed, reaped).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Ended since: ISO 8601 time, or an age like 30m, 2h, 1d.",
        ),
    ] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Finished tasks: duration, exit code and status, newest first."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = globals_of(ctx)
    table_output(fmt, no_header, ctx)
    node = not_blank("--node", node)
    known_type(task_type)  # bad input is exit 2 before "no store" (exit 3)
    from ringrift_coord.slots import check_history_status

    check_history_status(status)
    since_at, since_age = (None, None) if since is None else parse_since(since)
    with g.context(create=False) as c:
        rows = TaskCoordinator(c).history(
            limit,
            task_type=task_type,
            node=node,
            status=status,
            since=since_at,
            since_age=since_age,
        )
        now = c.clock.time()
    if g.json:
        emit_json({"tasks": rows})
    else:
        views.history_table(rows, now)
    done()


@tasks_app.command("show")
def tasks_show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task id.")],
) -> None:
    """Everything recorded about one task: holder, lease, command, history, decisions."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = globals_of(ctx)
    with g.context(create=False) as c:
        doc = TaskCoordinator(c).show(task_id)
    if g.json:
        emit_json(doc)
    else:
        views.task_show(doc)
    done()


@tasks_app.command("cancel")
def tasks_cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task id.")],
    signal_name: Annotated[
        str,
        typer.Option(
            "--signal",
            help="TERM (default), INT, HUP or KILL; SIGKILL follows after run.kill_grace.",
        ),
    ] = "TERM",
) -> None:
    """End a running task on its own host: signal its job's process group, SIGKILL it after
    the grace, release the slot as stopped (e.g. the job of a wrapper killed by kill -9)."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = globals_of(ctx)
    from ringrift_coord.cancel import parse_signal

    parse_signal(signal_name)  # bad input is exit 2 before "no store" (exit 3)
    with g.context(create=False) as c:
        result = TaskCoordinator(c).cancel(task_id, signal_name)
    if g.json:
        emit_json(result)
    else:
        views.cancelled(result)
    done()


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
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            help="Expire after this long: seconds, or 30m, 2h, 1d.",
            metavar="DURATION",
            click_type=build.TTL,
        ),
    ] = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Gauntlet reservation: hold K slots on a node for one task type (reserve release ID)."""
    from ringrift_coord.task_coordinator import TaskCoordinator

    g = globals_of(ctx)
    table_output(fmt, no_header)
    if what in ("release", "list"):
        # (``reserve list --node n1`` listed every node's reservations, as if filtered)
        options = (("--node", node), ("--slots", slots), ("--ttl", ttl))
        stray = next((name for name, value in options if value is not None), None)
        if stray:
            raise UsageError(f"option {stray} applies only to reserve TYPE, not reserve {what}")
    if what == "release":
        if not res_id:
            raise UsageError("reserve release needs the reservation ID")
    elif what == "list":
        if res_id is not None:
            raise UsageError(f"unexpected extra argument {res_id!r}")
    else:
        _reserve_word(what)
        if res_id is not None:
            raise UsageError(f"unexpected extra argument {res_id!r}")
        if not node or slots is None:
            raise UsageError("reserve TYPE needs --node N and --slots K")
        not_blank("--node", node)
    with g.context(create=what != "list") as c:
        coord = TaskCoordinator(c)
        if what == "release":
            assert res_id is not None
            coord.release_reservation(res_id)
            result: Any = {"reservation_id": res_id, "released": True}
        elif what == "list":
            result = coord.list_reservations()
        else:
            assert node is not None and slots is not None
            result = coord.reserve(what, node, slots, ttl)
            _warn_unseen_node(c, node, "the reservation")
    if g.json:
        emit_json({"reservations": result} if what == "list" else result)
    elif what == "release":
        views.line(f"released {res_id}")
    elif what == "list":
        views.reservations_table(result)
    else:
        views.line(result["res_id"])
    done()


def _reserve_word(what: str) -> None:
    """WHAT is a task type, or a usage error with the nearest word: a subcommand (``lst``:
    did you mean list?) as well as a task type (``selfply``)."""
    from ringrift_coord.inputs import did_you_mean

    try:
        tasktypes.parse(what)
    except UsageError:
        hint = did_you_mean(what, (*TASK_TYPE_NAMES, "list", "release"))
        if hint.endswith(("list?)", "release?)")):
            where = "see 'ringrift-coord reserve --help'"
            raise UsageError(f"unknown task type or command {what!r}{hint}; {where}") from None
        raise


# --------------------------------------------------------------------------- halt


@app.command()
def halt(
    ctx: typer.Context,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept in the audit trail).")
    ] = None,
    task_type: TypeOpt = None,
    node: Annotated[
        str | None,
        typer.Option("--node", help="Drain this node only (the others go on spawning)."),
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            help="Lift by itself after this long: seconds, or 30m, 2h, 1d.",
            metavar="DURATION",
            click_type=build.TTL,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only test: exit 1 when halted (on --node, default this node)."
        ),
    ] = False,
) -> None:
    """Emergency stop of every new spawn (or of one type) in the store: cluster-wide on
    PostgreSQL, this host's store with SQLite; with --node, on that node only."""
    from ringrift_coord import safeguards

    g = globals_of(ctx)
    node = not_blank("--node", node)
    if check:
        if reason is not None or ttl is not None:
            raise UsageError("halt --check takes no --reason or --ttl")
        known_type(task_type)
        from ringrift_coord.identity import default_node

        with g.context(create=False, emergency=True) as c:
            if node is None:
                try:  # this node's drains count; with no usable node name, any node's do
                    node = default_node(c.env)
                except UsageError:
                    node = None
            status = safeguards.halt_status(c, task_type, node)
        if g.json:
            emit_json(status)
        else:
            views.halt_check(status)
        done(ExitCode.DENIED if status["halted"] else ExitCode.OK)
    say_if_cut(reason)
    with g.context(emergency=True) as c:
        record = safeguards.activate_emergency(c, reason, task_type=task_type, ttl=ttl, node=node)
        if node is not None:
            _warn_unseen_node(c, record["node"])
    if g.json:
        emit_json(record)
    else:
        views.halted(record)
    done()


def _warn_unseen_node(c: Any, node: str, what: str = "the drain") -> None:
    """A drain (or reservation) of a node the store has never heard of holds for that name
    only: said on stderr with the closest known name (it stands; a node may be drained, or
    its slots reserved, ahead of its first job)."""
    from ringrift_coord import halts
    from ringrift_coord.cli.hot import say
    from ringrift_coord.inputs import did_you_mean

    try:
        with c.store.read() as tx:
            seen = halts.seen_nodes(tx)
    except CoordError:
        return  # (the drain landed; this is only a hint)
    if node not in seen:
        say(
            f"warning: no task, waiter, reading or recent decision has named node {node} "
            f"yet{did_you_mean(node, sorted(seen))}: {what} holds for that name only"
        )


@app.command()
def unhalt(
    ctx: typer.Context,
    task_type: TypeOpt = None,
    node: Annotated[
        str | None,
        typer.Option("--node", help="Lift only this node's own halts (with --type: that one)."),
    ] = None,
) -> None:
    """Lift the halt (every halt, only that of --type, or only those of --node)."""
    from ringrift_coord import safeguards

    g = globals_of(ctx)
    node = not_blank("--node", node)
    with g.context(emergency=True) as c:
        result = safeguards.deactivate_emergency(c, task_type=task_type, node=node)
    if g.json:
        emit_json(result)
    else:
        views.unhalted(result)
    done()


# --------------------------------------------------------------------------- decisions


@app.command()
def decisions(
    ctx: typer.Context,
    denied: Annotated[bool, typer.Option("--denied", help="Only refusals.")] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="WHEN", help="ISO 8601 time, or an age like 30m, 2h, 1d, 3w."
        ),
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    task_type: TypeOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1_000_000, help="How many, newest first.")
    ] = 50,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """The persisted log of admission decisions: who asked, what was decided, why."""
    from ringrift_coord import reports

    g = globals_of(ctx)
    table_output(fmt, no_header)
    since_at, since_age = (None, None) if since is None else parse_since(since)
    known_type(task_type)
    with g.context(create=False) as c:
        rows = reports.decisions(
            c,
            denied_only=denied,
            since=since_at,
            since_age=since_age,
            node=node,
            task_type=task_type,
            limit=limit,
        )
    if g.json:
        emit_json({"decisions": rows})
    else:
        views.decisions_table(rows)
    done()


def parse_since(text: str) -> tuple[float | None, float | None]:
    """``--since``: (a moment, None) for an ISO 8601 time, (None, seconds) for an age (a
    duration: ``90``, ``30m``, ``1h30m``, ``3w``)."""
    from ringrift_coord import durations
    from ringrift_coord.inputs import instant

    raw = text.strip()
    try:
        return None, durations.parse(raw)
    except ValueError as exc:
        as_age = str(exc)
    if raw[:1] == "-":  # a negative age, not a date
        raise UsageError(as_age, field="since")
    try:
        return instant(raw, "since"), None
    except UsageError:
        raise UsageError(
            f"{text!r} is neither an ISO 8601 time (2026-05-01T12:00) nor an age like 30m, 2h, 3w",
            field="since",
        ) from None


# --------------------------------------------------------------------------- limits, targets


def _show_settings(g: Globals, sections: list[str], title: str) -> None:
    from ringrift_coord import reports

    with g.context(create=False) as c:
        doc = reports.settings(c, sections)
    if g.json:
        emit_json(doc)
    else:
        views.settings_table(doc, title)


@app.command()
def limits(ctx: typer.Context, fmt: FormatOpt = None, no_header: NoHeaderOpt = False) -> None:
    """Effective task limits, rate limits, thresholds and store settings, with their source;
    the caps lowered after repeated OOMs and the backpressure factors in force."""
    from ringrift_coord import reports

    g = globals_of(ctx)
    table_output(fmt, no_header)
    with g.context(create=False) as c:
        doc = reports.limits(c)
    if g.json:
        emit_json(doc)
    else:
        views.settings_table(doc, "limits")
        views.caps_tables(doc)
    done()


@app.command(
    short_help="Effective utilization targets, PID gains and optimizer settings, with their source."
)
def targets(ctx: typer.Context) -> None:
    """Effective utilization targets, PID gains and optimizer settings, with their source;
    exit 3 naming the source of a bad one. Notes where a node's critical threshold is below
    the target band's top."""
    from ringrift_coord import reports

    g = globals_of(ctx)
    with g.context(create=False) as c:
        doc = reports.targets(c)
    if g.json:
        emit_json(doc)
    else:
        views.settings_table(doc, "targets")
        for message in doc["notes"]:
            views.note(f"note: {message}")
    done()


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Every effective setting and where it came from."""
    from ringrift_coord.config import SCHEMA

    _show_settings(globals_of(ctx), list(SCHEMA), "configuration")
    done()


@config_app.command("validate")
def config_validate(
    ctx: typer.Context,
    file: Annotated[
        str | None,
        typer.Argument(
            metavar="[FILE]",
            help="File to check (default: the effective config file).",
            click_type=build.PATH,
        ),
    ] = None,
) -> None:
    """Check a config file: exit 0 when valid, 3 with the file, line and key when not."""
    from ringrift_coord.config import load_settings

    g = globals_of(ctx)
    settings = load_settings(file or g.config)
    for problem in settings.problems.values():  # an error the optimizer alone would meet
        raise problem
    if g.json:
        emit_json({"valid": True, "config_file": settings.file})
    else:
        views.line(f"{settings.file or 'built-in defaults'}: valid")
    done()


# --------------------------------------------------------------------------- status


@app.command()
def status(
    ctx: typer.Context,
    brief: Annotated[
        bool, typer.Option("--brief", help="One line per task type (tsv: one row per type).")
    ] = False,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Redraw the screen every --interval seconds until Ctrl-C (a terminal; "
            "with --json: one JSON document per interval).",
        ),
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            metavar="S",
            help="With --watch: seconds between redraws (default 2, min 0.5).",
        ),
    ] = None,
) -> None:
    """One screen: halt, tasks against limits per type, a node × type summary, breakers,
    reservations (the task list itself: tasks)."""
    from ringrift_coord import reports

    g = globals_of(ctx)
    table_output(fmt, no_header)
    if interval is not None and not watch:
        raise UsageError("option --interval: only with --watch")
    if watch:
        from ringrift_coord.cli import watch as watcher

        if fmt not in (None, "table") or no_header:
            raise UsageError("option --watch draws the table screen: no --format or --no-header")
        every = watcher.check_interval(interval)
        done(watcher.watch(g, interval=every, brief=brief))
    with g.context(create=False) as c:
        document = reports.status(c)
        readings = None if g.json or brief else reports.resources(c)
    if g.json:
        emit_json(document)
    elif brief:
        views.status_brief(document)
    else:
        views.status_screen(document, readings)
    done()


# --------------------------------------------------------------------------- breakers

from ringrift_coord.cli import breakers_cmd  # noqa: E402

breakers_cmd.register(app)

from ringrift_coord.cli import resources_cmd  # noqa: E402  (report, resources)

resources_cmd.register(app)

from ringrift_coord.cli import optimizer_cmd  # noqa: E402  (adjust, utilization)

optimizer_cmd.register(app)

from ringrift_coord.cli import package_cmd  # noqa: E402  (config init, completion)

package_cmd.register(app, config_app)

from ringrift_coord.cli import capacity_cmd  # noqa: E402

capacity_cmd.register(app)

from ringrift_coord.cli import bandwidth_cmd  # noqa: E402

bandwidth_cmd.register(app)
build.install_group(bandwidth_cmd.bandwidth_app, "bandwidth")  # bandwidth run, from the spec

from ringrift_coord.cli import schedule_cmd  # noqa: E402

schedule_cmd.register(app)

from ringrift_coord.cli import rate_cmd  # noqa: E402  (rate, distribution)

rate_cmd.register(app)

from ringrift_coord.cli import metrics_cmd  # noqa: E402

metrics_cmd.register(app)

from ringrift_coord.cli import serve_cmd  # noqa: E402

serve_cmd.register(app)

from ringrift_coord.cli import events_cmd  # noqa: E402

events_cmd.register(app)

from ringrift_coord.cli import doctor_cmd  # noqa: E402

doctor_cmd.register(app)
