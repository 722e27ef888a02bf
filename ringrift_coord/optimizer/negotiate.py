"""Rate negotiation: an orchestrator asks for a self-play rate and gets a bounded one.

The approved rate is the requested one brought within ``optimizer.rate.min``..``max``, then
within ``optimizer.max_change`` × the current rate of the current rate (one negotiation moves
the rate by at most that fraction), and, while the cluster is over target (the controlling
resource's average utilization above its target maximum), no higher than the current rate.
It is stored like an ``adjust`` step (``state.set_rate``, source ``negotiate``): the rate, a
history row with the reason, the requestor and who asked, and the per-node self-play targets
it implies. ``limited_by`` names every bound the request ran into.
"""

from __future__ import annotations

import math

from ringrift_coord.errors import UsageError
from ringrift_coord.inputs import printable
from ringrift_coord.optimizer import state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Tx

MAX_TEXT = 200  # characters kept of a reason or a requestor
LIMITS = ("min", "max", "max_change", "over_target")


def requested(value: Any, field: str = "requested_rate") -> float:
    """A requested rate: a finite positive number of games per hour."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{value!r} is not a number of games per hour", field=field)
    if not 0 < value < math.inf:  # also refuses nan
        raise UsageError(
            f"{value!r} is not a finite positive number of games per hour", field=field
        )
    return float(value)


def text(value: Any, field: str) -> str:
    """A reason or a requestor: data, not blank, in its printable form, at most
    ``MAX_TEXT`` characters."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError("must not be empty", field=field)
    shown = printable(value.strip())
    return shown if len(shown) <= MAX_TEXT else shown[: MAX_TEXT - 1] + "…"


def cluster_over_target(tx: Tx, settings: Settings, now: float) -> bool | None:
    """Whether the cluster is over target: its controlling resource (the bottleneck, see
    ``utilization.controlling``) averages above its target maximum over the fresh readings.
    None: no fresh reading says."""
    from ringrift_coord.optimizer import utilization

    tgt = utilization.targets(settings)
    util = utilization.cluster(tx, settings, now)
    resource = utilization.controlling(util, tgt)
    if resource is None:
        return None
    return float(util[resource]) > tgt[resource]["max"]


def negotiate(
    tx: Tx,
    settings: Settings,
    now: float,
    *,
    requested_rate: Any,
    reason: Any,
    requestor: Any,
    who: str | None,
    host: str | None,
    over_target: bool | None = None,
) -> dict[str, Any]:
    """Approve a bounded rate for ``requested_rate`` and store it (see the module's
    docstring). ``over_target`` None: judged from the fresh readings
    (``cluster_over_target``).

    Returns ``approved_rate``, ``requested_rate``, ``previous_rate``, ``limited_by``,
    ``action``, ``over_target``, ``reason``, ``requestor``, ``bounds`` (min, max,
    max_change), ``node_targets`` (``[{node, target, cap}]``) and ``at``."""
    asked = requested(requested_rate)
    why, by = text(reason, "reason"), text(requestor, "requestor")
    if over_target is None:
        over_target = cluster_over_target(tx, settings, now)
    current = state.load(tx, settings)
    previous = float(current["rate"])
    low, high = float(settings.get("optimizer.rate.min")), float(settings.get("optimizer.rate.max"))
    step = float(settings.get("optimizer.max_change")) * previous
    limited: list[str] = []
    approved = asked
    if approved > high:
        approved = high
        limited.append("max")
    elif approved < low:
        approved = low
        limited.append("min")
    if approved > previous + step:
        approved = previous + step
        limited.append("max_change")
    elif approved < previous - step:
        approved = previous - step
        limited.append("max_change")
    if over_target and approved > previous:
        approved = previous
        limited.append("over_target")
    approved = state.bounded_rate(round(approved, 1), settings)  # as stored: tenths
    action = "scale_up" if approved > previous else "scale_down" if approved < previous else "none"
    targets = state.set_rate(
        tx,
        settings,
        rate=approved,
        now=now,
        source="negotiate",
        action=action,
        previous_rate=previous,
        requested_rate=asked,
        reason=why,
        requestor=by,
        who=who,
        host=host,
        pid=current["pid"],  # the controller's state is the feedback loop's: kept as it was
        detail=current["detail"],
    )
    return {
        "approved_rate": approved,
        "requested_rate": asked,
        "previous_rate": previous,
        "limited_by": limited,
        "action": action,
        "over_target": over_target,
        "reason": why,
        "requestor": by,
        "bounds": {"min": low, "max": high, "max_change": settings.get("optimizer.max_change")},
        "node_targets": [
            {"node": node, "target": target, "cap": cap} for node, (target, cap) in targets.items()
        ],
        "at": now,
    }


def negotiate_in(
    ctx: Context, requested_rate: Any, reason: Any, requestor: Any, *, who: str | None = None
) -> dict[str, Any]:
    """``negotiate`` in one write transaction of ``ctx``'s store."""
    from ringrift_coord import identity

    asked = requested(requested_rate)  # bad input is said before the store is opened
    text(reason, "reason")
    text(requestor, "requestor")
    ctx.settings.require("resource_targets")  # a bad section stops the commands using it
    ctx.settings.require("optimizer")
    with ctx.store.write() as tx:
        return negotiate(
            tx,
            ctx.settings,
            tx.now(),
            requested_rate=asked,
            reason=reason,
            requestor=requestor,
            who=who or identity.who_am_i(ctx.env),
            host=identity.host_name(),
        )


def negotiate_selfplay_rate(
    requested_rate: float, reason: str, requestor: str, *, ctx: Context | None = None
) -> float:
    """The reference's ``negotiate_selfplay_rate``: ask for a self-play rate (games per
    hour); returns the approved rate, which is stored. ``ctx``: the context to use (else
    one built from the environment, like the other façades' process-wide instances)."""
    from ringrift_coord.context import Context

    if ctx is not None:
        return float(negotiate_in(ctx, requested_rate, reason, requestor)["approved_rate"])
    with Context.open() as opened:
        return float(negotiate_in(opened, requested_rate, reason, requestor)["approved_rate"])


def history(ctx: Context, limit: int = 20) -> dict[str, Any]:
    """``rate show``: the current rate, its last action, confidence, when and by whom it was
    set, and its history newest first (at most ``limit`` rows)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise UsageError(f"{limit!r} is not a number of rows from 1 to 10000", field="limit")
    ctx.settings.require("optimizer")
    ctx.settings.require("resource_targets")  # the rate's family fails on it, as negotiate does
    with ctx.store.read() as tx:
        current = state.load(tx, ctx.settings)
        rows = state.history(tx, limit)
        at = tx.now()
    return {
        "rate": current["rate"],
        "stored": current["stored"],
        "action": current["action"],
        "confidence": current["confidence"],
        "reason": current["reason"],
        "updated_at": current["updated_at"],
        "updated_by": current["updated_by"],
        "bounds": {
            "min": ctx.settings.get("optimizer.rate.min"),
            "max": ctx.settings.get("optimizer.rate.max"),
            "max_change": ctx.settings.get("optimizer.max_change"),
        },
        "history": [{k: v for k, v in dict(r).items() if k != "id"} for r in rows],
        "at": at,
    }
