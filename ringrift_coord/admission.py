"""One admission transaction composing every rule, and the decision log.

Inside one serialised write transaction ``admit`` reaps dead holders and waiters
(``slots``), evaluates every rule (``rules.RULES``: halt, breaker, thresholds, reservations,
per-node and cluster limits counting the fair-queue waiters ahead, OOM cap, spawn rate) and,
when everything allows it, takes the slot. N racing launchers can therefore never admit more
than a limit. The resulting ``Decision`` lists every blocking rule with its numbers and a
retry-after estimate, and is written to the decision log, whose entry id is the new slot's
fencing token.
"""

from __future__ import annotations

import os

from ringrift_coord import (
    breakers,
    feedback,
    halts,
    identity,
    queue,
    readings,
    reservations,
    rules,
    slots,
    tasktypes,
)
from ringrift_coord.decision import Decision, Reason, Request

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

__all__ = ["Decision", "Reason", "Request", "admit", "decisions", "evaluate", "log_decision"]

# One round trip saying which side tables matter for this admission at all: most admissions
# meet no halt, waiter, reservation, breaker, reading, lowered cap, backpressure or optimizer
# target; and the counts the limits need (the node's running tasks of the type, the type's
# in the cluster). Each owner module says how to count its own rows.
_PROBES = (  # (name, expression), the expressions' parameters in _probe_args's order
    ("halts", halts.PROBE),
    ("waiters", queue.PROBE),
    ("reservations", reservations.PROBE),
    ("breaker", breakers.PROBE),  # (node, type)
    ("reading", readings.PROBE),  # (node,)
    ("cap", feedback.CAP_PROBE),  # (node, type)
    ("factor", feedback.FACTOR_PROBE),  # (node,)
    ("on_node", slots.NODE_PROBE),  # (node, type)
    ("of_type", slots.TYPE_PROBE),  # (type,)
    ("target", rules.TARGET_PROBE),  # (node,)
)
_PROBE = "SELECT " + ", ".join(f"{expr} AS {name}" for name, expr in _PROBES)


def _probe_args(node: str, ttype: str) -> tuple[str, ...]:
    return (node, ttype, node, node, ttype, node, node, ttype, ttype, node)


def probe(tx: Tx, node: str, ttype: str) -> Row:
    """Which side tables hold anything for this (node, type), and its counts: one
    statement."""
    row = tx.one(_PROBE, _probe_args(node, ttype))
    assert row is not None
    return row


def probe_and_reap_query(
    tx: Tx, node: str, ttype: str, host: str, *, draw_id: bool
) -> tuple[str, tuple[Any, ...]]:
    """``probe`` and the reaper's read (``slots.reap_query`` for ``host``) as one
    statement: the probe's one row joined to each slot the reaper must look at (or to
    none). ``draw_id``: also draw the decision log's next id (``next_id``) where the engine
    can (``Tx.id_ahead``), so the log entry's INSERT need not send it back."""
    clock = tx.clock_sql()
    ahead = tx.id_ahead("decisions") if draw_id else None
    sql = _JOINED.get((clock[0], ahead))
    if sql is None:  # (a few texts per engine: built once, and the driver's cache keeps hitting)
        reap_sql, _ = slots.reap_query(host, 0.0, clock=clock)
        probe_sql = _PROBE if ahead is None else f"{_PROBE}, {ahead} AS next_id"
        sql = _JOINED[clock[0], ahead] = (
            f"SELECT p.*, t.* FROM ({probe_sql}) AS p LEFT JOIN ({reap_sql}) AS t ON 1 = 1"  # noqa: S608 (fixed text)
        )
    return sql, (*_probe_args(node, ttype), host, *clock[1])


_JOINED: dict[tuple[str, str | None], str] = {}


def probe_and_reap_read(
    tx: Tx, node: str, ttype: str, host: str, *, draw_id: bool
) -> tuple[Row, list[Row]]:
    """The probe's row and the reaper's rows, by ``probe_and_reap_query``: on a server,
    sent with the BEGIN, the lock and the clock, in one round trip."""
    rows = tx.query(*probe_and_reap_query(tx, node, ttype, host, draw_id=draw_id))
    probed = rows[0]  # (the probe's columns; the reaper's are None when it read no slot)
    if probed["task_id"] is None:
        return probed, []
    read = [{name: row[name] for name in _REAP_NAMES} for row in rows]
    return {name: probed[name] for name in _PROBE_NAMES if name in probed}, read


_PROBE_NAMES = (*(name for name, _ in _PROBES), "next_id")
_REAP_NAMES = tuple(name.strip() for name in slots.REAP_COLUMNS.split(","))


def evaluate(
    tx: Tx,
    req: Request,
    settings: Settings,
    now: float,
    *,
    state_dir: str | None,
    probed: Row | None = None,
    halt_file: halts.Snapshot | None = None,
    live: dict[str, Any] | None = None,
) -> Decision:
    """Every rule, with the state as this transaction sees it. Read-only.

    It writes nothing, to the store or to the state directory, so it may run in a read
    transaction. What the rules find due (a breaker's wait re-based after the store's clock
    stepped back, a rate bucket stamped in the future, a stale mirror halt file; see
    ``rules``) is left in the decision's ``_chores``: ``admit`` runs them in its write
    transaction. ``probed`` (from ``probe``) saves the probe when the caller has one.
    ``halt_file``: this host's halt file as read before the transaction (``halts.snapshot``);
    without it the file in ``state_dir`` is read here. ``live``: this host's live reading,
    taken likewise before (``rules.live_reading``); without it, read here when needed.
    """
    ev = rules.Evaluation(
        tx,
        req,
        now,
        probed or probe(tx, req.node, req.task_type),
        state_dir,
        halt_file,
        live,
    )
    reasons: list[Reason] = []
    for rule in rules.RULES:
        found = rule(tx, req, settings, now, ev)
        if found is None:
            continue
        if isinstance(found, Reason):
            reasons.append(found)
        else:
            reasons.extend(found)
    retry: float | None = None
    if reasons:
        waits = [r.retry_after for r in reasons]
        retry = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
    decision = Decision(
        allowed=not reasons,
        task_type=req.task_type,
        node=req.node,
        reasons=reasons,
        retry_after=None if retry is None else round(retry, 3),
        queued=ev.ahead_node,
    )
    decision.warnings, decision._breaker, decision._rate = ev.warnings, ev.breaker, ev.rate
    decision._chores = ev.chores
    return decision


def admit(
    tx: Tx,
    req: Request,
    settings: Settings,
    *,
    state_dir: str | None,
    take_slot: bool,
    action: str,
    log: bool = True,
    halt_file: halts.Snapshot | None = None,
    live: dict[str, Any] | None = None,
) -> Decision:
    """Reap, evaluate and (when allowed and ``take_slot``) take the slot: one write
    transaction. It also runs the chores the evaluation found due. Callers that hold the
    store's write lock pass ``halt_file`` (``halts.snapshot``) and ``live``
    (``rules.live_reading``), both read before the transaction."""
    ttype = req.task_type
    # the probe and the reaper's read first: on a server they go with the BEGIN, the lock
    # and the clock (``write(statements_only=True)``), and the decision's id with them:
    # under the lock, an admission is then this round trip and the COMMIT with every INSERT
    probed, read = probe_and_reap_read(
        tx, req.node, ttype, identity.host_name(), draw_id=take_slot or log
    )
    now = tx.now()
    reaped = slots.reap(
        tx, now, settings, on_end=feedback.task_ended, waiters=bool(probed["waiters"]), read=read
    )
    if reaped:  # the probe counted them before the reaper freed their slots: count again
        probed = {**probed, "on_node": None, "of_type": None}
    decision = evaluate(
        tx,
        req,
        settings,
        now,
        state_dir=state_dir,
        probed=probed,
        halt_file=halt_file,
        live=live,
    )
    for chore in decision._chores:
        chore(tx)
    if decision.allowed and take_slot:
        task_id = decision.task_id = slots.new_task_id(tx, req, now)
        # An admission is always logged, and its log entry's id (AUTOINCREMENT / BIGSERIAL:
        # ever larger, never reused) is the slot's fencing token.
        token = log_decision(tx, req, decision, action, now, settings, probed.get("next_id"))
        decision.trial = rules.pass_breaker(tx, settings, decision._breaker, now)
        slots.insert(tx, req, task_id, now, settings, token=token, trial=decision.trial)
        if decision._rate is not None:
            rules.take_token(tx, req.node, ttype, decision._rate, now)
        if req.waiter_seq is not None:
            queue.leave(tx, req.waiter_seq)
        decision.lease_token = token
    elif log:
        log_decision(tx, req, decision, action, now, settings, probed.get("next_id"))
    if not decision.allowed and req.waiter_seq is not None:
        queue.heartbeat(tx, req.waiter_seq, now)  # a waiter that still polls is alive
    return decision


# --------------------------------------------------------------------------- decision log


_LOG_COLUMNS = "at, action, task_type, node, host, pid, who, allowed, rules, retry_after, task_id"
_LOG_WITH_ID = f"INSERT INTO decisions (id, {_LOG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
_LOG_RETURNING_ID = (
    f"INSERT INTO decisions ({_LOG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id"
)


def log_decision(
    tx: Tx,
    req: Request,
    decision: Decision,
    action: str,
    now: float,
    settings: Settings,
    drawn_id: int | None = None,
) -> int:
    """Write the decision to the log; return its id (``drawn_id``: the one ``probe`` drew
    for it; else the INSERT's)."""
    rules_json = "[]"  # an admission's empty list
    if decision.reasons:
        from ringrift_coord import jsontext

        rules_json = jsontext.dumps([r.to_dict() for r in decision.reasons], default=str)
    values = (
        now,
        action,
        decision.task_type,
        decision.node,
        req.host,
        req.pid or os.getpid(),
        req.who,
        int(decision.allowed),
        rules_json,
        decision.retry_after,
        decision.task_id,
    )
    if drawn_id is not None:  # a plain INSERT: a server sends it with the COMMIT
        entry_id = int(drawn_id)
        tx.execute(_LOG_WITH_ID, (entry_id, *values))
    else:
        row = tx.one(_LOG_RETURNING_ID, values)
        assert row is not None
        entry_id = int(row["id"])
    # A refusal counts (ringrift_denials_total, one per blocking rule) and is an event, except
    # for record-spawn: it notes a spawn that already happened, whatever the rules now say.
    if not decision.allowed and action != "record-spawn":
        from ringrift_coord import counters

        for rule in dict.fromkeys(r.rule for r in decision.reasons):
            counters.add(
                tx, "denials", {"rule": rule, "type": decision.task_type, "node": decision.node}
            )
        from ringrift_coord import events

        # TASK_DENIED: a storm of identical refusals within a minute is one event, seen N times
        payload = {
            "rules": sorted(dict.fromkeys(r.rule for r in decision.reasons)),
            "type": decision.task_type,
            "node": decision.node,
            "action": action,
            "minute": int(now // 60) * 60,
        }
        events.publish(
            tx, settings, "TASK_DENIED", payload, source="tool", node=decision.node, now=now
        )
    if os.urandom(1)[0] < 4:  # prune about once per 64 decisions, not on every one
        cutoff = now - float(settings.get("store.decision_log_days")) * 86400.0
        prune_logs(tx, cutoff)
    return entry_id


# Rows of each log one prune deletes at most: the oldest ids only (ids grow with time), so a
# prune costs the same however large a backlog is, and ends well within the statement timeout
# (PostgreSQL cancels a statement past it: a whole backlog at once would fail every time);
# run once per ~64 decisions, it still drains a backlog ~30 times faster than it grows.
PRUNE_BATCH = 2000


def prune_logs(tx: Tx, cutoff: float) -> int:
    """Delete at most ``PRUNE_BATCH`` decisions and as many task history rows older than
    ``cutoff`` (of the oldest ids); the number deleted."""
    # (one pass over the oldest ids, keeping those before the cutoff, rather than a pass
    # over them and then a lookup of each id's row for its time)
    deleted = tx.execute(
        "DELETE FROM decisions WHERE id IN (SELECT id FROM (SELECT id, at FROM decisions "
        "ORDER BY id LIMIT ?) AS oldest WHERE at < ?)",
        (PRUNE_BATCH, cutoff),
    )
    return deleted + slots.prune_history(tx, cutoff, PRUNE_BATCH)


def decisions(
    tx: Tx,
    *,
    denied_only: bool = False,
    since: float | None = None,
    node: str | None = None,
    task_type: str | None = None,
    limit: int = 100,
) -> list[Row]:
    """The decision log, newest first: each entry with its ``rules`` (every blocking rule with
    its numbers, as the decision listed them) and ``allowed`` as a bool."""
    where: list[str] = []
    args: list[object] = []
    if denied_only:
        where.append("allowed = 0")
    if since is not None:
        where.append("at >= ?")
        args.append(since)
    if node:
        where.append("node = ?")
        args.append(node)
    if task_type:
        where.append("task_type = ?")
        args.append(tasktypes.parse(task_type))
    sql = "SELECT * FROM decisions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = tx.query(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
    import json

    for row in rows:
        row["rules"] = json.loads(row["rules"]) if row["rules"] else []
        row["allowed"] = bool(row["allowed"])
    return rows
