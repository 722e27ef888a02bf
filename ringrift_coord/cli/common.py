"""What the Typer commands share: the global options of a call, ending a command with the
contract's exit code, the not-blank check of naming options, and completion of task types."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from ringrift_coord.cli.hot import Globals, not_blank
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

__all__ = [
    "FormatOpt",
    "NoHeaderOpt",
    "complete_types",
    "done",
    "globals_of",
    "not_blank",
    "table_output",
]

FORMATS = ("table", "plain", "tsv")

FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        metavar="table|plain|tsv",
        help="table: Rich tables fitted to the terminal (default on a terminal); plain: "
        "aligned columns, no box, no colour, nothing cut (default in a pipe); tsv: "
        "tab-separated rows for cut and awk.",
        autocompletion=lambda incomplete: [f for f in FORMATS if f.startswith(incomplete)],
    ),
]
NoHeaderOpt = Annotated[
    bool, typer.Option("--no-header", help="No title and no column names (plain, tsv).")
]


def globals_of(ctx: typer.Context) -> Globals:
    """The global options (``--db``, ``--state-dir``, ``--json``, ...) of this call."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def done(code: int = 0) -> NoReturn:
    """End the command with ``code``."""
    raise typer.Exit(int(code))


def complete_types(incomplete: str) -> list[str]:
    return [t for t in TASK_TYPE_NAMES if t.startswith(incomplete)]


def table_output(fmt: str | None, no_header: bool, ctx: typer.Context | None = None) -> None:
    """Set how this command prints its tables (``views.set_format``); a group's own
    ``--format``/``--no-header`` (``tasks --format tsv``) apply when the command has none."""
    from ringrift_coord.cli import views
    from ringrift_coord.errors import UsageError

    parent = ctx.parent if ctx is not None else None
    if parent is not None and parent.params.get("fmt") is not None and fmt is None:
        fmt = parent.params["fmt"]
    if parent is not None and parent.params.get("no_header"):
        no_header = True
    if fmt is not None and fmt not in FORMATS:
        from ringrift_coord.inputs import did_you_mean

        raise UsageError(
            f"option --format: {fmt!r} is not one of {', '.join(FORMATS)}"
            + did_you_mean(fmt, FORMATS)
        )
    views.set_format(fmt, no_header)


def check_hardware(gpu_count: int | None, cpus: int | None, memory_gb: float | None) -> None:
    """Hardware given by hand (``report``, ``capacity``): GPUs 0 or more, CPUs 1 or more (a
    node has one; with 0 the load rule, 1.5 x cpus, would never apply), memory a size."""
    from ringrift_coord.errors import UsageError

    if memory_gb is not None and not (0.0 <= memory_gb < 1e9):  # also refuses nan and inf
        raise UsageError(f"option --memory-gb: {memory_gb:g} is not a size in GiB")
    for option, count, least in (("--gpu-count", gpu_count, 0), ("--cpus", cpus, 1)):
        if count is not None and not least <= count <= 1_000_000:
            raise UsageError(f"option {option}: {count} is not a count from {least} to 1000000")
