"""Transfers: the bandwidth manager's admission (``transfers``) and the ended transfers with
their bytes and observed rate (``transfer_history``).

A transfer goes to or from a *remote* host (the other end of the link). The remote's type
is the first ``bandwidth.host_types`` entry (in the file's order) one of whose ``match``
globs matches its name (case-insensitive); no match: type ``default`` with
``bandwidth.default_mbps``. The link's limit is in KiB/s, the unit of ``rsync --bwlimit``
(1024 bytes per second): ``mbps * 1e6 / 8 / 1024``.

A transfer of priority p wants ``limit * bandwidth.priorities[p]`` and gets at most what the
remote's active transfers leave free, floored to whole KiB/s: so the allocations on one
remote never add up to more than its limit. It is refused when the remote already has
``max_concurrent_transfers`` transfers (rule ``transfer_cap``; the fair queue's waiters
ahead count too) or when less than 1 KiB/s is left (rule ``bandwidth``).

An admitted transfer is a row with a holder and a lease, exactly as a task's slot
(``slots``): on its own host the holder's process decides whether it is alive, other hosts
judge it by its lease. Dead ones are reaped (history status ``reaped``) at the start of
every admission on the same remote and by ``tasks reap``. ``end`` deletes the row exactly
once (the fencing token guards it) and writes the history: seconds, bytes, the observed
rate and the remote's exponential moving average of observed rates.

A halt stops new transfers as it stops new tasks: a transfer is data sync, so a halt of every
type, or of type ``sync``, on the transfer's node (or on every node), and this host's
``EMERGENCY_HALT`` file, refuse it (rule ``halt``). Running transfers go on.
"""

from __future__ import annotations

import fnmatch
import math
import os

from ringrift_coord import halts, identity, inputs, procs, queue, slots
from ringrift_coord.decision import Decision, Reason
from ringrift_coord.errors import NotFound, UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

TASK_TYPE = "transfer"  # the fair queue's task type for transfers (node = the remote)
HALT_TYPE = "sync"  # the task type whose halts (and halts of every type) stop new transfers
PRIORITIES = ("critical", "high", "normal", "background")
DEFAULT_PRIORITY = "normal"
END_STATUSES = ("ok", "failed", "killed", "stopped")  # and "reaped", which only reaping gives
HISTORY_STATUSES = (*END_STATUSES, "reaped")
KIB = 1024.0
MAX_BYTES = 2**63 - 1  # a BIGINT: past any real transfer (8 EiB)
MIN_TIMED_SECONDS = 1.0  # a shorter transfer records its bytes but no observed rate (no EMA)
EMA_WEIGHT = 0.3  # ema = 0.3 * observed + 0.7 * the previous ema of the same remote
HISTORY_ROWS = 1000  # history kept per remote: at most this many rows ...
HISTORY_DAYS = 30.0  # ... and none older than this
# A transfer started from a shell (``bandwidth start``) is renewed by nobody: other hosts,
# which judge it by its lease, give it this long (on its own host its process decides, and
# every admission there refreshes the lease of a live holder).
SHELL_LEASE = 6 * 3600.0
UNKNOWN_RETRY = 5.0  # seconds to suggest when nothing better is known (as rules.UNKNOWN_RETRY)
MAX_ID = slots.MAX_TASK_ID

_UNITS = {
    "kib": ("KiB/s", 1.0),
    "mib": ("MiB/s", 1.0 / 1024.0),
    "mbit": ("Mbit/s", KIB * 8 / 1e6),
    "bytes": ("bytes/s", KIB),
}
_UNIT_ALIASES = {
    "kib": "kib",
    "kibs": "kib",
    "kib/s": "kib",
    "k": "kib",
    "mib": "mib",
    "mibs": "mib",
    "mib/s": "mib",
    "m": "mib",
    "mbit": "mbit",
    "mbits": "mbit",
    "mbit/s": "mbit",
    "mbps": "mbit",
    "b": "bytes",
    "byte": "bytes",
    "bytes": "bytes",
    "bytes/s": "bytes",
    "b/s": "bytes",
}
UNITS = tuple(_UNITS)
# spellings that name no one unit: kbps is kilobits/s to most readers, KiB/s to rsync
_AMBIGUOUS_UNITS = {"kbps", "kb/s", "kbit", "kbits", "kbit/s", "kb"}


# --------------------------------------------------------------------------- host links


def kib_per_s(mbps: float) -> float:
    """A link speed in megabits per second as KiB/s (rsync's ``--bwlimit`` unit)."""
    return float(mbps) * 1e6 / 8.0 / KIB


def host_type(settings: Settings, remote: str) -> tuple[str, float]:
    """(type name, Mbps) of ``remote``: the first host type whose glob matches its name."""
    bw = settings.get("bandwidth")
    name = remote.lower()
    for type_name, entry in bw["host_types"].items():
        for pattern in entry.get("match") or ():
            if fnmatch.fnmatchcase(name, str(pattern).lower()):
                return str(type_name), float(entry["mbps"])
    return "default", float(bw["default_mbps"])


def link(settings: Settings, remote: str) -> dict[str, Any]:
    """``remote``'s host type, Mbps and limit in KiB/s."""
    type_name, mbps = host_type(settings, remote)
    return {"host_type": type_name, "mbps": mbps, "limit_kbps": kib_per_s(mbps)}


def check_priority(priority: str | None) -> str:
    """A priority name (case-insensitive; None: normal)."""
    if priority is None:
        return DEFAULT_PRIORITY
    name = str(priority).strip().lower()
    if name not in PRIORITIES:
        from ringrift_coord.inputs import did_you_mean, printable

        raise UsageError(
            f"unknown priority '{printable(str(priority))}'{did_you_mean(name, PRIORITIES)}; "
            f"valid priorities: {', '.join(PRIORITIES)}",
            field="priority",
        )
    return name


def check_unit(unit: str | None) -> str:
    """A rate unit: kib (default), mib, mbit or bytes; common spellings, any case."""
    if unit is None:
        return "kib"
    name = str(unit).strip().lower()
    if name in _AMBIGUOUS_UNITS:
        from ringrift_coord.inputs import printable

        raise UsageError(
            f"unit '{printable(str(unit))}' is ambiguous (kilobits or KiB per second?): use "
            "kib for KiB/s (rsync --bwlimit's unit) or mbit for Mbit/s",
            field="unit",
        )
    key = _UNIT_ALIASES.get(name)
    if key is None:
        from ringrift_coord.inputs import printable

        raise UsageError(
            f"unknown unit '{printable(str(unit))}'; valid units: {', '.join(UNITS)} "
            "(KiB/s, MiB/s, Mbit/s, bytes/s)",
            field="unit",
        )
    return key


def in_unit(kbps: float, unit: str) -> tuple[float, str]:
    """``kbps`` (KiB/s) in ``unit`` (``check_unit``'s names) and the unit's label."""
    label, factor = _UNITS[unit]
    return kbps * factor, label


def check_remote(remote: str) -> str:
    """``remote`` as the ledger keys it: stripped, lower case, no trailing dot."""
    if not isinstance(remote, str) or not remote.strip() or len(remote) > MAX_ID:
        raise UsageError(
            f"must be a non-empty host name of at most {MAX_ID} characters", field="host"
        )
    from ringrift_coord.inputs import printable

    # host names are DNS names: RUNPOD-1, runpod-1 and runpod-1. are one link
    return printable(remote.strip().lower().rstrip(".") or remote.strip())


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_ID:
        raise UsageError(f"must be a non-empty word of at most {MAX_ID} characters", field="kind")
    from ringrift_coord.inputs import printable

    return printable(kind.strip())


# --------------------------------------------------------------------------- requests


class TransferRequest:
    """Who asks to move data to or from ``remote``; the holder is what the reaper watches.

    ``node``: the node doing the transfer (default ``identity.default_node()``:
    $RINGRIFT_NODE_ID, else this host's name). ``source``: ``start``
    (a shell), ``run`` (``bandwidth run``, which renews its lease) or ``api``.
    """

    __slots__ = (
        "remote",
        "kind",
        "priority",
        "node",
        "source",
        "command",
        "transfer_id",
        "host",
        "boot_id",
        "pid",
        "pid_start",
        "pgid",
        "wrapper_pid",
        "wrapper_start",
    )

    def __init__(
        self,
        remote: str,
        kind: str = "data",
        priority: str | None = None,
        *,
        node: str | None = None,
        source: str = "api",
        command: str | None = None,
        transfer_id: str | None = None,
        pid: int | None = None,
        pid_start: int | None = None,
        pgid: int | None = None,
        wrapper_pid: int | None = None,
        wrapper_start: int | None = None,
        host: str | None = None,
        boot_id: str | None = None,
    ) -> None:
        self.remote = check_remote(remote)
        self.kind = check_kind(kind)
        self.priority = check_priority(priority)
        self.host = host or identity.host_name()
        # the global rule, as ``run``: the node named, else $RINGRIFT_NODE_ID, else the host
        self.node = node or identity.default_node()
        self.source, self.command, self.transfer_id = source, command, transfer_id
        self.boot_id = boot_id if boot_id is not None else procs.boot_id()
        self.pid, self.pid_start, self.pgid = pid, pid_start, pgid
        self.wrapper_pid, self.wrapper_start = wrapper_pid, wrapper_start


class TransferDecision(Decision):
    """A transfer's admission: a ``Decision`` (type ``transfer``, node = the remote) with the
    allocation's numbers. ``task_id`` is the transfer id, ``lease_token`` its fencing token."""

    __slots__ = (
        "kbps",
        "limit_kbps",
        "host_type",
        "priority",
        "factor",
        "active",
        "cap",
        "free_kbps",
        "active_priorities",
    )

    def __init__(
        self,
        allowed: bool,
        remote: str,
        reasons: list[Reason] | None = None,
        retry_after: float | None = None,
        queued: int = 0,
    ) -> None:
        super().__init__(allowed, TASK_TYPE, remote, reasons, retry_after, queued)
        self.kbps = 0
        self.limit_kbps = 0.0
        self.host_type = "default"
        self.priority = DEFAULT_PRIORITY
        self.factor = 0.0
        self.active = 0
        self.cap = 0
        self.free_kbps = 0.0
        self.active_priorities: list[str] = []

    @property
    def remote(self) -> str:
        return self.node

    @property
    def transfer_id(self) -> str | None:
        return self.task_id

    def summary(self) -> str:
        if self.allowed:
            return f"allowed: {self.kbps} KiB/s to {self.node} ({self.priority})"
        return super().summary().replace(f"{TASK_TYPE} on ", f"{self.priority} transfer to ", 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "remote": self.node,
            "host_type": self.host_type,
            "priority": self.priority,
            "factor": self.factor,
            "kbps": self.kbps,
            "limit_kbps": round(self.limit_kbps, 1),
            "active": self.active,
            "queued": self.queued,
            "cap": self.cap,
            "free_kbps": round(self.free_kbps, 1),
            "reasons": [r.to_dict() for r in self.reasons],
            "retry_after": self.retry_after,
            "transfer_id": self.task_id,
        }


# --------------------------------------------------------------------------- admission


def _rows(tx: Tx, remote: str | None) -> list[Row]:
    sql = "SELECT * FROM transfers"
    if remote is None:
        return tx.query(sql + " ORDER BY started_at, transfer_id")
    return tx.query(sql + " WHERE remote = ? ORDER BY started_at, transfer_id", (remote,))


def _dead(row: Row, host: str, this_boot: str | None, now: float) -> str | None:
    """Why ``row``'s holder is dead (None: alive): on this host its process decides, from
    other hosts its lease."""
    alive = slots.holder_alive(row, host, this_boot)
    if alive is None:
        if row["lease_expires"] >= now:
            return None
        return f"lease expired at {row['lease_expires']:.0f} on host {row['host']}"
    return None if alive else "holder process gone"


def _live(tx: Tx, remote: str, now: float) -> list[Row]:
    """The remote's transfers whose holders are alive (read-only: the dead are skipped)."""
    host, boot = identity.host_name(), procs.boot_id()
    return [r for r in _rows(tx, remote) if _dead(r, host, boot, now) is None]


def _waiting_ahead(tx: Tx, remote: str, waiter_seq: int | None) -> int:
    """Waiters of the fair queue for ``remote`` ahead of ``waiter_seq`` (None: all of them)."""
    return sum(1 for node in queue.ahead(tx, TASK_TYPE, waiter_seq) if node == remote)


def evaluate(
    tx: Tx,
    settings: Settings,
    remote: str,
    priority: str | None,
    now: float,
    *,
    waiter_seq: int | None = None,
    active: list[Row] | None = None,
    halt_source: str | halts.Snapshot | None = None,
    node: str | None = None,
) -> TransferDecision:
    """What a transfer of ``priority`` to ``remote`` would get now. Read-only: transfers of
    dead holders are not counted (``start`` reaps them). ``active``: the remote's live
    transfers when the caller has them. ``halt_source`` (this host's state directory, or a
    ``halts.snapshot`` of its halt file): the halts that stop a transfer on ``node`` (default
    this host's node) are checked too."""
    remote = check_remote(remote)
    rows = _live(tx, remote, now) if active is None else active
    decision = decide(settings, remote, priority, rows, _waiting_ahead(tx, remote, waiter_seq))
    if halt_source is not None:
        _halted(tx, decision, halt_source, now, node)
    return decision


def _halted(
    tx: Tx, decision: TransferDecision, source: str | halts.Snapshot, now: float, node: str | None
) -> None:
    """Put the halts that stop a transfer on ``node`` first among ``decision``'s reasons."""
    found = halts.state(tx, source, now, HALT_TYPE, node or identity.default_node())
    reasons = found.reasons(now)
    if not reasons:
        return
    decision.reasons[:0] = reasons
    decision.allowed = False
    decision.kbps = 0
    waits = [r.retry_after for r in decision.reasons]
    decision.retry_after = None if any(w is None for w in waits) else max(w or 0.0 for w in waits)


def decide(
    settings: Settings, remote: str, priority: str | None, rows: list[Row], ahead: int = 0
) -> TransferDecision:
    """The allocation (pure): ``rows`` are the remote's active transfers (``kbps`` and
    ``priority`` of each), ``ahead`` the waiters in line before this request."""
    prio = check_priority(priority)
    bw = settings.get("bandwidth")
    info = link(settings, remote)
    limit = info["limit_kbps"]
    factor = float(bw["priorities"][prio])
    cap = int(bw["max_concurrent_transfers"])
    used = sum(float(r["kbps"]) for r in rows)
    free = max(0.0, limit - used)
    granted = int(math.floor(min(limit * factor, free) + 1e-9))
    reasons: list[Reason] = []
    if len(rows) + ahead >= cap:
        waiting = f" and {ahead} waiting ahead" if ahead else ""
        reasons.append(
            Reason(
                "transfer_cap",
                f"{remote} has {len(rows)} transfer(s) running{waiting}, at its cap of {cap} "
                "(bandwidth.max_concurrent_transfers)",
                requested=1,
                used=len(rows) + ahead,
                limit=cap,
                retry_after=UNKNOWN_RETRY,
                details={"active": len(rows), "queued": ahead},
            )
        )
    if granted < 1:
        # the link or the priority's share of it is under 1 KiB/s: the configuration refuses
        # it, whatever ends, so no retry time (null) is given; otherwise the link is taken
        too_small = limit * factor < 1
        if too_small:
            message = (
                f"{remote}'s link ({info['host_type']}, {info['mbps']:g} Mbps = {limit:.2f} "
                f"KiB/s) gives a {prio} transfer ({factor:g} of it) less than 1 KiB/s, "
                "the smallest rate rsync --bwlimit takes"
            )
        else:
            held = ", ".join(f"{r['priority']} {float(r['kbps']):.0f}" for r in rows)
            message = (
                f"{remote}'s link of {limit:.0f} KiB/s ({info['host_type']}) is taken: "
                f"{used:.0f} KiB/s allocated to {len(rows)} transfer(s)"
                + (f" ({held} KiB/s)" if rows else "")
            )
        reasons.append(
            Reason(
                "bandwidth",
                message,
                requested=1,
                used=round(used, 1),
                limit=round(limit, 1),
                retry_after=None if too_small else UNKNOWN_RETRY,
                details={"priorities": [r["priority"] for r in rows]},
            )
        )
    waits = [r.retry_after for r in reasons]
    decision = TransferDecision(
        not reasons,
        remote,
        reasons,
        retry_after=None if not reasons or None in waits else UNKNOWN_RETRY,
        queued=ahead,
    )
    decision.kbps = granted if not reasons else 0
    decision.limit_kbps = limit
    decision.host_type = info["host_type"]
    decision.priority = prio
    decision.factor = factor
    decision.active = len(rows)
    decision.cap = cap
    decision.free_kbps = free
    decision.active_priorities = [r["priority"] for r in rows]
    for reason in reasons:
        reason.details.update(
            {"kbps": granted, "limit_kbps": round(limit, 1), "host_type": info["host_type"]}
        )
        reason.details["priority"] = prio
    return decision


def new_transfer_id(tx: Tx, given: str | None) -> str:
    """The id of the transfer about to start: ``given`` (checked) or ``xfer-<12 hex>``."""
    if given is None:
        return f"xfer-{os.urandom(6).hex()}"
    if not isinstance(given, str) or not given.strip() or len(given) > MAX_ID:
        raise UsageError(
            f"must be a non-empty string of at most {MAX_ID} characters", field="transfer_id"
        )
    if not given.isprintable():
        raise UsageError("must be printable (no control characters)", field="transfer_id")
    if tx.one("SELECT 1 AS x FROM transfers WHERE transfer_id = ?", (given,)):
        raise UsageError(f"transfer id {given!r} is already active")
    return given


TOKEN_BITS = 52  # tokens stay below 2**53: exact as a double (jq, JavaScript) round-trips them


def new_token() -> int:
    """A fencing token: a random positive integer of at most ``TOKEN_BITS`` bits (never 0),
    exact as a JSON number read into a double (``jq .lease_token``)."""
    while True:
        token = int.from_bytes(os.urandom(7), "big") >> (56 - TOKEN_BITS)
        if token:
            return token


def lease_for(req: TransferRequest, settings: Settings) -> float:
    """``bandwidth run`` renews its lease; a transfer started from a shell gets
    ``SHELL_LEASE`` (other hosts judge it by its lease; on its host its process decides)."""
    ttl = float(settings.get("store.lease_ttl"))
    return ttl if req.source == "run" else max(ttl, SHELL_LEASE)


def start(
    tx: Tx,
    settings: Settings,
    req: TransferRequest,
    now: float,
    waiter_seq: int | None = None,
    halt_source: str | halts.Snapshot | None = None,
) -> TransferDecision:
    """Admit ``req`` atomically (inside the caller's write transaction): reap the remote's
    dead transfers, check the halts (``halt_source``: see ``evaluate``), the cap (waiters
    ahead count) and the bandwidth left, and when allowed insert the transfer with its
    holder, lease and fencing token. An admitted waiter leaves the queue; a refused one
    keeps its place (its heartbeat is refreshed)."""
    reap(tx, settings, now, remote=req.remote)
    decision = evaluate(
        tx,
        settings,
        req.remote,
        req.priority,
        now,
        waiter_seq=waiter_seq,
        active=_rows(tx, req.remote),
        halt_source=halt_source,
        node=req.node,
    )
    if not decision.allowed:
        if waiter_seq is not None:
            queue.heartbeat(tx, waiter_seq, now)
        return decision
    transfer_id = new_transfer_id(tx, req.transfer_id)
    token = new_token()
    tx.execute(
        "INSERT INTO transfers (transfer_id, remote, kind, priority, kbps, node, host, boot_id, "
        "pid, pid_start, pgid, wrapper_pid, wrapper_start, command, source, started_at, "
        "lease_expires, lease_token) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            transfer_id,
            req.remote,
            req.kind,
            req.priority,
            float(decision.kbps),
            req.node,
            req.host,
            req.boot_id,
            req.pid,
            req.pid_start,
            req.pgid,
            req.wrapper_pid,
            req.wrapper_start,
            req.command,
            req.source,
            now,
            now + lease_for(req, settings),
            token,
        ),
    )
    if waiter_seq is not None:
        queue.leave(tx, waiter_seq)
    decision.task_id = transfer_id
    decision.lease_token = token
    decision.active += 1
    decision.free_kbps = max(0.0, decision.free_kbps - decision.kbps)
    return decision


def set_holder(tx: Tx, transfer_id: str, token: int, fields: dict[str, Any]) -> bool:
    """Point the transfer at the command's process group (``bandwidth run``, after fork)."""
    return bool(
        tx.execute(
            "UPDATE transfers SET pid = ?, pid_start = ?, pgid = ? WHERE transfer_id = ? "
            "AND lease_token = ?",
            (fields["pid"], fields["pid_start"], fields["pgid"], transfer_id, token),
        )
    )


def renew(tx: Tx, transfer_id: str, token: int, lease_ttl: float, now: float) -> bool:
    """Extend a lease; False when the transfer is no longer this holder's."""
    return bool(
        tx.execute(
            "UPDATE transfers SET lease_expires = ? WHERE transfer_id = ? AND lease_token = ?",
            (now + lease_ttl, transfer_id, token),
        )
    )


# --------------------------------------------------------------------------- ending


def _previous_ema(tx: Tx, remote: str) -> float | None:
    row = tx.one(
        "SELECT ema_kbps FROM transfer_history WHERE remote = ? AND ema_kbps IS NOT NULL "
        "ORDER BY ended_at DESC, id DESC LIMIT 1",
        (remote,),
    )
    return None if row is None else float(row["ema_kbps"])


def _finish(
    tx: Tx, row: Row, now: float, *, nbytes: int | None, status: str, reason: str | None
) -> Row | None:
    """Delete the transfer and write its history row, exactly once (the token guards it)."""
    deleted = tx.execute(
        "DELETE FROM transfers WHERE transfer_id = ? AND lease_token = ?",
        (row["transfer_id"], row["lease_token"]),
    )
    if not deleted:
        return None
    tx.ring(TASK_TYPE, row["remote"])  # a transfer ended: wake the waiter whose turn it is
    seconds = max(0.0, now - float(row["started_at"]))
    # under MIN_TIMED_SECONDS the clock's resolution and start-up dominate: not a measurement
    timed = nbytes is not None and seconds >= MIN_TIMED_SECONDS
    observed = nbytes / KIB / seconds if timed and nbytes is not None else None
    ema = None
    if observed is not None:
        previous = _previous_ema(tx, row["remote"])
        ema = observed if previous is None else EMA_WEIGHT * observed + (1 - EMA_WEIGHT) * previous
    hist = {
        "transfer_id": row["transfer_id"],
        "remote": row["remote"],
        "kind": row["kind"],
        "priority": row["priority"],
        "kbps": float(row["kbps"]),
        "node": row["node"],
        "host": row["host"],
        "started_at": float(row["started_at"]),
        "ended_at": now,
        "seconds": seconds,
        "bytes": nbytes,
        "observed_kbps": observed,
        "ema_kbps": ema,
        "status": status,
        "reason": reason,
    }
    columns = ", ".join(hist)
    tx.execute(
        f"INSERT INTO transfer_history ({columns}) VALUES ({','.join('?' * len(hist))})",
        tuple(hist.values()),
    )
    if nbytes:  # the exported running total: it never goes down when the history is pruned
        from ringrift_coord import counters

        counters.add(tx, "transfer_bytes", {"remote": row["remote"]}, float(nbytes))
    _prune(tx, row["remote"], now)
    return hist


def _prune(tx: Tx, remote: str, now: float) -> None:
    """Keep the newest ``HISTORY_ROWS`` rows of ``remote``, none older than ``HISTORY_DAYS``."""
    tx.execute(
        "DELETE FROM transfer_history WHERE remote = ? AND (ended_at < ? OR id NOT IN "
        "(SELECT id FROM transfer_history WHERE remote = ? ORDER BY id DESC LIMIT ?))",
        (remote, now - HISTORY_DAYS * 86400.0, remote, HISTORY_ROWS),
    )


def check_bytes(nbytes: int | None) -> int | None:
    if nbytes is None:
        return None
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise UsageError(
            f"must be a whole number of bytes, 0 or more, not {nbytes!r}", field="bytes"
        )
    if nbytes > MAX_BYTES:
        raise UsageError(
            f"{nbytes} bytes is more than the store keeps ({MAX_BYTES})", field="bytes"
        )
    return nbytes


def end(
    tx: Tx,
    settings: Settings,
    transfer_id: str,
    now: float,
    *,
    token: int | None = None,
    bytes: int | None = None,  # noqa: A002 (the reference's and the CLI's name)
    status: str = "ok",
    reason: str | None = None,
) -> Row | None:
    """Close an active transfer once: its history row (a dict), with seconds, bytes, the
    observed rate (KiB/s) and the remote's EMA. None when it had already ended (or been
    reaped); ``NotFound`` for an id never seen; ``slots.StaleLease`` for a token that no
    longer holds it."""
    if status not in END_STATUSES:
        raise UsageError(
            f"must be one of {', '.join(END_STATUSES)}, not {status!r}", field="status"
        )
    nbytes = check_bytes(bytes)
    reason = inputs.reason(reason)
    row = tx.one("SELECT * FROM transfers WHERE transfer_id = ?", (transfer_id,))
    if row is None:
        if tx.one("SELECT 1 AS x FROM transfer_history WHERE transfer_id = ?", (transfer_id,)):
            return None
        from ringrift_coord.inputs import printable

        raise NotFound(f"no active transfer '{printable(transfer_id)}'")
    if token is not None and int(row["lease_token"]) != int(token):
        raise slots.StaleLease(
            f"lease token {token} no longer holds transfer {transfer_id} (now held with token "
            f"{row['lease_token']}); nothing was ended"
        )
    return _finish(tx, row, now, nbytes=nbytes, status=status, reason=reason)


def reap(tx: Tx, settings: Settings, now: float, *, remote: str | None = None) -> list[Row]:
    """End the transfers (of ``remote``, or all) whose holders are dead: history status
    ``reaped``. A live holder on this host gets its lease refreshed for other hosts. Dead
    waiters leave the fair queue too, so a killed ``bandwidth run --wait`` holds no place
    in a host's line on a node where no task admission would clear it."""
    host, this_boot = identity.host_name(), procs.boot_id()
    lease_ttl = float(settings.get("store.lease_ttl"))
    queue.reap_dead(tx, now, lease_ttl, host, this_boot)
    reaped: list[Row] = []
    for row in _rows(tx, remote):
        why = _dead(row, host, this_boot, now)
        if why is None:
            if row["host"] == host and row["lease_expires"] < now + lease_ttl / 2:
                tx.execute(
                    "UPDATE transfers SET lease_expires = ? WHERE transfer_id = ? "
                    "AND lease_token = ?",
                    (now + lease_ttl, row["transfer_id"], row["lease_token"]),
                )
            continue
        hist = _finish(tx, row, now, nbytes=None, status="reaped", reason=why)
        if hist is not None:
            reaped.append(hist)
    return reaped


# --------------------------------------------------------------------------- reading


def active(tx: Tx, now: float, remote: str | None = None) -> list[Row]:
    """The active transfers with their age and lease left, oldest first."""
    rows = _rows(tx, remote)
    for row in rows:
        row["age"] = round(now - float(row["started_at"]), 3)
        row["lease_left"] = round(float(row["lease_expires"]) - now, 3)
        row.pop("boot_id", None)
    return rows


def history(tx: Tx, limit: int = 20, remote: str | None = None) -> list[Row]:
    """Ended transfers, newest first."""
    if remote is None:
        return tx.query(
            "SELECT * FROM transfer_history ORDER BY ended_at DESC, id DESC LIMIT ?", (limit,)
        )
    return tx.query(
        "SELECT * FROM transfer_history WHERE remote = ? ORDER BY ended_at DESC, id DESC LIMIT ?",
        (remote, limit),
    )


def host_types(settings: Settings) -> list[dict[str, Any]]:
    """Each configured host type (and ``default``) with its limit and per-priority
    allocation, whole KiB/s (the table ``bandwidth status`` and the README show)."""
    bw = settings.get("bandwidth")
    factors = bw["priorities"]
    out: list[dict[str, Any]] = []
    entries = [(n, e.get("match") or [], float(e["mbps"])) for n, e in bw["host_types"].items()]
    entries.append(("default", [], float(bw["default_mbps"])))
    for name, match, mbps in entries:
        limit = kib_per_s(mbps)
        out.append(
            {
                "host_type": name,
                "match": list(match),
                "mbps": mbps,
                "limit_kbps": round(limit, 1),
                "kbps": {p: int(math.floor(limit * float(factors[p]) + 1e-9)) for p in PRIORITIES},
            }
        )
    return out


def empty_status(settings: Settings) -> dict[str, Any]:
    """``status`` before anything was recorded (no store yet): no transfers, the links."""
    cap = int(settings.get("bandwidth")["max_concurrent_transfers"])
    return {"active": [], "dead": [], "hosts": [], "host_types": host_types(settings), "cap": cap}


def status(tx: Tx, settings: Settings, now: float) -> dict[str, Any]:
    """The read model of ``bandwidth status``: active transfers, and per remote its link,
    what is allocated, the transfers waiting in line for it, and its kept history
    (transfers, bytes, seconds, the mean observed rate over the timed seconds, the EMA and
    the EMA as a percentage of the limit).

    Transfers whose holder is dead are not active (``allocate`` and ``start`` do not count
    them either): they are listed under ``dead``, each with why, until reaped."""
    bw = settings.get("bandwidth")
    cap = int(bw["max_concurrent_transfers"])
    host, boot = identity.host_name(), procs.boot_id()
    live: list[Row] = []
    dead: list[Row] = []
    for row in _rows(tx, None):
        why = _dead(row, host, boot, now)
        row["dead"] = why
        (live if why is None else dead).append(row)
    for row in live + dead:
        row["age"] = round(now - float(row["started_at"]), 3)
        row["lease_left"] = round(float(row["lease_expires"]) - now, 3)
        row.pop("boot_id", None)
    # the observed rate is over the transfers with one (bytes known, timed >= 1 s); bytes
    # are summed as floats: two counts near a BIGINT's end would overflow SQLite's SUM
    totals = tx.query(
        "SELECT remote, COUNT(*) AS transfers, SUM(CAST(bytes AS DOUBLE PRECISION)) AS bytes, "
        "SUM(seconds) AS seconds, "
        "SUM(CASE WHEN observed_kbps IS NOT NULL THEN seconds ELSE 0 END) AS timed, "
        "SUM(CASE WHEN observed_kbps IS NOT NULL THEN CAST(bytes AS DOUBLE PRECISION) ELSE 0 "
        "END) AS timed_bytes, "
        "MAX(ended_at) AS last_ended_at FROM transfer_history GROUP BY remote"
    )
    by_remote: dict[str, dict[str, Any]] = {}

    def entry(remote: str) -> dict[str, Any]:
        if remote not in by_remote:
            info = link(settings, remote)
            by_remote[remote] = {
                "remote": remote,
                "host_type": info["host_type"],
                "limit_kbps": round(info["limit_kbps"], 1),
                "allocated_kbps": 0.0,
                "active": 0,
                "dead": 0,
                "queued": 0,
                "held": 0,
                "cap": cap,
                "transfers": 0,
                "bytes": None,
                "seconds": 0.0,
                "timed_seconds": 0.0,
                "observed_kbps": None,
                "ema_kbps": None,
                "ema_pct": None,
                "last_ended_at": None,
            }
        return by_remote[remote]

    for row in live + dead:
        row["host_type"] = link(settings, row["remote"])["host_type"]
        e = entry(row["remote"])
        if row["dead"] is None:
            e["active"] += 1
            e["allocated_kbps"] += float(row["kbps"])
        else:
            e["dead"] += 1
    for row in queue.lengths_by_node(tx):  # `bandwidth run --wait`s in line, and held back
        if row["task_type"] == TASK_TYPE:
            e = entry(row["node"])
            e["queued"] += row["n"]
            e["held"] += row["held"]
    for tot in totals:
        e = entry(tot["remote"])
        e["transfers"] = int(tot["transfers"])
        e["bytes"] = None if tot["bytes"] is None else int(tot["bytes"])
        e["seconds"] = round(float(tot["seconds"] or 0.0), 3)
        timed = float(tot["timed"] or 0.0)
        e["timed_seconds"] = round(timed, 3)
        if timed > 0:
            e["observed_kbps"] = round(float(tot["timed_bytes"] or 0) / KIB / timed, 1)
        e["last_ended_at"] = tot["last_ended_at"]
        ema = _previous_ema(tx, tot["remote"])
        if ema is not None:
            e["ema_kbps"] = round(ema, 1)
            e["ema_pct"] = round(100.0 * ema / e["limit_kbps"], 1) if e["limit_kbps"] else None
    for e in by_remote.values():
        e["free_kbps"] = round(max(0.0, e["limit_kbps"] - e["allocated_kbps"]), 1)
    return {
        "active": live,
        "dead": dead,
        "hosts": [by_remote[k] for k in sorted(by_remote)],
        "host_types": host_types(settings),
        "cap": cap,
    }
