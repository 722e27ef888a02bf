"""What finished tasks teach admission: their outcome fed to the (node, type) circuit breaker,
the node's backpressure factor (``backpressure``) and the OOM-lowered caps (``lowered_caps``).

Each failed, killed or OOM-killed job halves its node's spawn-rate factor (down to
``backpressure.min_factor``); each success adds ``backpressure.increase`` back (up to 1), and
time alone gives it back too: the gap to 1 halves every ``backpressure.recovery_half_life``
seconds. The stored factor and its time are all that is kept; the factor in force is worked
out from them when read (``rate_factor``), so no process has to run for it to recover.
``oom.lower_after`` OOMs of a type on a node within ``oom.window`` lower that node's cap for
the type to running x ``oom.factor``; it grows back by one per ``oom.decay_interval``.
The rules read what is learned here (``lowered_cap``, ``rate_factor``); ``slots`` calls
``task_ended`` for every task it ends; scripts feed outcomes with ``record_manual``.
"""

from __future__ import annotations

import math

from ringrift_coord import breakers, slots
from ringrift_coord.breakers import HALF_OPEN, OPEN, BreakerConfig
from ringrift_coord.inputs import printable

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

# What a breaker and backpressure count as a failure. Not ``spawn_failed`` (126/127: the
# command could not be started, an operator's typo, not the node's fault), nor ``stopped``
# (an operator's stop) or ``reaped``: ``breakers list`` shows spawn failures apart.
FAILED_STATUSES = ("failed", "killed", "oom")
MAX_REASON = 300  # a breaker's last reason: one line in every listing and refusal
CAP_PROBE = "(SELECT COUNT(*) FROM lowered_caps WHERE node = ? AND task_type = ?)"  # (node, type)
FACTOR_PROBE = "(SELECT factor FROM backpressure WHERE node = ?)"  # (node,)
# ``task_ended``'s question, asked by the release that deletes the slot (``slots.release``'s
# ``on_end_probe``, over the deleted ``tasks`` row): does the node's breaker for the type or
# its backpressure hold anything? A success on a node where neither does teaches nothing.
END_PROBE = (
    "((SELECT COUNT(*) FROM breakers WHERE node = tasks.node AND task_type = tasks.task_type) "
    "+ (SELECT COUNT(*) FROM backpressure WHERE node = tasks.node))"
)
# a failure a script records whose reason says the job ran out of memory counts as an OOM,
# like one ``run`` detects: "OOM", "oom: ...", "oom-kill", "oom_killed", "OOMKilled",
# "oom-killer", "out of memory" ("CUDA out of memory", "CUDA_ERROR_OUT_OF_MEMORY"),
# "OutOfMemoryError" ("torch.OutOfMemoryError"), Python's "MemoryError", C++'s "bad_alloc",
# "Cannot allocate memory". Whole words only (a letter, digit or _ on either side is another
# word: "zoom-kill", "room kill switch", "test_oom", "oom_score_adj" are not OOMs, nor is
# "oom score"); negations ("not an OOM") are not parsed.
OOM_WORDS = (
    r"(?<![a-z0-9_])(?:"
    r"oom(?![-_ ]?scor)(?:[-_ ]?kill(?:ed|er|s)?)?"  # not "oom score", "oom-score-adj"
    r"|out[-_ ]?of[-_ ]?memory(?:[-_ ]?error)?"
    r"|cuda_error_out_of_memory|memoryerror|bad_alloc|cannot allocate memory"
    r")(?![a-z0-9_])"
)


# --------------------------------------------------------------------------- what is learned


def lowered_cap(tx: Tx, settings: Settings, node: str, ttype: str, now: float) -> int | None:
    """The OOM-lowered per-node cap, grown back by one per decay interval (None: none)."""
    row = tx.one(
        "SELECT cap, lowered_at FROM lowered_caps WHERE node = ? AND task_type = ?", (node, ttype)
    )
    if row is None:
        return None
    interval = max(1.0, float(settings.get("oom.decay_interval")))
    cap = int(row["cap"]) + int(max(0.0, now - row["lowered_at"]) // interval)
    configured = settings.task_limit(ttype, "per_node")
    if configured is not None and cap >= configured:
        return None
    return cap


def reset_backpressure(
    tx: Tx, settings: Settings, now: float, node: str | None = None
) -> list[dict[str, Any]]:
    """Give a node (or every node) its full spawn rate back; the factors (in force: after
    their recovery with time) that were reset."""
    rows = backpressure_in_force(tx, settings, now, node)
    clause, args = ("", ()) if node is None else (" WHERE node = ?", (node,))
    tx.execute(f"DELETE FROM backpressure{clause}", args)
    if rows:
        tx.ring(None, node)  # a full spawn rate again
    return [{"node": r["node"], "factor": r["factor"]} for r in rows]


FULL = 0.999  # a factor that has recovered this far is whole again (1)


def recovered(factor: float, since: float, now: float, settings: Settings) -> float:
    """A factor stored at ``since`` as it stands at ``now``: its gap to 1 halves every
    ``backpressure.recovery_half_life`` seconds (0: it never recovers with time)."""
    half_life = float(settings.get("backpressure.recovery_half_life"))
    if half_life > 0 and now > since:
        factor = 1.0 - (1.0 - factor) * 0.5 ** ((now - since) / half_life)
    return 1.0 if factor >= FULL else factor


def rate_factor(tx: Tx, settings: Settings, node: str, now: float) -> float:
    """The node's backpressure now: its rate limits are multiplied by this (1: none)."""
    row = tx.one("SELECT factor, updated_at FROM backpressure WHERE node = ?", (node,))
    if row is None:
        return 1.0
    return recovered(float(row["factor"]), float(row["updated_at"]), now, settings)


def node_caps(tx: Tx, settings: Settings, node: str, now: float) -> dict[str, Any]:
    """A node's effective per-node caps: configured limits, OOM-lowered caps, backpressure."""
    per_node = {
        name: entry["per_node"]
        for name, entry in settings.get("task_limits").items()
        if isinstance(entry, dict) and entry.get("per_node") is not None
    }
    lowered: dict[str, int] = {}
    for row in tx.query(
        "SELECT task_type FROM lowered_caps WHERE node = ? ORDER BY task_type", (node,)
    ):
        cap = lowered_cap(tx, settings, node, row["task_type"], now)
        if cap is not None:
            lowered[row["task_type"]] = cap
    effective: dict[str, int] = dict(per_node)
    for name, cap in lowered.items():
        effective[name] = cap if per_node.get(name) is None else min(cap, per_node[name])
    return {
        "per_node": per_node,
        "lowered": lowered,
        "effective": effective,
        "backpressure": round(rate_factor(tx, settings, node, now), 4),
    }


def caps_in_force(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """Every OOM-lowered cap still below its configured limit, and every backpressure factor."""
    lowered = []
    for row in tx.query(
        "SELECT node, task_type, lowered_at, ooms FROM lowered_caps ORDER BY node, task_type"
    ):
        cap = lowered_cap(tx, settings, row["node"], row["task_type"], now)
        if cap is None:  # grown back to the configured limit
            continue
        lowered.append(
            {**row, "cap": cap, "configured": settings.task_limit(row["task_type"], "per_node")}
        )
    return {"lowered_caps": lowered, "backpressure": backpressure_in_force(tx, settings, now)}


def backpressure_in_force(
    tx: Tx, settings: Settings, now: float, node: str | None = None
) -> list[dict[str, Any]]:
    """Every node (or one) whose spawn rate is still cut: ``factor`` in force now (after
    recovery with time), ``stored_factor`` and ``updated_at`` (when a job last moved it)."""
    clause, args = ("", ()) if node is None else (" WHERE node = ?", (node,))
    found = []
    for row in tx.query(
        f"SELECT node, factor, updated_at FROM backpressure{clause} ORDER BY node", args
    ):
        factor = recovered(float(row["factor"]), float(row["updated_at"]), now, settings)
        if factor < 1.0:
            found.append(
                {
                    "node": row["node"],
                    "factor": round(factor, 4),
                    "stored_factor": float(row["factor"]),
                    "updated_at": row["updated_at"],
                }
            )
    return found


# --------------------------------------------------------------------------- learning


def _adjust_backpressure(tx: Tx, settings: Settings, node: str, ok: bool, now: float) -> None:
    bp = settings.get("backpressure")
    factor = rate_factor(tx, settings, node, now)  # what time has given back counts
    if ok:
        if factor >= 1.0:
            return
        factor = min(1.0, factor + float(bp["increase"]))  # additive increase
    else:
        factor = max(float(bp["min_factor"]), factor * float(bp["decrease"]))  # mult. decrease
    tx.execute("DELETE FROM backpressure WHERE node = ?", (node,))
    if factor < 1.0:
        tx.execute(
            "INSERT INTO backpressure (node, factor, updated_at) VALUES (?,?,?)",
            (node, factor, now),
        )


def _note_oom(tx: Tx, settings: Settings, node: str, ttype: str, now: float) -> None:
    """Repeated OOMs of a type on a node lower that node's cap for the type."""
    oom = settings.get("oom")
    count = slots.ended_since(tx, node, ttype, "oom", now - float(oom["window"]))
    if count < int(oom["lower_after"]):
        return
    current = lowered_cap(tx, settings, node, ttype, now)
    base = slots.count(tx, node, ttype) + 1
    configured = settings.task_limit(ttype, "per_node")
    for bound in (current, configured):
        if bound is not None:
            base = min(base, bound)
    cap = max(1, min(base - 1, math.floor(base * float(oom["factor"]))))
    tx.execute("DELETE FROM lowered_caps WHERE node = ? AND task_type = ?", (node, ttype))
    tx.execute(
        "INSERT INTO lowered_caps (node, task_type, cap, lowered_at, ooms) VALUES (?,?,?,?,?)",
        (node, ttype, cap, now, count),
    )
    before = current if current is not None else configured
    if before is not None and cap >= before:
        return  # the cap did not change: no CAP_LOWERED
    from ringrift_coord import events

    payload = {"node": node, "type": ttype, "cap": cap, "ooms": count, "at": now}
    events.publish(tx, settings, "CAP_LOWERED", payload, source="tool", node=node, now=now)


def task_ended(
    tx: Tx, settings: Settings, row: Row, status: str, reason: str | None, now: float
) -> None:
    """Feed a finished task to its breaker, its node's backpressure and the OOM caps."""
    ok = status == "ok"
    if not ok and status not in FAILED_STATUSES:
        if row.get("trial"):  # reaped or otherwise lost: let another trial run
            breaker = breakers.load(tx, row["node"], row["task_type"], now)
            breaker.trial_lost()
            breakers.save(tx, breaker, settings=settings)
        return
    if ok and not row.get("trial"):
        # the common case: a success on a node with no breaker history and no backpressure
        # (``END_PROBE``: the release that deleted the row asked already, or it is asked now)
        seen = row.get("on_end_probe")
        if seen is None:
            found = tx.one(
                f"SELECT {breakers.PROBE} + (SELECT COUNT(*) FROM backpressure WHERE node = ?) "
                "AS seen",
                (row["node"], row["task_type"], row["node"]),
            )
            seen = None if found is None else found["seen"]
        if seen is not None and not seen:
            return
    cfg = BreakerConfig.from_settings(settings)
    label = reason or status  # "exit code 3", "killed by SIGKILL", ...
    if status == "oom" and reason and "oom" not in reason.lower():
        label = f"oom: {reason}"
    breakers.record_outcome(
        tx,
        cfg,
        row["node"],
        row["task_type"],
        now,
        ok=ok,
        trial=bool(row.get("trial")),
        reason=None if ok else _one_line(label),
        evidence=None if ok else reason,
        settings=settings,
    )
    _adjust_backpressure(tx, settings, row["node"], ok, now)
    if status == "oom":
        publish_oom(tx, settings, row["node"], row["task_type"], now, row=row, reason=reason)
        _note_oom(tx, settings, row["node"], row["task_type"], now)


def publish_oom(
    tx: Tx,
    settings: Settings,
    node: str,
    ttype: str,
    now: float,
    *,
    row: Row | None = None,
    reason: str | None = None,
) -> None:
    """The OOM event: a task killed for memory (``row``: its task id and pid), or a failure
    a script recorded with an OOM reason."""
    from ringrift_coord import events

    payload = {
        "node": node,
        "type": ttype,
        "task_id": None if row is None else row.get("task_id"),
        "pid": None if row is None else row.get("pid"),
        "reason": None if reason is None else _one_line(reason),
        "at": now,
    }
    events.publish(tx, settings, "OOM", payload, source="tool", node=node, now=now)


def record_manual(
    tx: Tx,
    settings: Settings,
    node: str,
    ttype: str,
    now: float,
    *,
    ok: bool,
    reason: str | None,
) -> breakers.Breaker:
    """An outcome a script reports (``breakers record-failure`` / ``record-success``). A
    failure whose reason says OOM (``is_oom``) is also kept as an ``oom`` history row and
    counts toward the node's OOM-lowered cap, as a detected OOM does."""
    cfg = BreakerConfig.from_settings(settings)
    trial = False
    if breakers.exists(tx, node, ttype):
        breaker = breakers.load(tx, node, ttype, now)
        trial = breaker.view(now, cfg)[0] == HALF_OPEN
        if trial:  # half-open: this outcome is a trial's, one that starts and ends at once
            if breaker.state == OPEN:  # (without taking the place of a trial still running)
                breaker.state, breaker.trial_successes = HALF_OPEN, 0
            breaker.trials_in_flight += 1
            breakers.save(tx, breaker, settings=settings)
    reason = None if reason is None else _one_line(reason)
    result = breakers.record_outcome(
        tx, cfg, node, ttype, now, ok=ok, trial=trial, reason=reason, settings=settings
    )
    _adjust_backpressure(tx, settings, node, ok, now)
    if not ok and is_oom(reason):  # as a detected OOM: toward the node's lowered cap
        task_id = slots.record_outside(tx, ttype, node, now, status="oom", reason=reason)
        publish_oom(tx, settings, node, ttype, now, row={"task_id": task_id}, reason=reason)
        _note_oom(tx, settings, node, ttype, now)
    return result


def is_oom(reason: str | None) -> bool:
    """Whether a recorded failure's reason says the job ran out of memory."""
    if not reason:
        return False
    # imported and compiled here, not at import: admission imports this module and never
    # asks, and ``re`` costs a start-up ~2.5 ms where nothing else imported it
    import re

    return bool(re.search(OOM_WORDS, reason, re.IGNORECASE))


def _one_line(reason: str) -> str:
    """A breaker's last reason as refusals print it: one clean line of at most 300 chars."""
    return " ".join(printable(reason).split())[:MAX_REASON]
