"""What the Typer commands share: the global options of a call, ending a command with the
contract's exit code, checks of option values, and completion of task types."""

from __future__ import annotations

from typing import NoReturn

import typer

from ringrift_coord.cli.hot import Globals
from ringrift_coord.errors import UsageError
from ringrift_coord.tasktypes import TASK_TYPE_NAMES


def globals_of(ctx: typer.Context) -> Globals:
    """The global options (``--db``, ``--state-dir``, ``--json``, ...) of this call."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def done(code: int = 0) -> NoReturn:
    """End the command with ``code``."""
    raise typer.Exit(int(code))


def complete_types(incomplete: str) -> list[str]:
    return [t for t in TASK_TYPE_NAMES if t.startswith(incomplete)]


def one_line(option: str, value: str | None) -> str | None:
    """Refuse control characters in text that later messages print (they must stay one line)."""
    if value is not None and any(ch < " " or ch == "\x7f" for ch in value):
        raise UsageError(f"option {option}: {value!r} contains control characters")
    return value


def node_option(value: str | None, option: str = "--node") -> str | None:
    """A node given on the command line: non-empty text on one line (None: not given)."""
    if value is not None and not value.strip():
        raise UsageError(f"option {option} must not be empty")
    return one_line(option, value)


def text_option(option: str, value: str | None) -> str | None:
    """Any other free text (a GPU model): non-empty text on one line (None: not given)."""
    if value is not None and (not value.strip() or any(ch < " " or ch == "\x7f" for ch in value)):
        raise UsageError(f"option {option}: {value!r} must be non-empty text on one line")
    return value
