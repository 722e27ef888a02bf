"""``tasks cancel``: an operator ends one running task on its own host.

The task's recorded processes are signalled where they run, never from another host (a pid
means nothing there: the command refuses with the host to run it on). A ``run`` wrapper that
is still alive is sent the signal itself, so it forwards it to its job's group, escalates
after its grace and releases the slot as ``stopped`` as it does for any operator's signal.
Without a live wrapper (it was ``kill -9``ed: the orphaned job keeps its slot while any
process of its group lives) the job's process group (a ``register``ed holder: its pid) is
signalled here, SIGKILLed when still alive after ``run.kill_grace`` seconds, and the slot is
released as ``stopped`` (an operator's stop: no breaker or backpressure hears of it). The
holder's identity is its pid and that process's start time, so a reused pid is never signalled,
nor a new group that took the number of the job's ended group (checked again before each signal).

Refused with a state error (exit 3), the slot kept: a job with a process of a user this one may
not signal (nothing is signalled: a store shared by a host's users holds other users' jobs), and
a job whose processes are still there ``KILL_WAIT`` seconds after SIGKILL.
"""

from __future__ import annotations

import os
import signal

from ringrift_coord import feedback, identity, procs, slots
from ringrift_coord.durations import human
from ringrift_coord.errors import NotFound, StateError, UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Row

# What ``tasks cancel --signal`` may send: what ``run`` forwards to its job, and KILL.
SIGNALS = ("TERM", "INT", "HUP", "KILL")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL = 0.05  # seconds between looks at real processes (not a clock step)
WRAPPER_MARGIN = 5.0  # seconds a live wrapper gets past its grace to release the slot itself
KILL_WAIT = 5.0  # seconds the job's processes get to vanish after SIGKILL before cancel gives up


def parse_signal(name: str) -> signal.Signals:
    """``TERM``, ``SIGTERM``, ``term`` or ``15`` -> SIGTERM; only the ones in ``SIGNALS``."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            text = signal.Signals(int(text)).name
        except ValueError:
            text = "?"
    text = text.removeprefix("SIG")
    if text not in SIGNALS:
        raise UsageError(
            f"{name!r} is not one of {', '.join(SIGNALS)} (what run forwards to a job, or KILL)",
            field="signal",
        )
    return signal.Signals[f"SIG{text}"]


def _group_alive(row: Row) -> bool:
    if row.get("pgid"):
        return procs.group_alive(row["pgid"], row.get("pid_start"))
    return procs.pid_alive(row.get("pid"), row.get("pid_start"))


def _job_pids(row: Row) -> list[int]:
    """The live processes of the task's job (its group's members, or its holder)."""
    if row.get("pgid"):
        if not _group_alive(row):
            return []
        since = row.get("pid_start")
        return [
            pid
            for pid in procs.group_members(int(row["pgid"]))
            if since is None or (procs.start_time(pid) or 0) >= since
        ]
    if row.get("pid") and procs.pid_alive(row["pid"], row.get("pid_start")):
        return [int(row["pid"])]
    return []


def _refuse(task_id: str, uid: int | None, *, before: bool = False) -> StateError:
    owner = f"uid {uid}" if uid is not None else "another user"
    return StateError(
        f"task {task_id}'s processes belong to {owner}: run `ringrift-coord tasks cancel "
        f"{task_id}` as that user or root{' (nothing was signalled)' if before else ''}; the "
        f"task keeps its slot"
    )


def _check_may_signal(task_id: str, pids: list[int]) -> None:
    """Refuse before anything is signalled when one of ``pids`` is another user's."""
    found = procs.not_signallable(pids)
    if found is not None:
        raise _refuse(task_id, found[1], before=True)


def _kill(task_id: str, pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise _refuse(task_id, procs.owner_uid(pid)) from None


def _send(row: Row, sig: int) -> None:
    """Signal the job, after checking once more that its group (or holder) is still the one
    recorded: a number reused by a stranger is never signalled."""
    try:
        if row.get("pgid"):
            if _group_alive(row):
                os.killpg(int(row["pgid"]), sig)
        elif row.get("pid") and procs.pid_alive(row["pid"], row.get("pid_start")):
            os.kill(int(row["pid"]), sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        found = procs.not_signallable(_job_pids(row))
        raise _refuse(row["task_id"], found[1] if found else None) from None


def cancel(ctx: Context, task_id: str, sig: signal.Signals, *, who: str) -> dict[str, Any]:
    """Signal ``task_id``'s job on this host, SIGKILL it after the grace, free its slot as
    ``stopped``. Returns what was done and the task's history row.

    Refused (StateError, nothing signalled, the slot kept) when a process of the job belongs
    to a user this one may not signal, and when processes of the group still live
    ``KILL_WAIT`` seconds after SIGKILL (a process in uninterruptible sleep)."""
    clock = ctx.clock
    grace = float(ctx.settings.get("run.kill_grace"))
    with ctx.store.read() as tx:
        row = tx.one("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        if row is None:
            ended = slots.history_of(tx, task_id)
            if not ended:
                raise NotFound(f"no task {task_id!r} is registered")
            return _result(ended[0], sig, "already_ended", False)
    here = identity.host_name()
    if row["host"] != here:
        raise StateError(
            f"task {task_id} runs on host {row['host']}, not on this host ({here}): a process "
            f"can only be signalled on its own host; run `ringrift-coord tasks cancel {task_id}` "
            f"there"
        )
    this_boot = procs.boot_id()
    rebooted = bool(this_boot and row.get("boot_id") and row["boot_id"] != this_boot)
    wrapper = (
        not rebooted
        and bool(row.get("wrapper_pid"))
        and row["wrapper_pid"] != os.getpid()
        and procs.pid_alive(row["wrapper_pid"], row.get("wrapper_start"))
    )
    if not rebooted:  # another user's job: refuse before signalling anything
        _check_may_signal(task_id, ([int(row["wrapper_pid"])] if wrapper else []) + _job_pids(row))
    if wrapper and sig in FORWARDED:
        # the wrapper forwards it, escalates after its grace and releases as stopped
        _kill(task_id, int(row["wrapper_pid"]), sig)
        deadline = clock.monotonic() + grace + WRAPPER_MARGIN
        while clock.monotonic() < deadline:
            with ctx.store.read() as tx:
                gone = tx.one("SELECT 1 AS x FROM tasks WHERE task_id = ?", (task_id,)) is None
                ended = slots.history_of(tx, task_id) if gone else []
            if ended:
                return _result(_signed(ctx, ended[0], who, sig), sig, "wrapper", False)
            ctx.store.idle()
            clock.wait_readable([], POLL)
        # a wrapper that did not end it in time: end both here
    if wrapper and procs.pid_alive(row["wrapper_pid"], row.get("wrapper_start")):
        # first the wrapper (so it cannot release the slot as killed), then the job
        _kill(task_id, int(row["wrapper_pid"]), signal.SIGKILL)
    escalated = False
    sig_used = sig
    signalled = not rebooted and _group_alive(row)
    if signalled:
        _send(row, sig)
        deadline = clock.monotonic() + grace
        while _group_alive(row) and clock.monotonic() < deadline:
            clock.wait_readable([], POLL)
        if _group_alive(row):
            escalated, sig_used = True, signal.SIGKILL
            _send(row, signal.SIGKILL)
            deadline = clock.monotonic() + KILL_WAIT
            while _group_alive(row):
                if clock.monotonic() >= deadline:
                    raise StateError(
                        f"task {task_id}: processes of its job still live {human(KILL_WAIT)} "
                        f"after SIGKILL (in uninterruptible sleep?): they could not be ended, "
                        f"and the task keeps its slot"
                    )
                clock.wait_readable([], POLL)
        reason = f"cancelled by {who} with {sig.name}"
        if escalated:
            reason += f", then SIGKILL after the {human(grace)} grace period"
    else:
        reason = f"cancelled by {who}; its processes had already ended"
    with ctx.store.write() as tx:
        released = slots.release(
            tx,
            task_id,
            token=None,
            exit_code=128 + int(sig_used) if signalled else None,  # no exit that never was
            status="stopped",
            reason=reason,
            settings=ctx.settings,
            on_end=feedback.task_ended,
        )
        ended = slots.history_of(tx, task_id)
    how = "cancel" if released is not None else "wrapper"
    if not ended:  # released by its holder meanwhile, and its history already pruned
        return _result({**row, "status": None, "exit_code": None, "reason": None}, sig, how, False)
    return _result(ended[0], sig, how, escalated)


def _signed(ctx: Context, ended: Row, who: str, sig: signal.Signals) -> Row:
    """The wrapper recorded a forwarded signal: say in its history who asked for it (a job
    that ended on its own meanwhile is left as it was)."""
    if ended["status"] != "stopped":
        return ended
    reason = f"cancelled by {who} with {sig.name}: {ended['reason'] or 'stopped'}"
    with ctx.store.write() as tx:
        tx.execute("UPDATE task_history SET reason = ? WHERE id = ?", (reason, ended["id"]))
    return {**ended, "reason": reason}


def _result(ended: Row, sig: signal.Signals, released_by: str, escalated: bool) -> dict[str, Any]:
    return {
        "task_id": ended["task_id"],
        "task_type": ended["task_type"],
        "node": ended["node"],
        "host": ended["host"],
        "signal": sig.name,
        "escalated": escalated,
        "released_by": released_by,
        "status": ended["status"],
        "exit_code": ended["exit_code"],
        "reason": ended["reason"],
    }
