"""The public face of admission: check, register, release, reap, reserve, wait in line.

Names follow the reference (``TaskCoordinator``, ``TaskType``, ``CoordinatedTask``,
``get_coordinator``, ``can_spawn_task``, ``register_task``, ``unregister_task``,
``get_stats``, ``get_state``) so code written against it ports by changing the import.
A thin face: each method opens one transaction of its context's store and calls the core
(``admission``, ``slots``, ``queue``, ``reservations``, ``reports``).
"""

from __future__ import annotations

import os
from types import TracebackType  # (free: functools, which both engines load, imports it)

from ringrift_coord import (
    admission,
    feedback,
    halts,
    identity,
    inputs,
    procs,
    queue,
    reservations,
    rules,
    slots,
    tasktypes,
)
from ringrift_coord.context import Context, ProcessWide
from ringrift_coord.decision import Decision, Request
from ringrift_coord.errors import NotFound, SpawnDenied, UsageError
from ringrift_coord.identity import default_node, who_am_i
from ringrift_coord.slots import RELEASE_STATUSES, StaleLease
from ringrift_coord.store.base import Row

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.coordinator_base import CoordinatorStatus
    from ringrift_coord.tasktype_enums import ResourceType, TaskType

__all__ = [
    "RELEASE_STATUSES",
    "CoordinatedTask",
    "Decision",
    "Holder",
    "ResourceType",
    "StaleLease",
    "TaskCoordinator",
    "TaskType",
    "can_spawn_task",
    "default_node",
    "get_coordinator",
    "get_state",
    "get_stats",
    "register_task",
    "unregister_task",
]


class Holder:
    """The process that holds a slot (what the reaper watches on this host)."""

    def __init__(
        self, pid: int | None = None, pgid: int | None = None, wrapper_pid: int | None = None
    ) -> None:
        self.pid, self.pgid, self.wrapper_pid = pid, pgid, wrapper_pid

    def request_fields(self) -> dict[str, Any]:
        return slots.holder_fields(self.pid, self.pgid, self.wrapper_pid)


class TaskCoordinator(ProcessWide):
    """Admission and slots over one ``Context`` (``get_instance()``: the process-wide one)."""

    _instance: TaskCoordinator | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()

    # -- admission ----------------------------------------------------------------------

    def _request(
        self,
        task_type: str,
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
            task_type=tasktypes.parse(task_type),
            node=node or default_node(self.ctx.env),
            source=source,
            task_id=task_id,
            config_name=config_name,
            command=command,
            who=who_am_i(self.ctx.env),
            waiter_seq=waiter_seq,
            **(holder.request_fields() if holder else {}),
        )

    def _admit(self, req: Request, *, take_slot: bool, action: str, log: bool = True) -> Decision:
        ctx = self.ctx
        local = halts.snapshot(ctx.state_dir, ctx.store.scope)  # never read under the lock
        live = rules.live_reading(ctx.settings, ctx.state_dir, req.node)
        with ctx.store.write(statements_only=True) as tx:
            return admission.admit(
                tx,
                req,
                ctx.settings,
                state_dir=ctx.state_dir,
                halt_file=local,
                live=live,
                take_slot=take_slot,
                action=action,
                log=log,
            )

    def check(
        self,
        task_type: str,
        node: str | None = None,
        *,
        config_name: str | None = None,
        now: float | None = None,
    ) -> Decision:
        """The whole decision without taking a slot (dead holders are reaped first);
        ``config_name``: the board config the job would play (rule ``config_share``).

        ``now``: a what-if at that time (seconds since the epoch): every rule evaluated as
        the store stands, in a read transaction, with every expiry (leases, breakers, halts,
        reservations, readings' age, peak hours) judged at ``now``; nothing is reaped, logged
        or written."""
        req = self._request(task_type, node, source="check", config_name=config_name)
        if now is None:
            return self._admit(req, take_slot=False, action="can-spawn")
        ctx = self.ctx
        local = halts.snapshot(ctx.state_dir, ctx.store.scope)
        live = rules.live_reading(ctx.settings, ctx.state_dir, req.node)
        with ctx.store.read() as tx:
            return admission.evaluate(
                tx, req, ctx.settings, now, state_dir=ctx.state_dir, halt_file=local, live=live
            )

    def acquire(
        self,
        task_type: str,
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
        return self._admit(req, take_slot=True, action=source, log=log)

    def can_spawn_task(self, task_type: str, node_id: str) -> tuple[bool, str]:
        decision = self.check(task_type, node_id)
        return decision.allowed, "" if decision.allowed else decision.summary()

    def register_task(
        self,
        task_id: str | None,
        task_type: str,
        node_id: str | None = None,
        pid: int | None = None,
        config_name: str | None = None,
    ) -> str:
        """Register (atomically checked) and return the task id; raise SpawnDenied if not."""
        pid = pid if pid is not None else os.getpid()
        if procs.start_time(pid) is None:
            raise UsageError(
                f"no running process with pid {pid} on this host: a slot's holder must be a "
                "live process here (the reaper frees the slot of a holder that is gone, and a "
                "pid means nothing on another host); register from the host the job runs on, "
                "with its pid, or leave pid out to hold the slot with this process",
                field="pid",
            )
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
        """Release once; None if it was already released. Unknown ids raise NotFound; an
        ``exit_code`` outside 0-255 (no process exits so) a UsageError, nothing released."""
        if exit_code is not None and (
            isinstance(exit_code, bool)
            or not isinstance(exit_code, int)
            or not 0 <= exit_code <= 255
        ):
            raise UsageError(f"{exit_code!r} is not an exit code (0-255)", field="exit_code")
        if status is None:
            status = "ok" if not exit_code else "failed"
        reason = inputs.reason(reason)  # (blank: none, so the exit code says why)
        if reason is None and exit_code and status != "ok":
            reason = f"exit code {exit_code}"  # what the breaker and the history show
        with self.ctx.store.write(statements_only=True) as tx:
            row = slots.release(
                tx,
                task_id,
                token=token,
                exit_code=exit_code,
                status=status,
                reason=reason,
                settings=self.ctx.settings,
                on_end=feedback.task_ended,
                on_end_probe=feedback.END_PROBE,
            )
            if row is None and not slots.ended(tx, task_id):
                raise NotFound(f"no task {task_id!r} is registered")
        return row

    def renew_lease(self, task_id: str, token: int) -> bool:
        with self.ctx.store.write(statements_only=True) as tx:
            return slots.renew(tx, task_id, token, float(self.ctx.settings.get("store.lease_ttl")))

    def set_holder(self, task_id: str, token: int, holder: Holder) -> bool:
        """Point the slot at the job's process group (``run`` does this after fork)."""
        fields = holder.request_fields()
        with self.ctx.store.write(statements_only=True) as tx:
            return slots.set_holder(tx, task_id, token, fields)

    # -- fair queue ---------------------------------------------------------------------

    def enqueue(self, task_type: str, node: str | None, seq: int | None = None) -> int:
        """Take a place in line (arrival order); the waiter is this process. ``seq``: take
        back the place this process had before it stepped out of line (see ``queue``)."""
        ttype = tasktypes.parse(task_type)
        node = node or default_node(self.ctx.env)
        with self.ctx.store.write() as tx:
            return queue.enqueue(tx, ttype, node, identity.host_name(), os.getpid(), seq)

    def leave_queue(self, seq: int) -> None:
        with self.ctx.store.write() as tx:
            queue.leave(tx, seq)

    def hold_place(self, seq: int) -> None:
        """Step out of line while a halt or peak hours deny this waiter (``queue.hold``)."""
        with self.ctx.store.write() as tx:
            queue.hold(tx, seq)

    def heartbeat_waiter(self, seq: int) -> bool:
        with self.ctx.store.write() as tx:
            return queue.heartbeat(tx, seq, tx.now())

    # -- housekeeping and views ---------------------------------------------------------

    def reap(self, dead_host: str | None = None) -> list[Row]:
        """Free the slots of dead holders; ``dead_host``: also every slot held from that host
        (an operator's word that it died for good), leases or not. A host no running task
        names is a UsageError with the closest one (a typo must not look like "0 freed")."""
        with self.ctx.store.write() as tx:
            if dead_host is not None:
                held = tx.query("SELECT DISTINCT host, node FROM tasks")
                hosts = sorted({r["host"] for r in held})
                if dead_host not in hosts:
                    from ringrift_coord.inputs import did_you_mean, printable

                    of_node = sorted({r["host"] for r in held if r["node"] == dead_host})
                    hint = (  # a node's name given for its host's (tasks at 80 columns
                        # show nodes only)
                        f"; {printable(dead_host)} is a node, whose tasks are held from host "
                        f"{', '.join(printable(h) for h in of_node)}"
                        if of_node
                        else did_you_mean(dead_host, hosts)
                        or (
                            f" (tasks are held from: {', '.join(printable(h) for h in hosts[:8])}"
                            f"{', ...' if len(hosts) > 8 else ''})"
                            if hosts
                            else ""
                        )
                    )
                    raise UsageError(
                        "option --host: no running task is held from host "
                        f"'{printable(dead_host)}'{hint}"
                    )
            return slots.reap(
                tx, tx.now(), self.ctx.settings, on_end=feedback.task_ended, dead_host=dead_host
            )

    def list_tasks(self, task_type: str | None = None, node: str | None = None) -> list[Row]:
        with self.ctx.store.read() as tx:
            return slots.running(tx, tx.now(), task_type, node)

    def history(
        self,
        limit: int = 50,
        *,
        task_type: str | None = None,
        node: str | None = None,
        status: str | None = None,
        since: float | None = None,
        since_age: float | None = None,
    ) -> list[Row]:
        """Finished tasks, newest first; ``since`` a moment, ``since_age`` seconds before
        the store's now."""
        with self.ctx.store.read() as tx:
            if since_age is not None:
                since = tx.now() - since_age
            return slots.history(
                tx, limit, task_type=task_type, node=node, status=status, since=since
            )

    def show(self, task_id: str) -> dict[str, Any]:
        """Everything recorded about one task: its running row (holder, lease, command), its
        history, and the admission decisions that name it. Unknown ids raise NotFound."""
        with self.ctx.store.read() as tx:
            now = tx.now()
            running = slots.running_row(tx, task_id)
            ended = slots.history_of(tx, task_id)
            logged = tx.query(
                "SELECT * FROM decisions WHERE task_id = ? ORDER BY id DESC LIMIT 20", (task_id,)
            )
        if running is None and not ended:
            raise NotFound(f"no task {task_id!r} is registered or in the history")
        import json

        for row in logged:
            row["rules"] = json.loads(row["rules"]) if row["rules"] else []
            row["allowed"] = bool(row["allowed"])
        if running is not None:
            running["age"] = round(now - running["started_at"], 3)
            running["lease_left"] = round(running["lease_expires"] - now, 3)
        latest = running if running is not None else ended[0]
        return {
            "task_id": task_id,
            "task_type": latest["task_type"],
            "node": latest["node"],
            "host": latest["host"],
            "status": "running" if running is not None else ended[0]["status"],
            "running": running,
            "history": ended,
            "decisions": logged,
            "at": now,
        }

    def cancel(self, task_id: str, signal_name: str = "TERM") -> dict[str, Any]:
        """``tasks cancel``: signal the task's job on its own host, SIGKILL it after the
        grace, release its slot as ``stopped`` (see ``cancel``)."""
        from ringrift_coord import cancel

        sig = cancel.parse_signal(signal_name)
        return cancel.cancel(self.ctx, task_id, sig, who=who_am_i(self.ctx.env))

    def reserve(self, task_type: str, node: str, slots: int, ttl: float | None = None) -> Row:
        """Hold ``slots`` slots on ``node`` for ``task_type`` (gauntlet workers)."""
        ttype = tasktypes.parse(task_type)
        with self.ctx.store.write() as tx:
            return reservations.create(tx, ttype, node, slots, ttl, who_am_i(self.ctx.env))

    def release_reservation(self, res_id: str) -> None:
        with self.ctx.store.write() as tx:
            if not reservations.release(tx, res_id):
                raise NotFound(f"no reservation {res_id!r}")

    def list_reservations(self) -> list[Row]:
        with self.ctx.store.read() as tx:
            return reservations.active(tx, tx.now())

    def decisions(
        self,
        *,
        denied_only: bool = False,
        since: float | None = None,
        node: str | None = None,
        task_type: str | None = None,
        limit: int = 100,
    ) -> list[Row]:
        """The decision log, newest first, each entry's ``rules`` decoded."""
        from ringrift_coord import reports  # the read models: not on the hot path

        return reports.decisions(
            self.ctx,
            denied_only=denied_only,
            since=since,
            node=node,
            task_type=task_type,
            limit=limit,
        )

    def get_state(self) -> CoordinatorStatus:
        """RUNNING, or PAUSED while a cluster-wide halt (or this host's halt file) holds."""
        from ringrift_coord import reports
        from ringrift_coord.coordinator_base import CoordinatorStatus

        return CoordinatorStatus(reports.state(self.ctx))

    def get_stats(self) -> dict[str, Any]:
        """Tasks per type and node against their limits, reservations and queue lengths."""
        from ringrift_coord import reports

        return reports.stats(self.ctx)


# --------------------------------------------------------------------------- module API


def get_coordinator() -> TaskCoordinator:
    """The process-wide coordinator (``TaskCoordinator.get_instance()``)."""
    return TaskCoordinator.get_instance()


def can_spawn_task(task_type: str, node_id: str) -> tuple[bool, str]:
    return get_coordinator().can_spawn_task(task_type, node_id)


def register_task(
    task_id: str | None,
    task_type: str,
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
        task_type: str,
        node_id: str | None = None,
        *,
        task_id: str | None = None,
        config_name: str | None = None,
        coordinator: TaskCoordinator | None = None,
    ) -> None:
        from ringrift_coord.tasktype_enums import TaskType

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


def __getattr__(name: str) -> object:
    """``TaskType`` and ``ResourceType``, the API's enums, built on first use: the command
    line's hot path imports this module and works with the plain names."""
    if name in ("TaskType", "ResourceType"):
        from ringrift_coord import tasktype_enums

        return getattr(tasktype_enums, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
