"""Safeguards: the emergency halt (SPEC §2, §5) and the pre-spawn check.

A halt is a row in the store (cluster-wide, or scoped to one task type, optionally
expiring) plus, for a cluster-wide halt, the ``EMERGENCY_HALT`` file in the state directory
holding who/when/why. The file's mere presence halts this host, so an operator can ``touch``
it by hand; deleting it by hand does not lift a halt said with ``halt`` (the row still
halts). Only ``unhalt`` or the halt's own expiry lifts it.

The reference's Python face (SPEC §3): ``Safeguards`` (``get_instance``, ``allow_spawn``,
``check_before_spawn``, ``get_block_reason``, ``record_spawn``, ``record_failure``,
``activate_emergency``, ``deactivate_emergency``, ``get_stats``) and module functions of the
same names, which take an optional leading ``Context`` (else the process-wide instance).
Nothing here is a second slot system: checks go through admission read-only, ``record_spawn``
only takes a rate token and logs, ``record_failure`` feeds the breaker and backpressure as
``breakers record-failure`` does. ``resource_overview`` / ``caps_in_force`` are what
``resources`` and ``limits`` show.
"""

from __future__ import annotations

import json
import os
import threading

from ringrift_coord.admission import HALT_FILE_NAME, Decision, Request, admit, read_halt_file
from ringrift_coord.context import Context, who_am_i
from ringrift_coord.errors import StateError, UsageError
from ringrift_coord.procs import host_name
from ringrift_coord.tasktypes import TaskType

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Tx

GLOBAL = "*"

__all__ = [
    "Safeguards",
    "activate_emergency",
    "allow_spawn",
    "caps_in_force",
    "check_before_spawn",
    "deactivate_emergency",
    "get_block_reason",
    "get_stats",
    "halt_status",
    "is_halted",
    "node_caps",
    "record_failure",
    "record_spawn",
    "record_success",
    "resource_overview",
]


def _scope(task_type: str | TaskType | None) -> str:
    return GLOBAL if task_type is None else TaskType.parse(task_type).value


def activate_emergency(
    ctx: Context | str | None = None,
    reason: str | None = None,
    *,
    task_type: str | TaskType | None = None,
    ttl: float | None = None,
    who: str | None = None,
) -> dict[str, Any]:
    """Halt every new spawn (or those of one type), cluster-wide, until unhalt or expiry.

    ``activate_emergency(ctx, reason)``, or the reference's ``activate_emergency(reason)``
    with the process-wide context.
    """
    if not isinstance(ctx, Context):
        if ctx is not None and reason is not None:
            raise TypeError("activate_emergency([ctx,] reason): two reasons given")
        ctx, reason = Safeguards.get_instance().ctx, ctx if reason is None else reason
    if ttl is not None and not (ttl > 0 and ttl < float("inf")):
        raise UsageError("--ttl must be a positive number of seconds")
    scope, who = _scope(task_type), who or who_am_i(ctx.env)
    with ctx.store.write() as tx:
        now = tx.now()
        expires = None if ttl is None else now + ttl
        tx.execute("DELETE FROM halts WHERE scope = ?", (scope,))
        tx.execute(
            "INSERT INTO halts (scope, reason, who, host, at, expires_at) VALUES (?,?,?,?,?,?)",
            (scope, reason, who, host_name(), now, expires),
        )
        tx.execute(
            "INSERT INTO halt_log (action, scope, reason, who, host, at, expires_at) "
            "VALUES ('halt',?,?,?,?,?,?)",
            (scope, reason, who, host_name(), now, expires),
        )
    record = {
        "scope": scope,
        "reason": reason,
        "who": who,
        "host": host_name(),
        "at": now,
        "expires_at": expires,
    }
    if scope == GLOBAL:
        # "mirror": a copy of the store's halt; an unhalt on any node makes it stale
        _write_halt_file(ctx.state_dir, {**record, "mirror": True})
    return record


def deactivate_emergency(
    ctx: Context | None = None,
    *,
    task_type: str | TaskType | None = None,
    who: str | None = None,
) -> dict[str, Any]:
    """Lift the halt: every halt without ``task_type``, else only that type's."""
    ctx = ctx if ctx is not None else Safeguards.get_instance().ctx
    who = who or who_am_i(ctx.env)
    with ctx.store.write() as tx:
        now = tx.now()
        if task_type is None:
            lifted = [r["scope"] for r in tx.query("SELECT scope FROM halts")]
            tx.execute("DELETE FROM halts")
        else:
            scope = _scope(task_type)
            lifted = [scope] if tx.execute("DELETE FROM halts WHERE scope = ?", (scope,)) else []
        for scope in lifted or ([GLOBAL] if task_type is None else []):
            tx.execute(
                "INSERT INTO halt_log (action, scope, reason, who, host, at) "
                "VALUES ('unhalt',?,NULL,?,?,?)",
                (scope, who, host_name(), now),
            )
    removed_file = False
    if task_type is None:
        path = os.path.join(ctx.state_dir, HALT_FILE_NAME)
        try:
            os.unlink(path)
            removed_file = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(
                f"lifted the halt in the store, but cannot remove {path}: {exc.strerror}; "
                "remove it by hand"
            ) from None
    return {"lifted": lifted, "removed_halt_file": removed_file, "who": who, "at": now}


def halt_status(ctx: Context) -> dict[str, Any]:
    """Every halt in force: store rows (unexpired) and this host's halt file."""
    with ctx.store.read() as tx:
        now = tx.now()
        rows = tx.query(
            "SELECT scope, reason, who, host, at, expires_at FROM halts "
            "WHERE expires_at IS NULL OR expires_at > ? ORDER BY at",
            (now,),
        )
        log = tx.query(
            "SELECT action, scope, reason, who, host, at, expires_at FROM halt_log "
            "ORDER BY id DESC LIMIT 10"
        )
    file_info = read_halt_file(ctx.state_dir, now)
    if (
        file_info is not None
        and file_info.get("mirror")
        and not any(row["scope"] == GLOBAL for row in rows)
    ):
        file_info = None  # a copy of a cluster-wide halt lifted since on another node
    return {"halts": rows, "halt_file": file_info, "recent": log, "at": now}


def is_halted(ctx: Context, task_type: str | TaskType | None = None) -> bool:
    status = halt_status(ctx)
    if status["halt_file"] is not None:
        return True
    scopes = {row["scope"] for row in status["halts"]}
    if task_type is None:
        return bool(scopes)
    return GLOBAL in scopes or _scope(task_type) in scopes


def _split(
    args: tuple[Any, ...], names: tuple[str, ...], required: int
) -> tuple[Context, list[Any]]:
    """``(ctx, *rest)`` or ``(*rest)``: the reference's functions take no context; without
    one, the process-wide ``Safeguards.get_instance()`` (built from the environment) is used."""
    explicit = bool(args) and isinstance(args[0], Context)
    rest = list(args[1:] if explicit else args)
    if not required <= len(rest) <= len(names):
        raise TypeError(f"expected ([ctx,] {', '.join(names)}), got {len(rest)} argument(s)")
    ctx = args[0] if explicit else Safeguards.get_instance().ctx
    return ctx, rest + [None] * (len(names) - len(rest))


def _node_or_default(ctx: Context, node_id: str | None) -> str:
    from ringrift_coord.task_coordinator import default_node

    return node_id or default_node(ctx.env)


def _decide(ctx: Context, task_type: str | TaskType, node_id: str | None) -> Decision:
    req = Request(
        task_type=TaskType.parse(task_type),
        node=_node_or_default(ctx, node_id),
        who=who_am_i(ctx.env),
    )
    with ctx.store.write() as tx:  # write: dead holders are reaped before counting
        return admit(
            tx,
            req,
            ctx.settings,
            state_dir=ctx.state_dir,
            take_slot=False,
            action="check",
            log=False,
        )


def check_before_spawn(*args: Any) -> tuple[bool, str]:
    """``check_before_spawn([ctx,] task_type, node)``: the whole admission decision,
    read-only: (allowed, reason). Takes no slot and writes no decision log entry."""
    ctx, (task_type, node_id) = _split(args, ("task_type", "node"), 1)
    if not args or not isinstance(args[0], Context):
        return Safeguards.get_instance().check_before_spawn(task_type, node_id)
    decision = _decide(ctx, task_type, node_id)
    return decision.allowed, "" if decision.allowed else decision.summary()


def allow_spawn(*args: Any) -> bool:
    """``allow_spawn([ctx,] task_type, node)``: ``check_before_spawn``'s first half."""
    return check_before_spawn(*args)[0]


def get_block_reason(*args: Any) -> str | None:
    """``get_block_reason([ctx,] task_type, node)``: why that spawn would be refused (None
    when it would not); ``get_block_reason()``: why the process-wide instance's last check
    said no."""
    if not args:
        return Safeguards.get_instance().get_block_reason()
    allowed, reason = check_before_spawn(*args)
    return None if allowed else reason


def record_spawn(*args: Any) -> Decision:
    """``record_spawn([ctx,] task_type, node)``: count a spawn made outside ``register``/``run``.

    It takes one token from the (node, type) rate bucket (at the rate after the node's
    backpressure; nothing when the type has no rate limit) and writes an entry with action
    ``record-spawn`` to the decision log, holding the decision as it stood before the token
    was taken. It takes NO slot: a job that should count against the task limits must
    ``register`` (or ``run``) instead. Returns that decision.
    """
    from ringrift_coord.admission import _take_token

    ctx, (task_type, node_id) = _split(args, ("task_type", "node"), 1)
    req = Request(
        task_type=TaskType.parse(task_type),
        node=_node_or_default(ctx, node_id),
        who=who_am_i(ctx.env),
    )
    with ctx.store.write() as tx:
        decision = admit(
            tx, req, ctx.settings, state_dir=ctx.state_dir, take_slot=False, action="record-spawn"
        )
        rate = decision._rate  # after backpressure; None: the type has no rate limit
        if rate is not None:
            _take_token(tx, req.node, req.task_type.value, rate, tx.now())
    return decision


def _record(
    ctx: Context, task_type: str | TaskType, node_id: str | None, *, ok: bool, reason: str | None
) -> dict[str, Any]:
    from ringrift_coord import guards
    from ringrift_coord.breakers import BreakerConfig

    ttype = TaskType.parse(task_type).value
    node = _node_or_default(ctx, node_id)
    if reason is not None:
        reason = " ".join(str(reason).split())[:300] or None  # one line in every listing
    with ctx.store.write() as tx:
        now = tx.now()
        breaker = guards.record_manual(tx, ctx.settings, node, ttype, now, ok=ok, reason=reason)
        state = breaker.to_dict(now, BreakerConfig.from_settings(ctx.settings))
        state["backpressure"] = guards.rate_factor(tx, node)
    return state


def record_failure(*args: Any) -> dict[str, Any]:
    """``record_failure([ctx,] task_type, node, reason)``: a failed spawn or job, fed to the
    (node, type) circuit breaker and the node's backpressure (``breakers record-failure``).
    Returns the breaker as ``breakers list`` shows it, plus the node's ``backpressure``."""
    ctx, (task_type, node_id, reason) = _split(args, ("task_type", "node", "reason"), 1)
    return _record(ctx, task_type, node_id, ok=False, reason=reason)


def record_success(*args: Any) -> dict[str, Any]:
    """``record_success([ctx,] task_type, node)``: the counterpart (a half-open trial that
    succeeded closes the breaker; backpressure recovers additively)."""
    ctx, (task_type, node_id) = _split(args, ("task_type", "node"), 1)
    return _record(ctx, task_type, node_id, ok=True, reason=None)


# --------------------------------------------------------------------------- resources, caps


def node_caps(tx: Tx, settings: Settings, node: str, now: float) -> dict[str, Any]:
    """A node's effective per-node caps: configured limits, OOM-lowered caps, backpressure."""
    from ringrift_coord import guards

    per_node = {
        name: entry["per_node"]
        for name, entry in settings.get("task_limits").items()
        if isinstance(entry, dict) and entry.get("per_node") is not None
    }
    lowered: dict[str, int] = {}
    for row in tx.query(
        "SELECT task_type FROM lowered_caps WHERE node = ? ORDER BY task_type", (node,)
    ):
        cap = guards.lowered_cap(tx, settings, node, row["task_type"], now)
        if cap is not None:
            lowered[row["task_type"]] = cap
    effective: dict[str, int] = dict(per_node)
    for name, cap in lowered.items():
        effective[name] = cap if per_node.get(name) is None else min(cap, per_node[name])
    return {
        "per_node": per_node,
        "lowered": lowered,
        "effective": effective,
        "backpressure": guards.rate_factor(tx, node),
    }


def caps_in_force(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """Every OOM-lowered cap still below its configured limit, and every backpressure factor."""
    from ringrift_coord import guards

    lowered = []
    for row in tx.query(
        "SELECT node, task_type, lowered_at, ooms FROM lowered_caps ORDER BY node, task_type"
    ):
        cap = guards.lowered_cap(tx, settings, row["node"], row["task_type"], now)
        if cap is None:  # grown back to the configured limit
            continue
        lowered.append(
            {**row, "cap": cap, "configured": settings.task_limit(row["task_type"], "per_node")}
        )
    backpressure = tx.query("SELECT node, factor, updated_at FROM backpressure ORDER BY node")
    return {"lowered_caps": lowered, "backpressure": backpressure}


def resource_overview(
    tx: Tx,
    settings: Settings,
    now: float,
    *,
    node: str | None = None,
    state_dir: str | None = None,
    live: bool = True,
) -> dict[str, Any]:
    """Every node's latest reading (or one node's) against the thresholds, read-only.

    Each entry has the levels per resource, the load against its critical level, the
    sample's age, ``stale`` (older than ``resources.max_sample_age``: admission ignores it),
    ``blocking`` (what admission would refuse the node for) and the node's caps. With
    ``live``, this host also gets ``live``: its cheap live readings, which admission uses
    when ``resources.live_host`` is on and the host has no fresh sample.
    """
    from ringrift_coord import procs, readings

    thresholds = settings.get("thresholds")
    max_age = float(settings.get("resources.max_sample_age"))
    rows = [readings.latest(tx, node)] if node is not None else readings.all_latest(tx)
    nodes = []
    for row in rows:
        if row is None:
            continue
        item = readings.assess(readings.decode(row) or {}, thresholds, now, max_age)
        item["caps"] = node_caps(tx, settings, row["node"], now)
        nodes.append(item)
    local = procs.local_node()
    live_doc = None
    if live and (node is None or node == local):
        paths = ([state_dir] if state_dir else []) + list(settings.get("resources.data_paths"))
        reading = readings.live_host(paths)
        reading.update(node=local, at=now)
        live_doc = readings.assess(reading, thresholds, now, max_age)
        fresh = any(n["node"] == local and not n["stale"] for n in nodes)
        live_doc["used_by_admission"] = bool(settings.get("resources.live_host")) and not fresh
        live_doc["blocking"] = live_doc["blocking"] and live_doc["used_by_admission"]
        live_doc["caps"] = node_caps(tx, settings, local, now)
    return {
        "at": now,
        "thresholds": thresholds,
        "max_sample_age": max_age,
        "live_host": bool(settings.get("resources.live_host")),
        "local_node": local,
        "nodes": nodes,
        "live": live_doc,
    }


def get_stats(ctx: Context | None = None) -> dict[str, Any]:
    """Breakers, halts, readings, backpressure and lowered caps: one JSON-able document."""
    from ringrift_coord import breakers
    from ringrift_coord.breakers import BreakerConfig

    ctx = ctx or Safeguards.get_instance().ctx
    halts = halt_status(ctx)
    with ctx.store.read() as tx:
        now = tx.now()
        cfg = BreakerConfig.from_settings(ctx.settings)
        breaker_list = [b.to_dict(now, cfg) for b in breakers.load_all(tx)]
        overview = resource_overview(tx, ctx.settings, now, state_dir=ctx.state_dir)
        caps = caps_in_force(tx, ctx.settings, now)
    return {
        "at": now,
        "emergency_active": bool(halts["halts"]) or halts["halt_file"] is not None,
        "halts": halts["halts"],
        "halt_file": halts["halt_file"],
        "breakers": breaker_list,
        "open_breakers": sum(1 for b in breaker_list if b["state"] != "closed"),
        "readings": overview["nodes"],
        "live": overview["live"],
        "thresholds": overview["thresholds"],
        "blocked_nodes": sorted({n["node"] for n in overview["nodes"] if n["blocking"]}),
        **caps,
    }


def _write_halt_file(state_dir: str, record: dict[str, Any]) -> None:
    path = os.path.join(state_dir, HALT_FILE_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateError(
            f"halted in the store, but cannot write {path}: {exc.strerror}; this host's halt "
            "file is missing"
        ) from None


class Safeguards:
    """Object face of the functions above (reference: ``Safeguards.get_instance()``).

    ``allow_spawn`` / ``check_before_spawn`` decide read-only and remember why they said no
    (``get_block_reason``); ``record_spawn`` counts a spawn against the (node, type) rate
    bucket and notes it in the decision log, without taking a slot; ``record_failure`` feeds
    the breaker and the node's backpressure. ``node`` defaults to ``$RINGRIFT_NODE_ID``, else
    the host name.
    """

    _instance: Safeguards | None = None
    _lock = threading.Lock()

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()
        self._last_block: str | None = None
        self.last_decision: Decision | None = None

    @classmethod
    def get_instance(cls) -> Safeguards:
        """The process-wide instance, its context built from the environment on first use."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @classmethod
    def reset_instance(cls) -> None:
        """Forget the process-wide instance (closing its store); the next use builds anew."""
        with cls._lock:
            if cls._instance is not None:
                cls._instance.ctx.close()
            cls._instance = None

    def check_before_spawn(
        self, task_type: str | TaskType, node_id: str | None = None
    ) -> tuple[bool, str]:
        decision = _decide(self.ctx, task_type, node_id)
        self.last_decision = decision
        self._last_block = None if decision.allowed else decision.summary()
        return decision.allowed, self._last_block or ""

    def allow_spawn(self, task_type: str | TaskType, node_id: str | None = None) -> bool:
        return self.check_before_spawn(task_type, node_id)[0]

    def get_block_reason(self) -> str | None:
        """Why the last ``allow_spawn`` / ``check_before_spawn`` said no (None when it said yes)."""
        return self._last_block

    def record_spawn(self, task_type: str | TaskType, node_id: str | None = None) -> Decision:
        return record_spawn(self.ctx, task_type, node_id)

    def record_failure(
        self, task_type: str | TaskType, node_id: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        return record_failure(self.ctx, task_type, node_id, reason)

    def record_success(
        self, task_type: str | TaskType, node_id: str | None = None
    ) -> dict[str, Any]:
        return record_success(self.ctx, task_type, node_id)

    def activate_emergency(self, reason: str | None = None, **kw: Any) -> dict[str, Any]:
        return activate_emergency(self.ctx, reason, **kw)

    def deactivate_emergency(self, **kw: Any) -> dict[str, Any]:
        return deactivate_emergency(self.ctx, **kw)

    def is_emergency_active(self, task_type: str | TaskType | None = None) -> bool:
        return is_halted(self.ctx, task_type)

    def get_stats(self) -> dict[str, Any]:
        stats = get_stats(self.ctx)
        stats["last_block_reason"] = self._last_block
        return stats
