"""``metrics``: the Prometheus exposition on stdout, or atomically into a textfile for
node_exporter's textfile collector (``--textfile``, quiet: cron and timers run it)."""

from __future__ import annotations

from typing import Annotated

import typer

from ringrift_coord.cli import build
from ringrift_coord.cli.common import done, globals_of
from ringrift_coord.cli.hot import SECTION_USERS, deliver, emit_json, say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ringrift_coord.config import Settings


def warn_config(settings: Settings) -> None:
    """One ``warning:`` line per bad section the exposition reads (``SECTION_USERS``'s
    ``metrics`` entry): what the exposition does without it. ``metrics`` and ``serve`` go
    on (exit 0): the other families are exported as ever."""
    from ringrift_coord.inputs import printable

    for section in SECTION_USERS["metrics"]:
        problem = settings.problems.get(section)
        if problem is None:
            continue
        text = printable(problem.message.strip().split("\n")[0])
        say(
            f"warning: {text} (the metrics that need section {section} are left out or "
            f'partial; ringrift_config_problem{{section="{section}"}} is 1)'
        )


def register(app: typer.Typer) -> None:
    """Add ``metrics`` to the app."""
    app.command(
        "metrics",
        short_help="Prometheus metrics of tasks, limits, halts, breakers, transfers and readings.",
    )(metrics)


def metrics(
    ctx: typer.Context,
    textfile: Annotated[
        str | None,
        typer.Option(
            "--textfile",
            metavar="PATH",
            help="Write the exposition to PATH (must end in .prom) atomically for "
            "node_exporter's textfile collector; print nothing (--json: the path written).",
            click_type=build.PATH,
        ),
    ] = None,
) -> None:
    """Prometheus metrics: tasks, limits, waiters, halts, breakers, denials, backpressure,
    lowered caps, transfers, readings and the optimizer, read in one transaction. A store
    that cannot be reached gives ringrift_store_up 0 (and a warning); none is created."""
    from ringrift_coord import metrics as core

    g = globals_of(ctx)
    target = None if textfile is None else core.check_textfile(textfile)  # before any store
    with g.context(create=False) as c:
        warn_config(c.settings)
        if textfile is not None:
            collection = core.write_textfile(c, textfile)
        else:
            collection = core.gather(c)
    if collection.problem is not None:  # stderr: the exposition itself says ringrift_store_up 0
        from ringrift_coord.inputs import printable

        say(
            f"warning: the store did not answer ({printable(collection.problem)}): "
            "ringrift_store_up is 0"
        )
    if textfile is not None:
        if g.json:  # what was written where, without the families (they are in the file)
            emit_json(
                {
                    "at": collection.at,
                    "store_up": collection.store_up,
                    "problem": collection.problem,
                    "textfile": target,
                }
            )
        done()
    if g.json:
        emit_json(collection.to_dict())
    else:
        deliver(core.render(collection).decode("utf-8"))
    done()
