"""Utilization targets, the reference's Python face: ``UtilizationTargets`` and
``get_resource_targets``.

The cluster is steered towards a band of CPU and GPU utilization: below ``scale_up_below``
(55 %) the optimizer scales up, inside ``min``-``max`` (60-80 %) it holds around the
optimal ``target`` (70 %), above ``scale_down_above`` (85 %) it scales down; the PID gains
(``kp``, ``ki``, ``kd``, ``gain_scheduling``) say how hard. All of it is the
``resource_targets`` section of the settings (defaults < YAML < ``RINGRIFT_TARGET_UTIL_MIN``/
``MAX``, ``RINGRIFT_PID_KP``/``KI``/``KD`` < ``--set``), checked against itself
(``scale_up_below <= min <= target <= max <= scale_down_above``). A bad value there does not
stop admission: ``get_resource_targets`` raises it (``Settings.require``), with its source.

The targets are cluster averages that steer the self-play rate. They are independent of the
per-node ``thresholds``: a node at its critical GPU level is refused a spawn whatever the
cluster's average (``threshold_notes`` says when the two cannot both be met).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringrift_coord.config import Settings
from ringrift_coord.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.context import Context

RESOURCES = ("cpu", "gpu")
SECTION = "resource_targets"

__all__ = ["RESOURCES", "UtilizationTargets", "get_resource_targets", "threshold_notes"]


@dataclass(frozen=True)
class UtilizationTargets:
    """The effective targets, in percent; ``sources`` maps each field to where its value
    came from (``default``, ``FILE:LINE``, ``env RINGRIFT_TARGET_UTIL_MIN``,
    ``flag --set resource_targets.cpu_min``)."""

    cpu_min: float = 60
    cpu_max: float = 80
    cpu_target: float = 70
    gpu_min: float = 60
    gpu_max: float = 80
    gpu_target: float = 70
    scale_up_below: float = 55
    scale_down_above: float = 85
    kp: float = 0.3
    ki: float = 0.05
    kd: float = 0.1
    gain_scheduling: bool = True
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def band(self, resource: str) -> tuple[float, float, float]:
        """(min, optimal, max) of ``resource`` (``cpu`` or ``gpu``)."""
        kind = _resource(resource)
        return (
            getattr(self, f"{kind}_min"),
            getattr(self, f"{kind}_target"),
            getattr(self, f"{kind}_max"),
        )

    def in_range(self, resource: str, value: float) -> bool:
        """Whether ``value`` (percent) is inside the target band of ``resource``."""
        low, _, high = self.band(resource)
        return low <= value <= high

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, ``sources`` included."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        out["sources"] = dict(self.sources)
        return out


# field -> the setting it is read from
_FIELDS: dict[str, str] = {
    **{
        f"{kind}_{end}": f"{SECTION}.{kind}_{end}"
        for kind in RESOURCES
        for end in ("min", "max", "target")
    },
    "scale_up_below": f"{SECTION}.scale_up_below",
    "scale_down_above": f"{SECTION}.scale_down_above",
    "kp": f"{SECTION}.pid.kp",
    "ki": f"{SECTION}.pid.ki",
    "kd": f"{SECTION}.pid.kd",
    "gain_scheduling": f"{SECTION}.pid.gain_scheduling",
}


def _resource(resource: str) -> str:
    if resource not in RESOURCES:
        raise UsageError(f"unknown resource {resource!r}: cpu or gpu", field="resource")
    return resource


def get_resource_targets(settings: Settings | Context | None = None) -> UtilizationTargets:
    """The effective ``UtilizationTargets`` of ``settings`` (or of a ``Context``'s; None: the
    settings of this process's environment, as ``Context.open`` resolves them). Raises the
    ``ConfigError`` kept for a bad ``resource_targets`` value, naming its source."""
    if settings is None:
        from ringrift_coord.context import Context

        with Context.open() as ctx:
            resolved = ctx.settings
    elif isinstance(settings, Settings):
        resolved = settings
    else:
        resolved = settings.settings
    resolved.require(SECTION)
    values: dict[str, Any] = {}
    for name, key in _FIELDS.items():
        value = resolved.get(key)
        values[name] = value if isinstance(value, bool) else float(value)
    sources = {name: resolved.source(key) for name, key in _FIELDS.items()}
    return UtilizationTargets(**values, sources=sources)


def threshold_notes(settings: Settings) -> list[str]:
    """What to know about the targets against the per-node thresholds: a critical level below
    the band's top means a node is refused spawns before the cluster could reach that top by
    admitting more (a note, not an error: both rules apply, each on its own)."""
    notes = []
    for kind in RESOURCES:
        critical = settings.get(f"thresholds.{kind}.critical")
        top = settings.get(f"{SECTION}.{kind}_max")
        if critical < top:
            notes.append(
                f"thresholds.{kind}.critical ({critical:g}) is below {SECTION}.{kind}_max "
                f"({top:g}): a node at {critical:g} % is refused spawns, so admitting more "
                f"cannot take the cluster's {kind.upper()} average up to {top:g} %"
            )
    return notes
