"""The safeguard rules admission composes: breakers, resource thresholds, backpressure and
OOM-lowered caps, and what a finished task feeds back into them.

Every function takes the open transaction, so these rules are decided in the same
transaction as the limits and the insert of the task row.
"""

from __future__ import annotations

import json
import math

from ringrift_coord import breakers, readings
from ringrift_coord.breakers import HALF_OPEN, OPEN, BreakerConfig
from ringrift_coord.store.base import Row, Tx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.admission import Reason
    from ringrift_coord.config import Settings

FAILED_STATUSES = ("failed", "killed", "oom", "spawn_failed")


# --------------------------------------------------------------------------- breakers


def breaker_rule(
    tx: Tx, settings: Settings, node: str, ttype: str, now: float
) -> tuple[Reason | None, breakers.Breaker | None]:
    """The (node, type) breaker as a blocking rule, read-only; and the breaker if it exists."""
    from ringrift_coord.admission import Reason

    if not breakers.exists(tx, node, ttype):
        return None, None
    cfg = BreakerConfig.from_settings(settings)
    breaker = breakers.load(tx, node, ttype, now)
    if breaker.rebase(now, cfg):  # the clock stepped back past its opening: keep the shorter
        breakers.save(tx, breaker)  # wait (admission runs in a write transaction)
    state, retry_at = breaker.view(now, cfg)
    last = f" (last: {breaker.last_reason})" if breaker.last_reason else ""
    if state == OPEN:
        assert retry_at is not None
        return Reason(
            "breaker",
            f"circuit breaker for {ttype} on {node} is open after "
            f"{breaker.recent_failures(now, cfg)} failure(s){last}",
            used=breaker.recent_failures(now, cfg),
            limit=cfg.failure_threshold,
            retry_after=round(retry_at - now, 3),
            details={"state": state, "opened_at": breaker.opened_at, "retry_at": retry_at},
        ), breaker
    trials = breaker.trials_in_flight  # trials still running, of this half-open period or not
    if state == HALF_OPEN and trials >= cfg.half_open_trials:
        return Reason(
            "breaker",
            f"circuit breaker for {ttype} on {node} is half-open with {trials} trial(s) "
            f"running{last}",
            requested=1,
            used=trials,
            limit=cfg.half_open_trials,
            retry_after=float(settings.get("durations").get(ttype) or 5.0),
            details={"state": state},
        ), breaker
    return None, breaker


def breaker_admit(tx: Tx, settings: Settings, breaker: breakers.Breaker | None, now: float) -> bool:
    """Pass an admitted task through its breaker; True when it runs as a half-open trial."""
    if breaker is None:
        return False
    cfg = BreakerConfig.from_settings(settings)
    allowed, trial, _ = breaker.admit(now, cfg)
    assert allowed  # the rule above said so, in this same transaction
    breakers.save(tx, breaker)
    return trial


# --------------------------------------------------------------------------- thresholds


def threshold_rules(
    tx: Tx,
    settings: Settings,
    node: str,
    now: float,
    *,
    local: bool,
    paths: list[str],
) -> tuple[list[Reason], list[str], Row | dict[str, Any] | None]:
    """Critical readings block the node; warnings are reported, not enforced.

    Uses the node's latest sample while it is fresh; for this host without a fresh sample,
    cheap live readings (memory, disk, load).
    """
    from ringrift_coord.admission import Reason

    limits = settings.get("thresholds")
    max_age = float(settings.get("resources.max_sample_age"))
    reading: Row | dict[str, Any] | None = readings.latest(tx, node)
    if reading is not None and now - reading["at"] > max_age:
        reading = None  # stale: ignored (shown as stale by `resources`)
    if reading is None and local and settings.get("resources.live_host"):
        reading = readings.live_host(paths)
    if reading is None:
        return [], [], None
    reasons: list[Reason] = []
    warnings: list[str] = []
    for resource in readings.RESOURCES:
        value = reading.get(resource)
        if value is None:
            continue
        warn, crit = limits[resource]["warning"], limits[resource]["critical"]
        if value >= crit:
            reasons.append(
                Reason(
                    "threshold",
                    f"{resource} at {value:.0f}% on {node} >= critical {crit}%",
                    used=value,
                    limit=crit,
                    retry_after=60.0,
                    details={
                        "resource": resource,
                        "source": reading.get("source"),
                        "at": reading.get("at", now),
                    },
                )
            )
        elif value >= warn:
            warnings.append(f"{resource} at {value:.0f}% on {node} >= warning {warn}%")
    load, cpus = reading.get("load_avg"), reading.get("cpus")
    if load is not None and cpus:
        critical_load = float(limits["load_avg_critical_per_cpu"]) * cpus
        if load >= critical_load:
            reasons.append(
                Reason(
                    "threshold",
                    f"load average {load:.2f} on {node} >= critical {critical_load:g} "
                    f"({limits['load_avg_critical_per_cpu']:g} x {cpus} cpus)",
                    used=load,
                    limit=critical_load,
                    retry_after=60.0,
                    details={"resource": "load_avg", "source": reading.get("source")},
                )
            )
    return reasons, warnings, reading


# --------------------------------------------------------------------------- caps, rates


def lowered_cap(tx: Tx, settings: Settings, node: str, ttype: str, now: float) -> int | None:
    """The OOM-lowered per-node cap, grown back by one per decay interval (None: none)."""
    row = tx.one(
        "SELECT cap, lowered_at FROM lowered_caps WHERE node = ? AND task_type = ?", (node, ttype)
    )
    if row is None:
        return None
    interval = max(1.0, float(settings.get("oom.decay_interval")))
    cap = int(row["cap"]) + int(max(0.0, now - row["lowered_at"]) // interval)
    configured = settings.task_limit(ttype, "per_node")
    if configured is not None and cap >= configured:
        return None
    return cap


def rate_factor(tx: Tx, node: str) -> float:
    row = tx.one("SELECT factor FROM backpressure WHERE node = ?", (node,))
    return 1.0 if row is None else float(row["factor"])


def _adjust_backpressure(tx: Tx, settings: Settings, node: str, ok: bool, now: float) -> None:
    bp = settings.get("backpressure")
    factor = rate_factor(tx, node)
    if ok:
        if factor >= 1.0:
            return
        factor = min(1.0, factor + float(bp["increase"]))  # additive increase
    else:
        factor = max(float(bp["min_factor"]), factor * float(bp["decrease"]))  # mult. decrease
    tx.execute("DELETE FROM backpressure WHERE node = ?", (node,))
    if factor < 1.0:
        tx.execute(
            "INSERT INTO backpressure (node, factor, updated_at) VALUES (?,?,?)",
            (node, factor, now),
        )


def _note_oom(tx: Tx, settings: Settings, node: str, ttype: str, now: float) -> None:
    """Repeated OOMs of a type on a node lower that node's cap for the type."""
    oom = settings.get("oom")
    recent = tx.one(
        "SELECT COUNT(*) AS n FROM task_history WHERE node = ? AND task_type = ? "
        "AND status = 'oom' AND ended_at >= ?",
        (node, ttype, now - float(oom["window"])),
    )
    count = int(recent["n"]) if recent else 0
    if count < int(oom["lower_after"]):
        return
    running = tx.one(
        "SELECT COUNT(*) AS n FROM tasks WHERE node = ? AND task_type = ?", (node, ttype)
    )
    current = lowered_cap(tx, settings, node, ttype, now)
    base = (running["n"] if running else 0) + 1
    configured = settings.task_limit(ttype, "per_node")
    for bound in (current, configured):
        if bound is not None:
            base = min(base, bound)
    cap = max(1, min(base - 1, math.floor(base * float(oom["factor"]))))
    tx.execute("DELETE FROM lowered_caps WHERE node = ? AND task_type = ?", (node, ttype))
    tx.execute(
        "INSERT INTO lowered_caps (node, task_type, cap, lowered_at, ooms) VALUES (?,?,?,?,?)",
        (node, ttype, cap, now, count),
    )


# --------------------------------------------------------------------------- outcomes


def task_ended(
    tx: Tx, settings: Settings, row: Row, status: str, reason: str | None, now: float
) -> None:
    """Feed a finished task to its breaker, its node's backpressure and the OOM caps."""
    ok = status == "ok"
    if not ok and status not in FAILED_STATUSES:
        if row.get("trial"):  # reaped or otherwise lost: let another trial run
            breaker = breakers.load(tx, row["node"], row["task_type"], now)
            breaker.trial_lost()
            breakers.save(tx, breaker)
        return
    if ok and not row.get("trial"):
        # the common case: a success on a node with no breaker history and no backpressure
        seen = tx.one(
            "SELECT (SELECT COUNT(*) FROM breakers WHERE node = ? AND task_type = ?) AS b, "
            "(SELECT COUNT(*) FROM backpressure WHERE node = ?) AS bp",
            (row["node"], row["task_type"], row["node"]),
        )
        if seen is not None and not seen["b"] and not seen["bp"]:
            return
    cfg = BreakerConfig.from_settings(settings)
    label = reason or status  # "exit code 3", "killed by SIGKILL", ...
    if status == "oom" and reason and "oom" not in reason.lower():
        label = f"oom: {reason}"
    breakers.record_outcome(
        tx,
        cfg,
        row["node"],
        row["task_type"],
        now,
        ok=ok,
        trial=bool(row.get("trial")),
        reason=None if ok else label[:300],
        evidence=None if ok else reason,
    )
    _adjust_backpressure(tx, settings, row["node"], ok, now)
    if status == "oom":
        _note_oom(tx, settings, row["node"], row["task_type"], now)


def record_manual(
    tx: Tx,
    settings: Settings,
    node: str,
    ttype: str,
    now: float,
    *,
    ok: bool,
    reason: str | None,
) -> breakers.Breaker:
    """``breakers record-failure`` / ``record-success`` from scripts."""
    cfg = BreakerConfig.from_settings(settings)
    trial = False
    if breakers.exists(tx, node, ttype):
        breaker = breakers.load(tx, node, ttype, now)
        trial = breaker.view(now, cfg)[0] == HALF_OPEN
        if trial:  # half-open: this outcome is a trial's, one that starts and ends at once
            if breaker.state == OPEN:  # (without taking the place of a trial still running)
                breaker.state, breaker.trial_successes = HALF_OPEN, 0
            breaker.trials_in_flight += 1
            breakers.save(tx, breaker)
    result = breakers.record_outcome(tx, cfg, node, ttype, now, ok=ok, trial=trial, reason=reason)
    _adjust_backpressure(tx, settings, node, ok, now)
    return result


def describe_reading(reading: Row | dict[str, Any] | None) -> str:
    return json.dumps(reading, default=str) if reading else "none"
