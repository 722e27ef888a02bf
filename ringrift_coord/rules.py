"""The rules admission composes: halt, circuit breaker, resource thresholds, per-node limit
and reservations, OOM-lowered cap, hardware cap, cluster limit, spawn-rate bucket with
backpressure.

Each rule is one function ``rule(tx, req, settings, now, ev) -> Reason | list[Reason] | None``
that reads the state as the admission transaction sees it, through ``ev`` (an
``Evaluation``: what one evaluation reads once and several rules share) and the module that
owns each table. No rule writes: a write a rule finds due (a breaker re-based after the
store's clock stepped back, a rate bucket stamped in the future, a stale mirror halt file)
goes to ``ev.chores``, which ``admission.admit`` runs in its write transaction. ``RULES`` is
the order admission applies them in, which is the order a refusal lists them in; a new rule
(peak hours, an optimizer's cap) is one more function in that tuple.

The token bucket is kept here too: the rate rule reads it, ``take_token`` spends it.
"""

from __future__ import annotations

from ringrift_coord import breakers, feedback, halts, identity, queue, readings, reservations, slots
from ringrift_coord.breakers import HALF_OPEN, OPEN, BreakerConfig
from ringrift_coord.decision import Reason
from ringrift_coord.tasktypes import SELFPLAY

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.decision import Request
    from ringrift_coord.store.base import Row, Tx

    Rule = Callable[[Tx, Request, Settings, float, "Evaluation"], "Reason | list[Reason] | None"]

# admission's probe: has the optimizer set a self-play target for the node? (node,)
TARGET_PROBE = "(SELECT COUNT(*) FROM selfplay_targets WHERE node = ?)"

UNKNOWN_RETRY = 5.0  # seconds to suggest when no learned duration can say better


class Evaluation:
    """What one evaluation reads once and shares between rules, and what it leaves behind.

    ``probe``: admission's one-statement probe of the side tables (which are empty) and of
    the counts; ``on_node``: how many of the type run on this node and ``of_type``: in the
    whole store (the probe's counts; when the reaper freed slots after the probe, admission
    sets them to None and they are counted again: ``on_node`` here, ``of_type`` by the
    cluster rule, only when there is a cluster limit);
    ``waiting``: the nodes of the waiters ahead of the request; ``reservations`` in force.
    Left behind: ``breaker`` (the task's breaker, for admit to pass it through), ``rate``
    (the bucket's rate after backpressure, for admit to spend a token), ``warnings``
    (readings past their warning level: shown, not enforced) and ``chores``.
    """

    __slots__ = (
        "probe",
        "state_dir",
        "halt_file",
        "live",
        "on_node",
        "of_type",
        "waiting",
        "ahead_node",
        "reservations",
        "breaker",
        "rate",
        "warnings",
        "chores",
    )

    def __init__(
        self,
        tx: Tx,
        req: Request,
        now: float,
        probe: Row,
        state_dir: str | None,
        halt_file: halts.Snapshot | None = None,
        live: dict[str, Any] | None = None,
    ) -> None:
        ttype = req.task_type
        self.probe, self.state_dir = probe, state_dir
        # this host's halt file, read before the transaction (else read from state_dir)
        self.halt_file: halts.Snapshot | str | None = (
            halt_file if halt_file is not None else state_dir
        )
        self.live = live  # this host's live reading, taken before the transaction
        # the probe's counts, unless the reaper freed slots after it (None: count now)
        on_node = probe["on_node"]
        self.on_node = slots.count(tx, req.node, ttype) if on_node is None else int(on_node)
        self.of_type: int | None = None if probe["of_type"] is None else int(probe["of_type"])
        self.waiting = queue.ahead(tx, ttype, req.waiter_seq) if probe["waiters"] else []
        self.ahead_node = sum(1 for node in self.waiting if node == req.node)
        self.reservations = reservations.active(tx, now) if probe["reservations"] else []
        self.breaker: breakers.Breaker | None = None
        self.rate: tuple[float, float] | None = None
        self.warnings: list[str] = []
        self.chores: list[Callable[[Tx], None]] = []


def _slot_wait(
    tx: Tx,
    settings: Settings,
    ttype: str,
    node: str | None,
    limit: int,
    ahead: int,
    now: float,
    config_name: str | None = None,
) -> float:
    """Seconds until a slot of ``limit`` is expected to free for a refused request, from the
    running tasks' learned (or default) durations (``schedule.forecast``); at least
    ``UNKNOWN_RETRY``. Called only once a rule refuses: an admitted request never pays for it."""
    from ringrift_coord.schedule import forecast

    return forecast.retry_after(
        tx, settings, ttype, node, limit, ahead, now, UNKNOWN_RETRY, config_name
    )


# --------------------------------------------------------------------------- halt


def halt(tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation) -> list[Reason]:
    """Every halt that applies to the type, and this host's halt file (see ``halts``)."""
    if ev.probe["halts"]:
        state = halts.state(tx, ev.halt_file, now, req.task_type, req.node)
    else:
        state = halts.file_only(ev.halt_file, now)
    stale = state.stale_file
    if stale is not None:
        ev.chores.append(lambda tx: halts.remove_stale_file(stale))
    return state.reasons(now)


# --------------------------------------------------------------------------- breaker


def breaker(tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation) -> Reason | None:
    """The (node, type) circuit breaker: open, or half-open with its trials all running."""
    if not ev.probe["breaker"]:
        return None
    ttype = req.task_type
    cfg = BreakerConfig.from_settings(settings)
    found = ev.breaker = breakers.load(tx, req.node, ttype, now)
    if found.rebase(now, cfg):  # the clock stepped back past its opening: keep the shorter
        ev.chores.append(
            lambda tx: breakers.save(tx, found, settings=settings)
        )  # wait, or it slides with "now"
    state, retry_at = found.view(now, cfg)
    last = f" (last: {found.last_reason})" if found.last_reason else ""
    if state == OPEN:
        assert retry_at is not None
        return Reason(
            "breaker",
            f"circuit breaker for {ttype} on {req.node} is open after "
            f"{found.recent_failures(now, cfg)} failure(s){last}",
            used=found.recent_failures(now, cfg),
            limit=cfg.failure_threshold,
            retry_after=round(retry_at - now, 3),
            details={"state": state, "opened_at": found.opened_at, "retry_at": retry_at},
        )
    trials = found.trials_in_flight  # trials still running, of this half-open period or not
    if state == HALF_OPEN and trials >= cfg.half_open_trials:
        return Reason(
            "breaker",
            f"circuit breaker for {ttype} on {req.node} is half-open with {trials} trial(s) "
            f"running{last}",
            requested=1,
            used=trials,
            limit=cfg.half_open_trials,
            retry_after=float(settings.get("durations").get(ttype) or UNKNOWN_RETRY),
            details={"state": state},
        )
    return None


def pass_breaker(tx: Tx, settings: Settings, found: breakers.Breaker | None, now: float) -> bool:
    """Pass an admitted task through its breaker; True when it runs as a half-open trial."""
    if found is None:
        return False
    allowed, trial, _ = found.admit(now, BreakerConfig.from_settings(settings))
    assert allowed  # the rule above said so, in this same transaction
    breakers.save(tx, found, settings=settings)
    return trial


# --------------------------------------------------------------------------- peak hours


def peak_hours(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> Reason | None:
    """With ``peak_hours.enforce``: a type of ``peak_hours.task_types`` does not start inside
    a peak window, nor when it is expected to run into the next one (``schedule.peak``).
    Off (the default) or another type: one dictionary lookup, nothing imported."""
    peak = settings.get("peak_hours")
    if not peak["enforce"] or req.task_type not in peak["task_types"]:
        return None
    from ringrift_coord.schedule import peak as windows

    found = windows.verdict_at(tx, settings, req.task_type, req.config_name, now)
    if found.allowed:
        return None
    return Reason(
        "peak_hours",
        found.reason,
        retry_after=found.retry_after,
        details={
            "expected_seconds": found.expected_seconds,
            "expected_finish": found.expected_finish,
            "peak_start": found.peak_start,
            "peak_end": found.peak_end,
            "in_peak": found.in_peak,
            "timezone": found.timezone,
        },
    )


# --------------------------------------------------------------------------- thresholds


def live_reading(
    settings: Settings, state_dir: str | None, node: str | None = None
) -> dict[str, Any] | None:
    """This host's cheap live reading (memory, disk, load), or None when admission of
    ``node`` would not use one (another node, or ``resources.live_host`` off). Taken before
    the admission transaction: nothing is read from the filesystem under the store's lock."""
    if node is not None and (
        node != identity.local_node() or not settings.get("resources.live_host")
    ):
        return None
    paths = [state_dir] if state_dir else []
    return readings.live_host(paths + list(settings.get("resources.data_paths")))


def thresholds(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> list[Reason] | None:
    """Critical readings block the node; warnings are reported, not enforced.

    Uses the node's latest sample while it is fresh; for this host without a fresh sample,
    cheap live readings (memory, disk, load) when ``resources.live_host`` is on.
    """
    live = req.node == identity.local_node() and settings.get("resources.live_host")
    if not ev.probe["reading"] and not live:
        return None
    reading: Row | dict[str, Any] | None = (
        readings.latest(tx, req.node) if ev.probe["reading"] else None
    )
    if reading is not None and readings.is_stale(
        reading["at"], now, float(settings.get("resources.max_sample_age"))
    ):
        reading = None  # stale: ignored (shown as stale by `resources`)
    if reading is None and live:
        reading = ev.live if ev.live is not None else live_reading(settings, ev.state_dir)
    if reading is None:
        return None
    limits = settings.get("thresholds")
    levels = readings.levels(reading, limits)
    reasons: list[Reason] = []
    # this host's own live reading: say so, and how a busy development box turns it off
    here = (
        " (this host's live reading; resources.live_host=false leaves it out)"
        if reading.get("source") == "live"
        else ""
    )
    for resource in readings.RESOURCES:
        value, crit = reading.get(resource), limits[resource]["critical"]
        if levels[resource] == "critical":
            reasons.append(
                Reason(
                    "threshold",
                    f"{resource} at {value:.0f}% on {req.node} >= critical {crit}%{here}",
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
        elif levels[resource] == "warning":
            warn = limits[resource]["warning"]
            ev.warnings.append(f"{resource} at {value:.0f}% on {req.node} >= warning {warn}%")
    if levels["load_avg"] == "critical":
        load, cpus = reading["load_avg"], reading["cpus"]
        critical = readings.critical_load(cpus, limits)
        per_cpu = limits["load_avg_critical_per_cpu"]
        reasons.append(
            Reason(
                "threshold",
                f"load average {load:.2f} on {req.node} >= critical {critical:g} "
                f"({per_cpu:g} x {cpus} cpus){here}",
                used=load,
                limit=critical,
                retry_after=60.0,
                details={"resource": "load_avg", "source": reading.get("source")},
            )
        )
    return reasons


# --------------------------------------------------------------------------- limits


def node_limit(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> Reason | None:
    """The per-node limit, less the slots reserved on the node for other types of the same
    resource class (held whether or not they are used yet)."""
    ttype = req.task_type
    limit = settings.task_limit(ttype, "per_node")
    if limit is None:
        return None
    held_for_others = reservations.held_for_others(ev.reservations, req.node, ttype)
    effective = limit - held_for_others
    used, ahead = ev.on_node, ev.ahead_node
    if used + ahead + 1 <= effective:
        return None
    wait = _slot_wait(tx, settings, ttype, req.node, effective, ahead, now)
    queued = f" + {ahead} queued" if ahead else ""
    if used + ahead + 1 > limit:
        return Reason(
            "node_limit",
            f"{used} running{queued} + 1 requested > per-node limit {limit} on {req.node}",
            requested=1,
            used=used,
            limit=limit,
            retry_after=wait,
            details={"queued": ahead},
        )
    return Reason(
        "reservation",
        f"{held_for_others} of the {limit} per-node slots on {req.node} are reserved for other "
        f"work; {used} running{queued} + 1 requested > {effective}",
        requested=1,
        used=used,
        limit=effective,
        retry_after=wait,
        details={"reserved": held_for_others, "queued": ahead},
    )


def _below_limit_cap(
    tx: Tx,
    rule: str,
    cap: int | None,
    what: str,
    req: Request,
    settings: Settings,
    now: float,
    ev: Evaluation,
    details: dict[str, Any],
) -> Reason | None:
    """A node's cap for the type below its per-node limit (OOM-lowered, hardware): refused
    when running + queued ahead + 1 exceed it, unless the per-node limit already says so."""
    ttype = req.task_type
    limit = settings.task_limit(ttype, "per_node")
    used, ahead = ev.on_node, ev.ahead_node
    if cap is None or used + ahead + 1 <= cap:
        return None
    if limit is not None and used + ahead + 1 > limit:
        return None  # the per-node limit already says so
    queued = f" + {ahead} queued" if ahead else ""
    return Reason(
        rule,
        f"{used} running{queued} + 1 requested > {what}",
        requested=1,
        used=used,
        limit=cap,
        retry_after=_slot_wait(tx, settings, ttype, req.node, cap, ahead, now),
        details={**details, "configured": limit, "queued": ahead},
    )


def oom_cap(tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation) -> Reason | None:
    """The node's cap for the type, lowered after repeated OOMs (see ``feedback``)."""
    if not ev.probe["cap"]:
        return None
    ttype = req.task_type
    cap = feedback.lowered_cap(tx, settings, req.node, ttype, now)
    what = f"cap {cap} for {ttype} on {req.node}, lowered after repeated OOMs"
    return _below_limit_cap(tx, "oom_cap", cap, what, req, settings, now, ev, {})


def hardware_cap(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> Reason | None:
    """Self-play on a node up to its hardware cap (GPU model and count, CPUs, memory: see
    ``optimizer.capacity``), from its latest reading of any age (hardware does not go
    stale), when ``hardware.cap_selfplay`` is on. A node of unknown hardware is not limited."""
    if req.task_type != SELFPLAY or not ev.probe["reading"]:
        return None
    if not settings.get("hardware.cap_selfplay"):
        return None
    reading = readings.latest(tx, req.node)
    if reading is None:
        return None
    from ringrift_coord.optimizer import capacity

    found = capacity.of_reading(reading, settings)
    cap = found["max_selfplay_jobs"]
    what = (
        f"hardware cap {cap} for {req.task_type} on {req.node} (bounded by {found['bounded_by']})"
    )
    details = {k: found[k] for k in ("bounded_by", "gpu_model", "per_gpu")}
    return _below_limit_cap(tx, "hardware_cap", cap, what, req, settings, now, ev, details)


def cluster_limit(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> Reason | None:
    """The cluster limit, counting the waiters ahead and the type's reserved, still unused
    slots on other nodes."""
    ttype = req.task_type
    cluster = settings.task_limit(ttype, "cluster")
    if cluster is None:
        return None
    if ev.reservations:
        running = [r["node"] for r in slots.of_type(tx, ttype)]
        used = len(running)
    else:
        running = []
        used = slots.count_type(tx, ttype) if ev.of_type is None else ev.of_type
    held_elsewhere = reservations.held_elsewhere(ev.reservations, running, req.node, ttype)
    ahead = len(ev.waiting)
    if used + ahead + held_elsewhere + 1 <= cluster:
        return None
    extra = f" + {ahead} queued" if ahead else ""
    if held_elsewhere:
        extra += f" + {held_elsewhere} reserved on other nodes"
    return Reason(
        "cluster_limit",
        f"{used} running{extra} + 1 requested > cluster limit {cluster}",
        requested=1,
        used=used,
        limit=cluster,
        retry_after=_slot_wait(tx, settings, ttype, None, cluster - held_elsewhere, ahead, now),
        details={"queued": ahead, "reserved_elsewhere": held_elsewhere},
    )


# --------------------------------------------------------------------------- config share


def config_share(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> Reason | None:
    """With ``optimizer.enforce_config_shares``: a self-play job of a board config already
    running its largest-remainder share of the node's self-play slots (``selfplay_configs``'
    weights; see ``optimizer.distribution``) is refused. Configs not listed are not limited."""
    config = req.config_name
    if req.task_type != SELFPLAY or not config:
        return None
    if not settings.get("optimizer.enforce_config_shares"):
        return None
    configured = settings.get("selfplay_configs")
    if config not in configured:
        return None
    from ringrift_coord.optimizer import distribution

    slots_known, basis = distribution.node_slots(tx, settings, req.node, now)
    if slots_known is None:
        return None
    try:
        share = distribution.split(slots_known, dict(configured), req.node)[config]
    except ValueError:  # every weight 0: nothing to share by
        return None
    running = slots.of_config(tx, req.node, "selfplay", config)
    used = len(running)
    if used + 1 <= share:
        return None
    return Reason(
        "config_share",
        f"{used} {config} running + 1 requested > its share {share} of the {slots_known} "
        f"self-play slots on {req.node} ({basis})",
        requested=1,
        used=used,
        limit=share,
        # a share of 0 frees no slot as jobs end: no time to retry at (the weights decide)
        retry_after=(
            _slot_wait(tx, settings, "selfplay", req.node, share, 0, now, config) if share else None
        ),
        details={"config": config, "share": share, "slots": slots_known, "basis": basis},
    )


# --------------------------------------------------------------------------- spawn rate


def rate(tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation) -> Reason | None:
    """The (node, type) token bucket, its refill slowed by the node's backpressure."""
    ttype = req.task_type
    limits = settings.rate_limit(ttype)
    if limits is None:
        return None
    factor = 1.0
    if ev.probe["factor"] is not None:  # stored; what time has given back since counts too
        factor = feedback.rate_factor(tx, settings, req.node, now)
    if factor < 1.0:  # backpressure: this node's recent jobs keep failing
        limits = (limits[0] * factor, limits[1])
    ev.rate = limits
    tokens, ahead_of_clock = _bucket(tx, req.node, ttype, limits, now)
    if ahead_of_clock:
        # the clock stepped back: restamp the bucket now, so that refilling resumes at once
        # instead of after the size of the step (refilling nothing for the step itself)
        ev.chores.append(lambda tx: _restamp(tx, req.node, ttype, now))
    if tokens >= 1.0:
        return None
    per_minute, burst = limits
    return Reason(
        "rate",
        f"spawn rate for {ttype} on {req.node} exhausted "
        f"({_rounded(per_minute)}/min, burst {burst:g})",
        requested=1,
        used=int(burst - tokens),
        limit=burst,
        retry_after=(1.0 - tokens) * 60.0 / per_minute if per_minute > 0 else None,
        details={
            "per_minute": per_minute,
            "tokens": round(tokens, 3),
            "backpressure": round(factor, 3),
        },
    )


def _rounded(value: float) -> str:
    """A rate for people: 3 significant digits (1.40108 -> 1.4), whole numbers from 999.5 up
    (1200, never 1.2e+03), never an exponent (0.00001); ``details`` keep the exact figure."""
    if abs(value) >= 999.5:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    if "e" not in text:
        return text
    from decimal import Decimal  # (a rate under 0.0001/min: rare)

    return format(Decimal(text), "f")


def _bucket(
    tx: Tx, node: str, ttype: str, limits: tuple[float, float], now: float
) -> tuple[float, bool]:
    """(tokens in the bucket now, whether it was stamped after ``now``); reads only."""
    per_minute, burst = limits
    row = tx.one(
        "SELECT tokens, updated_at FROM rate_buckets WHERE node = ? AND task_type = ?",
        (node, ttype),
    )
    if row is None:
        return burst, False
    if row["updated_at"] > now:
        return min(burst, row["tokens"]), True
    elapsed = now - row["updated_at"]
    return min(burst, row["tokens"] + elapsed * per_minute / 60.0), False


def _restamp(tx: Tx, node: str, ttype: str, now: float) -> None:
    tx.execute(
        "UPDATE rate_buckets SET updated_at = ? WHERE node = ? AND task_type = ?",
        (now, node, ttype),
    )


def take_token(tx: Tx, node: str, ttype: str, limits: tuple[float, float], now: float) -> None:
    """Spend one token of the (node, type) bucket (an admission, or ``record_spawn``)."""
    tokens = _bucket(tx, node, ttype, limits, now)[0] - 1.0
    changed = tx.execute(
        "UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE node = ? AND task_type = ?",
        (tokens, now, node, ttype),
    )
    if not changed:
        tx.execute(
            "INSERT INTO rate_buckets (node, task_type, tokens, updated_at) VALUES (?,?,?,?)",
            (node, ttype, tokens, now),
        )


# --------------------------------------------------------------------------- optimizer


def optimizer(
    tx: Tx, req: Request, settings: Settings, now: float, ev: Evaluation
) -> Reason | None:
    """The node's self-play job target set by the feedback loop (``adjust``), while it is in
    force (younger than ``optimizer.state_ttl``); missing or expired: no limit (fail open).
    Self-play only: one indexed read of ``selfplay_targets``."""
    if req.task_type != SELFPLAY or not ev.probe["target"]:
        return None  # (the probe found no target row for the node: nothing to enforce)
    from ringrift_coord.optimizer import state as optimizer_state  # self-play only: ~0.4 ms

    # None also when its settings are bad (every command warns): the optimizer is not in use
    found = optimizer_state.enforced_target(tx, req.node, settings, now)
    if found is None:
        return None
    target, used, ahead = int(found["target"]), ev.on_node, ev.ahead_node
    if used + ahead + 1 <= target:
        return None
    saved = optimizer_state.load(tx, settings)
    age = max(0.0, now - float(found["at"]))  # stamped ahead of a clock stepped back: new
    interval = float(settings.get("optimizer.interval"))
    queued = f" + {ahead} queued" if ahead else ""
    return Reason(
        "optimizer",
        f"{used} running{queued} + 1 requested > self-play target {target} on {req.node} "
        f"(the optimizer's rate {saved['rate']:g}/h, last action {saved['action']})",
        requested=1,
        used=used,
        limit=target,
        retry_after=max(UNKNOWN_RETRY, interval - age),
        details={
            "rate": saved["rate"],
            "action": saved["action"],
            "at": found["at"],
            "target_age": round(age, 3),
            "cap": found["cap"],
            "queued": ahead,
        },
    )


RULES: tuple[Rule, ...] = (
    halt,
    breaker,
    peak_hours,
    thresholds,
    node_limit,
    oom_cap,
    hardware_cap,
    cluster_limit,
    config_share,
    rate,
    optimizer,
)
