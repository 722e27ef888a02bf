"""Prometheus metrics: every family read in ONE read transaction, exposed as Prometheus text.

``collect`` reads the store once (one read transaction, one moment) through the existing
read models (slots, queue, halts, breakers, feedback, readings, the optimizer's utilization,
transfers and the counters) and returns ``Metric`` families: plain data, no Prometheus
types (``gather``: the same with the moment and whether the store answered).
``exposition`` renders them through prometheus_client (a custom collector over a private
registry, ``generate_latest``): HELP and TYPE for each family, label values escaped
(a node name is data: quotes, backslashes and newlines come out escaped). ``write_textfile``
writes the exposition for node_exporter's textfile collector, atomically.

Ratios are 0-1, times are seconds, byte rates bytes per second (Prometheus' base units). A
series whose value is unknown is omitted, never NaN. A store that cannot be reached gives
``ringrift_store_up 0`` and none of the store's families; a host with no store yet (nothing
recorded there) gives the values of an empty store (``ringrift_store_schema_migrations 0``)
and creates none.

prometheus_client is imported only here, by the commands that export (``metrics``,
``serve``): never on admission's path.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from ringrift_coord.errors import CoordError, StateError, StoreBusy, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.context import Context
    from ringrift_coord.halts import Snapshot
    from ringrift_coord.store import Store
    from ringrift_coord.store.base import Row, Tx

GAUGE, COUNTER = "gauge", "counter"
RESOURCES = ("cpu", "memory", "disk", "gpu", "gpu_memory")  # ringrift_node_utilization
CRITICAL_RESOURCES = ("cpu", "memory", "disk", "gpu", "load_avg")  # those with a critical level
BREAKER_STATES = ("closed", "open", "half_open")
STEERED = ("cpu", "gpu")  # ringrift_optimization_resource: what utilization.controlling picks
KIB = 1024.0
TEXTFILE_SUFFIX = ".prom"
UP_HELP = "1 when the store answered this collection, else 0."


@dataclass
class Metric:
    """One family: its exposed name (a counter's ends in ``_total``), ``gauge`` or
    ``counter``, its help text, its label names and its samples (label values, value)."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)

    def add(self, value: float, *labels: str) -> None:
        self.samples[tuple(str(v) for v in labels)] = float(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "help": self.help,
            "samples": [
                {"labels": dict(zip(self.labels, key, strict=True)), "value": value}
                for key, value in sorted(self.samples.items())
            ],
        }


class Families:
    """The families of one collection, in the order they were declared."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}

    def family(self, name: str, kind: str, help_text: str, *labels: str) -> Metric:
        metric = Metric(name, kind, help_text, tuple(labels))
        self.by_name[name] = metric
        return metric

    def gauge(self, name: str, help_text: str, *labels: str) -> Metric:
        return self.family(name, GAUGE, help_text, *labels)

    def counter(self, name: str, help_text: str, *labels: str) -> Metric:
        return self.family(name, COUNTER, help_text, *labels)

    def set(self, name: str, help_text: str, value: float | None) -> None:
        """A label-less gauge; omitted when its value is unknown."""
        metric = self.gauge(name, help_text)
        if value is not None:
            metric.add(value)


@dataclass
class Collection:
    """What ``collect`` read: the families, the store's moment, and the problem that kept
    the store's families out (None: the store answered)."""

    metrics: list[Metric]
    at: float | None
    store_up: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "store_up": self.store_up,
            "problem": self.problem,
            "families": [m.to_dict() for m in self.metrics],
        }


# --------------------------------------------------------------------------- collecting


def collect(ctx: Context) -> list[Metric]:
    """Every family, read in one read transaction of the store (see the module docstring)."""
    return gather(ctx).metrics


def gather(ctx: Context) -> Collection:
    """``collect``, with the store's moment and whether (or why not) the store answered."""
    from ringrift_coord import halts
    from ringrift_coord.store import NoStore

    fam = Families()
    up = fam.gauge("ringrift_store_up", UP_HELP)
    local = halts.snapshot(ctx.state_dir)  # the file before the store: readable without it
    try:
        try:
            store = ctx.store
        except NoStore:  # nothing recorded on this host yet: an empty store's values
            with tempfile.TemporaryDirectory(prefix="ringrift-metrics-") as tmp:
                from ringrift_coord.store.sqlite import SQLiteStore

                with SQLiteStore(os.path.join(tmp, "empty.db"), clock=ctx.clock) as empty:
                    at = _collect_store(ctx, empty, fam, local, fresh=True)
        else:
            local = halts.snapshot(ctx.state_dir, store.scope)
            at = _collect_store(ctx, store, fam, local, fresh=False)
    except (StoreBusy, StateError) as exc:  # unreachable, refused, corrupt: no store families
        return down(ctx, exc.message, local)
    up.add(1)
    _local(ctx, fam, None)
    return Collection(list(fam.by_name.values()), at, True)


def down(ctx: Context, problem: str, local: Snapshot | None = None) -> Collection:
    """The collection of a store that did not answer: ``ringrift_store_up 0`` and what this
    host knows without the store (the collection time, the configuration's problems, this
    host's halt file: ``local``, else read now)."""
    from ringrift_coord import halts

    fam = Families()
    fam.gauge("ringrift_store_up", UP_HELP).add(0)
    _local(ctx, fam, local if local is not None else halts.snapshot(ctx.state_dir))
    return Collection(list(fam.by_name.values()), None, False, problem)


COLLECTED_HELP = (
    "When this exposition was collected, seconds since the epoch (a textfile's age: time() - this)."
)
CONFIG_PROBLEM_HELP = (
    "1 when the deferred configuration section has a bad value (its families are left out "
    "or partial; `ringrift-coord config validate` says why), else 0."
)
HALTED_HELP = "1 when any halt is in force (cluster, node, type or this host's halt file), else 0."
HALT_ACTIVE_HELP = (
    "1 per halt in force: scope cluster (every node), node (a drain) or file (this "
    "host's EMERGENCY_HALT file); type all or the halted type; node all or the node."
)


def _local(ctx: Context, fam: Families, local: Snapshot | None) -> None:
    """What this host knows without the store: the collection time, the configuration's
    problems and (``local``: the store did not answer) this host's halt file."""
    from ringrift_coord.config import DEFERRED_SECTIONS

    fam.set("ringrift_metrics_collected_timestamp_seconds", COLLECTED_HELP, ctx.clock.time())
    problem = fam.gauge("ringrift_config_problem", CONFIG_PROBLEM_HELP, "section")
    for section in DEFERRED_SECTIONS:
        problem.add(1 if section in ctx.settings.problems else 0, section)
    if local is None:
        return
    from ringrift_coord import halts, identity

    info = halts.unexpired(local.info, ctx.clock.time())
    fam.set("ringrift_halted", HALTED_HELP, 1 if info is not None else 0)
    active = fam.gauge("ringrift_halt_active", HALT_ACTIVE_HELP, "scope", "type", "node")
    if info is not None:
        active.add(1, "file", "all", identity.local_node())


def _collect_store(
    ctx: Context, store: Store, fam: Families, local: Snapshot, *, fresh: bool
) -> float:
    with store.read() as tx:
        now = tx.now()
        migrations = tx.one("SELECT COUNT(*) AS n FROM schema_migrations")
        fam.set(
            "ringrift_store_schema_migrations",
            "Schema migrations applied to the store (0: no store on this host yet).",
            0 if fresh else int(migrations["n"] if migrations else 0),
        )
        _optimizer(tx, ctx.settings, now, fam)
        nodes = _tasks(tx, ctx.settings, now, fam)
        _halts(tx, local, now, fam)
        _breakers(tx, ctx.settings, now, fam, set(nodes))
        _feedback(tx, ctx.settings, now, fam, nodes)
        _transfers(tx, ctx.settings, now, fam)
        _readings(tx, ctx.settings, now, fam, set(nodes))
    return now


def _optimizer(tx: Tx, settings: Settings, now: float, fam: Families) -> None:
    """The reference's cluster families and the optimizer's state."""
    from ringrift_coord.optimizer import utilization
    from ringrift_coord.optimizer.state import ACTIONS

    try:
        doc: dict[str, Any] | None = utilization.status(tx, settings, now)
        util = doc["utilization"] if doc else {}
    except CoordError:  # a bad resource_targets/optimizer setting: the figures alone
        doc = None
        util = utilization.cluster(tx, settings, now)

    def ratio(value: Any) -> float | None:
        return None if value is None else float(value) / 100.0

    fam.set(
        "ringrift_cluster_cpu_utilization",
        "Cluster CPU utilization, mean over the fresh readings weighted by CPUs (ratio 0-1).",
        ratio(util.get("cpu")),
    )
    fam.set(
        "ringrift_cluster_gpu_utilization",
        "Cluster GPU utilization, mean over the fresh GPU readings weighted by GPUs (ratio 0-1).",
        ratio(util.get("gpu")),
    )
    fam.set(
        "ringrift_cluster_gpu_memory_utilization",
        "Cluster GPU memory utilization, mean over the fresh GPU readings (ratio 0-1).",
        ratio(util.get("gpu_memory")),
    )
    fam.set(
        "ringrift_cluster_gpu_nodes",
        "Nodes with a fresh reading that have GPUs.",
        util["gpu_nodes"],
    )
    fam.set(
        "ringrift_cluster_cpu_nodes",
        "Nodes with a fresh reading and no GPU.",
        util["cpu_nodes"],
    )
    fam.set("ringrift_cluster_total_jobs", "Tasks holding slots, every type.", util["running_jobs"])
    in_range = doc["in_range"] if doc else {}

    def flag(value: bool | None) -> float | None:
        return None if value is None else float(bool(value))

    fam.set(
        "ringrift_cpu_in_target_range",
        "1 when cluster CPU utilization is inside resource_targets cpu_min..cpu_max, else 0.",
        flag(in_range.get("cpu")),
    )
    fam.set(
        "ringrift_gpu_in_target_range",
        "1 when cluster GPU utilization is inside resource_targets gpu_min..gpu_max, else 0.",
        flag(in_range.get("gpu")),
    )
    action = fam.gauge(
        "ringrift_optimization_action",
        "The optimizer's last scaling action: 1 for the current one, 0 for the others.",
        "action",
    )
    steered = fam.gauge(
        "ringrift_optimization_resource",
        "The resource the optimizer steers by (its bottleneck: of cpu and gpu with fresh "
        "readings, the one furthest above its target): 1 for it, 0 for the other; absent "
        "without fresh readings.",
        "resource",
    )
    confidence = None
    rate = None
    if doc is not None:
        for name in ACTIONS:
            action.add(1 if doc["action"] == name else 0, name)
        confidence = doc["confidence"]
        rate = doc["rate"]
        if doc["controlling"] is not None:
            for name in STEERED:
                steered.add(1 if doc["controlling"] == name else 0, name)
    fam.set(
        "ringrift_optimization_confidence",
        "The confidence of the optimizer's last adjust (0-1).",
        None if confidence is None else float(confidence),
    )
    fam.set(
        "ringrift_selfplay_rate_games_per_hour",
        "The self-play rate the optimizer holds, games per hour.",
        None if rate is None else float(rate),
    )


def _tasks(tx: Tx, settings: Settings, now: float, fam: Families) -> list[str]:
    """Running tasks, the limits in force, the optimizer's targets, reserved slots and the
    waiters; returns the nodes the per-node families cover (see ``live_nodes``)."""
    from ringrift_coord import reports, reservations, slots
    from ringrift_coord.optimizer import state as optimizer_state
    from ringrift_coord.tasktypes import TASK_TYPE_NAMES

    types = list(TASK_TYPE_NAMES)
    counts = slots.counts(tx)
    waiting = _waiting(tx)
    stored = {r["node"]: r for r in _readings_rows(tx)}
    reserved_rows = reservations.active(tx, now)
    nodes = live_nodes(tx, settings, now)
    tasks = fam.gauge(
        "ringrift_tasks", "Running tasks (slots held) per type and node.", "type", "node"
    )
    for node in nodes:
        for t in types:
            tasks.add(0, t, node)
    for row in counts:
        tasks.add(row["n"], row["task_type"], row["node"])
    node_limit = fam.gauge(
        "ringrift_task_node_limit",
        "The per-node task limit in force on the node: the configured one, lowered by an "
        "OOM-lowered cap and, for selfplay, the hardware cap and the optimizer's self-play "
        "target while admission enforces it (absent: unlimited).",
        "type",
        "node",
    )
    target = fam.gauge(
        "ringrift_selfplay_target",
        "The optimizer's self-play job target for the node while admission enforces it "
        "(rule optimizer; absent: none in force).",
        "node",
    )
    from ringrift_coord import feedback

    for node in nodes:
        effective = dict(feedback.node_caps(tx, settings, node, now)["effective"])
        caps = [effective.get("selfplay")]
        hw = reports.hardware_cap(stored.get(node), settings)
        if hw is not None and hw["enforced"]:
            caps.append(int(hw["max_selfplay_jobs"]))
        found = optimizer_state.enforced_target(tx, node, settings, now)
        if found is not None:
            target.add(int(found["target"]), node)
            caps.append(int(found["target"]))
        known = [c for c in caps if c is not None]
        effective["selfplay"] = min(known) if known else None
        for t, limit in effective.items():
            if limit is not None:
                node_limit.add(limit, t, node)
    reserved = fam.gauge(
        "ringrift_reserved_slots",
        "Slots reserved on the node for the type (reservations in force).",
        "type",
        "node",
    )
    for res in reserved_rows:
        key = (res["task_type"], res["node"])
        reserved.add(reserved.samples.get(key, 0.0) + int(res["slots"]), *key)
    cluster_limit = fam.gauge(
        "ringrift_task_cluster_limit",
        "The cluster-wide task limit of the type (absent: unlimited).",
        "type",
    )
    for t in types:
        limit = settings.task_limit(t, "cluster")
        if limit is not None:
            cluster_limit.add(limit, t)
    waiters = fam.gauge(
        "ringrift_waiters",
        "Launchers waiting in line (run --wait) per type and node.",
        "type",
        "node",
    )
    held = fam.gauge(
        "ringrift_waiters_held",
        "Launchers (run --wait) a halt or peak hours hold back, per type and node: out of "
        "line, they start once it lifts.",
        "type",
        "node",
    )
    for row in waiting:
        waiters.add(row["n"], row["task_type"], row["node"])
        held.add(row["held"], row["task_type"], row["node"])
    return nodes


def _waiting(tx: Tx) -> list[Row]:
    """Waiters per type and node, the transfers' fair queue left out."""
    from ringrift_coord import queue
    from ringrift_coord.transfers import TASK_TYPE as TRANSFER_QUEUE

    return [r for r in queue.lengths_by_node(tx) if r["task_type"] != TRANSFER_QUEUE]


def _readings_rows(tx: Tx) -> list[Row]:
    from ringrift_coord import readings

    return readings.all_latest(tx)


def live_nodes(tx: Tx, settings: Settings, now: float) -> list[str]:
    """The nodes the per-node families cover: those with running tasks, waiters, a breaker
    not closed, a lowered cap, backpressure, reservations or a self-play target in force, or
    a reading younger than ``resources.retire_after`` (one dated in the future counts as young). A
    node with none of these is retired: its series go (``forget-node`` drops its reading
    at once)."""
    from ringrift_coord import breakers, feedback, reservations, slots
    from ringrift_coord.optimizer import state as optimizer_state

    retire = float(settings.get("resources.retire_after"))
    caps = feedback.caps_in_force(tx, settings, now)
    cfg = breakers.BreakerConfig.from_settings(settings)
    found = (
        {r["node"] for r in slots.counts(tx)}
        | {r["node"] for r in _waiting(tx)}
        | {r["node"] for r in caps["lowered_caps"]}
        | {r["node"] for r in caps["backpressure"]}
        | {v["node"] for v in breakers.views(tx, cfg, now) if v["state"] != breakers.CLOSED}
        | {r["node"] for r in reservations.active(tx, now)}
        | {
            r["node"]
            for r in optimizer_state.targets(tx)
            if optimizer_state.enforced_target(tx, r["node"], settings, now) is not None
        }
        | {r["node"] for r in _readings_rows(tx) if now - float(r["at"]) <= retire}
    )
    return sorted(found)


def _halts(tx: Tx, local: Snapshot, now: float, fam: Families) -> None:
    from ringrift_coord import halts, identity

    doc = halts.status(tx, local, now)
    fam.set("ringrift_halted", HALTED_HELP, 1 if doc["halted"] else 0)
    active = fam.gauge("ringrift_halt_active", HALT_ACTIVE_HELP, "scope", "type", "node")
    for row in doc["halts"]:
        node = row.get("node", halts.ALL_NODES)
        whole = node == halts.ALL_NODES
        active.add(
            1,
            "cluster" if whole else "node",
            "all" if row["scope"] == halts.GLOBAL else row["scope"],
            "all" if whole else node,
        )
    file = doc["halt_file"]
    if file is not None and not file.get("mirror"):  # a mirror repeats the cluster row above
        active.add(1, "file", "all", identity.local_node())


def _breakers(tx: Tx, settings: Settings, now: float, fam: Families, live: set[str]) -> None:
    from ringrift_coord import breakers

    cfg = breakers.BreakerConfig.from_settings(settings)
    state = fam.gauge(
        "ringrift_breaker_state",
        "Circuit breaker state per type and node: 1 for the current state, 0 for the others.",
        "type",
        "node",
        "state",
    )
    opened = fam.gauge(
        "ringrift_breaker_opened_timestamp_seconds",
        "When an open or half-open breaker opened, seconds since the epoch.",
        "type",
        "node",
    )
    for view in breakers.views(tx, cfg, now):
        if view["state"] == breakers.CLOSED and view["node"] not in live:
            continue  # a retired node's closed breaker: its series go with the node's others
        for name in BREAKER_STATES:
            state.add(1 if view["state"] == name else 0, view["task_type"], view["node"], name)
        if view["state"] != breakers.CLOSED and view["opened_at"] is not None:
            opened.add(view["opened_at"], view["task_type"], view["node"])
    denials = fam.counter(
        "ringrift_denials_total",
        "Refused admissions, one per blocking rule of each logged refusal.",
        "rule",
        "type",
        "node",
    )
    from ringrift_coord import counters

    for labels, value in counters.read(tx, "denials"):
        denials.add(value, labels.get("rule", ""), labels.get("type", ""), labels.get("node", ""))


def _feedback(tx: Tx, settings: Settings, now: float, fam: Families, nodes: list[str]) -> None:
    from ringrift_coord import feedback

    caps = feedback.caps_in_force(tx, settings, now)
    factor = fam.gauge(
        "ringrift_backpressure_factor",
        "The node's spawn-rate factor after failures (1: no backpressure).",
        "node",
    )
    for node in nodes:
        factor.add(1.0, node)
    for row in caps["backpressure"]:
        factor.add(row["factor"], row["node"])
    lowered = fam.gauge(
        "ringrift_lowered_cap",
        "A per-node cap lowered after repeated OOMs, still below the configured limit.",
        "type",
        "node",
    )
    for row in caps["lowered_caps"]:
        lowered.add(row["cap"], row["task_type"], row["node"])


def _transfers(tx: Tx, settings: Settings, now: float, fam: Families) -> None:
    from ringrift_coord import counters, transfers

    active = fam.gauge("ringrift_transfers", "Active transfers per remote host.", "remote")
    limit = fam.gauge(
        "ringrift_transfer_bandwidth_limit_bytes_per_second",
        "The bandwidth limit of the remote host's link, bytes per second.",
        "remote",
    )
    allocated = fam.gauge(
        "ringrift_transfer_bandwidth_allocated_bytes_per_second",
        "The bandwidth allocated to the remote host's active transfers, bytes per second.",
        "remote",
    )
    try:
        settings.require("bandwidth")
        status = transfers.status(tx, settings, now)
    except CoordError:  # a bad bandwidth section: the byte counter alone
        status = {"hosts": []}
    for host in status["hosts"]:
        active.add(host["active"], host["remote"])
        exact = transfers.link(settings, host["remote"])["limit_kbps"]  # status rounds it
        limit.add(float(exact) * KIB, host["remote"])
        allocated.add(float(host["allocated_kbps"]) * KIB, host["remote"])
    waiting = fam.gauge(
        "ringrift_transfer_waiters",
        "Transfers waiting in the fair queue (bandwidth run --wait) per remote host.",
        "remote",
    )
    held = fam.gauge(
        "ringrift_transfer_waiters_held",
        "Transfers a halt holds back out of the fair queue (bandwidth run --wait; they start "
        "once it lifts) per remote host.",
        "remote",
    )
    from ringrift_coord import queue

    for row in queue.lengths_by_node(tx):
        if row["task_type"] == transfers.TASK_TYPE:
            waiting.add(row["n"], row["node"])
            held.add(row["held"], row["node"])
    moved = fam.counter(
        "ringrift_transfer_bytes_total",
        "Bytes moved by ended transfers whose byte count is known, per remote host.",
        "remote",
    )
    for labels, value in counters.read(tx, "transfer_bytes"):
        moved.add(value, labels.get("remote", ""))


def _readings(tx: Tx, settings: Settings, now: float, fam: Families, nodes: set[str]) -> None:
    from ringrift_coord import readings

    thresholds = settings.get("thresholds")
    max_age = float(settings.get("resources.max_sample_age"))
    age = fam.gauge(
        "ringrift_node_reading_age_seconds",
        "Age of the node's latest stored reading (0 for one dated in the future); absent for "
        "a retired node (see resources.retire_after).",
        "node",
    )
    util = fam.gauge(
        "ringrift_node_utilization",
        "The node's latest fresh reading per resource (ratio 0-1); absent when stale.",
        "node",
        "resource",
    )
    critical = fam.gauge(
        "ringrift_node_critical",
        "1 when the node's fresh reading of the resource is at or above its critical "
        "threshold (admission refuses the node), else 0; absent when stale.",
        "node",
        "resource",
    )
    for row in readings.all_latest(tx):
        if row["node"] not in nodes:
            continue  # retired
        at = float(row["at"])
        age.add(max(0.0, now - at), row["node"])
        if readings.is_stale(at, now, max_age):
            continue  # stale: admission ignores it, so do these
        for resource in RESOURCES:
            if row.get(resource) is not None:
                util.add(float(row[resource]) / 100.0, row["node"], resource)
        levels = readings.levels(row, thresholds)
        for resource in CRITICAL_RESOURCES:
            if levels.get(resource) is not None:
                critical.add(1 if levels[resource] == "critical" else 0, row["node"], resource)


# --------------------------------------------------------------------------- exposition


def _families(collection: Collection) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for metric in collection.metrics:
        cls = CounterMetricFamily if metric.type == COUNTER else GaugeMetricFamily
        family = cls(metric.name, metric.help, labels=list(metric.labels))
        for key, value in sorted(metric.samples.items()):
            family.add_metric(list(key), value)
        yield family


class _Collector:
    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def collect(self) -> Iterator[Any]:
        yield from _families(self.collection)


def render(collection: Collection) -> bytes:
    """``collection`` as Prometheus text (prometheus_client's ``generate_latest``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(collection))
    return bytes(generate_latest(registry))


def exposition(ctx: Context) -> bytes:
    """Every family as Prometheus text exposition (format 0.0.4)."""
    return render(gather(ctx))


def check_textfile(path: str) -> str:
    """The absolute path of a textfile; a name without the ``.prom`` suffix (node_exporter's
    textfile collector reads no other) is a usage error, a missing directory a state one."""
    if os.path.basename(path) == TEXTFILE_SUFFIX:
        raise UsageError(
            f"{path!r}: the file name before {TEXTFILE_SUFFIX} is empty (node_exporter's "
            "textfile collector skips hidden files: give a name such as ringrift.prom)",
            field="textfile",
        )
    if not path.endswith(TEXTFILE_SUFFIX):
        raise UsageError(
            f"{path!r} does not end in {TEXTFILE_SUFFIX} (node_exporter's textfile collector "
            "reads only *.prom files)",
            field="textfile",
        )
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise StateError(f"textfile directory {directory} does not exist (create it first)")
    if os.path.isdir(target):
        raise StateError(f"textfile {target} is a directory")
    return target


def write_textfile(ctx: Context, path: str) -> Collection:
    """Write the exposition to ``path`` atomically: a temporary file in the same directory,
    fsync, mode 0644, rename over ``path`` (a reader sees the old file or the new one, never
    half of one). Returns what was collected."""
    target = check_textfile(path)
    collection = gather(ctx)
    data = render(collection)
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise StateError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:  # the rename itself outlives a crash once the directory is synced
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return collection
