"""The fair wait queue (``waiters``): ``run --wait`` takes a place in line per task type.

Arrival order is the ``seq`` of a waiter's row. Admission counts the waiters ahead of a
request against the limits, so a newcomer cannot jump the line. A waiter that a halt denies
(its node drained, its type or everything halted), or peak hours, holds no place meanwhile:
it steps out of line (``hold``: its row stays, marked ``held``, so that status and metrics
count it), counts against nobody's limits, and takes its own ``seq`` back once the halt
lifts or the window ends (``run``'s wait loop does both). A waiter is alive while its
process lives (on its own host) or while it keeps polling (its heartbeat, for other hosts);
a dead one loses its place at the next admission on any node.
"""

from __future__ import annotations

from ringrift_coord import procs

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from ringrift_coord.store.base import Row, Tx

PROBE = "(SELECT COUNT(*) FROM waiters)"  # admission's probe: is anybody waiting at all?
HELD_QUIET = 60.0  # seconds without asking after which a held waiter is checked for life


def enqueue(tx: Tx, task_type: str, node: str, host: str, pid: int, seq: int | None = None) -> int:
    """Take a place in line for process ``pid`` on this host; its ``seq``.

    ``seq``: take back the place this waiter had (it stepped out while a halt denied it), so
    it rejoins in arrival order, ahead of those who came after it (a seq is never reused).
    """
    now = tx.now()
    if seq is not None and tx.execute(
        "UPDATE waiters SET held = 0, heartbeat_at = ? WHERE seq = ?", (now, seq)
    ):
        return seq  # still in line, or back in it from the held ones
    fields = (task_type, node, host, procs.boot_id(), pid, procs.start_time(pid), now, now)
    columns = "task_type, node, host, boot_id, pid, pid_start, enqueued_at, heartbeat_at"
    if seq is not None:
        tx.execute(
            f"INSERT INTO waiters (seq, {columns}) VALUES (?,?,?,?,?,?,?,?,?)", (seq, *fields)
        )
        return seq
    rows = tx.query(
        f"INSERT INTO waiters ({columns}) VALUES (?,?,?,?,?,?,?,?) RETURNING seq", fields
    )
    return int(rows[0]["seq"])


def leave(tx: Tx, seq: int) -> None:
    """Give up the place (timed out, interrupted, or admitted)."""
    tx.execute("DELETE FROM waiters WHERE seq = ?", (seq,))


def hold(tx: Tx, seq: int) -> bool:
    """Step out of line and keep the row (a halt or peak hours deny this waiter): held, it
    is no longer ahead of anyone; ``enqueue(seq)`` puts it back. False: no such waiter."""
    return bool(
        tx.execute("UPDATE waiters SET held = 1, heartbeat_at = ? WHERE seq = ?", (tx.now(), seq))
    )


def heartbeat(tx: Tx, seq: int, now: float) -> bool:
    """A waiter that still polls is alive: other hosts judge its place by this."""
    return bool(tx.execute("UPDATE waiters SET heartbeat_at = ? WHERE seq = ?", (now, seq)))


def ahead(tx: Tx, task_type: str, seq: int | None) -> list[str]:
    """The nodes of the waiters for ``task_type`` ahead of ``seq`` (every waiter: None)."""
    if seq is None:
        rows = tx.query("SELECT node FROM waiters WHERE task_type = ? AND held = 0", (task_type,))
    else:
        rows = tx.query(
            "SELECT node FROM waiters WHERE task_type = ? AND seq < ? AND held = 0",
            (task_type, seq),
        )
    return [row["node"] for row in rows]


def lengths(tx: Tx) -> list[Row]:
    """Waiters per task type: ``task_type``, ``n`` (in line), ``held`` (held back by a halt
    or peak hours); a waiter of this host whose process is gone is not counted (the next
    admission drops it; status and metrics only read)."""
    return _count(tx, ("task_type",))


def lengths_by_node(tx: Tx) -> list[Row]:
    """Waiters per task type and node: ``task_type``, ``node``, ``n``, ``held``."""
    return _count(tx, ("task_type", "node"))


def _count(tx: Tx, keys: tuple[str, ...]) -> list[Row]:
    from ringrift_coord.identity import host_name

    host, this_boot = host_name(), procs.boot_id()
    counted: dict[tuple[str, ...], Row] = {}
    for waiter in tx.query(
        "SELECT task_type, node, host, boot_id, pid, pid_start, held FROM waiters"
    ):
        if not _alive_here(waiter, host, this_boot):
            continue
        key = tuple(waiter[k] for k in keys)
        row = counted.setdefault(key, {**dict(zip(keys, key, strict=True)), "n": 0, "held": 0})
        row["held" if waiter["held"] else "n"] += 1
    return [counted[key] for key in sorted(counted)]


def _alive_here(waiter: Row, host: str, this_boot: str | None) -> bool:
    """False for a waiter of this host whose process is gone (another boot's, or a dead
    pid); one of another host is judged by its heartbeat (``reap_dead``): True here."""
    if waiter["host"] != host:
        return True
    same_boot = not (this_boot and waiter["boot_id"] and waiter["boot_id"] != this_boot)
    return same_boot and procs.pid_alive(waiter["pid"], waiter["pid_start"])


def reap_dead(tx: Tx, now: float, lease_ttl: float, host: str, this_boot: str | None) -> None:
    """Drop waiters whose process died (this host) or that stopped polling (other hosts)."""
    # a held waiter counts against nobody: looked at only once it has stopped asking for a
    # while (it asks every 30 s at most), not at every admission (a halt can hold hundreds)
    for waiter in tx.query(
        "SELECT seq, task_type, node, host, boot_id, pid, pid_start, heartbeat_at FROM waiters "
        "WHERE held = 0 OR heartbeat_at < ?",
        (now - max(lease_ttl, HELD_QUIET),),
    ):
        if waiter["host"] == host:
            if _alive_here(waiter, host, this_boot):
                continue
        elif waiter["heartbeat_at"] >= now - lease_ttl:
            continue
        leave(tx, waiter["seq"])
        tx.ring(waiter["task_type"], waiter["node"])  # one fewer ahead of those behind it
