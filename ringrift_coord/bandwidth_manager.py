"""The bandwidth manager, the reference's Python face: may a transfer to a host start, start
it, end it with its bytes.

``BandwidthManager`` (``get_instance``; or built with an explicit ``Context`` like the other
faces), ``get_bandwidth_manager()``, and module functions of the reference's names over the
process-wide instance: ``can_transfer(host, kind)``, ``start_transfer(host, transfer_id,
kind)``, ``end_transfer(host, transfer_id, bytes_transferred)``. A thin face over
``transfers``: every call is one transaction of the store, by the store's clock. The holder
of a transfer started here is the calling process (``pid``: another one): it is reaped once
that process is gone.
"""

from __future__ import annotations

import os

from ringrift_coord import procs, transfers
from ringrift_coord.context import Context, ProcessWide
from ringrift_coord.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.store.base import Row
    from ringrift_coord.transfers import TransferDecision

__all__ = [
    "BandwidthManager",
    "can_transfer",
    "end_transfer",
    "get_bandwidth_manager",
    "start_transfer",
]


class BandwidthManager(ProcessWide):
    """Object face of the bandwidth manager over one ``Context`` (``get_instance()``: the
    process-wide one). ``last_decision``: the admission of the last ``start_transfer``."""

    _instance: BandwidthManager | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()
        self.last_decision: TransferDecision | None = None
        self._tokens: dict[str, int] = {}  # fencing tokens of the transfers started here

    def _settings(self) -> Any:
        self.ctx.settings.require("bandwidth")
        return self.ctx.settings

    def allocation(self, host: str, priority: str | None = None) -> TransferDecision:
        """What a transfer to ``host`` of ``priority`` would get now (``kbps``, KiB/s),
        or why not (``reasons``). Read-only."""
        settings = self._settings()
        with self.ctx.store.read() as tx:
            return transfers.evaluate(
                tx, settings, host, priority, tx.now(), halt_source=self.ctx.state_dir
            )

    def allocate(self, host: str, priority: str | None = None) -> int:
        """The rate in KiB/s (``rsync --bwlimit`` units) a transfer would get now; 0 when
        it would be refused."""
        decision = self.allocation(host, priority)
        return decision.kbps if decision.allowed else 0

    def can_transfer(self, host: str, kind: str = "data", priority: str | None = None) -> bool:
        """True when a transfer to ``host`` would be admitted now (below the host's
        concurrent cap, with bandwidth left for ``priority``). ``kind`` does not change the
        answer (it is recorded by ``start_transfer``)."""
        transfers.check_kind(kind)
        return self.allocation(host, priority).allowed

    def start(
        self,
        host: str,
        kind: str = "data",
        priority: str | None = None,
        *,
        transfer_id: str | None = None,
        pid: int | None = None,
        node: str | None = None,
    ) -> TransferDecision:
        """Admit a transfer atomically; the decision (``transfer_id``, ``kbps``,
        ``lease_token`` when allowed, ``reasons`` when not)."""
        holder = os.getpid() if pid is None else int(pid)
        start = procs.start_time(holder)
        if holder <= 0 or start is None:
            raise UsageError(f"no running process {holder} on this host", field="pid")
        req = transfers.TransferRequest(
            host,
            kind,
            priority,
            node=node,
            source="api",
            transfer_id=transfer_id,
            pid=holder,
            pid_start=start,
        )
        settings = self._settings()
        with self.ctx.store.write() as tx:
            decision = transfers.start(tx, settings, req, tx.now(), halt_source=self.ctx.state_dir)
        if decision.allowed and decision.task_id and decision.lease_token:
            self._tokens[decision.task_id] = decision.lease_token
        self.last_decision = decision
        return decision

    def start_transfer(
        self,
        host: str,
        transfer_id: str | None = None,
        kind: str = "data",
        priority: str | None = None,
    ) -> bool:
        """The reference's ``start_transfer(host, transfer_id, kind)``: True when admitted
        (``last_decision`` has the rate and the id; ``transfer_id`` None: a new one)."""
        return self.start(host, kind, priority, transfer_id=transfer_id).allowed

    def end_transfer(
        self,
        host: str,
        transfer_id: str,
        bytes_transferred: int | None = None,
        status: str = "ok",
    ) -> Row | None:
        """End the transfer with its bytes: its history row (seconds, ``observed_kbps``,
        the host's ``ema_kbps``), or None when it had already ended. ``host`` must be the
        one it was started for."""
        settings = self._settings()
        with self.ctx.store.write() as tx:
            row = tx.one("SELECT remote FROM transfers WHERE transfer_id = ?", (transfer_id,))
            if row is not None and row["remote"] != transfers.check_remote(host):
                raise UsageError(
                    f"transfer {transfer_id} is to {row['remote']}, not {host}", field="host"
                )
            ended = transfers.end(
                tx,
                settings,
                transfer_id,
                tx.now(),
                token=self._tokens.get(transfer_id),
                bytes=bytes_transferred,
                status=status,
            )
        self._tokens.pop(transfer_id, None)
        return ended

    def get_status(self) -> dict[str, Any]:
        """Active transfers and each host's link and history (``bandwidth status --json``)."""
        settings = self._settings()
        with self.ctx.store.read() as tx:
            return transfers.status(tx, settings, tx.now())

    def reap(self) -> list[Row]:
        """End the transfers of dead holders now (status ``reaped``)."""
        with self.ctx.store.write() as tx:
            return transfers.reap(tx, self.ctx.settings, tx.now())


def get_bandwidth_manager() -> BandwidthManager:
    """The process-wide bandwidth manager (its context built from the environment)."""
    return BandwidthManager.get_instance()


def can_transfer(host: str, kind: str = "data", priority: str | None = None) -> bool:
    return get_bandwidth_manager().can_transfer(host, kind, priority)


def start_transfer(
    host: str, transfer_id: str | None = None, kind: str = "data", priority: str | None = None
) -> bool:
    return get_bandwidth_manager().start_transfer(host, transfer_id, kind, priority)


def end_transfer(
    host: str, transfer_id: str, bytes_transferred: int | None = None, status: str = "ok"
) -> Row | None:
    return get_bandwidth_manager().end_transfer(host, transfer_id, bytes_transferred, status)
