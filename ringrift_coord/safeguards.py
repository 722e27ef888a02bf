"""Safeguards: the emergency halt and the pre-spawn check, the reference's Python face.

``Safeguards`` (``get_instance``, ``allow_spawn``, ``check_before_spawn``,
``get_block_reason``, ``record_spawn``, ``record_failure``, ``activate_emergency``,
``deactivate_emergency``, ``get_stats``) and module functions of the same names, which take
an optional leading ``Context`` (else the process-wide instance). A thin face over the core:
halts are ``halts``' (the store's row, the ``EMERGENCY_HALT`` file, the mirror rule); checks
go through ``admission`` read-only; ``record_spawn`` only takes a rate token and logs;
``record_failure`` feeds the breaker and backpressure (``feedback``), exactly as ``breakers
record-failure`` does; ``get_stats``, ``resource_overview`` and ``caps_in_force`` are
``reports``' read models. Nothing here is a second slot system.
"""

from __future__ import annotations

from ringrift_coord import (
    admission,
    breakers,
    feedback,
    halts,
    identity,
    inputs,
    readings,
    reports,
    rules,
    tasktypes,
)
from ringrift_coord.breakers import BreakerConfig
from ringrift_coord.context import Context, ProcessWide
from ringrift_coord.decision import Decision, Request
from ringrift_coord.identity import default_node, who_am_i

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

GLOBAL = halts.GLOBAL
DEFAULT_FAILURE_REASON = "failure recorded by a script"

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
    "reset",
    "reset_breakers",
    "resource_overview",
    "store_reading",
]


# --------------------------------------------------------------------------- the halt


def activate_emergency(
    ctx: Context | str | None = None,
    reason: str | None = None,
    *,
    task_type: str | None = None,
    ttl: float | None = None,
    who: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Halt every new spawn (or those of one type), cluster-wide (or on ``node`` only: a
    drain), until unhalt or expiry.

    ``activate_emergency(ctx, reason)``, or the reference's ``activate_emergency(reason)``
    with the process-wide context.
    """
    if isinstance(ctx, Context):
        context = ctx
    else:  # the reference's activate_emergency(reason)
        if ctx is not None and reason is not None:
            raise TypeError("activate_emergency([ctx,] reason): two reasons given")
        context, reason = Safeguards.get_instance().ctx, ctx if reason is None else reason
    return halts.activate(
        context,
        reason,
        task_type=task_type,
        ttl=ttl,
        who=who or who_am_i(context.env),
        host=identity.host_name(),
        node=node,
    )


def deactivate_emergency(
    ctx: Context | None = None,
    *,
    task_type: str | None = None,
    who: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Lift the halt: every halt without ``task_type``, else only that type's; with
    ``node``, only that node's own halts."""
    ctx = ctx if ctx is not None else Safeguards.get_instance().ctx
    return halts.deactivate(
        ctx,
        task_type=task_type,
        who=who or who_am_i(ctx.env),
        host=identity.host_name(),
        node=node,
    )


def halt_status(
    ctx: Context, task_type: str | None = None, node: str | None = None
) -> dict[str, Any]:
    """Every halt in force (store rows, this host's halt file), the last audit entries, and
    ``halted``: whether this host is halted at all (or for ``task_type``; on ``node`` only,
    when given)."""
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)  # the file before the store
    with ctx.store.read() as tx:
        return halts.status(tx, local, tx.now(), task_type, node)


def is_halted(ctx: Context, task_type: str | None = None, node: str | None = None) -> bool:
    return bool(halt_status(ctx, task_type, node)["halted"])


# --------------------------------------------------------------------------- the check


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


def _request(ctx: Context, task_type: str, node_id: str | None) -> Request:
    return Request(
        task_type=tasktypes.parse(task_type),
        node=node_id or default_node(ctx.env),
        who=who_am_i(ctx.env),
    )


def _decide(ctx: Context, task_type: str, node_id: str | None) -> Decision:
    req = _request(ctx, task_type, node_id)
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)  # never read under the lock
    live = rules.live_reading(ctx.settings, ctx.state_dir, req.node)
    with ctx.store.write() as tx:  # write: dead holders are reaped before counting
        return admission.admit(
            tx,
            req,
            ctx.settings,
            state_dir=ctx.state_dir,
            halt_file=local,
            live=live,
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
    ctx, (task_type, node_id) = _split(args, ("task_type", "node"), 1)
    req = _request(ctx, task_type, node_id)
    local = halts.snapshot(ctx.state_dir, ctx.store.scope)  # never read under the lock
    live = rules.live_reading(ctx.settings, ctx.state_dir, req.node)
    with ctx.store.write() as tx:
        decision = admission.admit(
            tx,
            req,
            ctx.settings,
            state_dir=ctx.state_dir,
            halt_file=local,
            live=live,
            take_slot=False,
            action="record-spawn",
        )
        if decision._rate is not None:  # after backpressure; None: the type has no rate limit
            rules.take_token(tx, req.node, req.task_type, decision._rate, tx.now())
    return decision


# --------------------------------------------------------------------------- outcomes, breakers


def _record(
    ctx: Context, task_type: str, node_id: str | None, *, ok: bool, reason: str | None
) -> dict[str, Any]:
    """The one implementation of ``record_failure`` / ``record_success`` (and of ``breakers
    record-failure`` / ``record-success``)."""
    ttype = tasktypes.parse(task_type)
    node = node_id or default_node(ctx.env)
    reason = inputs.reason(reason)
    if ok:
        reason = None
    elif not (reason and reason.strip()):
        reason = DEFAULT_FAILURE_REASON
    with ctx.store.write() as tx:
        now = tx.now()
        breaker = feedback.record_manual(tx, ctx.settings, node, ttype, now, ok=ok, reason=reason)
        state = breaker.to_dict(now, BreakerConfig.from_settings(ctx.settings))
        state["backpressure"] = feedback.rate_factor(tx, ctx.settings, node, now)
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


def reset_breakers(
    ctx: Context, *, node: str | None = None, task_type: str | None = None
) -> list[Row]:
    """Close breakers by hand: one (node and type), a node's, a type's, or all (neither)."""
    return reset(ctx, node=node, task_type=task_type)["reset"]


def reset(
    ctx: Context, *, node: str | None = None, task_type: str | None = None
) -> dict[str, list[Row]]:
    """``breakers reset``: close breakers as ``reset_breakers`` does and, where a node is
    named (or for all), give that node (every node) its full spawn rate back.

    Returns ``reset`` (the breakers closed) and ``backpressure_reset`` (node, factor)."""
    ttype = None if task_type is None else tasktypes.parse(task_type)
    with ctx.store.write() as tx:
        rows = breakers.reset(tx, node=node, task_type=ttype, settings=ctx.settings)
        factors: list[Row] = []
        if node is not None or ttype is None:
            factors = feedback.reset_backpressure(tx, ctx.settings, tx.now(), node)
    return {"reset": rows, "backpressure_reset": factors}


# --------------------------------------------------------------------------- readings, caps


def store_reading(
    ctx: Context,
    node: str | None,
    figures: dict[str, Any] | None = None,
    hardware: dict[str, Any] | None = None,
) -> Row:
    """``report``: sample this host and store the reading for ``node``; or, with figures or
    hardware given by hand, store those (source ``manual``), keeping the node's previous
    hardware where none is given. Returns the stored reading."""
    target = node or default_node(ctx.env)
    figures = {k: v for k, v in (figures or {}).items() if v is not None}
    hardware = {k: v for k, v in (hardware or {}).items() if v is not None}
    manual = bool(figures or hardware)
    if not manual:  # outside the transaction: sampling the CPU takes a fifth of a second
        reading = readings.sample([ctx.state_dir, *ctx.settings.get("resources.data_paths")])
    with ctx.store.write() as tx:
        now = tx.now()
        if manual:
            previous = readings.latest(tx, target) or {}
            reading = {**{k: figures.get(k) for k in readings.FIGURES}, "source": "manual"}
            for key in readings.HARDWARE:
                reading[key] = hardware[key] if key in hardware else previous.get(key)
        readings.store_reading(tx, target, reading, now)
        stored = readings.decode(readings.latest(tx, target))
    assert stored is not None
    return stored


def node_caps(tx: Tx, settings: Settings, node: str, now: float) -> dict[str, Any]:
    """A node's effective per-node caps: configured limits, OOM-lowered caps, backpressure."""
    return feedback.node_caps(tx, settings, node, now)


def caps_in_force(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """Every OOM-lowered cap still below its configured limit, and every backpressure factor."""
    return feedback.caps_in_force(tx, settings, now)


resource_overview = reports.resource_overview


def get_stats(ctx: Context | None = None) -> dict[str, Any]:
    """Breakers, halts, readings, backpressure and lowered caps: one JSON-able document."""
    return reports.safeguard_stats(ctx or Safeguards.get_instance().ctx)


class Safeguards(ProcessWide):
    """Object face of the functions above (reference: ``Safeguards.get_instance()``).

    ``allow_spawn`` / ``check_before_spawn`` decide read-only and remember why they said no
    (``get_block_reason``); ``record_spawn`` counts a spawn against the (node, type) rate
    bucket and notes it in the decision log, without taking a slot; ``record_failure`` feeds
    the breaker and the node's backpressure. ``node`` defaults to ``$RINGRIFT_NODE_ID``, else
    the host name.
    """

    _instance: Safeguards | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()
        self._last_block: str | None = None
        self.last_decision: Decision | None = None

    def check_before_spawn(self, task_type: str, node_id: str | None = None) -> tuple[bool, str]:
        decision = _decide(self.ctx, task_type, node_id)
        self.last_decision = decision
        self._last_block = None if decision.allowed else decision.summary()
        return decision.allowed, self._last_block or ""

    def allow_spawn(self, task_type: str, node_id: str | None = None) -> bool:
        return self.check_before_spawn(task_type, node_id)[0]

    def get_block_reason(self) -> str | None:
        """Why the last ``allow_spawn`` / ``check_before_spawn`` said no (None when it said yes)."""
        return self._last_block

    def record_spawn(self, task_type: str, node_id: str | None = None) -> Decision:
        return record_spawn(self.ctx, task_type, node_id)

    def record_failure(
        self, task_type: str, node_id: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        return record_failure(self.ctx, task_type, node_id, reason)

    def record_success(self, task_type: str, node_id: str | None = None) -> dict[str, Any]:
        return record_success(self.ctx, task_type, node_id)

    def activate_emergency(self, reason: str | None = None, **kw: Any) -> dict[str, Any]:
        return activate_emergency(self.ctx, reason, **kw)

    def deactivate_emergency(self, **kw: Any) -> dict[str, Any]:
        return deactivate_emergency(self.ctx, **kw)

    def is_emergency_active(self, task_type: str | None = None) -> bool:
        return is_halted(self.ctx, task_type)

    def get_stats(self) -> dict[str, Any]:
        stats = get_stats(self.ctx)
        stats["last_block_reason"] = self._last_block
        return stats
