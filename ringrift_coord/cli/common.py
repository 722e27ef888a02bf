"""What the Typer commands share: the global options of a call, ending a command with the
contract's exit code, the not-blank check of naming options, and completion of task types."""

from __future__ import annotations

from typing import NoReturn

import typer

from ringrift_coord.cli.hot import Globals, not_blank
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

__all__ = ["complete_types", "done", "globals_of", "not_blank"]


def globals_of(ctx: typer.Context) -> Globals:
    """The global options (``--db``, ``--state-dir``, ``--json``, ...) of this call."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def done(code: int = 0) -> NoReturn:
    """End the command with ``code``."""
    raise typer.Exit(int(code))


def complete_types(incomplete: str) -> list[str]:
    return [t for t in TASK_TYPE_NAMES if t.startswith(incomplete)]
