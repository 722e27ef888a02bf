"""What the running tasks' ages and expected durations say: stale tasks, and when a slot
frees.

A running task is expected to end at ``started_at + expected`` (its own type and config
name, learned or default: ``schedule.expected``); one past that is overdue and expected to
end now; one started after ``now`` (the store's clock stepped back) counts as started
now. A task is *stale* once its age exceeds ``schedule.stale_factor`` times its expected
duration (a type with no expected duration is never stale).

*When a slot frees* is a small simulation of the limit: the running tasks hold the slots
until their expected ends; the waiters queued ahead take the slots as they free, one at a
time, each for the type's expected duration; the request's slot is the one that frees after
them. With no waiters it is the k-th earliest expected end, k = running + 1 - limit. Both the
per-node and the cluster limit are simulated; the later answer holds. Admission's
``node_limit`` and ``cluster_limit`` rules take their retry-after from the same function,
only once they refuse (an admitted request never pays for it).
"""

from __future__ import annotations

import heapq

from ringrift_coord.schedule import expected

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

__all__ = ["NoRows", "free_at", "next_slot", "retry_after", "running_ends", "stale"]


class NoRows:
    """A read of a store not created yet (SQLite, no file): no task, no waiter, no sample,
    no reservation; ``now`` by the store's clock. Lets ``schedule expected``, ``stale`` and
    ``next-slot`` answer from the defaults without creating the store."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock

    def query(self, sql: str, params: Any = ()) -> list[Row]:
        return []

    def one(self, sql: str, params: Any = ()) -> Row | None:
        return None

    def now(self) -> float:
        return float(self._clock.time())


def running_ends(
    tx: Tx,
    settings: Settings,
    rows: list[Row],
    now: float,
    also: tuple[str, str | None] | None = None,
) -> tuple[list[dict[str, Any]], expected.Expected | None]:
    """Each running task of ``rows`` (``task_type``, ``config_name``, ``started_at``) with its
    expected duration and end (None: unknown), earliest end first, and the expected duration
    of the key ``also`` (a request's): one batched lookup."""
    keys = [(r["task_type"], r.get("config_name")) for r in rows]
    if also is not None:
        keys.append(also)
    known = expected.lookup_many(tx, settings, keys)
    out = []
    for r in rows:
        exp = known[(r["task_type"], r.get("config_name") or "")]
        # a task stamped after ``now`` (started while the store's clock was ahead, which
        # then stepped back) counts as started now: its end is never more than its expected
        # duration away, whatever the size of the step
        start = min(float(r["started_at"]), now)
        end = None if exp.seconds is None else start + exp.seconds
        out.append(
            {
                **r,
                "expected_seconds": exp.seconds,
                "expected_source": exp.source,
                "expected_end_at": end,
                "overdue": end is not None and end < now,
            }
        )
    out.sort(key=lambda r: (r["expected_end_at"] is None, r["expected_end_at"] or 0.0))
    return out, None if also is None else known[(also[0], also[1] or "")]


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def free_at(
    ends: list[float | None], limit: int, ahead: int, duration: float | None, now: float
) -> float | None:
    """When a request behind ``ahead`` waiters gets one of ``limit`` slots held until
    ``ends`` (expected ends; overdue ones end now): ``now`` when one is free for it already;
    None when it cannot be told (an unknown end or duration in the way, or no slot at all)."""
    if limit <= 0:
        return None
    held = sorted(max(now, e) if e is not None else float("inf") for e in ends)
    heapq.heapify(held)
    t = now
    for _ in range(ahead + 1):  # the waiters ahead, then this request
        while len(held) >= limit:
            t = max(t, heapq.heappop(held))
        if t == float("inf"):
            return None
        if duration is None:
            heapq.heappush(held, float("inf"))  # a waiter's job of unknown length
        else:
            heapq.heappush(held, t + duration)
    return t


def retry_after(
    tx: Tx,
    settings: Settings,
    task_type: str,
    node: str | None,
    limit: int,
    ahead: int,
    now: float,
    floor: float,
    config_name: str | None = None,
) -> float:
    """Seconds until a slot of the per-node (``node``) or cluster (None) limit is expected to
    free for a refused request: the simulation above, at least ``floor`` (also when unknown).
    ``config_name``: a limit of that config's tasks only (its share of a node)."""
    sql = "SELECT task_type, config_name, started_at FROM tasks WHERE task_type = ?"
    args: list[object] = [task_type]
    if node is not None:
        sql += " AND node = ?"
        args.append(node)
    if config_name is not None:
        sql += " AND config_name = ?"
        args.append(config_name)
    rows = tx.query(sql, args)
    ends, own = running_ends(tx, settings, rows, now, (task_type, config_name))
    assert own is not None
    at = free_at([r["expected_end_at"] for r in ends], limit, ahead, own.seconds, now)
    return floor if at is None else max(floor, round(at - now, 3))


def stale(
    tx: Tx,
    settings: Settings,
    now: float,
    task_type: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """The running tasks older than ``schedule.stale_factor`` x their expected duration,
    the most overdue first."""
    from ringrift_coord import slots

    factor = float(settings.get("schedule.stale_factor"))
    rows = slots.running(tx, now, task_type, node)
    found = []
    for r in running_ends(tx, settings, rows, now)[0]:
        exp = r["expected_seconds"]
        if exp is None or r["age"] <= factor * exp:
            continue
        found.append(
            {
                "task_id": r["task_id"],
                "task_type": r["task_type"],
                "node": r["node"],
                "host": r["host"],
                "pid": r["pid"],
                "config_name": r["config_name"] or None,
                "started_at": r["started_at"],
                "age": r["age"],
                "expected_seconds": round(exp, 3),
                "expected_source": r["expected_source"],
                "stale_after": round(factor * exp, 3),
                "times_expected": round(r["age"] / exp, 2),
            }
        )
    found.sort(key=lambda r: (-r["times_expected"], r["task_id"]))
    return {"at": now, "stale_factor": factor, "checked": len(rows), "tasks": found}


def next_slot(tx: Tx, settings: Settings, task_type: str, node: str, now: float) -> dict[str, Any]:
    """When a slot of ``task_type`` is expected to free on ``node``: the later of what the
    per-node and the cluster limit say (each simulated from the running tasks' expected ends
    and the waiters queued ahead, less the slots reservations hold, as admission counts
    them). ``free_at`` is None when it cannot be told."""
    from ringrift_coord import queue, reservations

    per_node = settings.task_limit(task_type, "per_node")
    cluster = settings.task_limit(task_type, "cluster")
    rows = tx.query(
        "SELECT task_id, task_type, node, config_name, started_at FROM tasks WHERE task_type = ?",
        (task_type,),
    )
    ends, own = running_ends(tx, settings, rows, now, (task_type, None))
    assert own is not None
    on_node = [r for r in ends if r["node"] == node]
    waiting = queue.ahead(tx, task_type, None)
    ahead_node = sum(1 for n in waiting if n == node)
    held_res = reservations.active(tx, now)
    reserved = {
        "per_node": reservations.held_for_others(held_res, node, task_type),
        "cluster": reservations.held_elsewhere(
            held_res, [r["node"] for r in ends], node, task_type
        ),
    }
    limits: list[dict[str, Any]] = []
    for scope, limit, held, ahead in (
        ("per_node", per_node, on_node, ahead_node),
        ("cluster", cluster, ends, len(waiting)),
    ):
        if limit is None:
            continue
        room = limit - reserved[scope]  # what admission counts: reservations keep slots
        binds = len(held) + ahead + 1 > room
        at = (
            free_at([r["expected_end_at"] for r in held], room, ahead, own.seconds, now)
            if binds
            else now
        )
        limits.append(
            {
                "kind": scope,
                "limit": limit,
                "reserved": reserved[scope],
                "running": len(held),
                "queued": ahead,
                "binds": binds,
                "free_at": at,
            }
        )
    binding = [x for x in limits if x["binds"]]
    if not binding:
        when: float | None = now
    elif any(x["free_at"] is None for x in binding):
        when = None
    else:
        when = max(x["free_at"] for x in binding)
    basis = [
        {
            "task_id": r["task_id"],
            "node": r["node"],
            "config_name": r["config_name"] or None,
            "started_at": r["started_at"],
            "expected_seconds": _round(r["expected_seconds"]),
            "expected_source": r["expected_source"],
            "expected_end_at": r["expected_end_at"],
            "overdue": r["overdue"],
        }
        for r in ends
        if r["node"] == node or any(x["kind"] == "cluster" and x["binds"] for x in limits)
    ]
    return {
        "task_type": task_type,
        "node": node,
        "at": now,
        "free_now": not binding,
        "free_at": when,
        "in_seconds": None if when is None else round(max(0.0, when - now), 3),
        "expected_seconds": _round(own.seconds),
        "limits": limits,
        "basis": basis,
    }
