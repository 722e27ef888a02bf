"""What the Typer commands share: the global options of a call, ending a command with the
contract's exit code, checks of option values, and completion of task types."""

from __future__ import annotations

from typing import NoReturn

import typer

from ringrift_coord.cli.hot import Globals, node_given
from ringrift_coord.errors import UsageError
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

__all__ = ["complete_types", "done", "globals_of", "node_option", "text_option"]

node_option = node_given  # a --node value as given: never blank (the hot commands use it too)


def globals_of(ctx: typer.Context) -> Globals:
    """The global options (``--db``, ``--state-dir``, ``--json``, ...) of this call."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def done(code: int = 0) -> NoReturn:
    """End the command with ``code``."""
    raise typer.Exit(int(code))


def complete_types(incomplete: str) -> list[str]:
    return [t for t in TASK_TYPE_NAMES if t.startswith(incomplete)]


def text_option(option: str, value: str | None) -> str | None:
    """Free text that names something (a GPU model): not blank (None: not given).

    Every text value of every command is already clean, printable UTF-8 on one line
    (``parser.check_text``, applied by ``build.Group``)."""
    if value is not None and not value.strip():
        raise UsageError(f"option {option} must not be empty")
    return value
