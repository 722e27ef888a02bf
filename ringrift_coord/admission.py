"""One admission transaction composing every rule, and the slot bookkeeping around it.

Inside one serialised write transaction: dead holders and waiters are reaped, then halt,
reservations, per-node and cluster limits (counting fair-queue waiters ahead) and the token
bucket are checked, and — when everything allows it — the task row is inserted. N racing
launchers can therefore never admit more than a limit. The resulting ``Decision`` lists every
blocking rule with its numbers and a retry-after estimate, and is written to the decision log.
"""

from __future__ import annotations

import json
import os

from ringrift_coord import guards, procs
from ringrift_coord.config import Settings
from ringrift_coord.errors import CoordError, ExitCode, UsageError
from ringrift_coord.store.base import Row, Tx
from ringrift_coord.tasktypes import TaskType

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

HALT_FILE_NAME = "EMERGENCY_HALT"
UNKNOWN_RETRY = 5.0  # seconds to suggest when no learned duration can say better


class StaleLease(CoordError):
    """A release or renewal with a fencing token that no longer owns the slot."""

    exit_code = ExitCode.DENIED


# Plain classes rather than dataclasses: building a dataclass costs milliseconds of
# start-up on every can-spawn.


class Reason:
    """One blocking rule with its numbers: requested / used / limit, and when to retry."""

    __slots__ = ("rule", "message", "requested", "used", "limit", "retry_after", "details")

    def __init__(
        self,
        rule: str,
        message: str,
        *,
        requested: int | None = None,
        used: int | None = None,
        limit: float | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.rule, self.message = rule, message
        self.requested, self.used, self.limit = requested, used, limit
        self.retry_after = retry_after
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"Reason({self.rule!r}, {self.message!r})"


class Decision:
    """The outcome of admission: allowed, or every blocking rule and a retry-after."""

    def __init__(
        self,
        allowed: bool,
        task_type: str,
        node: str,
        reasons: list[Reason] | None = None,
        retry_after: float | None = None,
        queued: int = 0,
    ) -> None:
        self.allowed, self.task_type, self.node = allowed, task_type, node
        self.reasons = reasons or []
        self.retry_after = retry_after
        self.queued = queued  # waiters ahead of this request on its node
        self.task_id: str | None = None
        self.lease_token: int | None = None
        self.warnings: list[str] = []  # readings past their warning level: shown, not enforced
        self.trial = False  # admitted as a half-open breaker trial
        self._breaker: Any = None  # the (node, type) breaker admit passes the task through
        self._rate: tuple[float, float] | None = None  # the bucket rate after backpressure

    def __repr__(self) -> str:
        return f"Decision({self.summary()!r})"

    def summary(self) -> str:
        if self.allowed:
            return f"allowed: {self.task_type} on {self.node}"
        parts = "; ".join(r.message for r in self.reasons)
        retry = "" if self.retry_after is None else f" (retry in {self.retry_after:.0f} s)"
        if self.retry_after is None and self.reasons:
            retry = " (no retry time: wait for an operator)"
        return f"denied: {self.task_type} on {self.node}: {parts}{retry}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "task_type": self.task_type,
            "node": self.node,
            "reasons": [r.to_dict() for r in self.reasons],
            "retry_after": self.retry_after,
            "task_id": self.task_id,
            "warnings": self.warnings,
        }


class Request:
    """Who asks for which slot; the holder identity is what the reaper watches."""

    def __init__(
        self,
        task_type: TaskType,
        node: str,
        *,
        source: str = "api",
        pid: int | None = None,
        pid_start: int | None = None,
        pgid: int | None = None,
        wrapper_pid: int | None = None,
        wrapper_start: int | None = None,
        task_id: str | None = None,
        config_name: str | None = None,
        command: str | None = None,
        who: str | None = None,
        waiter_seq: int | None = None,
        host: str | None = None,
        boot_id: str | None = None,
    ) -> None:
        self.task_type, self.node, self.source = task_type, node, source  # register|run|api
        self.pid, self.pid_start, self.pgid = pid, pid_start, pgid
        self.wrapper_pid, self.wrapper_start = wrapper_pid, wrapper_start
        self.task_id, self.config_name, self.command = task_id, config_name, command
        self.who, self.waiter_seq = who, waiter_seq
        self.host = host or procs.host_name()
        self.boot_id = boot_id if boot_id is not None else procs.boot_id()


# --------------------------------------------------------------------------- halt file


def read_halt_file(state_dir: str, now: float) -> dict[str, Any] | None:
    """The host-local halt: the file's mere presence halts this host.

    ``halt`` writes who/when/why (and an optional expiry) as JSON; a file an operator merely
    touched, or one that cannot be parsed, still halts.
    """
    path = os.path.join(state_dir, HALT_FILE_NAME)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(65536)
    except FileNotFoundError:
        return None
    except OSError:
        return {"reason": "halt file present (unreadable)", "path": path}
    info: dict[str, Any] = {"path": path}
    try:
        data = json.loads(text) if text.strip() else {}
        if isinstance(data, dict):
            info.update({k: data.get(k) for k in ("who", "at", "reason", "expires_at", "host")})
            info["mirror"] = data.get("mirror") is True
    except ValueError:
        info["reason"] = text
    for key in ("who", "reason", "host"):  # hand-written text must not break one-line output
        if info.get(key) is not None:
            info[key] = " ".join(str(info[key]).split())[:200] or None
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires <= now:
        return None
    return info


# --------------------------------------------------------------------------- reaping


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


def probe(tx: Tx, node: str, ttype: str) -> Row:
    """One round trip saying which side tables matter for this admission at all.

    Most admissions meet no halt, waiter, reservation, breaker, reading, lowered cap or
    backpressure; probing them in one statement keeps the common path to a few statements.
    """
    row = tx.one(
        "SELECT (SELECT COUNT(*) FROM halts) AS halts, (SELECT COUNT(*) FROM waiters) AS waiters, "
        "(SELECT COUNT(*) FROM reservations) AS reservations, "
        "(SELECT COUNT(*) FROM breakers WHERE node = ? AND task_type = ?) AS breaker, "
        "(SELECT COUNT(*) FROM readings WHERE node = ?) AS reading, "
        "(SELECT COUNT(*) FROM lowered_caps WHERE node = ? AND task_type = ?) AS cap, "
        "(SELECT factor FROM backpressure WHERE node = ?) AS factor",
        (node, ttype, node, node, ttype, node),
    )
    assert row is not None
    return row


EVERYTHING = {
    "halts": 1,
    "waiters": 1,
    "reservations": 1,
    "breaker": 1,
    "reading": 1,
    "cap": 1,
    "factor": None,
}


def reap(tx: Tx, now: float, settings: Settings, seen: Row | None = None) -> list[Row]:
    """Free slots of dead holders (this host) and expired leases (other hosts).

    On this host the process decides, not the lease: a job whose wrapper was killed keeps
    its slot while any process of its group lives, however old its lease.
    """
    host, this_boot = procs.host_name(), procs.boot_id()
    lease_ttl = float(settings.get("store.lease_ttl"))
    reaped: list[Row] = []
    rows = tx.query(
        "SELECT task_id, task_type, node, host, boot_id, pid, pid_start, pgid, wrapper_pid, "
        "wrapper_start, config_name, started_at, lease_expires, lease_token, trial FROM tasks"
    )
    for row in rows:
        alive = holder_alive(row, host, this_boot)
        if alive is None:
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
        if _finish(tx, row, now, exit_code=None, status="reaped", reason=why):
            row["reason"] = why
            reaped.append(row)
            guards.task_ended(tx, settings, row, "reaped", why, now)
    waiters = (
        []
        if seen is not None and not seen["waiters"]
        else tx.query("SELECT seq, host, boot_id, pid, pid_start, heartbeat_at FROM waiters")
    )
    for waiter in waiters:
        if waiter["host"] == host:
            same_boot = not (this_boot and waiter["boot_id"] and waiter["boot_id"] != this_boot)
            if same_boot and procs.pid_alive(waiter["pid"], waiter["pid_start"]):
                continue
        elif waiter["heartbeat_at"] >= now - lease_ttl:
            continue
        tx.execute("DELETE FROM waiters WHERE seq = ?", (waiter["seq"],))
    return reaped


def _finish(
    tx: Tx, row: Row, now: float, *, exit_code: int | None, status: str, reason: str | None
) -> bool:
    """Delete the slot and write its history, exactly once (the fencing token guards it)."""
    deleted = tx.execute(
        "DELETE FROM tasks WHERE task_id = ? AND lease_token = ?",
        (row["task_id"], row["lease_token"]),
    )
    if not deleted:
        return False
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
    return True


# --------------------------------------------------------------------------- the rules


def _halt_reasons(
    tx: Tx, task_type: str, now: float, state_dir: str | None, any_halts: bool = True
) -> list[Reason]:
    reasons = []
    global_halt = False
    halts = (
        []
        if not any_halts
        else tx.query(
            "SELECT scope, reason, who, host, at, expires_at FROM halts WHERE scope IN ('*', ?) "
            "AND (expires_at IS NULL OR expires_at > ?)",
            (task_type, now),
        )
    )
    for halt in halts:
        global_halt = global_halt or halt["scope"] == "*"
        scope = "cluster-wide" if halt["scope"] == "*" else f"for {halt['scope']}"
        message = f"halted {scope} by {halt['who'] or '?'}: {halt['reason'] or 'no reason given'}"
        expires = halt["expires_at"]
        reasons.append(
            Reason(
                rule="halt",
                message=message,
                retry_after=None if expires is None else max(0.0, expires - now),
                details={
                    k: halt[k] for k in ("scope", "who", "host", "at", "expires_at", "reason")
                },
            )
        )
    if state_dir is not None:
        info = read_halt_file(state_dir, now)
        if info is not None and info.get("mirror"):
            if not global_halt:
                # written by `halt` on this host as a copy of a cluster-wide halt that an
                # `unhalt` on some node has since lifted: it no longer halts anything
                _remove_stale_mirror(info["path"])
            info = None  # else it is the store's halt, already listed: say it once
        if info is not None:
            expires = info.get("expires_at")
            reasons.append(
                Reason(
                    rule="halt_file",
                    message=f"this host is halted by {info['path']}"
                    + (f" ({info['reason']})" if info.get("reason") else ""),
                    retry_after=max(0.0, expires - now)
                    if isinstance(expires, (int, float))
                    else None,
                    details=info,
                )
            )
    return reasons


def _remove_stale_mirror(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _expected_end_wait(rows: list[Row], expected: float | None, now: float) -> float:
    """Seconds until the earliest of ``rows`` is expected to finish (learned durations later)."""
    if not rows or expected is None:
        return UNKNOWN_RETRY
    earliest = min(r["started_at"] for r in rows) + expected
    return max(UNKNOWN_RETRY, earliest - now)


def evaluate(
    tx: Tx,
    req: Request,
    settings: Settings,
    now: float,
    *,
    state_dir: str | None,
    seen: Row | None = None,
) -> Decision:
    """Every rule, read-only, with the state as this transaction sees it.

    ``seen`` (from ``probe``) lets it skip the side tables that are empty.
    """
    seen = seen or EVERYTHING
    ttype = req.task_type.value
    reasons = _halt_reasons(tx, ttype, now, state_dir, bool(seen["halts"]))
    breaker = None
    if seen["breaker"]:
        breaker_reason, breaker = guards.breaker_rule(tx, settings, req.node, ttype, now)
        if breaker_reason is not None:
            reasons.append(breaker_reason)
    local = req.node == procs.local_node()
    warnings: list[str] = []
    if seen["reading"] or (local and settings.get("resources.live_host")):
        paths = ([state_dir] if state_dir else []) + list(settings.get("resources.data_paths"))
        threshold_reasons, warnings, _ = guards.threshold_rules(
            tx,
            settings,
            req.node,
            now,
            local=local,
            paths=paths,
        )
        reasons += threshold_reasons

    of_type = tx.query("SELECT node, started_at FROM tasks WHERE task_type = ?", (ttype,))
    on_node = [r for r in of_type if r["node"] == req.node]

    seq_clause, seq_args = "", ()
    if req.waiter_seq is not None:
        seq_clause, seq_args = " AND seq < ?", (req.waiter_seq,)
    waiting = (
        []
        if not seen["waiters"]
        else tx.query(
            f"SELECT node FROM waiters WHERE task_type = ?{seq_clause}", (ttype, *seq_args)
        )
    )
    ahead_cluster = len(waiting)
    ahead_node = sum(1 for w in waiting if w["node"] == req.node)

    reservations = (
        []
        if not seen["reservations"]
        else tx.query(
            "SELECT res_id, node, task_type, slots, expires_at FROM reservations "
            "WHERE expires_at IS NULL OR expires_at > ?",
            (now,),
        )
    )
    expected = settings.duration(ttype)
    queued = f" + {ahead_node} queued" if ahead_node else ""

    limit = settings.task_limit(ttype, "per_node")
    if limit is not None:
        held_for_others = 0
        for res in reservations:
            if res["node"] != req.node or res["task_type"] == ttype:
                continue
            if TaskType.parse(res["task_type"]).resource_type != req.task_type.resource_type:
                continue
            # held for that type whether or not it uses them yet: its running tasks do not
            # count against this type's limit, so only the whole reservation keeps room
            held_for_others += res["slots"]
        effective = limit - held_for_others
        if len(on_node) + ahead_node + 1 > effective:
            wait = _expected_end_wait(on_node, expected, now)
            if len(on_node) + ahead_node + 1 > limit:
                reasons.append(
                    Reason(
                        rule="node_limit",
                        message=f"{len(on_node)} running{queued} + 1 requested > per-node limit "
                        f"{limit} on {req.node}",
                        requested=1,
                        used=len(on_node),
                        limit=limit,
                        retry_after=wait,
                        details={"queued": ahead_node},
                    )
                )
            else:
                reasons.append(
                    Reason(
                        rule="reservation",
                        message=f"{held_for_others} of the {limit} per-node slots on {req.node} are "
                        f"reserved for other work; {len(on_node)} running{queued} + 1 requested > "
                        f"{effective}",
                        requested=1,
                        used=len(on_node),
                        limit=effective,
                        retry_after=wait,
                        details={"reserved": held_for_others, "queued": ahead_node},
                    )
                )
    cap = guards.lowered_cap(tx, settings, req.node, ttype, now) if seen["cap"] else None
    if (
        cap is not None
        and len(on_node) + ahead_node + 1 > cap
        and (limit is None or len(on_node) + ahead_node + 1 <= limit)
    ):
        reasons.append(
            Reason(
                rule="oom_cap",
                message=f"{len(on_node)} running{queued} + 1 requested > cap {cap} for {ttype} on "
                f"{req.node}, lowered after repeated OOMs",
                requested=1,
                used=len(on_node),
                limit=cap,
                retry_after=_expected_end_wait(on_node, expected, now),
                details={"configured": limit, "queued": ahead_node},
            )
        )

    cluster = settings.task_limit(ttype, "cluster")
    if cluster is not None:
        held_elsewhere = 0
        if reservations:
            per_node_count: dict[str, int] = {}
            for r in of_type:
                per_node_count[r["node"]] = per_node_count.get(r["node"], 0) + 1
            for res in reservations:
                if res["task_type"] == ttype and res["node"] != req.node:
                    held_elsewhere += max(0, res["slots"] - per_node_count.get(res["node"], 0))
        if len(of_type) + ahead_cluster + held_elsewhere + 1 > cluster:
            extra = f" + {ahead_cluster} queued" if ahead_cluster else ""
            if held_elsewhere:
                extra += f" + {held_elsewhere} reserved on other nodes"
            reasons.append(
                Reason(
                    rule="cluster_limit",
                    message=f"{len(of_type)} running{extra} + 1 requested > cluster limit {cluster}",
                    requested=1,
                    used=len(of_type),
                    limit=cluster,
                    retry_after=_expected_end_wait(of_type, expected, now),
                    details={"queued": ahead_cluster, "reserved_elsewhere": held_elsewhere},
                )
            )

    rate = settings.rate_limit(ttype)
    if rate is not None:
        factor = float(seen["factor"]) if seen["factor"] is not None else 1.0
        if factor < 1.0:  # backpressure: this node's recent jobs keep failing
            rate = (rate[0] * factor, rate[1])
        tokens = _bucket_tokens(tx, req.node, ttype, rate, now)
        if tokens < 1.0:
            per_minute, burst = rate
            wait = (1.0 - tokens) * 60.0 / per_minute if per_minute > 0 else None
            reasons.append(
                Reason(
                    rule="rate",
                    message=f"spawn rate for {ttype} on {req.node} exhausted ({per_minute:g}/min, "
                    f"burst {burst:g})",
                    requested=1,
                    used=int(burst - tokens),
                    limit=burst,
                    retry_after=wait,
                    details={
                        "per_minute": per_minute,
                        "tokens": round(tokens, 3),
                        "backpressure": round(factor, 3),
                    },
                )
            )

    retry: float | None = None
    if reasons:
        waits = [r.retry_after for r in reasons]
        retry = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
    decision = Decision(
        allowed=not reasons,
        task_type=ttype,
        node=req.node,
        reasons=reasons,
        retry_after=None if retry is None else round(retry, 3),
        queued=ahead_node,
    )
    decision.warnings, decision._breaker, decision._rate = warnings, breaker, rate
    return decision


def _bucket_tokens(tx: Tx, node: str, ttype: str, rate: tuple[float, float], now: float) -> float:
    per_minute, burst = rate
    row = tx.one(
        "SELECT tokens, updated_at FROM rate_buckets WHERE node = ? AND task_type = ?",
        (node, ttype),
    )
    if row is None:
        return burst
    if row["updated_at"] > now:
        # the clock stepped back: restamp the bucket now, so that refilling resumes at once
        # instead of after the size of the step (refilling nothing for the step itself)
        tx.execute(
            "UPDATE rate_buckets SET updated_at = ? WHERE node = ? AND task_type = ?",
            (now, node, ttype),
        )
        return min(burst, row["tokens"])
    elapsed = now - row["updated_at"]
    return min(burst, row["tokens"] + elapsed * per_minute / 60.0)


def _take_token(tx: Tx, node: str, ttype: str, rate: tuple[float, float], now: float) -> None:
    tokens = _bucket_tokens(tx, node, ttype, rate, now) - 1.0
    changed = tx.execute(
        "UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE node = ? AND task_type = ?",
        (tokens, now, node, ttype),
    )
    if not changed:
        tx.execute(
            "INSERT INTO rate_buckets (node, task_type, tokens, updated_at) VALUES (?,?,?,?)",
            (node, ttype, tokens, now),
        )


def admit(
    tx: Tx,
    req: Request,
    settings: Settings,
    *,
    state_dir: str | None,
    take_slot: bool,
    action: str,
    log: bool = True,
) -> Decision:
    """Reap, evaluate and (when allowed and ``take_slot``) insert the task: one transaction."""
    now = tx.now()
    lease_ttl = float(settings.get("store.lease_ttl"))
    seen = probe(tx, req.node, req.task_type.value)
    reap(tx, now, settings, seen)
    decision = evaluate(tx, req, settings, now, state_dir=state_dir, seen=seen)
    if decision.allowed and take_slot:
        if req.task_id is not None:
            if not req.task_id.strip() or len(req.task_id) > 200:
                raise UsageError("--task-id must be a non-empty string of at most 200 characters")
            if tx.one("SELECT 1 AS x FROM tasks WHERE task_id = ?", (req.task_id,)):
                raise UsageError(f"task id {req.task_id!r} is already registered and running")
        decision.task_id = req.task_id or f"{req.task_type.value}-{os.urandom(6).hex()}"
        # An admission is always logged, and its log entry's id (AUTOINCREMENT / BIGSERIAL:
        # ever larger, never reused) is the slot's fencing token.
        token = log_decision(tx, req, decision, action, now, settings)
        task_id = decision.task_id
        decision.trial = guards.breaker_admit(tx, settings, decision._breaker, now)
        tx.execute(
            "INSERT INTO tasks (task_id, task_type, node, host, boot_id, pid, pid_start, pgid, "
            "wrapper_pid, wrapper_start, config_name, command, source, started_at, "
            "lease_expires, lease_token, trial) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                task_id,
                req.task_type.value,
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
                int(decision.trial),
            ),
        )
        rate = decision._rate
        if rate is not None:
            _take_token(tx, req.node, req.task_type.value, rate, now)
        if req.waiter_seq is not None:
            tx.execute("DELETE FROM waiters WHERE seq = ?", (req.waiter_seq,))
        decision.lease_token = token
    elif log:
        log_decision(tx, req, decision, action, now, settings)
    if not decision.allowed and req.waiter_seq is not None:
        # a waiter that still polls is alive: other hosts judge its place by this
        tx.execute("UPDATE waiters SET heartbeat_at = ? WHERE seq = ?", (now, req.waiter_seq))
    return decision


def _lease_for(req: Request, settings: Settings, lease_ttl: float) -> float:
    """`run` renews its lease; a `register`ed holder has nobody doing so, so other hosts
    (which judge it by its lease) give it twice the expected duration of its type (on its
    own host its process decides, and any command there refreshes the lease)."""
    if req.source == "run":
        return lease_ttl
    expected = settings.duration(req.task_type.value) or 0.0
    return max(lease_ttl, 2.0 * expected)


def log_decision(
    tx: Tx, req: Request, decision: Decision, action: str, now: float, settings: Settings
) -> int:
    """Write the decision to the log; return its id."""
    rules = json.dumps([r.to_dict() for r in decision.reasons], default=str)
    row = tx.one(
        "INSERT INTO decisions (at, action, task_type, node, host, pid, who, allowed, rules, "
        "retry_after, task_id) VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (
            now,
            action,
            decision.task_type,
            decision.node,
            req.host,
            req.pid or os.getpid(),
            req.who,
            int(decision.allowed),
            rules,
            decision.retry_after,
            decision.task_id,
        ),
    )
    assert row is not None
    if os.urandom(1)[0] < 4:  # prune about once per 64 decisions, not on every one
        cutoff = now - float(settings.get("store.decision_log_days")) * 86400.0
        tx.execute("DELETE FROM decisions WHERE at < ?", (cutoff,))
        tx.execute("DELETE FROM task_history WHERE ended_at < ?", (cutoff,))
    return int(row["id"])


def release(
    tx: Tx,
    task_id: str,
    *,
    token: int | None,
    exit_code: int | None,
    status: str,
    reason: str | None = None,
    settings: Settings,
) -> Row | None:
    """Free ``task_id``'s slot once; None when it was already released (or reaped)."""
    row = tx.one("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
    if row is None:
        return None
    if token is not None and int(row["lease_token"]) != int(token):
        raise StaleLease(
            f"lease token {token} no longer holds task {task_id} (now held with token "
            f"{row['lease_token']}); nothing was released"
        )
    now = tx.now()
    if not _finish(tx, row, now, exit_code=exit_code, status=status, reason=reason):
        return None
    guards.task_ended(tx, settings, row, status, reason, now)
    row["ended_at"] = now
    row["duration"] = max(0.0, now - row["started_at"])
    return row


def renew(tx: Tx, task_id: str, token: int, lease_ttl: float) -> bool:
    """Extend a lease; False when the slot is no longer this holder's."""
    now = tx.now()
    return bool(
        tx.execute(
            "UPDATE tasks SET lease_expires = ? WHERE task_id = ? AND lease_token = ?",
            (now + lease_ttl, task_id, token),
        )
    )
