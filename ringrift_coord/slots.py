"""Slots: the running tasks (``tasks``), their holders and leases, and the finished ones
(``task_history``).

A slot is a row of ``tasks``: the holder (host, boot, pid and its start time, the process
group of a ``run`` job, the wrapper) and its lease, guarded by a fencing token (the id of the
decision-log entry that admitted it). It ends exactly once (``finish``: delete + history,
guarded by the token) by release, or by reaping: on the holder's own host the process
decides (wrapper or any process of the job's group alive = held, whatever the lease); from
other hosts, an expired lease. Whoever ends slots passes ``on_end``, which hears of every end
(the safeguards' ``feedback.task_ended``), so no ended task goes unseen by the breakers.
"""

from __future__ import annotations

import os

from ringrift_coord import identity, inputs, procs, queue, tasktypes
from ringrift_coord.errors import CoordError, ExitCode, UsageError
from ringrift_coord.inputs import MAX_SECONDS

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.decision import Request
    from ringrift_coord.store.base import Row, Tx

    OnEnd = Callable[[Tx, Settings, Row, str, "str | None", float], None]

RELEASE_STATUSES = ("ok", "failed", "oom", "killed", "stopped")
END_STATUSES = (*RELEASE_STATUSES, "spawn_failed")  # and "reaped", which only reaping gives
MAX_TASK_ID = 200


class StaleLease(CoordError):
    """A release or renewal with a fencing token that no longer owns the slot."""

    exit_code = ExitCode.DENIED


# --------------------------------------------------------------------------- holders


def holder_alive(row: Row, host: str, this_boot: str | None) -> bool | None:
    """True/False for a holder on this host; None when it lives on another host."""
    if row["host"] != host:
        return None
    if this_boot and row.get("boot_id") and row["boot_id"] != this_boot:
        return False  # recorded before this host rebooted
    if row.get("wrapper_pid") and procs.pid_alive(row["wrapper_pid"], row.get("wrapper_start")):
        return True
    if row.get("pgid"):
        return procs.group_alive(row["pgid"], row.get("pid_start"))
    return procs.pid_alive(row.get("pid"), row.get("pid_start"))


def holder_fields(
    pid: int | None, pgid: int | None = None, wrapper_pid: int | None = None
) -> dict[str, Any]:
    """A holder as the reaper watches it: each process with its start time."""
    return {
        "pid": pid,
        "pid_start": procs.start_time(pid) if pid else None,
        "pgid": pgid,
        "wrapper_pid": wrapper_pid,
        "wrapper_start": procs.start_time(wrapper_pid) if wrapper_pid else None,
    }


# --------------------------------------------------------------------------- taking a slot


def fresh_id(prefix: str, now: float) -> str:
    """``prefix-`` and 19 hex digits: the time in ms (11 digits), then 32 random bits. Ids
    made close in time sort close together, so the history's index on ``task_id`` grows at
    one place instead of at a random page of a large index (with 300,000 history rows an
    acquire+release pair cost ~12 % less than with 48 random bits alone). Two alike need the
    same ms and the same 32 bits: at 10 admissions a second, once in ~1,000 years (the INSERT
    of the second then fails and nothing is admitted)."""
    return f"{prefix}-{int(now * 1000) & 0xFFFFFFFFFFF:011x}{os.urandom(4).hex()}"


def new_task_id(tx: Tx, req: Request, now: float) -> str:
    """The id of the slot ``req`` is about to take: its own (checked) or a fresh one."""
    if req.task_id is None:
        return fresh_id(req.task_type, now)
    if not req.task_id.strip() or len(req.task_id) > MAX_TASK_ID:
        raise UsageError(
            f"must be a non-empty string of at most {MAX_TASK_ID} characters", field="task_id"
        )
    if tx.one("SELECT 1 AS x FROM tasks WHERE task_id = ?", (req.task_id,)):
        raise UsageError(f"task id {req.task_id!r} is already registered and running")
    return req.task_id


def insert(
    tx: Tx,
    req: Request,
    task_id: str,
    now: float,
    settings: Settings,
    *,
    token: int,
    trial: bool,
) -> None:
    """The slot's row: its holder, its lease and its fencing token."""
    lease_ttl = float(settings.get("store.lease_ttl"))
    tx.execute(
        "INSERT INTO tasks (task_id, task_type, node, host, boot_id, pid, pid_start, pgid, "
        "wrapper_pid, wrapper_start, config_name, command, source, started_at, "
        "lease_expires, lease_token, trial) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            task_id,
            req.task_type,
            req.node,
            req.host,
            req.boot_id,
            req.pid,
            req.pid_start,
            req.pgid,
            req.wrapper_pid,
            req.wrapper_start,
            req.config_name,
            req.command,
            req.source,
            now,
            now + _lease_for(req, settings, lease_ttl),
            token,
            int(trial),
        ),
    )


def _lease_for(req: Request, settings: Settings, lease_ttl: float) -> float:
    """`run` renews its lease; a `register`ed holder has nobody doing so, so other hosts
    (which judge it by its lease) give it twice the expected duration of its type (on its
    own host its process decides, and any command there refreshes the lease)."""
    if req.source == "run":
        return lease_ttl
    expected = settings.duration(req.task_type) or 0.0
    return max(lease_ttl, 2.0 * expected)


def set_holder(tx: Tx, task_id: str, token: int, fields: dict[str, Any]) -> bool:
    """Point the slot at the job's process group (``run`` does this after fork)."""
    return bool(
        tx.execute(
            "UPDATE tasks SET pid = ?, pid_start = ?, pgid = ? WHERE task_id = ? "
            "AND lease_token = ?",
            (fields["pid"], fields["pid_start"], fields["pgid"], task_id, token),
        )
    )


def renew(tx: Tx, task_id: str, token: int, lease_ttl: float) -> bool:
    """Extend a lease; False when the slot is no longer this holder's. On the store's
    clock as ``Tx.clock_sql`` gives it (a server's, read in the same round trip)."""
    clock_sql, clock_args = tx.clock_sql()
    return bool(
        tx.execute(
            f"UPDATE tasks SET lease_expires = {clock_sql} + ? "  # noqa: S608 (fixed text)
            "WHERE task_id = ? AND lease_token = ?",
            (*clock_args, lease_ttl, task_id, token),
        )
    )


# --------------------------------------------------------------------------- ending a slot


def finish(
    tx: Tx, row: Row, now: float, *, exit_code: int | None, status: str, reason: str | None
) -> bool:
    """Delete the slot and write its history, exactly once (the fencing token guards it)."""
    deleted = tx.execute(
        "DELETE FROM tasks WHERE task_id = ? AND lease_token = ?",
        (row["task_id"], row["lease_token"]),
    )
    if not deleted:
        return False
    _ended(tx, row, now, exit_code=exit_code, status=status, reason=reason)
    return True


def _ended(
    tx: Tx, row: Row, now: float, *, exit_code: int | None, status: str, reason: str | None
) -> None:
    """What follows the deletion of a slot's row: the wake-up and the history row."""
    tx.ring(row["task_type"], row["node"])  # a slot freed: wake the waiter whose turn it is
    tx.execute(
        "INSERT INTO task_history (task_id, task_type, node, host, pid, config_name, started_at, "
        "ended_at, duration, exit_code, status, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            row["task_id"],
            row["task_type"],
            row["node"],
            row["host"],
            row.get("pid"),
            row.get("config_name"),
            row["started_at"],
            now,
            max(0.0, now - row["started_at"]),
            exit_code,
            status,
            reason,
        ),
    )


def record_outside(
    tx: Tx, task_type: str, node: str, now: float, *, status: str, reason: str | None
) -> str:
    """Write the history row of a job that ran outside any slot and ended with ``status``
    (a script's ``record_failure(..., "OOM")``): an instant row (started and ended ``now``)
    under a fresh ``recorded-`` id, on this host, so it counts as a task that ended so
    (the OOM-lowered caps count the ``oom`` rows). Returns the id."""
    task_id = fresh_id("recorded", now)
    tx.execute(
        "INSERT INTO task_history (task_id, task_type, node, host, pid, config_name, started_at, "
        "ended_at, duration, exit_code, status, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (task_id, task_type, node, identity.host_name(), None, None, now, now, 0.0, None,
         status, reason),
    )  # fmt: skip
    return task_id


def release(
    tx: Tx,
    task_id: str,
    *,
    token: int | None,
    exit_code: int | None,
    status: str,
    reason: str | None = None,
    settings: Settings,
    on_end: OnEnd,
    on_end_probe: str | None = None,
) -> Row | None:
    """Free ``task_id``'s slot once; None when it was already released (or reaped).

    The row is deleted and read back in one statement (``DELETE ... RETURNING``), guarded
    by ``token`` when given; only a delete that found nothing looks again, to tell a stale
    token (``StaleLease``, nothing released) from a slot already gone. ``on_end_probe``: an
    SQL expression over the deleted ``tasks`` row, returned with it as ``on_end_probe`` for
    ``on_end`` to read (what ``feedback.task_ended`` would otherwise ask in a statement of
    its own); it is not in the row returned."""
    if status not in END_STATUSES:
        raise UsageError(
            f"must be one of {', '.join(RELEASE_STATUSES)}, not {status!r}", field="status"
        )
    reason = inputs.reason(reason)
    returning = "*" if on_end_probe is None else f"*, {on_end_probe} AS on_end_probe"
    if token is None:
        row = tx.one(f"DELETE FROM tasks WHERE task_id = ? RETURNING {returning}", (task_id,))
    else:
        # a token no 64-bit column can hold holds nothing (never sent: SQLite refuses it)
        row = (
            tx.one(
                f"DELETE FROM tasks WHERE task_id = ? AND lease_token = ? RETURNING {returning}",
                (task_id, int(token)),
            )
            if -(2**63) <= int(token) < 2**63
            else None
        )
        if row is None:
            held = tx.one("SELECT lease_token FROM tasks WHERE task_id = ?", (task_id,))
            if held is not None:
                raise StaleLease(
                    f"lease token {token} no longer holds task {task_id} (now held with token "
                    f"{held['lease_token']}); nothing was released"
                )
    if row is None:
        return None
    now = tx.now()
    _ended(tx, row, now, exit_code=exit_code, status=status, reason=reason)
    on_end(tx, settings, row, status, reason, now)
    row.pop("on_end_probe", None)
    row["ended_at"] = now
    row["duration"] = max(0.0, now - row["started_at"])
    if status == "ok":
        _learn_duration(tx, settings, row, now)
    return row


def _learn_duration(tx: Tx, settings: Settings, row: Row, now: float) -> None:
    """A task that ended ``ok`` teaches its (type, config) expected duration, in the
    transaction that frees its slot; a failed, stopped or reaped one teaches nothing (its
    duration says nothing of how long the work takes), nor does one shorter than
    ``schedule.min_seconds`` (a smoke test, an instant exit)."""
    seconds = row["duration"]
    shortest = max(float(settings.get("schedule.min_seconds")), 0.0)
    # (a clock stepped back gives no duration: 0 is never recorded); a short run, the
    # common case of a smoke test, does not pay for the scheduler's import
    if 0 < seconds <= MAX_SECONDS and seconds >= shortest:
        from ringrift_coord.schedule import expected

        expected.record(
            tx,
            settings,
            row["task_type"],
            row.get("config_name"),
            seconds,
            now,
            row.get("source") or "register",
            row["task_id"],
        )


def ended(tx: Tx, task_id: str) -> bool:
    """True when ``task_id`` ran and is in the history."""
    return tx.one("SELECT 1 AS x FROM task_history WHERE task_id = ?", (task_id,)) is not None


# what the reaper reads of a slot
REAP_COLUMNS = (
    "task_id, task_type, node, host, boot_id, pid, pid_start, pgid, wrapper_pid, "
    "wrapper_start, config_name, started_at, lease_expires, lease_token, trial"
)


def reap_query(
    host: str,
    now: float,
    dead_host: str | None = None,
    *,
    clock: tuple[str, tuple[float, ...]] | None = None,
) -> tuple[str, list[Any]]:
    """The reaper's read: only the rows that may end or need a renewal, i.e. this host's
    (their processes decide), the expired leases of other hosts and a dead host's. Other
    hosts' live leases are never read, so many running tasks cost an admission no more than
    none (indexes ``tasks_host`` and ``tasks_lease``, migration 0007). ``clock``: the
    store's clock as ``Tx.clock_sql`` gives it, used instead of ``now`` (``reap`` checks
    each lease against ``now`` again)."""
    clock_sql, clock_args = clock or ("?", (now,))
    where, args = f"host = ? OR lease_expires < {clock_sql}", [host, *clock_args]
    if dead_host is not None:
        where, args = where + " OR host = ?", [*args, dead_host]
    return (
        f"SELECT {REAP_COLUMNS} FROM tasks WHERE {where}",  # noqa: S608 (fixed text; values are parameters)
        args,
    )


def reap(
    tx: Tx,
    now: float,
    settings: Settings,
    *,
    on_end: OnEnd,
    waiters: bool = True,
    dead_host: str | None = None,
    read: list[Row] | None = None,
) -> list[Row]:
    """Free slots of dead holders (this host) and expired leases (other hosts); drop dead
    waiters from the queue too (``waiters=False``: the probe saw none). ``dead_host``: an
    operator's word that that host died for good: its slots are freed now, leases or not.
    ``read``: the rows of ``reap_query`` for this host, read already in this transaction
    (admission reads them with its probe).

    On this host the process decides, not the lease: a job whose wrapper was killed keeps
    its slot while any process of its group lives, however old its lease.
    """
    host, this_boot = identity.host_name(), procs.boot_id()
    lease_ttl = float(settings.get("store.lease_ttl"))
    reaped: list[Row] = []
    if read is None:
        read = tx.query(*reap_query(host, now, dead_host))
    for row in read:
        alive = holder_alive(row, host, this_boot)
        if dead_host is not None and row["host"] == dead_host and alive is None:
            why = f"host {dead_host} declared dead by the operator (tasks reap --host)"
        elif alive is None:
            if row["lease_expires"] >= now:
                continue
            why = f"lease expired at {row['lease_expires']:.0f} on host {row['host']}"
        elif alive:
            if row["lease_expires"] < now + lease_ttl / 2:
                # a live local holder keeps its lease fresh for hosts that judge by leases
                tx.execute(
                    "UPDATE tasks SET lease_expires = ? WHERE task_id = ? AND lease_token = ?",
                    (now + lease_ttl, row["task_id"], row["lease_token"]),
                )
            continue
        else:
            why = "holder process gone"
        if finish(tx, row, now, exit_code=None, status="reaped", reason=why):
            row["reason"] = why
            reaped.append(row)
            on_end(tx, settings, row, "reaped", why, now)
    if waiters:
        queue.reap_dead(tx, now, lease_ttl, host, this_boot)
    return reaped


def prune_history(tx: Tx, cutoff: float, batch: int) -> int:
    """Delete at most ``batch`` rows that ended before ``cutoff``, of the oldest ids (a
    bounded cost, however large the backlog); the number deleted."""
    return tx.execute(
        "DELETE FROM task_history WHERE id IN (SELECT id FROM (SELECT id, ended_at FROM "
        "task_history ORDER BY id LIMIT ?) AS oldest WHERE ended_at < ?)",
        (batch, cutoff),
    )


# --------------------------------------------------------------------------- reading


def of_type(tx: Tx, task_type: str) -> list[Row]:
    """The running tasks of one type: node and start (what the limits count)."""
    return tx.query("SELECT node, started_at FROM tasks WHERE task_type = ?", (task_type,))


# admission's probe: the node's running tasks of a type (node, type), and the type's in the
# whole store (type,): what ``count`` and ``count_type`` read
NODE_PROBE = "(SELECT COUNT(*) FROM tasks WHERE node = ? AND task_type = ?)"
TYPE_PROBE = "COALESCE((SELECT n FROM task_counts WHERE task_type = ?), 0)"


def count(tx: Tx, node: str, task_type: str) -> int:
    row = tx.one(
        "SELECT COUNT(*) AS n FROM tasks WHERE node = ? AND task_type = ?", (node, task_type)
    )
    return int(row["n"]) if row else 0


def count_type(tx: Tx, task_type: str) -> int:
    """How many tasks of one type run in the store (the cluster limit's count): one row of
    ``task_counts``, which triggers keep exact in every transaction that inserts or deletes
    a task, so the count costs the same with 10 or 10,000 running tasks."""
    row = tx.one("SELECT n FROM task_counts WHERE task_type = ?", (task_type,))
    return int(row["n"]) if row else 0


def of_config(tx: Tx, node: str, task_type: str, config_name: str) -> list[Row]:
    """The running tasks of one type and board config on a node (start times)."""
    return tx.query(
        "SELECT node, started_at FROM tasks WHERE node = ? AND task_type = ? AND config_name = ?",
        (node, task_type, config_name),
    )


def counts(tx: Tx) -> list[Row]:
    """Running tasks per (type, node): ``task_type``, ``node``, ``n``."""
    return tx.query("SELECT task_type, node, COUNT(*) AS n FROM tasks GROUP BY task_type, node")


def ended_since(tx: Tx, node: str, task_type: str, status: str, since: float) -> int:
    """How many tasks of a type on a node ended with ``status`` since ``since``."""
    row = tx.one(
        "SELECT COUNT(*) AS n FROM task_history WHERE node = ? AND task_type = ? "
        "AND status = ? AND ended_at >= ?",
        (node, task_type, status, since),
    )
    return int(row["n"]) if row else 0


def ended_counts(tx: Tx, status: str, since: float) -> list[Row]:
    """Per (node, type): how many tasks ended with ``status`` since ``since``, and the last."""
    return tx.query(
        "SELECT node, task_type, COUNT(*) AS n, MAX(ended_at) AS last FROM task_history "
        "WHERE status = ? AND ended_at >= ? GROUP BY node, task_type ORDER BY node, task_type",
        (status, since),
    )


def running(tx: Tx, now: float, task_type: str | None = None, node: str | None = None) -> list[Row]:
    """The running tasks with their age and lease left, oldest first."""
    sql = (
        "SELECT task_id, task_type, node, host, pid, pgid, wrapper_pid, config_name, "
        "command, source, started_at, lease_expires, lease_token FROM tasks"
    )
    where: list[str] = []
    args: list[object] = []
    if task_type:
        where.append("task_type = ?")
        args.append(tasktypes.parse(task_type))
    if node:
        where.append("node = ?")
        args.append(node)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = tx.query(sql + " ORDER BY started_at, task_id", args)
    for row in rows:
        row["age"] = round(now - row["started_at"], 3)
        row["lease_left"] = round(row["lease_expires"] - now, 3)
    return rows


HISTORY_STATUSES = (*END_STATUSES, "reaped")


def history(
    tx: Tx,
    limit: int,
    *,
    task_type: str | None = None,
    node: str | None = None,
    status: str | None = None,
    since: float | None = None,
) -> list[Row]:
    """Finished tasks, newest first (of one type, on one node, with one status, ended at or
    after ``since``)."""
    where: list[str] = []
    args: list[object] = []
    if task_type:
        where.append("task_type = ?")
        args.append(tasktypes.parse(task_type))
    if node:
        where.append("node = ?")
        args.append(node)
    if status:
        check_history_status(status)
        where.append("status = ?")
        args.append(status)
    if since is not None:
        where.append("ended_at >= ?")
        args.append(since)
    sql = "SELECT * FROM task_history"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return tx.query(sql + " ORDER BY ended_at DESC, id DESC LIMIT ?", (*args, int(limit)))


def check_history_status(status: str | None) -> None:
    """A status ``tasks history --status`` can find (None: any)."""
    if status is not None and status not in HISTORY_STATUSES:
        raise UsageError(
            f"must be one of {', '.join(HISTORY_STATUSES)}, not {status!r}", field="status"
        )


def history_of(tx: Tx, task_id: str) -> list[Row]:
    """One task's history rows, newest first (a task id is ended once; a reused one, more)."""
    return tx.query(
        "SELECT * FROM task_history WHERE task_id = ? ORDER BY ended_at DESC, id DESC",
        (task_id,),
    )


def running_row(tx: Tx, task_id: str) -> Row | None:
    """Everything recorded about a running task (None: not running)."""
    return tx.one("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
