"""What the package ships, handed to the user: ``config init`` writes the commented reference
config, ``completion SHELL`` prints a shell's completion script (both from package data,
``ringrift_coord/packaged.py``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ringrift_coord.cli import build, views
from ringrift_coord.cli.common import done, globals_of
from ringrift_coord.cli.hot import deliver, emit_json, say
from ringrift_coord.packaged import COMPLETIONS


def register(app: typer.Typer, config_app: typer.Typer) -> None:
    """Add ``config init`` and ``completion`` to the app."""
    config_app.command("init")(config_init)
    app.command("completion")(completion)


def config_init(
    ctx: typer.Context,
    path: Annotated[
        str | None,
        typer.Argument(
            metavar="[PATH]",
            help="Where to write it (default: $XDG_CONFIG_HOME/ringrift-coord/unified_loop.yaml).",
            click_type=build.PATH,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing file at PATH.")
    ] = False,
) -> None:
    """Write the commented reference config (every key with its default), mode 0644; an
    existing file is kept unless --force (exit 3)."""
    import os

    from ringrift_coord.config import CONFIG_ENV, user_config_path
    from ringrift_coord.inputs import printable
    from ringrift_coord.packaged import write_reference_config

    g = globals_of(ctx)
    written = write_reference_config(path or user_config_path(os.environ), force=force)
    if g.json:
        emit_json({"schema_version": 1, "path": written})
    else:
        views.line(f"wrote {written}")
    chosen = g.config or os.environ.get(CONFIG_ENV)
    if path is None and chosen:  # the user's file is read only when neither names another
        where = "--config" if g.config else CONFIG_ENV
        say(f"note: {where} names {printable(chosen)}, which is read instead of this file")
    done()


def _complete_shell(incomplete: str) -> list[str]:
    return [s for s in COMPLETIONS if s.startswith(incomplete)]


def completion(
    ctx: typer.Context,
    shell: Annotated[
        str,
        typer.Argument(
            metavar="SHELL",
            help="The shell: bash, zsh or fish.",
            autocompletion=_complete_shell,
        ),
    ],
) -> None:
    """Print the shell completion script for bash, zsh or fish (see the README for where to
    put it)."""
    from ringrift_coord.packaged import completion_script

    script = completion_script(shell)
    if globals_of(ctx).json:
        emit_json({"schema_version": 1, "shell": shell, "script": script})
    else:
        deliver(script)
    done()
