"""Read models: the documents ``status``, ``resources``, ``limits``, ``breakers list``,
``decisions``, ``get_stats`` and ``get_state`` show.

Each report taking a ``Context`` reads in ONE read transaction (so every part of a report is
the same moment's state), never writes (looking at a breaker never moves its recovery
timer; a stale halt file is shown as lifted, not removed) and returns a JSON-able document.
The functions taking a transaction are the pieces, for callers that already hold one.
"""

from __future__ import annotations

from ringrift_coord import (
    admission,
    breakers,
    diagnose,
    feedback,
    halts,
    identity,
    queue,
    readings,
    reservations,
    slots,
)
from ringrift_coord.breakers import BreakerConfig
from ringrift_coord.config import is_used
from ringrift_coord.tasktypes import TASK_TYPE_NAMES
from ringrift_coord.transfers import TASK_TYPE as TRANSFER_QUEUE

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Row, Tx

RUNNING, PAUSED = "running", "paused"  # CoordinatorStatus values


# --------------------------------------------------------------------------- task coordinator


def task_stats(
    tx: Tx, settings: Settings, state_dir: str | halts.Snapshot | None, now: float
) -> dict[str, Any]:
    """Tasks per type and node against their limits, queue lengths, reservations, state."""
    counts = slots.counts(tx)
    by_type: dict[str, Any] = {}
    for t in TASK_TYPE_NAMES:
        by_type[t] = {
            "running": 0,
            "per_node_limit": settings.task_limit(t, "per_node"),
            "cluster_limit": settings.task_limit(t, "cluster"),
            "nodes": {},
            "queued": 0,
            "held": 0,  # waiters a halt or peak hours hold back: they start once it lifts
        }
    for row in counts:
        entry = by_type.setdefault(
            row["task_type"], {"running": 0, "nodes": {}, "queued": 0, "held": 0}
        )
        entry["running"] += row["n"]
        entry["nodes"][row["node"]] = row["n"]
    for row in queue.lengths(tx):
        if row["task_type"] == TRANSFER_QUEUE:
            continue  # transfers wait per remote, under its cap: not a task type's line
        entry = by_type.setdefault(row["task_type"], {"running": 0, "nodes": {}})
        entry["queued"], entry["held"] = int(row["n"]), int(row["held"])
    return {
        "state": PAUSED if halts.state(tx, state_dir, now).paused else RUNNING,
        "total_tasks": sum(r["n"] for r in counts),
        "by_type": by_type,
        "reservations": reservations.active(tx, now),
    }


def stats(ctx: Context) -> dict[str, Any]:
    """``TaskCoordinator.get_stats``: ``task_stats`` and the store in use."""
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)  # files first, then the store
    with ctx.store.read() as tx:
        doc = task_stats(tx, ctx.settings, local, tx.now())
    doc["store"] = ctx.store.describe()
    return doc


def state(ctx: Context) -> str:
    """``running``, or ``paused`` while a cluster-wide halt (or this host's halt file) holds."""
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)
    with ctx.store.read() as tx:
        return PAUSED if halts.state(tx, local, tx.now()).paused else RUNNING


def status(ctx: Context) -> dict[str, Any]:
    """``status``: the task stats, the halts, the running tasks and the breakers, all as of
    one moment (``at``)."""
    cfg = BreakerConfig.from_settings(ctx.settings)
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)  # read once, before the store
    with ctx.store.read() as tx:
        now = tx.now()
        doc = task_stats(tx, ctx.settings, local, now)
        doc["halt"] = halts.status(tx, local, now)
        doc["state"] = PAUSED if doc["halt"]["paused"] else RUNNING  # one reading of the file
        doc["tasks"] = slots.running(tx, now)
        doc["breakers"] = breakers.views(tx, cfg, now)
        optimizer = _optimizer_summary(tx, ctx.settings, now)
    doc["store"] = ctx.store.describe()
    doc["at"] = now
    doc["optimizer"] = optimizer
    # who holds the write lock, a read snapshot or a transaction longer than store.long_hold
    doc["long_holds"] = diagnose.long_holds(ctx.store, float(ctx.settings.get("store.long_hold")))
    return doc


def _optimizer_summary(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """Utilization against the targets, the self-play rate and the last adjust's action and
    confidence (``optimizer.utilization.summary``)."""
    from ringrift_coord.optimizer import utilization

    return utilization.summary(tx, settings, now)


def decisions(ctx: Context, *, since_age: float | None = None, **filters: Any) -> list[Row]:
    """``decisions``: the decision log, newest first (see ``admission.decisions``).

    ``since_age``: only the last so many seconds, by the store's clock (the one the log's
    times were written by)."""
    with ctx.store.read() as tx:
        if since_age is not None:
            filters["since"] = tx.now() - since_age
        return admission.decisions(tx, **filters)


# --------------------------------------------------------------------------- safeguards


def resource_overview(
    tx: Tx,
    settings: Settings,
    now: float,
    *,
    node: str | None = None,
    state_dir: str | None = None,
    live: bool = True,
) -> dict[str, Any]:
    """Every node's latest reading (or one node's) against the thresholds.

    Each entry has the levels per resource, the load against its critical level, the
    sample's age, ``stale`` (older than ``resources.max_sample_age``: admission ignores it),
    ``blocking`` (what admission would refuse the node for) and the node's caps. With
    ``live``, this host also gets ``live``: its cheap live readings, which admission uses
    when ``resources.live_host`` is on and the host has no fresh sample.
    """
    thresholds = settings.get("thresholds")
    max_age = float(settings.get("resources.max_sample_age"))
    rows = [readings.latest(tx, node)] if node is not None else readings.all_latest(tx)
    nodes = []
    for row in rows:
        if row is None:
            continue
        item = readings.assess(readings.decode(row) or {}, thresholds, now, max_age)
        item["caps"] = feedback.node_caps(tx, settings, row["node"], now)
        item["caps"]["hardware_cap"] = hardware_cap(row, settings)
        nodes.append(item)
    local = identity.local_node()
    live_doc = None
    if live and (node is None or node == local):
        paths = ([state_dir] if state_dir else []) + list(settings.get("resources.data_paths"))
        reading = readings.live_host(paths)
        reading.update(node=local, at=now)
        live_doc = readings.assess(reading, thresholds, now, max_age)
        fresh = any(n["node"] == local and not n["stale"] for n in nodes)
        live_doc["used_by_admission"] = bool(settings.get("resources.live_host")) and not fresh
        live_doc["blocking"] = live_doc["blocking"] and live_doc["used_by_admission"]
        live_doc["caps"] = feedback.node_caps(tx, settings, local, now)
        # admission caps this host by its stored reading's hardware, never by a live one
        stored = next((r for r in rows if r is not None and r["node"] == local), None)
        live_doc["caps"]["hardware_cap"] = hardware_cap(stored, settings)
    return {
        "at": now,
        "thresholds": thresholds,
        "max_sample_age": max_age,
        "live_host": bool(settings.get("resources.live_host")),
        "local_node": local,
        "nodes": nodes,
        "live": live_doc,
    }


def hardware_cap(reading: Row | None, settings: Settings) -> dict[str, Any] | None:
    """A node's self-play hardware cap from its stored reading (any age: hardware does not
    go stale), what bounds it, and whether admission enforces it (``hardware.cap_selfplay``;
    a cap of unknown hardware limits nothing); None without a reading."""
    if reading is None:
        return None
    from ringrift_coord.optimizer import capacity

    found = capacity.of_reading(reading, settings)
    cap = found["max_selfplay_jobs"]
    return {
        "max_selfplay_jobs": cap,
        "bounded_by": found["bounded_by"],
        "enforced": bool(settings.get("hardware.cap_selfplay")) and cap is not None,
    }


def resources(ctx: Context, node: str | None = None) -> dict[str, Any]:
    """``resources``: see ``resource_overview``."""
    with ctx.store.read() as tx:
        return resource_overview(tx, ctx.settings, tx.now(), node=node, state_dir=ctx.state_dir)


def breaker_list(
    ctx: Context, node: str | None = None, task_type: str | None = None
) -> dict[str, Any]:
    """``breakers list``: every breaker (or a node's, a type's) as of ``at``."""
    cfg = BreakerConfig.from_settings(ctx.settings)
    with ctx.store.read() as tx:
        now = tx.now()
        rows = breakers.views(tx, cfg, now, node, task_type)
        # jobs that could not be started (exit 126/127) inside the window: counted apart,
        # never fed to the breaker; a (node, type) with only those is listed as closed
        spawn = {
            (r["node"], r["task_type"]): r
            for r in slots.ended_counts(tx, "spawn_failed", now - cfg.window)
            if (node is None or r["node"] == node)
            and (task_type is None or r["task_type"] == task_type)
        }
        backpressure = feedback.backpressure_in_force(tx, ctx.settings, now, node)
    for row in rows:
        found = spawn.pop((row["node"], row["task_type"]), None)
        row["spawn_failures"] = found["n"] if found else 0
    for (n, t), found in spawn.items():
        row = breakers.Breaker(n, t, now).to_dict(now, cfg)
        row["spawn_failures"] = found["n"]
        rows.append(row)
    rows.sort(key=lambda r: (r["node"], r["task_type"]))
    return {"at": now, "breakers": rows, "backpressure": backpressure}


def caps_in_force(ctx: Context) -> dict[str, Any]:
    """What admission learned: OOM-lowered caps and backpressure factors in force (none
    while no store exists: a read-only command does not create one)."""
    from ringrift_coord.store import NoStore

    try:
        store = ctx.store
    except NoStore:
        return {"lowered_caps": [], "backpressure": []}
    with store.read() as tx:
        return feedback.caps_in_force(tx, ctx.settings, tx.now())


def settings(ctx: Context, sections: list[str]) -> dict[str, Any]:
    """The effective settings of ``sections``, each with its source; ``used`` is false for
    one that nothing reads yet (``config.NOT_USED_YET``)."""
    rows = [
        {"key": key, "value": value, "source": source, "used": is_used(key)}
        for section in sections
        for key, value, source in ctx.settings.flat(section)
    ]
    return {"config_file": ctx.settings.file, "values": rows}


LIMIT_SECTIONS = ["task_limits", "rate_limits", "thresholds", "store", "run", "backpressure"]
TARGET_SECTIONS = ["resource_targets", "optimizer", "durations", "peak_hours"]


def targets(ctx: Context) -> dict[str, Any]:
    """``targets``: the target settings with their sources, and ``notes`` on the per-node
    thresholds against the targets. Raises the error kept for a bad ``resource_targets`` or
    ``optimizer`` setting (``Settings.require``)."""
    from ringrift_coord.resource_targets import get_resource_targets, threshold_notes

    get_resource_targets(ctx.settings)
    ctx.settings.require("optimizer")
    return {**settings(ctx, TARGET_SECTIONS), "notes": threshold_notes(ctx.settings)}


def limits(ctx: Context) -> dict[str, Any]:
    """``limits``: the limits in force with their sources, and the caps admission learned."""
    return {**settings(ctx, LIMIT_SECTIONS), **caps_in_force(ctx)}


def safeguard_stats(ctx: Context) -> dict[str, Any]:
    """``Safeguards.get_stats``: breakers, halts, readings, backpressure and lowered caps."""
    cfg = BreakerConfig.from_settings(ctx.settings)
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)
    with ctx.store.read() as tx:
        now = tx.now()
        halt = halts.state(tx, local, now)
        breaker_list = breakers.views(tx, cfg, now)
        overview = resource_overview(tx, ctx.settings, now, state_dir=ctx.state_dir)
        caps = feedback.caps_in_force(tx, ctx.settings, now)
    return {
        "at": now,
        "emergency_active": halt.halted(),
        "halts": halt.rows,
        "halt_file": halt.file,
        "breakers": breaker_list,
        # the reference's shape: one entry per breaker, keyed "task_type:node" (the same
        # rows as "breakers"; a breaker never written is closed and absent)
        "circuit_breakers": {f"{b['task_type']}:{b['node']}": b for b in breaker_list},
        "open_breakers": sum(1 for b in breaker_list if b["state"] != "closed"),
        "readings": overview["nodes"],
        "live": overview["live"],
        "thresholds": overview["thresholds"],
        "blocked_nodes": sorted({n["node"] for n in overview["nodes"] if n["blocking"]}),
        **caps,
    }
