"""``schedule``: the duration scheduler's questions.

``expected`` and ``record`` (learned durations), ``can-start`` (peak hours), ``stale`` and
``next-slot`` (what the running tasks' ages say). Every answer that depends on the time takes
``--now`` (ISO 8601) for what-if questions.
"""

from __future__ import annotations

import typer

schedule_app = typer.Typer(
    help="Expected durations, peak hours, stale tasks and when a slot frees (--now for what-if)."
)


def register(app: typer.Typer) -> None:
    """Add ``schedule`` to the app."""
    app.add_typer(schedule_app, name="schedule")
