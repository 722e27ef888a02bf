"""``run``: hold a slot exactly as long as a command runs.

The command runs in the foreground as a child in its own process group. The slot is taken
before the fork and handed to the child's process group before the child may ``exec``: the
child blocks on a pipe until the store records it as the holder, so a ``kill -9`` of this
wrapper at any moment leaves either no job, or a job whose slot stays held while any process
of its group lives (the reaper watches the group, not this wrapper). SIGINT/SIGTERM/SIGHUP
are forwarded to the whole group, SIGKILL follows after a grace period; the lease is renewed
while the command runs; the slot is released exactly once on every exit path.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence

from ringrift_coord import procs
from ringrift_coord.clock import Clock
from ringrift_coord.config import Settings
from ringrift_coord.decision import Decision
from ringrift_coord.durations import human
from ringrift_coord.errors import CoordError, ExitCode, StoreBusy, UsageError, WaitTimeout
from ringrift_coord.task_coordinator import Holder, TaskCoordinator
from ringrift_coord.tasktypes import TaskType

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What a terminal sends its foreground process group (Ctrl-C, Ctrl-\, hang-up): while the
# job holds the terminal, a death by one of these is an operator's stop, not a failure.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


RENEW_RETRY = 5.0  # seconds to the next try after a lease renewal failed
HALTED_POLL = 0.5  # seconds between the polls of a waiter that a halt denies


class RunDenied(CoordError):
    """``run`` could not start its command: exit 75 (the caller may retry later)."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.summary())
        self.decision = decision


class Interrupted(CoordError):
    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} before the command started")
        self.exit_code = 128 + signum  # type: ignore[assignment]


class RunResult:
    def __init__(
        self,
        exit_code: int,
        task_id: str,
        status: str,
        reason: str | None,
        duration: float,
        decision: Decision,
    ) -> None:
        self.exit_code, self.task_id, self.status = exit_code, task_id, status
        self.reason, self.duration, self.decision = reason, duration, decision


WaitCallback = Callable[[Decision, float], None]


# --------------------------------------------------------------------------- admission


def acquire_slot(
    coord: TaskCoordinator,
    task_type: TaskType,
    node: str,
    *,
    holder: Holder,
    config_name: str | None,
    command: str,
    wait: bool,
    timeout: float | None,
    on_wait: WaitCallback | None = None,
) -> Decision:
    """Take a slot now, or (``wait``) wait in the fair queue for one."""
    if not wait:
        decision = coord.acquire(
            task_type,
            node,
            holder=holder,
            source="run",
            config_name=config_name,
            command=command,
        )
        if not decision.allowed:
            raise RunDenied(decision)
        return decision

    clock = coord.ctx.clock
    poll = float(coord.ctx.settings.get("run.poll_interval"))
    started = clock.monotonic()
    deadline = None if timeout is None else started + timeout
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    for sig in previous:
        signal.signal(sig, interrupted)
    seq = coord.enqueue(task_type, node)
    in_line, admitted = True, False
    try:
        attempt = 0
        while True:
            decision = coord.acquire(
                task_type,
                node,
                holder=holder,
                source="run",
                config_name=config_name,
                command=command,
                waiter_seq=seq,
                log=attempt == 0,
            )
            attempt += 1
            if decision.allowed:
                admitted = True
                return decision
            # Denied by a halt (its node drained, its type or everything halted), it holds no
            # place: it would count against every other node's limits while it cannot run.
            # It keeps its seq, so the waiters ahead of it by arrival are still the ones
            # counted, and takes its place back once only the limits deny it.
            if decision.halted and in_line:
                coord.leave_queue(seq)
                in_line = False
            elif not decision.halted and not in_line:
                coord.enqueue(task_type, node, seq)
                in_line = True
            waited = clock.monotonic() - started
            if on_wait is not None:
                on_wait(decision, waited)
            if deadline is not None and clock.monotonic() >= deadline:
                raise WaitTimeout(
                    f"gave up waiting for a {task_type.value} slot on {node} after "
                    f"{human(waited)}; {decision.summary()}",
                    decision,
                )
            # The head of the line polls fast; those behind it, and a halted waiter (an
            # operator lifts a halt), more gently.
            interval = poll if decision.queued == 0 else min(0.5, poll * (2 + decision.queued))
            if not in_line:
                interval = max(poll, HALTED_POLL)
            if deadline is not None:
                interval = min(interval, max(0.0, deadline - clock.monotonic()))
            clock.sleep(interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not admitted:  # out of line already (halted): deleting nothing is harmless
            try:
                coord.leave_queue(seq)
            except CoordError:
                pass  # a dead waiter loses its place when the next admission reaps it


# --------------------------------------------------------------------------- the job


class _Job:
    """Signal forwarding and the grace-period escalation for one child process group."""

    def __init__(self, kill_grace: float, clock: Clock) -> None:
        self.clock = clock
        self.pgid: int | None = None
        self.kill_grace = kill_grace
        self.kill_deadline: float | None = None
        self.received: list[int] = []
        self.killed = False

    def on_signal(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self.pgid is not None:
            _killpg(self.pgid, signum)
        if self.kill_deadline is None:
            self.kill_deadline = self.clock.monotonic() + self.kill_grace


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn_gated(
    argv: Sequence[str], env: dict[str, str], stdout_to_stderr: bool = False
) -> tuple[int, int, int]:
    """Fork a child in its own process group that execs ``argv`` only once told to go
    (``stdout_to_stderr``: with its stdout on our stderr).

    Returns (pid, go_fd, err_fd): write b"g" to go_fd to let it exec (closing go_fd
    without writing makes it exit 75); err_fd yields the exec errno, or EOF on success.
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup may run here
        try:
            os.close(go_w)
            os.close(err_r)
            os.setpgid(0, 0)
            for sig in (
                *FORWARDED,
                signal.SIGPIPE,
                signal.SIGXFSZ,
                signal.SIGTTOU,
                signal.SIGTTIN,
                signal.SIGCHLD,
            ):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            if os.read(go_r, 1) != b"g":
                os._exit(75)
            os.close(go_r)
            if stdout_to_stderr:
                os.dup2(2, 1)
            os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            try:
                os.write(err_w, str(exc.errno or 0).encode())
            finally:
                os._exit(127 if exc.errno == errno.ENOENT else 126)
        except BaseException:
            os._exit(126)
    os.close(go_r)
    os.close(err_w)
    try:
        os.setpgid(pid, pid)  # also here, so the group exists whichever side runs first
    except OSError:
        pass
    return pid, go_w, err_r


def run_command(
    coord: TaskCoordinator,
    task_type: str | TaskType,
    node: str,
    argv: Sequence[str],
    *,
    config_name: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
    on_wait: WaitCallback | None = None,
    on_admitted: Callable[[], None] | None = None,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
    stdout_to_stderr: bool = False,
) -> RunResult:
    """Run ``argv`` holding a slot. ``warn`` says what explains the outcome (the command
    could not be run, its lease was lost); ``note`` (default ``warn``) what run handled
    itself (a renewal retried, SIGKILL after the grace, a release left to the reaper).
    ``stdout_to_stderr``: the job writes its stdout to our stderr (``run --json``, whose
    stdout carries only its own summary document)."""
    if not argv:
        raise UsageError("there is no command to run", field="command")
    if timeout is not None and not (timeout >= 0 and timeout < float("inf")):
        raise UsageError(f"{timeout:g} is not a non-negative number of seconds", field="timeout")
    ttype = TaskType.parse(task_type)
    warn = warn or (lambda message: print(f"ringrift-coord: {message}", file=sys.stderr))
    note = note or warn
    settings = coord.ctx.settings
    clock = coord.ctx.clock
    me = os.getpid()
    holder = Holder(pid=me, wrapper_pid=me)
    decision = acquire_slot(
        coord,
        ttype,
        node,
        holder=holder,
        config_name=config_name,
        command=_command_text(argv),
        wait=wait,
        timeout=timeout,
        on_wait=on_wait,
    )
    if on_admitted is not None:
        on_admitted()
    task_id, token = decision.task_id, decision.lease_token
    assert task_id is not None and token is not None

    job = _Job(float(settings.get("run.kill_grace")), clock)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = {s: signal.signal(s, job.on_signal) for s in FORWARDED}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    started = clock.monotonic()
    reason: str | None
    status, reason, exit_code = "failed", "wrapper error", 1
    pid: int | None = None
    terminal = _Terminal()
    try:
        if job.received:
            sig = job.received[0]
            status, reason, exit_code = (
                "killed",
                f"{signal.Signals(sig).name} before start",
                128 + sig,
            )
            return RunResult(
                exit_code, task_id, status, reason, clock.monotonic() - started, decision
            )
        env = dict(os.environ)
        env.update(
            {
                "RINGRIFT_TASK_ID": task_id,
                "RINGRIFT_LEASE_TOKEN": str(token),
                "RINGRIFT_TASK_TYPE": ttype.value,
                "RINGRIFT_NODE_ID": node,
            }
        )
        oom_before = procs.oom_kill_count()
        pid, go_w, err_r = _spawn_gated(argv, env, stdout_to_stderr)
        job.pgid = pid
        try:
            recorded = coord.set_holder(task_id, token, Holder(pid=pid, pgid=pid, wrapper_pid=me))
        except BaseException:
            os.close(go_w)  # the child exits without running anything
            raise
        if not recorded:
            os.close(go_w)
            raise CoordError(f"slot {task_id} was taken away before the command started")
        coord.ctx.store.idle()  # hold no server connection while the job runs
        terminal.give_to(pid)
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:  # a forwarded signal already ended the child before exec
            pass
        os.close(go_w)
        failure = os.read(err_r, 32)
        os.close(err_r)
        if failure:
            _, raw = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(raw)
            pid = None
            err = int(failure.decode() or 0)
            exit_code = 127 if err == errno.ENOENT else 126
            status = "spawn_failed"
            reason = f"cannot run {argv[0]!r}: {os.strerror(err)}"
            warn(reason)
            return RunResult(
                exit_code, task_id, status, reason, clock.monotonic() - started, decision
            )
        for sig in job.received:  # a signal that came before the group existed
            _killpg(pid, sig)
        raw = _wait_child(coord, pid, job, wake_r, task_id, token, warn, note)
        pid = None
        code = os.waitstatus_to_exitcode(raw)
        _reap_leftovers(job, note)
        if code < 0:
            sig_name = signal.Signals(-code).name
            exit_code = 128 - code
            status = "killed"
            reason = f"killed by {sig_name}"
            if job.received:
                # stopped by the operator or launcher (or because its slot was freed): not a
                # failure of the job, so neither its breaker nor its node's rate pays for it
                status = "stopped"
                reason += f" (forwarded {signal.Signals(job.received[0]).name})"
                if job.killed:
                    reason += f" after the {human(job.kill_grace)} grace period"
            elif job.killed:
                reason += f" after the {human(job.kill_grace)} grace period"
            elif terminal.fd is not None and -code in TERMINAL_SIGNALS:
                # the job had the terminal: Ctrl-C / Ctrl-\ / a hang-up is the operator
                # stopping it, exactly like a `kill -INT` forwarded by this wrapper
                status = "stopped"
                reason += " (from its terminal)"
            elif -code == signal.SIGKILL:  # from outside: the kernel's OOM killer, or someone
                status, reason = classify_sigkill(oom_before, settings, coord.ctx.state_dir)
        else:
            exit_code = code
            status = "ok" if code == 0 else "failed"
            reason = None if code == 0 else f"exit code {code}"
            caught = code - 128
            # a job that catches SIGINT and exits 128 + SIGINT (the shells' convention) after
            # a forwarded signal or a Ctrl-C on its terminal: stopped as well
            if caught in job.received:
                status = "stopped"
                reason = f"exit code {code} after forwarded {signal.Signals(caught).name}"
            elif terminal.fd is not None and caught in TERMINAL_SIGNALS:
                status = "stopped"
                reason = f"exit code {code} after {signal.Signals(caught).name} from its terminal"
        return RunResult(exit_code, task_id, status, reason, clock.monotonic() - started, decision)
    finally:
        terminal.restore()
        if pid is not None:  # the wrapper itself failed while the job ran: stop the job
            _stop_group(pid, job.kill_grace, clock)
        # release while our handlers still catch a second Ctrl-C / SIGTERM
        _release(coord, task_id, token, exit_code, status, reason, note)
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def _wait_child(
    coord: TaskCoordinator,
    pid: int,
    job: _Job,
    wake_r: int,
    task_id: str,
    token: int,
    warn: Callable[[str], None],
    note: Callable[[str], None],
) -> int:
    """Wait for the child, renewing the lease and escalating to SIGKILL after the grace."""
    clock = job.clock
    lease_ttl = float(coord.ctx.settings.get("store.lease_ttl"))
    renew_every = max(0.5, lease_ttl / 3.0)
    retry_every = min(renew_every, RENEW_RETRY)
    next_renew = clock.monotonic() + renew_every
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                return raw
            now = clock.monotonic()
            if job.kill_deadline is not None and now >= job.kill_deadline and not job.killed:
                job.killed = True
                _killpg(pid, signal.SIGKILL)
            if now >= next_renew:
                try:
                    if not coord.renew_lease(task_id, token) and job.kill_deadline is None:
                        # the slot was freed (unregistered, or reaped elsewhere): a job may
                        # not outlive its slot, so stop it as if it had been sent SIGTERM
                        warn(f"lease of {task_id} was lost (its slot was freed); stopping the job")
                        job.on_signal(signal.SIGTERM, None)
                    next_renew = now + renew_every
                except CoordError as exc:  # busy, unreachable, disk full...: not the job's fault
                    # retry soon, not a whole period later: two misses in a row would
                    # otherwise meet the lease's expiry, and another host's reaper
                    note(f"could not renew the lease of {task_id} ({exc}); retrying")
                    next_renew = now + retry_every
                finally:
                    coord.ctx.store.idle()
            timeout = next_renew - now
            if job.kill_deadline is not None and not job.killed:
                timeout = min(timeout, max(0.0, job.kill_deadline - now))
            watch = [wake_r] + ([pidfd] if pidfd is not None else [])
            if pidfd is None:
                timeout = min(timeout, 0.05)
            readable = clock.wait_readable(watch, max(0.0, timeout))
            if wake_r in readable:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


def classify_sigkill(
    oom_before: tuple[int | None, str | None], settings: Settings, state_dir: str
) -> tuple[str, str]:
    """(status, reason with its evidence) for a job SIGKILLed from outside: "oom" when the
    memory cgroup's oom_kill counter rose while it ran, or memory is at the critical
    threshold now; else "killed"."""
    before, where = oom_before
    after, _ = procs.oom_kill_count()
    if before is not None and after is not None and after > before:
        return "oom", f"OOM-killed (SIGKILL): {where} oom_kill {before} -> {after}"
    from ringrift_coord.readings import live_host

    memory = live_host([state_dir]).get("memory")
    critical = float(settings.get("thresholds.memory.critical"))
    if memory is not None and memory >= critical:
        return "oom", (
            f"OOM-killed (SIGKILL): memory at {memory:.0f}% >= critical "
            f"{critical:g}% when the job died"
        )
    counter = (
        "no memory cgroup counter" if before is None else f"cgroup oom_kill unchanged at {after}"
    )
    shown = "unknown" if memory is None else f"{memory:.0f}%"
    return "killed", f"killed by SIGKILL from outside (no OOM evidence: {counter}, memory {shown})"


def _stop_group(pid: int, grace: float, clock: Clock) -> None:
    """SIGTERM the job's group, SIGKILL it after ``grace``, and collect the leader."""
    _killpg(pid, signal.SIGTERM)
    deadline = clock.monotonic() + grace
    try:
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if clock.monotonic() >= deadline:
                _killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            clock.wait_readable([], 0.05)  # waiting for a real process: not a clock step
    except ChildProcessError:
        pass
    _killpg(pid, signal.SIGKILL)  # whatever is left of the group goes with the slot


def _reap_leftovers(job: _Job, warn: Callable[[str], None]) -> None:
    """The job's leader exited: end what it left in its group before freeing the slot."""
    assert job.pgid is not None
    if not procs.group_members(job.pgid):
        return
    _killpg(job.pgid, signal.SIGTERM)
    clock = job.clock
    deadline = clock.monotonic() + job.kill_grace
    while procs.group_members(job.pgid) and clock.monotonic() < deadline:
        clock.wait_readable([], 0.05)  # waiting for real processes: not a clock step
    if procs.group_members(job.pgid):
        warn(f"processes of job group {job.pgid} ignored SIGTERM; sending SIGKILL")
        _killpg(job.pgid, signal.SIGKILL)


def _release(
    coord: TaskCoordinator,
    task_id: str,
    token: int,
    exit_code: int,
    status: str,
    reason: str | None,
    warn: Callable[[str], None],
) -> None:
    """Release exactly once; retry a busy store, and leave the rest to the reaper."""
    clock = coord.ctx.clock
    delay = 0.05
    for _ in range(8):
        try:
            coord.unregister_task(
                task_id, exit_code=exit_code, status=status, token=token, reason=reason
            )
            return
        except StoreBusy:
            clock.sleep(delay)
            delay = min(2.0, delay * 2)
        except CoordError as exc:
            warn(f"could not release {task_id}: {exc}")
            return
    warn(f"could not release {task_id}: store busy; the reaper will free it")


def _command_text(argv: Sequence[str]) -> str:
    """The command as the store records it: the job's words may be any bytes (they reach
    the job untouched), the record is UTF-8 with undecodable bytes shown as \\udcXX."""
    import shlex

    return shlex.join(argv)[:1000].encode("utf-8", "backslashreplace").decode("utf-8")


class _Terminal:
    """Hand the controlling terminal to the job's group while it runs (interactive use)."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def give_to(self, pgid: int) -> None:
        try:
            if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
                self._set(pgid)
                self.fd = 0
        except OSError:
            self.fd = None

    def restore(self) -> None:
        if self.fd is not None:
            try:
                self._set(os.getpgrp())
            except OSError:
                pass
            self.fd = None

    @staticmethod
    def _set(pgid: int) -> None:
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, pgid)
        finally:
            signal.signal(signal.SIGTTOU, old)
