"""``doctor``: check this host's installation and say what to fix (``ringrift_coord.doctor``)."""

from __future__ import annotations

import typer

from ringrift_coord.cli import views
from ringrift_coord.cli.common import done, globals_of
from ringrift_coord.cli.hot import emit_json


def register(app: typer.Typer) -> None:
    app.command(
        "doctor",
        short_help="Check the state directory, store, config, clock and readings; say what to fix.",
    )(doctor)


def doctor(ctx: typer.Context) -> None:
    """Check the state directory, the store (integrity, schema, WAL, long-held locks and
    transactions, latency), the config, the clock against the store's, NVML and psutil, stale
    readings and the halt file; say what to fix. Exit 0: healthy (warnings said); 1: something
    needs an operator; 3: the config does not even load. --json: one JSON document."""
    from ringrift_coord import doctor as checks

    g = globals_of(ctx)
    document = checks.run(db=g.db, state_dir=g.state_dir, config=g.config, overrides=g.overrides)
    if g.json:
        emit_json(document)
    else:
        views.doctor_report(document)
    done(0 if document["healthy"] else 1)  # 1: needs an operator
