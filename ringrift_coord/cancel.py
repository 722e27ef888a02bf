"""``tasks cancel``: an operator ends one running task on its own host.

The task's recorded processes are signalled where they run, never from another host (a pid
means nothing there: the command refuses with the host to run it on). A ``run`` wrapper that
is still alive is sent the signal itself, so it forwards it to its job's group, escalates
after its grace and releases the slot as ``stopped`` as it does for any operator's signal.
Without a live wrapper (it was ``kill -9``ed: the orphaned job keeps its slot while any
process of its group lives) the job's process group (a ``register``ed holder: its pid) is
signalled here, SIGKILLed when still alive after ``run.kill_grace`` seconds, and the slot is
released as ``stopped`` (an operator's stop: no breaker or backpressure hears of it). The
holder's identity is its pid and that process's start time, so a reused pid is never signalled.
"""

from __future__ import annotations

import os
import signal

from ringrift_coord import feedback, identity, procs, slots
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


def _send(row: Row, sig: int) -> None:
    try:
        if row.get("pgid"):
            os.killpg(int(row["pgid"]), sig)
        elif row.get("pid") and procs.pid_alive(row["pid"], row.get("pid_start")):
            os.kill(int(row["pid"]), sig)
    except (ProcessLookupError, PermissionError):
        pass


def cancel(ctx: Context, task_id: str, sig: signal.Signals, *, who: str) -> dict[str, Any]:
    """Signal ``task_id``'s job on this host, SIGKILL it after the grace, free its slot as
    ``stopped``. Returns what was done and the task's history row."""
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
    if wrapper and sig in FORWARDED:
        # the wrapper forwards it, escalates after its grace and releases as stopped
        try:
            os.kill(int(row["wrapper_pid"]), sig)
        except ProcessLookupError:
            pass
        deadline = clock.monotonic() + grace + WRAPPER_MARGIN
        while clock.monotonic() < deadline:
            with ctx.store.read() as tx:
                if tx.one("SELECT 1 AS x FROM tasks WHERE task_id = ?", (task_id,)) is None:
                    ended = slots.history_of(tx, task_id)
                    if ended:
                        return _result(ended[0], sig, "wrapper", False)
            ctx.store.idle()
            clock.wait_readable([], POLL)
        # a wrapper that did not end it in time: end both here
    if wrapper:
        try:  # first the wrapper (so it cannot release the slot as killed), then the job
            os.kill(int(row["wrapper_pid"]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    escalated = False
    sig_used = sig
    if not rebooted and _group_alive(row):
        _send(row, sig)
        deadline = clock.monotonic() + grace
        while _group_alive(row) and clock.monotonic() < deadline:
            clock.wait_readable([], POLL)
        if _group_alive(row):
            escalated, sig_used = True, signal.SIGKILL
            _send(row, signal.SIGKILL)
            while _group_alive(row):
                clock.wait_readable([], POLL)
        reason = f"cancelled by {who} with {sig.name}"
        if escalated:
            reason += f", then SIGKILL after the {grace:g} s grace period"
    else:
        reason = f"cancelled by {who}; its processes had already ended"
    with ctx.store.write() as tx:
        released = slots.release(
            tx,
            task_id,
            token=None,
            exit_code=128 + int(sig_used),
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
