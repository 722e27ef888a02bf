"""The duration scheduler, the reference's Python face: expected durations learned from the
successful runs (``schedule.expected``), peak hours (``schedule.peak``), stale tasks and slot
prediction (``schedule.forecast``).

``DurationScheduler`` (``get_instance``; built with an explicit ``Context`` like the other
faces). Every call reads or writes the store in one transaction, by the store's clock unless
a ``now`` is given.
"""

from __future__ import annotations

from ringrift_coord.context import Context, ProcessWide

__all__ = ["DurationScheduler", "get_duration_scheduler"]


class DurationScheduler(ProcessWide):
    """Object face of the scheduler over one ``Context`` (``get_instance()``: the
    process-wide one)."""

    _instance: DurationScheduler | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()


def get_duration_scheduler() -> DurationScheduler:
    """The process-wide scheduler."""
    return DurationScheduler.get_instance()
