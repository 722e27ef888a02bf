"""The resource optimizer, the reference's Python face: cluster utilization against the
targets, the scaling questions, and the feedback step that sets the self-play rate.

``ResourceOptimizer`` (``get_instance``; built with an explicit ``Context`` like the other
faces), ``get_resource_optimizer()``, and module functions of the reference's names over the
process-wide instance: ``should_scale_up(resource)``, ``should_scale_down(resource)``,
``get_utilization_status()`` (the document ``utilization --json`` prints) and
``apply_feedback_adjustment()`` (one ``adjust`` step; returns the new rate),
``negotiate_selfplay_rate(requested_rate, reason, requestor)`` (``rate negotiate``; returns
the approved rate) and ``get_max_selfplay_for_node(...)`` (the hardware cap). A thin face
over ``optimizer.utilization``, ``optimizer.adjust``, ``optimizer.negotiate`` and
``optimizer.capacity``: every call reads or writes the store in one transaction, by the
store's clock.
"""

from __future__ import annotations

from ringrift_coord.context import Context, ProcessWide
from ringrift_coord.identity import host_name, who_am_i
from ringrift_coord.optimizer import adjust as adjust_step
from ringrift_coord.optimizer import negotiate, utilization
from ringrift_coord.optimizer.capacity import get_max_selfplay_for_node

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ResourceOptimizer",
    "apply_feedback_adjustment",
    "get_max_selfplay_for_node",
    "get_resource_optimizer",
    "get_utilization_status",
    "negotiate_selfplay_rate",
    "should_scale_down",
    "should_scale_up",
]


def _resource(resource: str) -> str:
    name = str(resource).strip().lower()
    if name not in utilization.RESOURCES:
        from ringrift_coord.errors import UsageError

        valid = ", ".join(utilization.RESOURCES)
        raise UsageError(f"unknown resource {resource!r}; valid resources: {valid}")
    return name


class ResourceOptimizer(ProcessWide):
    """Object face of the optimizer over one ``Context`` (``get_instance()``: the
    process-wide one)."""

    _instance: ResourceOptimizer | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()

    def get_cluster_utilization(self) -> dict[str, Any]:
        """Cluster utilization from the fresh readings (``optimizer.utilization.cluster``)."""
        with self.ctx.store.read() as tx:
            return utilization.cluster(tx, self.ctx.settings, tx.now())

    def get_utilization_status(self) -> dict[str, Any]:
        """Utilization against the targets, the scaling flags, the controlling resource and
        the optimizer's rate, last action and confidence (one JSON-able document)."""
        utilization.targets(self.ctx.settings)
        with self.ctx.store.read() as tx:
            return utilization.status(tx, self.ctx.settings, tx.now())

    def should_scale_up(self, resource: str) -> bool:
        """The cluster's ``resource`` (cpu, gpu) utilization is below the scale-up point."""
        name = _resource(resource)
        tgt = utilization.targets(self.ctx.settings)
        return utilization.should_scale_up(self.get_cluster_utilization(), tgt, name)

    def should_scale_down(self, resource: str) -> bool:
        """The cluster's ``resource`` (cpu, gpu) utilization is above the scale-down point."""
        name = _resource(resource)
        tgt = utilization.targets(self.ctx.settings)
        return utilization.should_scale_down(self.get_cluster_utilization(), tgt, name)

    def adjust(self, *, dry_run: bool = False, requestor: str | None = None) -> dict[str, Any]:
        """One feedback step (``adjust``); the whole document of what it did."""
        return adjust_step.adjust(
            self.ctx.store,
            self.ctx.settings,
            dry_run=dry_run,
            who=who_am_i(self.ctx.env),
            host=host_name(),
            requestor=requestor,
        )

    def get_max_selfplay_for_node(
        self,
        node_id: str | None,
        gpu_count: int | None,
        gpu_name: str | None,
        cpu_count: int | None,
        memory_gb: float | None,
        has_gpu: bool | None,
    ) -> int:
        """The node's hardware cap for self-play, with this optimizer's settings."""
        return get_max_selfplay_for_node(
            node_id, gpu_count, gpu_name, cpu_count, memory_gb, has_gpu, self.ctx.settings
        )

    def negotiate_selfplay_rate(self, requested_rate: float, reason: str, requestor: str) -> float:
        """Ask for a self-play rate (games per hour); returns the approved one, stored
        (``rate negotiate``: bounded, a limited change, no rise while over target)."""
        found = negotiate.negotiate_in(self.ctx, requested_rate, reason, requestor)
        return float(found["approved_rate"])

    def apply_feedback_adjustment(self, requestor: str | None = None) -> float:
        """One feedback step; returns the self-play rate (games per hour) now in force."""
        return float(self.adjust(requestor=requestor)["rate"])


def get_resource_optimizer() -> ResourceOptimizer:
    """The process-wide optimizer (its context built from the environment on first use)."""
    return ResourceOptimizer.get_instance()


def should_scale_up(resource: str) -> bool:
    return get_resource_optimizer().should_scale_up(resource)


def should_scale_down(resource: str) -> bool:
    return get_resource_optimizer().should_scale_down(resource)


def get_utilization_status() -> dict[str, Any]:
    return get_resource_optimizer().get_utilization_status()


def apply_feedback_adjustment(requestor: str | None = None) -> float:
    """The reference's ``apply_feedback_adjustment("unified_loop")``: one step, the new rate."""
    return get_resource_optimizer().apply_feedback_adjustment(requestor)


def negotiate_selfplay_rate(requested_rate: float, reason: str, requestor: str) -> float:
    """The reference's ``negotiate_selfplay_rate(requested_rate, reason, requestor)``: the
    approved rate."""
    return get_resource_optimizer().negotiate_selfplay_rate(requested_rate, reason, requestor)
