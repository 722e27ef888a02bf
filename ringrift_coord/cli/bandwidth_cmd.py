"""``bandwidth``: transfer admission by host link and priority.

``allocate`` (read-only: the rate a transfer would get, in ``rsync --bwlimit`` units),
``start`` / ``end`` (admit a transfer and close it with its bytes), ``status`` (active
transfers and each host's history). ``bandwidth run`` (a hot command, see ``cli/spec.py``)
wraps a transfer command the way ``run`` wraps a job.
"""

from __future__ import annotations

import typer

bandwidth_app = typer.Typer(
    help="Transfer admission: per-host bandwidth by priority, concurrent-transfer caps."
)


def register(app: typer.Typer) -> None:
    """Add ``bandwidth`` to the app."""
    app.add_typer(bandwidth_app, name="bandwidth")
