"""``run``: hold a slot exactly as long as a command runs.

The command runs in the foreground as a child in its own process group. The slot is taken
before the fork and handed to the child's process group before the child may ``exec``: the
child blocks on a pipe until the store records it as the holder, so a ``kill -9`` of this
wrapper at any moment leaves either no job, or a job whose slot stays held while any process
of its group lives (the reaper watches the group, not this wrapper). SIGINT/SIGTERM/SIGHUP
are forwarded to the whole group, SIGKILL follows after a grace period; the lease is renewed
while the command runs; the slot is released exactly once on every exit path.

One runner serves every command that holds something while a job runs: ``run`` holds a task
slot (``TaskSlot``), ``bandwidth run`` a transfer (``transfer_run.TransferSlot``). What it
holds is a ``SlotKeeper``: admission (and the fair queue for ``--wait``), the holder, the
lease and the release; the child's process group, signals, terminal, exit codes and the
wait loop are the runner's alone.
"""

from __future__ import annotations

import errno
import os
import select
import sys

from ringrift_coord import procs, tasktypes
from ringrift_coord.clock import Clock
from ringrift_coord.config import Settings
from ringrift_coord.context import Context
from ringrift_coord.decision import Decision
from ringrift_coord.durations import human
from ringrift_coord.errors import (
    CoordError,
    ExitCode,
    SignalError,
    StoreBusy,
    UsageError,
    WaitTimeout,
)
from ringrift_coord.store.base import StoreGone
from ringrift_coord.task_coordinator import Holder, TaskCoordinator

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    from ringrift_coord.wake import Doorbell

    T = TypeVar("T")
    WaitCallback = Callable[[Decision, float], None]
else:  # the C module: ``signal`` itself imports enum (start-up time of every run)
    import _signal as signal

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What a terminal sends its foreground process group (Ctrl-C, Ctrl-\, hang-up): while the
# job holds the terminal, a death by one of these is an operator's stop, not a failure.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


RENEW_RETRY = 5.0  # seconds to the next try after a lease renewal failed
HALTED_POLL = 0.5  # seconds between the polls of a waiter that a halt denies
PEAK_POLL = 30.0  # ... and at most between those of one that peak hours hold back
BUSY_RETRY = 0.5  # seconds between a waiter's tries while the store stays busy
LEAVE_GRACE = 1.0  # seconds a timed-out waiter waits for the lock to leave the line
DRAIN_LIMIT = 1 << 20  # bytes read after the job ended: a pipe's largest default capacity
PUMP_LIMIT = 1 << 20  # bytes of the job's output taken per look, between renewals


class RunDenied(CoordError):
    """``run`` could not start its command: exit 75 (the caller may retry later)."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.summary())
        self.decision = decision


class Interrupted(SignalError):
    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {procs.signal_name(signum)} before the command started")
        self.exit_code = 128 + signum


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


# --------------------------------------------------------------------------- what is held


class SlotKeeper:
    """What the runner holds while a job runs, and how it takes, keeps and gives it back.

    ``acquire`` admits (one transaction; ``waiter_seq``: this process's place in the fair
    queue, ``log``: whether the decision is logged); ``enqueue``/``hold_place``/``leave_queue``
    keep the place in line, step out of it while held back, and give it up; ``set_holder``,
    ``renew`` and ``release`` act on the id and fencing token of the admitted decision.
    ``release`` may raise ``StoreBusy`` (retried with backoff) or another ``CoordError``
    (said, and left to the reaper).
    """

    ctx: Context

    def waiting_for(self) -> str:
        """What a waiter waits for, in a message: ``a selfplay slot on n1``."""
        raise NotImplementedError

    def queue_key(self) -> tuple[str, str]:
        """(kind, node): the fair queue this waiter stands in, as ``waiters`` names it."""
        raise NotImplementedError

    def acquire(self, waiter_seq: int | None, log: bool) -> Decision:
        raise NotImplementedError

    def enqueue(self, seq: int | None = None) -> int:
        raise NotImplementedError

    def leave_queue(self, seq: int) -> None:
        raise NotImplementedError

    def hold_place(self, seq: int) -> None:
        raise NotImplementedError

    def set_holder(self, ident: str, token: int, holder: Holder) -> bool:
        raise NotImplementedError

    def renew(self, ident: str, token: int) -> bool:
        raise NotImplementedError

    def release(
        self, ident: str, token: int, exit_code: int, status: str, reason: str | None
    ) -> None:
        raise NotImplementedError

    def job_env(self, decision: Decision) -> dict[str, str]:
        """The variables the job gets besides our environment."""
        return {}

    def job_argv(self, decision: Decision, argv: Sequence[str]) -> list[str]:
        """The words the job runs (``bandwidth run`` fills in ``{bwlimit}``)."""
        return list(argv)


class TaskSlot(SlotKeeper):
    """A task slot of ``TaskCoordinator``: what ``run`` holds."""

    def __init__(
        self,
        coord: TaskCoordinator,
        task_type: str,
        node: str,
        *,
        holder: Holder,
        config_name: str | None,
        command: str,
    ) -> None:
        self.coord, self.ctx = coord, coord.ctx
        # the plain name: the queue's and the doorbell's key, the job's RINGRIFT_TASK_TYPE
        self.task_type, self.node, self.holder = tasktypes.parse(task_type), node, holder
        self.config_name, self.command = config_name, command

    def waiting_for(self) -> str:
        return f"a {self.task_type} slot on {self.node}"

    def queue_key(self) -> tuple[str, str]:
        return self.task_type, self.node

    def acquire(self, waiter_seq: int | None, log: bool) -> Decision:
        return self.coord.acquire(
            self.task_type,
            self.node,
            holder=self.holder,
            source="run",
            config_name=self.config_name,
            command=self.command,
            waiter_seq=waiter_seq,
            log=log,
        )

    def enqueue(self, seq: int | None = None) -> int:
        return self.coord.enqueue(self.task_type, self.node, seq)

    def leave_queue(self, seq: int) -> None:
        self.coord.leave_queue(seq)

    def hold_place(self, seq: int) -> None:
        self.coord.hold_place(seq)

    def set_holder(self, ident: str, token: int, holder: Holder) -> bool:
        return self.coord.set_holder(ident, token, holder)

    def renew(self, ident: str, token: int) -> bool:
        return self.coord.renew_lease(ident, token)

    def release(
        self, ident: str, token: int, exit_code: int, status: str, reason: str | None
    ) -> None:
        self.coord.unregister_task(
            ident, exit_code=exit_code, status=status, token=token, reason=reason
        )

    def job_env(self, decision: Decision) -> dict[str, str]:
        assert decision.task_id is not None
        return {
            "RINGRIFT_TASK_ID": decision.task_id,
            "RINGRIFT_LEASE_TOKEN": str(decision.lease_token),
            "RINGRIFT_TASK_TYPE": self.task_type,
            "RINGRIFT_NODE_ID": self.node,
        }


# --------------------------------------------------------------------------- admission


def acquire_slot(
    coord: TaskCoordinator,
    task_type: str,
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
    keeper = TaskSlot(
        coord, task_type, node, holder=holder, config_name=config_name, command=command
    )
    return acquire(keeper, wait=wait, timeout=timeout, on_wait=on_wait)


def acquire(
    keeper: SlotKeeper,
    *,
    wait: bool,
    timeout: float | None,
    on_wait: WaitCallback | None = None,
    note: Callable[[str], None] | None = None,
) -> Decision:
    """Admit through ``keeper`` now, or (``wait``) wait in the fair queue until admitted
    (``note``: told once why it waits by polling, when its doorbell could not be made)."""
    if not wait:
        decision = keeper.acquire(None, True)
        if not decision.allowed:
            raise RunDenied(decision)
        return decision

    clock = keeper.ctx.clock
    poll = float(keeper.ctx.settings.get("run.poll_interval"))
    started = clock.monotonic()
    deadline = None if timeout is None else started + timeout
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    for sig in previous:
        signal.signal(sig, interrupted)

    def busy(exc: StoreBusy) -> None:
        """A store busy past its timeout (a herd of writers, one stopped inside its
        transaction) decided nothing: a reason to keep waiting, never to give up, unless
        ``--timeout`` has passed (then exit 75 as a timeout would, saying it is one; an
        attempt near the deadline waits for the lock only until it: ``bounded``)."""
        if deadline is not None and clock.monotonic() >= deadline:
            waited = clock.monotonic() - started
            if last is not None:  # why it waited: the lock at the deadline is incidental
                raise WaitTimeout(
                    f"gave up waiting for {keeper.waiting_for()} after {human(waited)}; "
                    f"{last.summary()}",
                    last,
                ) from None
            lock = str(exc).split("; nothing was decided")[0]  # (nor will it be: given up)
            raise WaitTimeout(
                f"gave up waiting for {keeper.waiting_for()} after {human(waited)}: {lock}"
            ) from None
        clock.sleep(max(poll, BUSY_RETRY))

    store = keeper.ctx.store
    patience = store.busy_timeout
    last: Decision | None = None  # the latest decision: what the wait is for

    def bounded(ask: Callable[[], T], at_least: float = 0.0) -> T:
        """``ask`` with the store's lock waited for no longer than the deadline allows
        (``at_least`` even past it): a locked store ends the wait at ``--timeout``, not a
        busy timeout after it."""
        left = None if deadline is None else deadline - clock.monotonic()
        if left is None or left >= patience:
            return ask()
        limit = min(max(left, at_least, 0.0), patience)
        store.limit_lock_wait(limit)
        try:
            return ask()
        except StoreBusy as exc:  # said as the deadline it is, not as an "N s busy timeout"
            said = str(exc)
            told = said.replace(f" after the {human(limit)} busy timeout", " at the deadline")
            if told == said:
                raise
            raise type(exc)(told) from None
        finally:
            store.limit_lock_wait(patience)

    seq: int | None = None
    in_line, admitted = True, False
    bell: Doorbell | None = None
    try:
        while seq is None:
            try:
                seq = bounded(keeper.enqueue)
            except StoreBusy as exc:
                busy(exc)
        # before the first attempt: a ring while it runs stays in the doorbell, never lost
        kind, node = keeper.queue_key()
        bell = keeper.ctx.store.doorbell(kind, seq, node)
        if bell.note is not None and note is not None:
            note(bell.note)
        # a waiter on another host is alive while it keeps asking (its heartbeat): it asks
        # at least every lease_ttl / 4
        heartbeat = float(keeper.ctx.settings.get("store.lease_ttl")) / 4
        wake_poll = max(poll, min(float(keeper.ctx.settings.get("run.wake_poll")), heartbeat))
        slowest = max(wake_poll, heartbeat)
        attempt, rung = 0, False
        while True:
            try:
                first = attempt == 0
                decision = bounded(lambda: keeper.acquire(seq, first))  # noqa: B023 (called here)
            except StoreBusy as exc:
                busy(exc)
                continue
            attempt += 1
            last = decision
            if decision.allowed:
                admitted = True
                # room may be left for the next one (two releases rang us at once; a halt
                # lifted over a whole line): the line moves on one writer at a time
                bell.ring_next()
                if not in_line:  # from the held line: the held-back ones after it too
                    bell.ring_held_next()
                return decision
            # Denied by a halt (its node drained, its type or everything halted) or by peak
            # hours, it holds no place: it would count against every other node's limits
            # (and against shorter tasks that may start before the window) while it cannot
            # run. It keeps its seq, so the waiters ahead of it by arrival are still the ones
            # counted, and takes its place back once only the limits deny it.
            rejoined, was_held = False, not in_line
            try:
                if decision.held_back and in_line:
                    bounded(lambda: keeper.hold_place(seq))
                    in_line = False
                elif not decision.held_back and not in_line:
                    bounded(lambda: keeper.enqueue(seq))
                    in_line = rejoined = True
            except StoreBusy as exc:
                busy(exc)
                continue
            bell.held_back = not in_line  # its doorbell moves to the held line and back
            if rung and was_held:
                # rung in the held line (a halt lifted, a reservation dropped): the held-back
                # one after it is rung in turn, whether this one may go back in line or not
                bell.ring_held_next()
            if rejoined:
                bell.ring_next()  # back in line: the ones behind it may be back too
            waited = clock.monotonic() - started
            if on_wait is not None:
                on_wait(decision, waited)
            if deadline is not None and clock.monotonic() >= deadline:
                raise WaitTimeout(
                    f"gave up waiting for {keeper.waiting_for()} after "
                    f"{human(waited)}; {decision.summary()}",
                    decision,
                )
            interval = _wait_interval(
                decision, in_line, poll, (wake_poll, slowest) if bell.live else None
            )
            if deadline is not None:
                interval = min(interval, max(0.0, deadline - clock.monotonic()))
            if bell.live and interval >= 1.0:
                keeper.ctx.store.idle()  # no server connection held while it sleeps
            rung = bell.wait(interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not admitted and seq is not None:  # (held back: its held row goes too)
            try:  # past its deadline, a moment for the lock (a writer's turn), not the
                # whole busy timeout: left behind, its row would count against those after it
                bounded(lambda: keeper.leave_queue(seq), LEAVE_GRACE)  # noqa: B023 (called here)
            except CoordError:
                pass  # a dead waiter loses its place when the next admission reaps it
        if bell is not None:
            if not admitted and in_line:
                bell.ring_next()  # those behind it count one waiter fewer ahead of them
            bell.close()


# denials that end at a known time, with no ring: a bucket's refill, a breaker's half-open,
# a halt's --ttl
TIMED_RULES = ("rate", "breaker", "halt")
HELD_BACK_FACTOR = 10  # a waiter a halt holds back asks every wake_poll x this (at most)


def _wait_interval(
    decision: Decision, in_line: bool, poll: float, safety: tuple[float, float] | None
) -> float:
    """How long a denied waiter sleeps before it asks again unless rung (``safety``: its
    doorbell can ring, and its safety poll is (``run.wake_poll``, the slowest); None: it
    polls)."""
    # Polling: the head of the line polls fast; those behind it, and a halted waiter (an
    # operator lifts a halt), more gently.
    interval = poll if decision.queued == 0 else min(0.5, poll * (2 + decision.queued))
    if not in_line:
        interval = max(poll, HALTED_POLL)
    if safety is not None:
        # a ring wakes it: its own polls are the safety net for a ring lost (the head of
        # the line every wake_poll, those behind it the more gently the further back: a
        # ring reaches them through the ones ahead), except when the denial ends at a
        # known time (a bucket's refill, a breaker's half-open, a halt's --ttl)
        wake_poll, slowest = safety
        if in_line:
            interval = max(interval, min(wake_poll * (1 + decision.queued), slowest))
        else:  # held back by a halt: the unhalt rings it (asking often would only let
            # it slip in ahead of those before it while they are rung back one by one)
            interval = max(interval, min(wake_poll * HELD_BACK_FACTOR, slowest))
        timed = [
            r.retry_after
            for r in decision.reasons
            if r.rule in TIMED_RULES and r.retry_after is not None
        ]
        if timed:
            interval = min(interval, max(poll, min(timed)))
    if not in_line and not decision.halted and decision.retry_after:
        # peak hours: no ring comes when the window ends; it wakes then (its end is known),
        # never later than the held-back floor, and asks at most every PEAK_POLL before it
        ends = [r.retry_after for r in decision.reasons if r.rule == "peak_hours" and r.retry_after]
        until = min(ends) if ends else decision.retry_after
        interval = max(poll, min(max(interval, PEAK_POLL), until))
    return interval


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
    argv: Sequence[str],
    env: dict[str, str],
    stdout_to_stderr: bool = False,
    stdout_fd: int | None = None,
) -> tuple[int, int, int]:
    """Fork a child in its own process group that execs ``argv`` only once told to go
    (``stdout_to_stderr``: with its stdout on our stderr; ``stdout_fd``: on that descriptor,
    the write end of the pipe the runner reads the job's output from).

    Returns (pid, go_fd, err_fd): write b"g" to go_fd to let it exec (closing go_fd
    without writing makes it exit 75); err_fd yields the exec errno, or EOF on success.
    """
    go_r, go_w = os.pipe()
    try:
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        os.close(go_r)
        os.close(go_w)
        raise
    try:
        pid = os.fork()
    except OSError:
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)
        raise
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
            if stdout_fd is not None:
                os.dup2(stdout_fd, 1)  # dup2 clears close-on-exec on fd 1 only
            elif stdout_to_stderr:
                os.dup2(2, 1)
            _execvpe(argv[0], list(argv), env)
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


def _execvpe(file: str, argv: list[str], env: dict[str, str]) -> None:
    """``os.execvpe``, searching ``env``'s PATH as it does, without the ``import warnings``
    its ``os.get_exec_path`` makes in the child of every job (~1.4 ms): a name with a
    slash is run as it is; otherwise each PATH entry in turn, and the first error other than
    "not there" is the one raised when none runs."""
    if os.path.dirname(file):
        os.execve(file, argv, env)
    saved: OSError | None = None
    last: OSError | None = None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        try:
            os.execve(os.path.join(directory, file), argv, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
        except OSError as exc:
            last = exc
            saved = saved or exc
    # (``last`` is set: a PATH, even an empty one, is at least one entry)
    raise saved or last or FileNotFoundError(errno.ENOENT, "no PATH to search", file)


class _Tee:
    """The job's stdout through a pipe: each chunk shown to ``scan`` (which keeps what it
    needs, never the whole output) and copied to ours (or to stderr) by a writer thread, so
    a reader of ours that stalls holds the job's output back, as a plain pipe would, but
    never this wrapper's lease renewals or its signal handling."""

    BACKLOG = 1 << 20  # bytes waiting for the writer before the job's pipe is left to fill

    def __init__(self, scan: Callable[[bytes], None], sink: int) -> None:
        import queue
        import threading

        self.scan, self.sink = scan, sink
        self.read_fd: int | None
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.sink_lost = False
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._waiting = 0  # bytes in _chunks, not yet written
        self._lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_all, name="tee", daemon=True)

    def parent_side(self) -> None:
        """After the fork: only the job writes into the pipe."""
        os.close(self.write_fd)

    def wants_input(self) -> bool:
        """The pipe is open and the writer has room: watch it."""
        return self.read_fd is not None and self._waiting < self.BACKLOG

    def pump(self, bounded: bool = True, limit: int | None = None) -> bool:
        """Take what the pipe holds now (``bounded``: no more than the writer has room for;
        at most ``limit`` bytes, default ``PUMP_LIMIT``); False once it is at its end (every
        writer gone)."""
        taken, limit = 0, PUMP_LIMIT if limit is None else limit
        while self.read_fd is not None:
            if bounded and not self.wants_input():
                return True
            if taken >= limit:  # a job that never stops writing must not hold the loop
                return True
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            if not chunk:
                os.close(self.read_fd)
                self.read_fd = None
                return False
            taken += len(chunk)
            self.scan(chunk)
            if self._writer.ident is None:  # the first output starts the writer
                self._writer.start()
            with self._lock:
                self._waiting += len(chunk)
            self._chunks.put(chunk)
        return False

    def drain(self) -> None:
        """What the job wrote before it ended: what the pipe holds, at most its largest
        capacity. A process the job left outside its group may go on writing into it; it is
        neither waited for nor followed."""
        self.pump(bounded=False, limit=DRAIN_LIMIT)

    def _write_all(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._copy(chunk)
            with self._lock:
                self._waiting -= len(chunk)

    def _copy(self, chunk: bytes) -> None:
        # a gone reader of our stdout stops the copy, not the job (its bytes still count)
        view = memoryview(chunk)
        while view and not self.sink_lost:
            try:
                view = view[os.write(self.sink, view) :]
            except InterruptedError:
                continue
            except BlockingIOError:
                select.select([], [self.sink], [], 1.0)
            except OSError:
                self.sink_lost = True

    def close(self) -> None:
        """Stop taking output and let the writer copy what it holds (it waits for our
        reader as the job would have), then end it."""
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None
        if self._writer.ident is not None:
            self._chunks.put(None)
            self._writer.join()


def run_command(
    coord: TaskCoordinator,
    task_type: str,
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
    check_command(argv)
    _check_timeout(timeout)
    ttype = tasktypes.parse(task_type)
    me = os.getpid()
    keeper = TaskSlot(
        coord,
        ttype,
        node,
        holder=Holder(pid=me, wrapper_pid=me),
        config_name=config_name,
        command=_command_text(argv),
    )
    return run_held(
        keeper,
        argv,
        wait=wait,
        timeout=timeout,
        on_wait=on_wait,
        on_admitted=on_admitted,
        warn=warn,
        note=note,
        stdout_to_stderr=stdout_to_stderr,
    )


def _record_holder(
    keeper: SlotKeeper, ident: str, token: int, holder: Holder, job: _Job, *, wait: bool
) -> bool:
    """Record the gated child as the slot's holder. A store busy past its timeout (a herd of
    writers) decided nothing: the slot is ours and its lease runs, so try again until a
    signal asks us to stop, and without ``wait`` (a one-shot run, which may exit 75) until
    half the lease is spent; giving up would exit 75 and release an admitted slot as a
    failure. Trying past the lease is safe: the update names the slot's fencing token, so a
    slot reaped meanwhile (its lease ran out on other hosts) is never recorded as ours."""
    clock = keeper.ctx.clock
    give_up = clock.monotonic() + float(keeper.ctx.settings.get("store.lease_ttl")) / 2
    while True:
        try:
            return keeper.set_holder(ident, token, holder)
        except StoreBusy:
            if job.received or (not wait and clock.monotonic() + BUSY_RETRY >= give_up):
                raise
            clock.sleep(BUSY_RETRY)


def check_command(argv: Sequence[str]) -> None:
    """A command to run: at least one word, and a first word (the program) that is not
    empty (exec refuses one with a ValueError, which would end the job as a failure of
    its own instead of a command that could not be run)."""
    if not argv:
        raise UsageError("there is no command to run", field="command")
    if not argv[0]:
        raise UsageError("the program to run (the command's first word) is empty ('')")


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (timeout >= 0 and timeout < float("inf")):
        raise UsageError(f"{timeout:g} is not a non-negative number of seconds", field="timeout")


def run_held(
    keeper: SlotKeeper,
    argv: Sequence[str],
    *,
    wait: bool = False,
    timeout: float | None = None,
    on_wait: WaitCallback | None = None,
    on_admitted: Callable[[], None] | None = None,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
    stdout_to_stderr: bool = False,
    scan: Callable[[bytes], None] | None = None,
) -> RunResult:
    """Admit through ``keeper`` (``wait``: in the fair queue, up to ``timeout``), run
    ``argv`` while holding what it admitted, release it exactly once; the outcome.
    ``scan``: the job's stdout goes through a pipe, copied to ours (to stderr with
    ``stdout_to_stderr``) and shown to ``scan`` chunk by chunk."""
    check_command(argv)
    _check_timeout(timeout)
    warn = warn or (lambda message: print(f"ringrift-coord: {message}", file=sys.stderr))
    note = note or warn
    settings = keeper.ctx.settings
    clock = keeper.ctx.clock
    me = os.getpid()
    decision = acquire(keeper, wait=wait, timeout=timeout, on_wait=on_wait, note=note)
    if on_admitted is not None:
        on_admitted()
    task_id, token = decision.task_id, decision.lease_token
    assert task_id is not None and token is not None

    job = _Job(float(settings.get("run.kill_grace")), clock)
    try:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # no descriptor left for the first pipe: the command did not start
        why = f"cannot run {argv[0]!r}: {exc.strerror or exc}"
        warn(why)
        _release(keeper, task_id, token, 126, "spawn_failed", why, note)
        return RunResult(126, task_id, "spawn_failed", why, 0.0, decision)
    previous = {s: signal.signal(s, job.on_signal) for s in FORWARDED}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    started = clock.monotonic()
    reason: str | None
    # Until the command is let go to exec, a failure is the wrapper's (a busy store while
    # recording the holder, no descriptor or process left for the pipes or the fork): the
    # command did not start, so it is released as such, never as a failure of the job
    # (which would feed the node's breaker and backpressure).
    status, reason, exit_code = "spawn_failed", "wrapper error before the command started", 1
    pid: int | None = None
    terminal = _Terminal()
    tee: _Tee | None = None
    try:
        if job.received:
            sig = job.received[0]
            status, reason, exit_code = (
                "killed",
                f"{procs.signal_name(sig)} before start",
                128 + sig,
            )
            return RunResult(
                exit_code, task_id, status, reason, clock.monotonic() - started, decision
            )
        env = dict(os.environ)
        env.update(keeper.job_env(decision))
        words = keeper.job_argv(decision, argv)
        oom_before = procs.oom_kill_count()
        try:
            if scan is not None:
                sys.stdout.flush()  # what we wrote comes before the job's words
                tee = _Tee(scan, 2 if stdout_to_stderr else 1)
                # the job may hold the terminal while we copy its output to it: with `stty
                # tostop` a write from our (background) group would stop this wrapper
                previous[signal.SIGTTOU] = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            pid, go_w, err_r = _spawn_gated(
                words, env, stdout_to_stderr, None if tee is None else tee.write_fd
            )
        except OSError as exc:  # no pipe or fork to be had (EMFILE, EAGAIN, ENOMEM)
            if tee is not None:
                tee.parent_side()
            exit_code = 126
            reason = f"cannot run {words[0]!r}: {exc.strerror or exc}"
            warn(reason)
            return RunResult(
                exit_code, task_id, status, reason, clock.monotonic() - started, decision
            )
        if tee is not None:
            tee.parent_side()
        job.pgid = pid
        try:
            recorded = _record_holder(
                keeper, task_id, token, Holder(pid=pid, pgid=pid, wrapper_pid=me), job, wait=wait
            )
        except BaseException:
            os.close(go_w)  # the child exits without running anything
            raise
        if not recorded:
            os.close(go_w)
            raise CoordError(f"{task_id} was taken away before the command started")
        keeper.ctx.store.idle()  # hold no server connection while the job runs
        terminal.give_to(pid)
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:  # a forwarded signal already ended the child before exec
            pass
        os.close(go_w)
        status, reason = "failed", "wrapper error"  # from here on, the job may have run
        failure = os.read(err_r, 32)
        os.close(err_r)
        if failure:
            _, raw = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(raw)
            pid = None
            err = int(failure.decode() or 0)
            exit_code = 127 if err == errno.ENOENT else 126
            status = "spawn_failed"
            reason = f"cannot run {words[0]!r}: {os.strerror(err)}"
            warn(reason)
            return RunResult(
                exit_code, task_id, status, reason, clock.monotonic() - started, decision
            )
        for sig in job.received:  # a signal that came before the group existed
            _killpg(pid, sig)
        raw = _wait_child(keeper, pid, job, wake_r, task_id, token, warn, note, tee)
        pid = None
        code = os.waitstatus_to_exitcode(raw)
        _reap_leftovers(job, note)
        if tee is not None:
            tee.drain()  # what the job wrote before it ended: its bytes count
        if code < 0:
            sig_name = procs.signal_name(-code)
            exit_code = 128 - code
            status = "killed"
            reason = f"killed by {sig_name}"
            if job.received:
                # stopped by the operator or launcher (or because its slot was freed): not a
                # failure of the job, so neither its breaker nor its node's rate pays for it
                status = "stopped"
                reason += f" (forwarded {procs.signal_name(job.received[0])})"
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
                status, reason = classify_sigkill(oom_before, settings, keeper.ctx.state_dir)
        else:
            exit_code = code
            status = "ok" if code == 0 else "failed"
            reason = None if code == 0 else f"exit code {code}"
            caught = code - 128
            # A job that exits after a forwarded signal, with whatever code it chose (the
            # shells' 128 + N, rsync's 20, a graceful 0), was stopped: neither a failure for
            # the breaker nor a success whose duration the scheduler would learn.
            if job.received:
                sig = caught if caught in job.received else job.received[0]
                status = "stopped"
                reason = f"exit code {code} after forwarded {procs.signal_name(sig)}"
            elif terminal.fd is not None and caught in TERMINAL_SIGNALS:
                status = "stopped"
                reason = f"exit code {code} after {procs.signal_name(caught)} from its terminal"
        return RunResult(exit_code, task_id, status, reason, clock.monotonic() - started, decision)
    finally:
        terminal.restore()
        if pid is not None:  # the wrapper itself failed while the job ran: stop the job
            _stop_group(pid, job.kill_grace, clock)
        # release while our handlers still catch a second Ctrl-C / SIGTERM
        _release(keeper, task_id, token, exit_code, status, reason, note)
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tee is not None:  # then hand on the job's last output, however slow our reader
            tee.close()  # (the job is gone: a signal now ends this wait, as it would ours)
        os.close(wake_r)
        os.close(wake_w)


def _wait_child(
    keeper: SlotKeeper,
    pid: int,
    job: _Job,
    wake_r: int,
    task_id: str,
    token: int,
    warn: Callable[[str], None],
    note: Callable[[str], None],
    tee: _Tee | None = None,
) -> int:
    """Wait for the child, renewing the lease and escalating to SIGKILL after the grace
    (``tee``: copying the job's output as it comes)."""
    clock = job.clock
    lease_ttl = float(keeper.ctx.settings.get("store.lease_ttl"))
    renew_every = max(0.5, lease_ttl / 3.0)
    retry_every = min(renew_every, RENEW_RETRY)
    next_renew = clock.monotonic() + renew_every
    store_gone = False
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
                note(
                    f"job group {pid} still running {human(job.kill_grace)} after it was "
                    "signalled (run.kill_grace); sending SIGKILL"
                )
                _killpg(pid, signal.SIGKILL)
            if now >= next_renew:
                try:
                    if not keeper.renew(task_id, token) and job.kill_deadline is None:
                        # the slot was freed (unregistered, or reaped elsewhere): a job may
                        # not outlive its slot, so stop it as if it had been sent SIGTERM
                        warn(f"lease of {task_id} was lost (its slot was freed); stopping the job")
                        job.on_signal(signal.SIGTERM, None)
                    next_renew = now + renew_every
                except StoreGone as exc:
                    # the store's file was deleted or replaced: killing a training job over a
                    # store fault is worse than letting it finish; said once, no more renewals
                    if not store_gone:
                        warn(
                            f"{exc}; the job keeps running, but the lease of {task_id} can no "
                            "longer be renewed and its slot cannot be released"
                        )
                    store_gone = True
                    next_renew = now + 3600.0  # nothing left to renew; a look an hour
                except CoordError as exc:  # busy, unreachable, disk full...: not the job's fault
                    # retry soon, not a whole period later: two misses in a row would
                    # otherwise meet the lease's expiry, and another host's reaper
                    note(f"could not renew the lease of {task_id} ({exc}); retrying")
                    next_renew = now + retry_every
                finally:
                    keeper.ctx.store.idle()
            timeout = next_renew - now
            if job.kill_deadline is not None and not job.killed:
                timeout = min(timeout, max(0.0, job.kill_deadline - now))
            watch = [wake_r] + ([pidfd] if pidfd is not None else [])
            if tee is not None and tee.wants_input():
                watch.append(tee.read_fd)  # type: ignore[arg-type]
            elif tee is not None and tee.read_fd is not None:
                timeout = min(timeout, 0.05)  # the writer is behind: look again for room
            if pidfd is None:
                timeout = min(timeout, 0.05)
            readable = clock.wait_readable(watch, max(0.0, timeout))
            if wake_r in readable:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if tee is not None and tee.read_fd is not None and tee.read_fd in readable:
                tee.pump()
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
    keeper: SlotKeeper,
    task_id: str,
    token: int,
    exit_code: int,
    status: str,
    reason: str | None,
    warn: Callable[[str], None],
) -> None:
    """Release exactly once; retry a busy store, and leave the rest to the reaper."""
    clock = keeper.ctx.clock
    delay = 0.05
    last: StoreBusy | None = None
    for _ in range(8):
        try:
            keeper.release(task_id, token, exit_code, status, reason)
            return
        except StoreBusy as exc:  # busy, or (a server) unreachable: said as it was
            last = exc
            clock.sleep(delay)
            delay = min(2.0, delay * 2)
        except CoordError as exc:
            warn(f"could not release {task_id}: {exc}")
            return
        except Exception as exc:  # a bug must not cost the job its exit code
            if os.environ.get("RINGRIFT_COORD_DEBUG"):
                raise
            warn(
                f"could not release {task_id}: internal error: {type(exc).__name__}: {exc}; "
                "the reaper will free it"
            )
            return
    why = "store busy" if last is None else str(last).split("; nothing was decided")[0]
    warn(f"could not release {task_id}: {why}; the reaper will free it")


def _command_text(argv: Sequence[str]) -> str:
    """The command as the store records it: the job's words may be any bytes (they reach
    the job untouched), the record is UTF-8 with undecodable bytes shown as \\udcXX."""
    text = " ".join(_shell_quote(arg) for arg in argv)
    return text[:1000].encode("utf-8", "backslashreplace").decode("utf-8")


_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def _shell_quote(word: str) -> str:
    """``shlex.quote``, the same text for every word, without importing ``re`` (which
    ``shlex`` does: ~5 ms of every run's start-up)."""
    if word and all(ch in _SHELL_SAFE for ch in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


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
