"""Reservations (``reservations``): K slots on a node held for one task type (gauntlet
workers), optionally expiring. Other types of the same resource class see them as taken on
that node; other nodes see the type's reserved, still unused slots as taken in its cluster
limit (the ``node_limit`` / ``reservation`` and ``cluster_limit`` rules)."""

from __future__ import annotations

import os

from ringrift_coord import tasktypes
from ringrift_coord.inputs import seconds, slot_count

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from ringrift_coord.store.base import Row, Tx

PROBE = "(SELECT COUNT(*) FROM reservations)"  # admission's probe: any reservation at all?


def create(tx: Tx, task_type: str, node: str, slots: int, ttl: float | None, who: str) -> Row:
    """Hold ``slots`` slots on ``node`` for ``task_type``; the reservation."""
    slots, ttl = slot_count(slots, "slots"), seconds(ttl, "ttl")
    res_id = f"res-{os.urandom(5).hex()}"
    now = tx.now()
    expires = None if ttl is None else now + ttl
    tx.execute(
        "INSERT INTO reservations (res_id, node, task_type, slots, created_at, expires_at, who) "
        "VALUES (?,?,?,?,?,?,?)",
        (res_id, node, task_type, slots, now, expires, who),
    )
    return {
        "res_id": res_id,
        "node": node,
        "task_type": task_type,
        "slots": slots,
        "created_at": now,
        "expires_at": expires,
        "who": who,
    }


def release(tx: Tx, res_id: str) -> bool:
    """Drop a reservation; False when there is none by that id."""
    row = tx.one("SELECT node FROM reservations WHERE res_id = ?", (res_id,))
    if row is None:
        return False
    tx.execute("DELETE FROM reservations WHERE res_id = ?", (res_id,))
    tx.ring(None, row["node"])  # its slots are free for every type again
    return True


def active(tx: Tx, now: float) -> list[Row]:
    """The reservations in force, oldest first."""
    return tx.query(
        "SELECT res_id, node, task_type, slots, created_at, expires_at, who FROM reservations "
        "WHERE expires_at IS NULL OR expires_at > ? ORDER BY created_at",
        (now,),
    )


def held_for_others(rows: list[Row], node: str, task_type: str) -> int:
    """Slots reserved on ``node`` for other types of ``task_type``'s resource class (held
    whether or not they are used yet: their running tasks do not count against this type's
    limit, so only the whole reservation keeps room)."""
    own = tasktypes.resource_class(task_type)
    return sum(
        res["slots"]
        for res in rows
        if res["node"] == node
        and res["task_type"] != task_type
        and tasktypes.resource_class(res["task_type"]) == own
    )


def held_elsewhere(rows: list[Row], running_nodes: list[str], node: str, task_type: str) -> int:
    """Slots reserved for ``task_type`` on nodes other than ``node`` and not yet used by its
    running tasks there (``running_nodes``: the node of each running task of the type)."""
    if not rows:
        return 0
    per_node: dict[str, int] = {}
    for n in running_nodes:
        per_node[n] = per_node.get(n, 0) + 1
    return sum(
        max(0, res["slots"] - per_node.get(res["node"], 0))
        for res in rows
        if res["task_type"] == task_type and res["node"] != node
    )
