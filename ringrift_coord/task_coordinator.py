"""The public face of admission: check, register, release, reap, reserve, wait in line.

Names follow the reference (``TaskCoordinator``, ``TaskType``, ``CoordinatedTask``,
``get_coordinator``, ``can_spawn_task``, ``register_task``, ``unregister_task``,
``get_stats``, ``get_state``) so code written against it ports by changing the import.
"""

from __future__ import annotations

import os
from types import TracebackType

from ringrift_coord import procs
from ringrift_coord.admission import (
    Decision,
    Request,
    admit,
    read_halt_file,
    reap,
    release,
    renew,
)
from ringrift_coord.context import Context, who_am_i
from ringrift_coord.coordinator_base import CoordinatorStatus
from ringrift_coord.errors import NotFound, SpawnDenied, UsageError
from ringrift_coord.store.base import Row
from ringrift_coord.tasktypes import ResourceType, TaskType

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "CoordinatedTask",
    "Decision",
    "ResourceType",
    "TaskCoordinator",
    "TaskType",
    "can_spawn_task",
    "get_coordinator",
    "get_state",
    "get_stats",
    "register_task",
    "unregister_task",
]

RELEASE_STATUSES = ("ok", "failed", "oom", "killed", "stopped")


class Holder:
    """The process that holds a slot (what the reaper watches on this host)."""

    def __init__(
        self, pid: int | None = None, pgid: int | None = None, wrapper_pid: int | None = None
    ) -> None:
        self.pid, self.pgid, self.wrapper_pid = pid, pgid, wrapper_pid

    def request_fields(self) -> dict[str, Any]:
        pid = self.pid
        return {
            "pid": pid,
            "pid_start": procs.start_time(pid) if pid else None,
            "pgid": self.pgid,
            "wrapper_pid": self.wrapper_pid,
            "wrapper_start": procs.start_time(self.wrapper_pid) if self.wrapper_pid else None,
        }


class TaskCoordinator:
    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()

    # -- admission ----------------------------------------------------------------------

    def _request(
        self,
        task_type: str | TaskType,
        node: str | None,
        *,
        source: str,
        holder: Holder | None = None,
        task_id: str | None = None,
        config_name: str | None = None,
        command: str | None = None,
        waiter_seq: int | None = None,
    ) -> Request:
        return Request(
            task_type=TaskType.parse(task_type),
            node=node or default_node(self.ctx.env),
            source=source,
            task_id=task_id,
            config_name=config_name,
            command=command,
            who=who_am_i(self.ctx.env),
            waiter_seq=waiter_seq,
            **(holder.request_fields() if holder else {}),
        )

    def check(self, task_type: str | TaskType, node: str | None = None) -> Decision:
        """The whole decision without taking a slot (dead holders are reaped first)."""
        req = self._request(task_type, node, source="check")
        with self.ctx.store.write() as tx:
            return admit(
                tx,
                req,
                self.ctx.settings,
                state_dir=self.ctx.state_dir,
                take_slot=False,
                action="can-spawn",
            )

    def acquire(
        self,
        task_type: str | TaskType,
        node: str | None = None,
        *,
        holder: Holder,
        source: str = "api",
        task_id: str | None = None,
        config_name: str | None = None,
        command: str | None = None,
        waiter_seq: int | None = None,
        log: bool = True,
    ) -> Decision:
        """Check and take a slot in one transaction; the decision says whether it did."""
        req = self._request(
            task_type,
            node,
            source=source,
            holder=holder,
            task_id=task_id,
            config_name=config_name,
            command=command,
            waiter_seq=waiter_seq,
        )
        with self.ctx.store.write() as tx:
            return admit(
                tx,
                req,
                self.ctx.settings,
                state_dir=self.ctx.state_dir,
                take_slot=True,
                action=source,
                log=log,
            )

    def can_spawn_task(self, task_type: str | TaskType, node_id: str) -> tuple[bool, str]:
        decision = self.check(task_type, node_id)
        return decision.allowed, "" if decision.allowed else decision.summary()

    def register_task(
        self,
        task_id: str | None,
        task_type: str | TaskType,
        node_id: str | None = None,
        pid: int | None = None,
        config_name: str | None = None,
    ) -> str:
        """Register (atomically checked) and return the task id; raise SpawnDenied if not."""
        pid = pid if pid is not None else os.getpid()
        if procs.start_time(pid) is None:
            raise UsageError(f"no running process with pid {pid} on this host")
        decision = self.acquire(
            task_type,
            node_id,
            holder=Holder(pid=pid),
            source="register",
            task_id=task_id,
            config_name=config_name,
        )
        if not decision.allowed:
            raise SpawnDenied(decision)
        assert decision.task_id is not None
        return decision.task_id

    def unregister_task(
        self,
        task_id: str,
        *,
        exit_code: int | None = None,
        status: str | None = None,
        token: int | None = None,
        reason: str | None = None,
    ) -> Row | None:
        """Release once; None if it was already released. Unknown ids raise NotFound."""
        if status is None:
            status = "ok" if not exit_code else "failed"
        if reason is None and exit_code and status != "ok":
            reason = f"exit code {exit_code}"  # what the breaker and the history show
        if status not in RELEASE_STATUSES + ("spawn_failed",):
            raise UsageError(f"--status must be one of {', '.join(RELEASE_STATUSES)}")
        with self.ctx.store.write() as tx:
            row = release(
                tx,
                task_id,
                token=token,
                exit_code=exit_code,
                status=status,
                reason=reason,
                settings=self.ctx.settings,
            )
            if row is None and not tx.one(
                "SELECT 1 AS x FROM task_history WHERE task_id = ?", (task_id,)
            ):
                raise NotFound(f"no task {task_id!r} is registered")
        return row

    def renew_lease(self, task_id: str, token: int) -> bool:
        with self.ctx.store.write() as tx:
            return renew(tx, task_id, token, float(self.ctx.settings.get("store.lease_ttl")))

    def set_holder(self, task_id: str, token: int, holder: Holder) -> bool:
        """Point the slot at the job's process group (``run`` does this after fork)."""
        fields = holder.request_fields()
        with self.ctx.store.write() as tx:
            return bool(
                tx.execute(
                    "UPDATE tasks SET pid = ?, pid_start = ?, pgid = ? WHERE task_id = ? "
                    "AND lease_token = ?",
                    (fields["pid"], fields["pid_start"], fields["pgid"], task_id, token),
                )
            )

    # -- fair queue ---------------------------------------------------------------------

    def enqueue(self, task_type: str | TaskType, node: str | None) -> int:
        """Take a place in line (arrival order); the waiter is this process."""
        ttype = TaskType.parse(task_type).value
        me = os.getpid()
        with self.ctx.store.write() as tx:
            now = tx.now()
            rows = tx.query(
                "INSERT INTO waiters (task_type, node, host, boot_id, pid, pid_start, "
                "enqueued_at, heartbeat_at) VALUES (?,?,?,?,?,?,?,?) RETURNING seq",
                (
                    ttype,
                    node or default_node(self.ctx.env),
                    procs.host_name(),
                    procs.boot_id(),
                    me,
                    procs.start_time(me),
                    now,
                    now,
                ),
            )
        return int(rows[0]["seq"])

    def leave_queue(self, seq: int) -> None:
        with self.ctx.store.write() as tx:
            tx.execute("DELETE FROM waiters WHERE seq = ?", (seq,))

    def heartbeat_waiter(self, seq: int) -> bool:
        with self.ctx.store.write() as tx:
            return bool(
                tx.execute("UPDATE waiters SET heartbeat_at = ? WHERE seq = ?", (tx.now(), seq))
            )

    # -- housekeeping and views ---------------------------------------------------------

    def reap(self) -> list[Row]:
        with self.ctx.store.write() as tx:
            return reap(tx, tx.now(), self.ctx.settings)

    def list_tasks(self, task_type: str | None = None, node: str | None = None) -> list[Row]:
        sql = (
            "SELECT task_id, task_type, node, host, pid, pgid, wrapper_pid, config_name, "
            "command, source, started_at, lease_expires, lease_token FROM tasks"
        )
        where, args = [], []
        if task_type:
            where.append("task_type = ?")
            args.append(TaskType.parse(task_type).value)
        if node:
            where.append("node = ?")
            args.append(node)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.ctx.store.read() as tx:
            now = tx.now()
            rows = tx.query(sql + " ORDER BY started_at, task_id", args)
        for row in rows:
            row["age"] = round(now - row["started_at"], 3)
            row["lease_left"] = round(row["lease_expires"] - now, 3)
        return rows

    def history(self, limit: int = 50) -> list[Row]:
        with self.ctx.store.read() as tx:
            return tx.query(
                "SELECT * FROM task_history ORDER BY ended_at DESC, id DESC LIMIT ?", (int(limit),)
            )

    def reserve(
        self, task_type: str | TaskType, node: str, slots: int, ttl: float | None = None
    ) -> Row:
        """Hold ``slots`` slots on ``node`` for ``task_type`` (gauntlet workers)."""
        if slots < 1:
            raise UsageError("--slots must be at least 1")
        if ttl is not None and not (0 < ttl < float("inf")):
            raise UsageError("--ttl must be a positive number of seconds")
        ttype = TaskType.parse(task_type).value
        res_id = f"res-{os.urandom(5).hex()}"
        with self.ctx.store.write() as tx:
            now = tx.now()
            expires = None if ttl is None else now + ttl
            tx.execute(
                "INSERT INTO reservations (res_id, node, task_type, slots, created_at, "
                "expires_at, who) VALUES (?,?,?,?,?,?,?)",
                (res_id, node, ttype, int(slots), now, expires, who_am_i(self.ctx.env)),
            )
        return {
            "res_id": res_id,
            "node": node,
            "task_type": ttype,
            "slots": int(slots),
            "created_at": now,
            "expires_at": expires,
        }

    def release_reservation(self, res_id: str) -> None:
        with self.ctx.store.write() as tx:
            if not tx.execute("DELETE FROM reservations WHERE res_id = ?", (res_id,)):
                raise NotFound(f"no reservation {res_id!r}")

    def list_reservations(self) -> list[Row]:
        with self.ctx.store.read() as tx:
            return tx.query(
                "SELECT res_id, node, task_type, slots, created_at, expires_at, who "
                "FROM reservations WHERE expires_at IS NULL OR expires_at > ? ORDER BY created_at",
                (tx.now(),),
            )

    def decisions(
        self,
        *,
        denied_only: bool = False,
        since: float | None = None,
        node: str | None = None,
        task_type: str | None = None,
        limit: int = 100,
    ) -> list[Row]:
        where, args = [], []
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
            args.append(TaskType.parse(task_type).value)
        sql = "SELECT * FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.ctx.store.read() as tx:
            return tx.query(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))

    def get_state(self) -> CoordinatorStatus:
        """RUNNING, or PAUSED while a cluster-wide halt (or this host's halt file) holds."""
        with self.ctx.store.read() as tx:
            now = tx.now()
            halted = tx.one(
                "SELECT 1 AS x FROM halts WHERE scope = '*' AND (expires_at IS NULL OR "
                "expires_at > ?)",
                (now,),
            )
        if halted or read_halt_file(self.ctx.state_dir, now) is not None:
            return CoordinatorStatus.PAUSED
        return CoordinatorStatus.RUNNING

    def get_stats(self) -> dict[str, Any]:
        """Tasks per type and node against their limits, reservations and queue lengths."""
        settings = self.ctx.settings
        with self.ctx.store.read() as tx:
            counts = tx.query(
                "SELECT task_type, node, COUNT(*) AS n FROM tasks GROUP BY task_type, node"
            )
            queued = tx.query("SELECT task_type, COUNT(*) AS n FROM waiters GROUP BY task_type")
        by_type: dict[str, Any] = {}
        for t in TaskType:
            by_type[t.value] = {
                "running": 0,
                "per_node_limit": settings.task_limit(t.value, "per_node"),
                "cluster_limit": settings.task_limit(t.value, "cluster"),
                "nodes": {},
                "queued": 0,
            }
        for row in counts:
            entry = by_type.setdefault(row["task_type"], {"running": 0, "nodes": {}, "queued": 0})
            entry["running"] += row["n"]
            entry["nodes"][row["node"]] = row["n"]
        for row in queued:
            by_type.setdefault(row["task_type"], {"running": 0, "nodes": {}})["queued"] = row["n"]
        return {
            "state": self.get_state().value,
            "total_tasks": sum(r["n"] for r in counts),
            "by_type": by_type,
            "reservations": self.list_reservations(),
            "store": self.ctx.store.describe(),
        }


def default_node(env: Any = None) -> str:
    env = os.environ if env is None else env
    node = env.get("RINGRIFT_NODE_ID") or procs.host_name()
    if any(ch < " " or ch == "\x7f" for ch in node):
        raise UsageError(f"RINGRIFT_NODE_ID {node!r} contains control characters")
    return node


# --------------------------------------------------------------------------- module API

_coordinator: TaskCoordinator | None = None


def get_coordinator() -> TaskCoordinator:
    global _coordinator
    if _coordinator is None:
        _coordinator = TaskCoordinator()
    return _coordinator


def can_spawn_task(task_type: str | TaskType, node_id: str) -> tuple[bool, str]:
    return get_coordinator().can_spawn_task(task_type, node_id)


def register_task(
    task_id: str | None,
    task_type: str | TaskType,
    node_id: str | None = None,
    pid: int | None = None,
    config_name: str | None = None,
) -> str:
    return get_coordinator().register_task(task_id, task_type, node_id, pid, config_name)


def unregister_task(task_id: str, **kw: Any) -> Row | None:
    return get_coordinator().unregister_task(task_id, **kw)


def get_stats() -> dict[str, Any]:
    return get_coordinator().get_stats()


def get_state() -> CoordinatorStatus:
    return get_coordinator().get_state()


class CoordinatedTask:
    """``async with CoordinatedTask(TaskType.TRAINING, "node-1") as task: if task.allowed: ...``

    Registers this process as the holder on entry (``allowed`` says whether it got the
    slot, ``reason`` why not) and releases on exit: status ``ok``, or ``failed`` when the
    block raised. Also usable as a plain ``with``.
    """

    def __init__(
        self,
        task_type: str | TaskType,
        node_id: str | None = None,
        *,
        task_id: str | None = None,
        config_name: str | None = None,
        coordinator: TaskCoordinator | None = None,
    ) -> None:
        self.task_type = TaskType.parse(task_type)
        self.node_id = node_id
        self.requested_id = task_id
        self.config_name = config_name
        self.coordinator = coordinator
        self.allowed = False
        self.reason = ""
        self.task_id: str | None = None
        self.decision: Decision | None = None

    def __enter__(self) -> CoordinatedTask:
        coord = self.coordinator or get_coordinator()
        self.coordinator = coord
        self.decision = coord.acquire(
            self.task_type,
            self.node_id,
            holder=Holder(pid=os.getpid()),
            source="api",
            task_id=self.requested_id,
            config_name=self.config_name,
        )
        self.allowed = self.decision.allowed
        self.reason = "" if self.allowed else self.decision.summary()
        self.task_id = self.decision.task_id
        self._token = self.decision.lease_token
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.allowed and self.task_id and self.coordinator is not None:
            status = "ok" if exc_type is None else "failed"
            reason = None if exc is None else f"{type(exc).__name__}: {exc}"[:500]
            self.coordinator.unregister_task(
                self.task_id,
                status=status,
                token=self._token,
                reason=reason,
                exit_code=0 if exc_type is None else 1,
            )

    async def __aenter__(self) -> CoordinatedTask:
        import asyncio

        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)
