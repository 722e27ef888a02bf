"""``bandwidth run``: hold a transfer to a remote host exactly as long as a command runs.

The same runner as ``run`` (``launcher.run_held``: gated exec in its own process group,
signal forwarding, grace + SIGKILL, the terminal, lease renewal, the fair ``--wait`` queue,
release exactly once, the exit codes); what it holds is a transfer (``TransferSlot``) instead
of a task slot. The command gets the granted rate in KiB/s (``rsync --bwlimit`` units) as
every ``{bwlimit}`` in its words and as ``$RINGRIFT_BWLIMIT_KBPS``, and its transfer id as
``$RINGRIFT_TRANSFER_ID``. Its stdout passes through this wrapper, which reads rsync's
``--stats`` from it (``transfer_stats``) on the way; the bytes, or those ``--bytes-from``
names, are recorded when the transfer ends, with the observed rate.
"""

from __future__ import annotations

import os

from ringrift_coord import queue, transfers
from ringrift_coord.context import Context
from ringrift_coord.decision import Decision
from ringrift_coord.launcher import (
    RunResult,
    SlotKeeper,
    _command_text,
    check_command,
    run_held,
)
from ringrift_coord.task_coordinator import Holder
from ringrift_coord.transfer_stats import StatsScanner, bytes_from_file, human_unit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ringrift_coord.launcher import WaitCallback
    from ringrift_coord.store.base import Row

BWLIMIT = "{bwlimit}"  # the word part a command's argv gets the granted KiB/s in

# run's statuses in the transfer history's words (its END_STATUSES)
_STATUS = {"oom": "killed", "spawn_failed": "failed"}


class TransferSlot(SlotKeeper):
    """A transfer of ``transfers``: what ``bandwidth run`` holds. After ``release``,
    ``ended`` is its history row (None when it had already ended, e.g. reaped)."""

    def __init__(
        self,
        ctx: Context,
        remote: str,
        *,
        priority: str | None,
        kind: str,
        node: str | None,
        command: str,
        bytes_from: str | None = None,
        warn: Callable[[str], None] | None = None,
        size_unit: int = 1000,
    ) -> None:
        ctx.settings.require("bandwidth")
        self.ctx = ctx
        me = os.getpid()
        holder = Holder(pid=me, wrapper_pid=me).request_fields()
        self.request = transfers.TransferRequest(
            remote,
            kind,
            priority,
            node=node,
            source="run",
            command=command,
            **holder,
        )
        self.scanner = StatsScanner(size_unit)
        self.bytes_from = bytes_from
        self.warn = warn
        self.ended: Row | None = None
        self.nbytes: int | None = None
        self.counted = False  # bytes_moved was asked (once: a retried release asks again)

    @property
    def remote(self) -> str:
        return self.request.remote

    def waiting_for(self) -> str:
        return f"a transfer to {self.remote}"

    def queue_key(self) -> tuple[str, str]:
        return transfers.TASK_TYPE, self.remote

    def acquire(self, waiter_seq: int | None, log: bool) -> Decision:
        with self.ctx.store.write() as tx:
            return transfers.start(
                tx,
                self.ctx.settings,
                self.request,
                tx.now(),
                waiter_seq,
                halt_source=self.ctx.state_dir,
            )

    def enqueue(self, seq: int | None = None) -> int:
        with self.ctx.store.write() as tx:
            return queue.enqueue(
                tx, transfers.TASK_TYPE, self.remote, self.request.host, os.getpid(), seq
            )

    def leave_queue(self, seq: int) -> None:
        with self.ctx.store.write() as tx:
            queue.leave(tx, seq)

    def hold_place(self, seq: int) -> None:
        with self.ctx.store.write() as tx:
            queue.hold(tx, seq)

    def set_holder(self, ident: str, token: int, holder: Holder) -> bool:
        with self.ctx.store.write() as tx:
            return transfers.set_holder(tx, ident, token, holder.request_fields())

    def renew(self, ident: str, token: int) -> bool:
        ttl = float(self.ctx.settings.get("store.lease_ttl"))
        with self.ctx.store.write() as tx:
            return transfers.renew(tx, ident, token, ttl, tx.now())

    def release(
        self, ident: str, token: int, exit_code: int, status: str, reason: str | None
    ) -> None:
        if not self.counted:
            self.nbytes, self.counted = self.bytes_moved(), True
        with self.ctx.store.write() as tx:
            self.ended = transfers.end(
                tx,
                self.ctx.settings,
                ident,
                tx.now(),
                token=token,
                bytes=self.nbytes,
                status=_STATUS.get(status, status),
                reason=reason,
            )

    def bytes_moved(self) -> int | None:
        """What the command reported: rsync's ``--stats`` in its output, else the
        ``--bytes-from`` file (a bad or missing one is a warning: bytes unknown)."""
        self.scanner.finish()
        if self.scanner.total is not None:
            return self._kept(self.scanner.total, "the command's stats")
        if self.bytes_from is None:
            return None
        value, problem = bytes_from_file(self.bytes_from)
        if problem is not None and self.warn is not None:
            self.warn(f"--bytes-from: {problem}; the transfer's bytes are not recorded")
        return None if value is None else self._kept(value, "--bytes-from")

    def _kept(self, nbytes: int, where: str) -> int | None:
        """``nbytes`` when the store can keep it; past 8 EiB no transfer moved it."""
        if nbytes <= transfers.MAX_BYTES:
            return nbytes
        if self.warn is not None:
            self.warn(f"{where}: {nbytes} bytes is not believable; the bytes are not recorded")
        return None

    def job_env(self, decision: Decision) -> dict[str, str]:
        assert decision.task_id is not None
        return {
            "RINGRIFT_TRANSFER_ID": decision.task_id,
            "RINGRIFT_LEASE_TOKEN": str(decision.lease_token),
            "RINGRIFT_BWLIMIT_KBPS": str(_kbps(decision)),
        }

    def job_argv(self, decision: Decision, argv: Sequence[str]) -> list[str]:
        return substitute(argv, _kbps(decision))


def _kbps(decision: Decision) -> int:
    return int(getattr(decision, "kbps", 0))


def substitute(argv: Sequence[str], kbps: int) -> list[str]:
    """``argv`` with every ``{bwlimit}`` (in any word, e.g. ``--bwlimit={bwlimit}``) replaced
    by ``kbps``."""
    text = str(int(kbps))
    return [word.replace(BWLIMIT, text) if BWLIMIT in word else word for word in argv]


class TransferResult:
    """``RunResult`` plus the transfer's numbers (``bytes`` None: not reported)."""

    def __init__(self, run: RunResult, keeper: TransferSlot) -> None:
        self.run = run
        decision = run.decision
        self.transfer_id = run.task_id
        self.remote = keeper.remote
        self.node = keeper.request.node  # where the command ran
        self.kbps = _kbps(decision)
        self.limit_kbps = float(getattr(decision, "limit_kbps", 0.0))
        self.host_type = str(getattr(decision, "host_type", "default"))
        self.priority = str(getattr(decision, "priority", transfers.DEFAULT_PRIORITY))
        ended = keeper.ended
        self.bytes = keeper.nbytes
        self.observed_kbps: float | None = None
        if ended is not None and ended.get("observed_kbps") is not None:
            self.observed_kbps = float(ended["observed_kbps"])
        self.ema_kbps: float | None = None
        if ended is not None and ended.get("ema_kbps") is not None:
            self.ema_kbps = float(ended["ema_kbps"])


def run_transfer(
    ctx: Context,
    remote: str,
    argv: Sequence[str],
    *,
    priority: str | None = None,
    kind: str | None = None,
    node: str | None = None,
    bytes_from: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
    on_wait: WaitCallback | None = None,
    on_admitted: Callable[[], None] | None = None,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
    stdout_to_stderr: bool = False,
) -> TransferResult:
    """Run ``argv`` holding a transfer to ``remote`` (``kind``: default the command's
    program name); its outcome, the bytes it reported and the observed rate."""
    check_command(argv)
    keeper = TransferSlot(
        ctx,
        remote,
        priority=priority,
        kind=kind if kind is not None else (os.path.basename(argv[0]) or "data"),
        node=node,
        command=_command_text(argv),
        bytes_from=bytes_from,
        warn=warn,
        size_unit=human_unit(list(argv)),
    )
    result = run_held(
        keeper,
        argv,
        wait=wait,
        timeout=timeout,
        on_wait=on_wait,
        on_admitted=on_admitted,
        warn=warn,
        note=note,
        stdout_to_stderr=stdout_to_stderr,
        scan=keeper.scanner.feed,
    )
    return TransferResult(result, keeper)
