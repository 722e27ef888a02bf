"""``schedule``: the duration scheduler's questions.

``expected`` and ``record`` (learned durations), ``can-start`` (peak hours), ``stale`` and
``next-slot`` (what the running tasks' ages say). Every answer that depends on the time takes
``--now`` (ISO 8601) for what-if questions.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ringrift_coord.cli import views
from ringrift_coord.cli.common import complete_types, done, globals_of, not_blank
from ringrift_coord.cli.hot import emit_json
from ringrift_coord.errors import ExitCode

schedule_app = typer.Typer(
    help="Expected durations, peak hours, stale tasks and when a slot frees (--now for what-if)."
)


def register(app: typer.Typer) -> None:
    """Add ``schedule`` to the app."""
    app.add_typer(schedule_app, name="schedule")


# --------------------------------------------------------------------------- can-start


def now_option(now: str | None) -> float | None:
    """``--now``: an ISO 8601 time (UTC unless it names a zone), or None (the store's clock)."""
    if now is None:
        return None
    from ringrift_coord.inputs import instant

    return instant(now, "now")


NowOpt = Annotated[
    str | None,
    typer.Option(
        "--now",
        metavar="ISO8601",
        help="What if: answer for this time (2026-12-01T12:00 is UTC; +02:00 or Z name a zone) "
        "instead of the store's clock.",
    ),
]


@schedule_app.command("can-start")
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
    from ringrift_coord.duration_scheduler import DurationScheduler
    from ringrift_coord.tasktypes import TaskType

    g = globals_of(ctx)
    ttype = TaskType.parse(task_type)
    at = now_option(now)
    with g.context() as c:
        found = DurationScheduler(c).peak_verdict(
            ttype, not_blank("--config-name", config_name), at
        )
    if g.json:
        emit_json(found.to_dict())
    else:
        views.peak_verdict(found)
    done(ExitCode.OK if found.allowed else ExitCode.DENIED)
