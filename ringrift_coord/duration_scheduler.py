"""The duration scheduler, the reference's Python face: expected durations learned from the
successful runs (``schedule.expected``), peak hours (``schedule.peak``), stale tasks and slot
prediction (``schedule.forecast``).

``DurationScheduler`` (``get_instance``; built with an explicit ``Context`` like the other
faces). Every call reads or writes the store in one transaction, by the store's clock unless
a ``now`` is given.
"""

from __future__ import annotations

from ringrift_coord import tasktypes
from ringrift_coord.context import Context, ProcessWide

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ringrift_coord.schedule.expected import Expected
    from ringrift_coord.schedule.peak import Verdict

__all__ = ["DurationScheduler", "get_duration_scheduler"]


class DurationScheduler(ProcessWide):
    """Object face of the scheduler over one ``Context`` (``get_instance()``: the
    process-wide one)."""

    _instance: DurationScheduler | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()

    def peak_verdict(
        self, task_type: str, config: str | None = None, now: float | None = None
    ) -> Verdict:
        """The whole peak-hours verdict for (type, config) at ``now`` (default: the store's
        clock): ``allowed``, ``reason``, ``expected_finish``, ``peak_start``/``peak_end``,
        ``retry_at``, ``in_peak`` (``schedule.peak.Verdict``)."""
        from ringrift_coord.schedule import peak

        ttype = tasktypes.parse(task_type)
        with self.ctx.store.read() as tx:
            at = tx.now() if now is None else float(now)
            return peak.verdict_at(tx, self.ctx.settings, ttype, config or None, at)

    def can_start_before_peak(
        self, task_type: str, config: str | None = None, now: float | None = None
    ) -> bool:
        """True when a (type, config) task started at ``now`` is expected to finish before
        the next peak window, or may start anyway (see ``peak_verdict``)."""
        return self.peak_verdict(task_type, config, now).allowed

    # -- learned durations (schedule.expected) ------------------------------------------

    def get_expected_duration(self, task_type: str, config: str | None = None) -> float | None:
        """Seconds a task of (type, config) is expected to run: learned from its successful
        runs once ``schedule.min_samples`` are recorded, else the type's default
        (``durations``); None for a type with neither."""
        return self.expected(task_type, config).seconds

    def expected(self, task_type: str, config: str | None = None) -> Expected:
        """The whole answer of ``get_expected_duration``: seconds, source, samples, used."""
        from ringrift_coord.schedule import expected

        ttype = tasktypes.parse(task_type)
        with self.ctx.store.read() as tx:
            return expected.lookup(tx, self.ctx.settings, ttype, _config(config))

    def record_duration(self, task_type: str, config: str | None, actual_seconds: float) -> None:
        """Teach (type, config) one duration (a run that ended well elsewhere); ``run`` and
        ``unregister`` record successful tasks themselves. Positive, at most 1e9 s."""
        from ringrift_coord.schedule import expected

        ttype = tasktypes.parse(task_type)
        seconds = expected.check_seconds(float(actual_seconds), "actual_seconds")
        with self.ctx.store.write() as tx:
            expected.record(tx, self.ctx.settings, ttype, _config(config), seconds, tx.now(), "api")


def _config(config: str | None) -> str:
    """A config name as stored (as register stores it); '' for none."""
    return config or ""


def get_duration_scheduler() -> DurationScheduler:
    """The process-wide scheduler."""
    return DurationScheduler.get_instance()
