"""The optimizer's tables: the self-play rate and its controller's state, the rate's history,
each node's self-play job target, and cluster utilization samples. The one owner of their SQL.

The rate (games per hour, within ``optimizer.rate.min``..``max``) sets every node's
self-play job target: ``max(1, ceil(cap × rate / rate.max))``, ``cap`` being the node's
hardware cap (``capacity``) bounded by the per-node self-play limit. So at the highest rate
every node may run its hardware cap, and a lower rate lowers every node's target in
proportion. Only nodes with a fresh reading get a target; admission reads a target only while
it is younger than ``optimizer.state_ttl`` (``target_for``), so a missing or old state never
blocks anything.
"""

from __future__ import annotations

import math

from ringrift_coord import readings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

KEY = "selfplay"  # optimizer_state's one row today: the self-play rate
ACTIONS = ("scale_up", "scale_down", "none")


def _json(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def bounded_rate(rate: float, settings: Settings) -> float:
    """``rate`` within ``optimizer.rate.min``..``max``."""
    bounds = settings.get("optimizer.rate")
    return min(float(bounds["max"]), max(float(bounds["min"]), rate))


def load(tx: Tx, settings: Settings) -> dict[str, Any]:
    """The stored optimizer state; without one, the initial rate and ``stored`` false.

    Keys: ``rate``, ``action``, ``confidence``, ``reason``, ``updated_at``, ``updated_by``,
    ``pid`` (the controller's state, a dict), ``detail`` (the last step's figures), ``stored``.
    """
    row = tx.one("SELECT * FROM optimizer_state WHERE key = ?", (KEY,))
    if row is None:
        return {
            "rate": bounded_rate(float(settings.get("optimizer.rate.initial")), settings),
            "action": "none",
            "confidence": None,
            "reason": None,
            "updated_at": None,
            "updated_by": None,
            "pid": {},
            "detail": {},
            "stored": False,
        }
    out = dict(row)
    out.pop("key", None)
    rate = out["rate"]
    if not isinstance(rate, (int, float)) or not math.isfinite(rate):
        rate = float(settings.get("optimizer.rate.initial"))
    out["rate"] = bounded_rate(float(rate), settings)  # bounds may have changed since
    out["pid"], out["detail"] = _json(out.get("pid")), _json(out.get("detail"))
    out["stored"] = True
    return out


def save(
    tx: Tx,
    *,
    rate: float,
    action: str,
    confidence: float | None,
    reason: str | None,
    now: float,
    who: str | None,
    pid: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Store the optimizer state (replacing the previous one)."""
    assert action in ACTIONS, action
    import json

    tx.execute("DELETE FROM optimizer_state WHERE key = ?", (KEY,))
    tx.execute(
        "INSERT INTO optimizer_state (key, rate, action, confidence, reason, updated_at, "
        "updated_by, pid, detail) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            KEY,
            rate,
            action,
            confidence,
            reason,
            now,
            who,
            json.dumps(pid or {}),
            json.dumps(detail or {}, default=str),
        ),
    )


# --------------------------------------------------------------------------- history


def record_rate(
    tx: Tx,
    *,
    at: float,
    rate: float,
    previous_rate: float | None,
    source: str,
    action: str,
    requested_rate: float | None = None,
    confidence: float | None = None,
    reason: str | None = None,
    requestor: str | None = None,
    who: str | None = None,
    host: str | None = None,
) -> None:
    """One row of the rate's history (``source``: ``adjust`` or ``negotiate``)."""
    tx.execute(
        "INSERT INTO rate_history (at, rate, previous_rate, requested_rate, source, action, "
        "confidence, reason, requestor, who, host) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            at,
            rate,
            previous_rate,
            requested_rate,
            source,
            action,
            confidence,
            reason,
            requestor,
            who,
            host,
        ),
    )


def history(tx: Tx, limit: int = 20, since: float | None = None) -> list[Row]:
    """The rate's latest changes, newest first."""
    if since is None:
        return tx.query("SELECT * FROM rate_history ORDER BY id DESC LIMIT ?", (limit,))
    return tx.query(
        "SELECT * FROM rate_history WHERE at >= ? ORDER BY id DESC LIMIT ?", (since, limit)
    )


def last_adjust(tx: Tx) -> Row | None:
    """The latest history row an ``adjust`` wrote (acted or held), None when none did: what
    ``optimizer.min_interval`` is measured from (a negotiation is not an adjust)."""
    return tx.one(
        "SELECT at, who, host, action FROM rate_history WHERE source = 'adjust' "
        "ORDER BY id DESC LIMIT 1"
    )


def prune_history(tx: Tx, before: float) -> None:
    tx.execute("DELETE FROM rate_history WHERE at < ?", (before,))


# --------------------------------------------------------------------------- node targets


def fresh_caps(tx: Tx, settings: Settings, now: float) -> dict[str, int | None]:
    """Each node with a fresh reading → its self-play cap: the hardware cap bounded by the
    per-node self-play limit (None: neither is known)."""
    from ringrift_coord.optimizer import capacity  # not on admission's path (target_for)

    max_age = float(settings.get("resources.max_sample_age"))
    per_node = settings.task_limit("selfplay", "per_node")
    out: dict[str, int | None] = {}
    for row in readings.all_latest(tx):
        age = now - row["at"]
        if row.get("source") == "live" or not -max_age <= age <= max_age:
            continue  # stale, or far in the future: as utilization.cluster counts them
        cap = capacity.node_cap(row, settings)
        if per_node is not None:
            cap = per_node if cap is None else min(cap, per_node)
        out[row["node"]] = cap
    return out


def node_targets(
    rate: float, caps: dict[str, int | None], settings: Settings
) -> dict[str, tuple[int, int]]:
    """node → (self-play job target, cap) implied by ``rate``; nodes of unknown cap get none."""
    top = float(settings.get("optimizer.rate.max"))
    share = 1.0 if top <= 0 else min(1.0, max(0.0, rate / top))
    return {
        node: (max(1, math.ceil(cap * share - 1e-9)), cap)
        for node, cap in sorted(caps.items())
        if cap is not None and cap > 0
    }


def running_selfplay(tx: Tx) -> dict[str, int]:
    """node → its running self-play jobs."""
    from ringrift_coord import slots

    out: dict[str, int] = {}
    for row in slots.of_type(tx, "selfplay"):
        out[row["node"]] = out.get(row["node"], 0) + 1
    return out


def keep_running(
    found: dict[str, tuple[int, int]], running: dict[str, int]
) -> dict[str, tuple[int, int]]:
    """``found`` with no node's target below the self-play jobs it runs now (up to its cap):
    holding the rate inside the target band lowers what no node may run."""
    return {
        node: (max(target, min(cap, running.get(node, 0))), cap)
        for node, (target, cap) in found.items()
    }


def rate_of_load(tx: Tx, settings: Settings, now: float) -> float | None:
    """The rate the self-play jobs running now imply (the inverse of ``node_targets``:
    rate.max × running / caps over the nodes with a fresh reading and a known cap), where
    a controller that never ran starts, so that its first step changes no node's room by
    more than that step; None when no such node runs self-play."""
    caps = {n: c for n, c in fresh_caps(tx, settings, now).items() if c}
    running = running_selfplay(tx)
    busy = sum(min(running.get(node, 0), cap) for node, cap in caps.items())
    total = sum(caps.values())
    if not busy or not total:
        return None
    top = float(settings.get("optimizer.rate.max"))
    return bounded_rate(round(top * busy / total, 1), settings)  # stored rates: tenths


def implied_targets(
    tx: Tx, settings: Settings, rate: float, now: float, hold: bool = False
) -> dict[str, tuple[int, int]]:
    """The per-node targets ``rate`` implies for the nodes with fresh readings; with
    ``hold``, none below what the node runs now (``keep_running``)."""
    found = node_targets(rate, fresh_caps(tx, settings, now), settings)
    return keep_running(found, running_selfplay(tx)) if hold else found


def store_targets(tx: Tx, targets: dict[str, tuple[int, int]], now: float) -> None:
    """Replace every node's self-play job target."""
    tx.execute("DELETE FROM selfplay_targets")
    for node, (target, cap) in targets.items():
        tx.execute(
            "INSERT INTO selfplay_targets (node, target, cap, at) VALUES (?,?,?,?)",
            (node, target, cap, now),
        )


def targets(tx: Tx) -> list[Row]:
    return tx.query("SELECT * FROM selfplay_targets ORDER BY node")


def target_for(tx: Tx, node: str, settings: Settings, now: float) -> Row | None:
    """The node's self-play job target while it is in force (younger than
    ``optimizer.state_ttl``); None otherwise: admission then does not limit the node."""
    row = tx.one("SELECT * FROM selfplay_targets WHERE node = ?", (node,))
    if row is None:
        return None
    age = now - row["at"]
    if age > float(settings.get("optimizer.state_ttl")) or age < -60.0:
        return None  # old, or from a clock far ahead: fail open
    return row


def enforced_target(tx: Tx, node: str, settings: Settings, now: float) -> Row | None:
    """The node's self-play job target exactly when admission enforces it (rule
    ``optimizer``): in force (``target_for``) and the optimizer's settings sound (a bad
    ``optimizer`` or ``resource_targets`` section: the optimizer is not in use)."""
    if "optimizer" in settings.problems or "resource_targets" in settings.problems:
        return None
    return target_for(tx, node, settings, now)


def set_rate(
    tx: Tx,
    settings: Settings,
    *,
    rate: float,
    now: float,
    source: str,
    action: str,
    previous_rate: float | None,
    requested_rate: float | None = None,
    confidence: float | None = None,
    reason: str | None = None,
    requestor: str | None = None,
    who: str | None = None,
    host: str | None = None,
    pid: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
    hold: bool = False,
    retarget: bool = True,
) -> dict[str, tuple[int, int]]:
    """Store a rate: the state row, a history row and (unless not ``retarget``: a hold
    without readings keeps the targets to lapse) the per-node targets it implies
    (``implied_targets``). Returns the targets stored."""
    rate = bounded_rate(round(rate, 1), settings)  # games per hour: a tenth is plenty
    found = implied_targets(tx, settings, rate, now, hold) if retarget else {}
    before = tx.one("SELECT action FROM optimizer_state WHERE key = ?", (KEY,))
    _publish_changes(
        tx,
        settings,
        now,
        rate=rate,
        previous_rate=previous_rate,
        action=action,
        previous_action=None if before is None else before["action"],
        source=source,
        reason=reason,
        who=who,
        requestor=requestor,
        host=host,
    )
    save(
        tx,
        rate=rate,
        action=action,
        confidence=confidence,
        reason=reason,
        now=now,
        who=who,
        pid=pid,
        detail=detail,
    )
    record_rate(
        tx,
        at=now,
        rate=rate,
        previous_rate=previous_rate,
        requested_rate=requested_rate,
        source=source,
        action=action,
        confidence=confidence,
        reason=reason,
        requestor=requestor,
        who=who,
        host=host,
    )
    if retarget:
        store_targets(tx, found, now)
    return found


def _publish_changes(
    tx: Tx,
    settings: Settings,
    now: float,
    *,
    rate: float,
    previous_rate: float | None,
    action: str,
    previous_action: str | None,
    source: str,
    reason: str | None,
    who: str | None,
    requestor: str | None,
    host: str | None,
) -> None:
    """SELFPLAY_RATE_CHANGED (the rate moved) and OPTIMIZER_ACTION (the action changed),
    in the transaction that stores them."""
    from ringrift_coord import events

    common = {"source": source, "reason": reason, "who": who, "at": now}
    if previous_rate is None or round(previous_rate, 1) != rate:
        payload = {"old_rate": previous_rate, "new_rate": rate, "requestor": requestor, **common}
        events.publish(
            tx,
            settings,
            "SELFPLAY_RATE_CHANGED",
            payload,
            source="tool",
            who=who,
            host=host,
            now=now,
        )
    previous_action = previous_action or "none"  # never adjusted: "none", as metrics say
    if previous_action != action:
        payload = {"old_action": previous_action, "new_action": action, "rate": rate, **common}
        events.publish(
            tx, settings, "OPTIMIZER_ACTION", payload, source="tool", who=who, host=host, now=now
        )


# --------------------------------------------------------------------------- samples


def add_sample(tx: Tx, at: float, util: dict[str, Any], keep_seconds: float) -> None:
    """One cluster utilization sample (the trend's input); drops those older than
    ``keep_seconds``."""
    tx.execute("DELETE FROM utilization_samples WHERE at < ?", (at - keep_seconds,))
    tx.execute(
        "INSERT INTO utilization_samples (at, cpu, gpu, gpu_memory, fresh_nodes, stale_nodes, "
        "running_jobs) VALUES (?,?,?,?,?,?,?)",
        (
            at,
            util.get("cpu"),
            util.get("gpu"),
            util.get("gpu_memory"),
            int(util.get("fresh_nodes") or 0),
            int(util.get("stale_nodes") or 0),
            int(util.get("running_jobs") or 0),
        ),
    )


def samples(tx: Tx, since: float) -> list[Row]:
    """Utilization samples at or after ``since``, oldest first."""
    return tx.query("SELECT * FROM utilization_samples WHERE at >= ? ORDER BY at, id", (since,))
