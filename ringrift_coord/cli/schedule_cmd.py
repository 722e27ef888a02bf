"""``schedule``: the duration scheduler's questions.

``expected`` and ``record`` (learned durations), ``can-start`` (peak hours), ``stale`` and
``next-slot`` (what the running tasks' ages say). Every answer that depends on the time takes
``--now`` (ISO 8601) for what-if questions.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

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
from ringrift_coord.cli.hot import emit_json
from ringrift_coord.errors import ExitCode

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Tx

schedule_app = typer.Typer(
    help="Expected durations, peak hours, stale tasks and when a slot frees (--now for what-if)."
)

TypeArg = Annotated[
    str,
    typer.Argument(
        metavar="TYPE",
        help="Task type: selfplay, training, cmaes, ...",
        autocompletion=complete_types,
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config-name", metavar="C", help="Board config, e.g. square8_2p (none: the type alone)."
    ),
]
NowOpt = Annotated[
    str | None,
    typer.Option(
        "--now",
        metavar="T",
        help="Answer as of this time (ISO 8601, e.g. 2026-12-01T09:00; no zone: UTC).",
    ),
]


def _type(task_type: str) -> str:
    from ringrift_coord import tasktypes

    return tasktypes.parse(task_type)


def _config(config_name: str | None) -> str | None:
    """A ``--config-name``: '' is none; otherwise not blank."""
    if config_name == "":
        return None
    return not_blank("--config-name", config_name)


def _now(now: str | None) -> float | None:
    from ringrift_coord.inputs import instant

    return None if now is None else instant(now, "now")


@contextmanager
def _read(c: Context) -> Iterator[Tx]:
    """A read of the store; of none when no store exists yet (nothing recorded on this host:
    no task, no sample), without creating one."""
    from ringrift_coord.schedule.forecast import NoRows
    from ringrift_coord.store import NoStore

    try:
        store = c.store
    except NoStore:
        yield NoRows(c.clock)  # type: ignore[misc]
        return
    with store.read() as tx:
        yield tx


@schedule_app.command("expected")
def expected_cmd(ctx: typer.Context, task_type: TypeArg, config_name: ConfigOpt = None) -> None:
    """How long a task of TYPE (and config) is expected to run: learned from its successful
    runs (the median inside a log-space MAD fence) once schedule.min_samples are recorded,
    else the type's default (durations.TYPE)."""
    from ringrift_coord.schedule import expected

    g = globals_of(ctx)
    ttype, config = _type(task_type), _config(config_name)
    with g.context(create=False) as c:
        c.settings.require("schedule")
        with _read(c) as tx:
            found = expected.lookup(tx, c.settings, ttype, config)
    doc = {"task_type": ttype, "config_name": config, **found.to_dict()}
    if g.json:
        emit_json(doc)
    else:
        views.expected_duration(doc)
    done()


@schedule_app.command("record")
def record_cmd(
    ctx: typer.Context,
    task_type: TypeArg,
    seconds: Annotated[
        str,
        typer.Option(
            "--seconds", metavar="S", help="The duration: seconds, or with units (4h, 90m, 1h30m)."
        ),
    ],
    config_name: ConfigOpt = None,
) -> None:
    """Teach TYPE (and config) one duration of a run that ended well (run and unregister
    record successful tasks themselves, from schedule.min_seconds on; a duration given here
    is recorded whatever its length); prints the new expected duration."""
    from ringrift_coord import durations
    from ringrift_coord.errors import UsageError
    from ringrift_coord.schedule import expected

    g = globals_of(ctx)
    ttype, config = _type(task_type), _config(config_name)
    try:
        value = durations.parse(seconds.strip())
    except ValueError as exc:
        from ringrift_coord.inputs import strict_float

        number = strict_float(seconds.strip())
        if number is None:  # 2e9, -5: a number, judged as one below
            raise UsageError(str(exc), field="seconds") from None
        value = number
    value = expected.check_seconds(value, "seconds")
    with g.context() as c:
        c.settings.require("schedule")
        with c.store.write() as tx:
            now = tx.now()
            expected.record(tx, c.settings, ttype, config, value, now, "manual")
            found = expected.lookup(tx, c.settings, ttype, config)
    new = found.to_dict()
    doc = {
        "task_type": ttype,
        "config_name": config,
        "recorded_seconds": value,
        "expected_seconds": new["expected_seconds"],
        "expected_source": new["source"],
        "samples": new["samples"],
        "used": new["used"],
        "needed": new["needed"],
        "at": now,
    }
    if g.json:
        emit_json(doc)
    else:
        views.duration_recorded(doc)
    done()


@schedule_app.command(
    "forget", short_help="Delete the recorded durations of TYPE (and config, or every config)."
)
def forget_cmd(
    ctx: typer.Context,
    task_type: TypeArg,
    config_name: ConfigOpt = None,
    all_configs: Annotated[
        bool, typer.Option("--all-configs", help="Every config of TYPE (and TYPE alone).")
    ] = False,
) -> None:
    """Delete the recorded durations of TYPE (and config, or every config): it goes back to
    the type's default until schedule.min_samples are recorded again. Prints how many."""
    from ringrift_coord.errors import UsageError
    from ringrift_coord.schedule import expected

    g = globals_of(ctx)
    ttype, config = _type(task_type), _config(config_name)
    if all_configs and config is not None:
        raise UsageError("--config-name and --all-configs: give one of them")
    with g.context(create=False) as c:
        c.settings.require("schedule")
        from ringrift_coord.store import NoStore

        try:
            store = c.store
        except NoStore:  # nothing recorded on this host yet: nothing to forget
            count = 0
        else:
            with store.write() as tx:
                count = expected.forget(tx, ttype, config, all_configs)
    doc = {
        "task_type": ttype,
        "config_name": None if all_configs else config,
        "all_configs": all_configs,
        "forgotten": count,
    }
    if g.json:
        emit_json(doc)
    else:
        views.durations_forgotten(doc)
    done()


@schedule_app.command("stale")
def stale_cmd(
    ctx: typer.Context,
    task_type: Annotated[
        str | None,
        typer.Option("--type", help="Only this task type.", autocompletion=complete_types),
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    now: NowOpt = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Running tasks older than schedule.stale_factor times their expected duration (types
    with no expected duration are never stale), the most overdue first."""
    from ringrift_coord.schedule import forecast

    g = globals_of(ctx)
    table_output(fmt, no_header)
    ttype = None if task_type is None else _type(task_type)
    node = not_blank("--node", node)
    at = _now(now)
    with g.context(create=False) as c:
        c.settings.require("schedule")
        with _read(c) as tx:
            doc = forecast.stale(tx, c.settings, tx.now() if at is None else at, ttype, node)
    if g.json:
        emit_json(doc)
    else:
        views.stale_table(doc)
    done()


@schedule_app.command("next-slot")
def next_slot_cmd(
    ctx: typer.Context,
    task_type: TypeArg,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            metavar="N",
            help="The node to start on (default: $RINGRIFT_NODE_ID, else host name).",
        ),
    ] = None,
    now: NowOpt = None,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """When a slot of TYPE is expected to free on a node: from the running tasks' ages and
    expected durations, and the waiters queued ahead, under the per-node and cluster limits."""
    from ringrift_coord.schedule import forecast

    g = globals_of(ctx)
    table_output(fmt, no_header)
    ttype = _type(task_type)
    checked = not_blank("--node", node)
    if checked is None:
        from ringrift_coord.identity import default_node

        checked = default_node()
    at = _now(now)
    with g.context(create=False) as c:
        c.settings.require("schedule")
        with _read(c) as tx:
            doc = forecast.next_slot(tx, c.settings, ttype, checked, tx.now() if at is None else at)
    if g.json:
        emit_json(doc)
    else:
        views.next_slot(doc)
    done()


def register(app: typer.Typer) -> None:
    """Add ``schedule`` to the app."""
    app.add_typer(schedule_app, name="schedule")


# --------------------------------------------------------------------------- can-start


@schedule_app.command(
    "can-start",
    short_help="Whether TYPE may start now and finish before the next peak window (exit 0/1).",
)
def can_start(
    ctx: typer.Context,
    task_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE", help="Task type, e.g. training.", autocompletion=complete_types
        ),
    ],
    config_name: Annotated[
        str | None,
        typer.Option("--config-name", metavar="C", help="Board config, e.g. square8_2p."),
    ] = None,
    now: NowOpt = None,
) -> None:
    """May TYPE start now and finish before the next peak window? Exit 0 yes, 1 no (the
    expected finish, the window and when to retry on stderr).

    Yes when it is expected to finish before the next peak window starts (peak_hours.start,
    end, timezone), or when it runs longer than the whole off-peak gap; never inside a
    window. The answer does not depend on peak_hours.enforce (that decides whether
    admission refuses it: rule peak_hours)."""
    from ringrift_coord.schedule import peak

    g = globals_of(ctx)
    ttype, config = _type(task_type), _config(config_name)
    at = _now(now)
    with g.context(create=False) as c:  # a question: no store is created to answer it
        c.settings.require("schedule")
        with _read(c) as tx:
            found = peak.verdict_at(tx, c.settings, ttype, config, tx.now() if at is None else at)
    if g.json:
        emit_json(found.to_dict())
    else:
        views.peak_verdict(found)
    done(ExitCode.OK if found.allowed else ExitCode.DENIED)
