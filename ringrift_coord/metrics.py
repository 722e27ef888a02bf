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
    from ringrift_coord.store.base import Tx

GAUGE, COUNTER = "gauge", "counter"
RESOURCES = ("cpu", "memory", "disk", "gpu", "gpu_memory")  # ringrift_node_utilization
CRITICAL_RESOURCES = ("cpu", "memory", "disk", "gpu", "load_avg")  # those with a critical level
BREAKER_STATES = ("closed", "open", "half_open")
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
    try:
        try:
            store = ctx.store
        except NoStore:  # nothing recorded on this host yet: an empty store's values
            with tempfile.TemporaryDirectory(prefix="ringrift-metrics-") as tmp:
                from ringrift_coord.store.sqlite import SQLiteStore

                local = halts.snapshot(ctx.state_dir)
                with SQLiteStore(os.path.join(tmp, "empty.db"), clock=ctx.clock) as empty:
                    at = _collect_store(ctx, empty, fam, local, fresh=True)
        else:
            local = halts.snapshot(ctx.state_dir, store.scope)  # the file before the store
            at = _collect_store(ctx, store, fam, local, fresh=False)
    except (StoreBusy, StateError) as exc:  # unreachable, refused, corrupt: store_up 0 alone
        down = Metric("ringrift_store_up", GAUGE, UP_HELP)
        down.add(0)
        return Collection([down], None, False, exc.message)
    up.add(1)
    return Collection(list(fam.by_name.values()), at, True)


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
        _breakers(tx, ctx.settings, now, fam)
        _feedback(tx, ctx.settings, now, fam, nodes)
        _transfers(tx, ctx.settings, now, fam)
        _readings(tx, ctx.settings, now, fam)
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
    confidence = None
    rate = None
    if doc is not None:
        for name in ACTIONS:
            action.add(1 if doc["action"] == name else 0, name)
        confidence = doc["confidence"]
        rate = doc["rate"]
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
    """Running tasks, the limits in force and the waiters; the nodes known to the store."""
    from ringrift_coord import feedback, queue, readings, reports, slots
    from ringrift_coord.tasktypes import TaskType
    from ringrift_coord.transfers import TASK_TYPE as TRANSFER_QUEUE

    types = [t.value for t in TaskType]
    counts = slots.counts(tx)
    waiting = [r for r in queue.lengths_by_node(tx) if r["task_type"] != TRANSFER_QUEUE]
    stored = {r["node"]: r for r in readings.all_latest(tx)}
    lowered = feedback.caps_in_force(tx, settings, now)["lowered_caps"]
    nodes = sorted(
        {r["node"] for r in counts}
        | {r["node"] for r in waiting}
        | set(stored)
        | {r["node"] for r in lowered}
    )
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
        "OOM-lowered cap and, for selfplay, the hardware cap (absent: unlimited).",
        "type",
        "node",
    )
    for node in nodes:
        effective = dict(feedback.node_caps(tx, settings, node, now)["effective"])
        hw = reports.hardware_cap(stored.get(node), settings)
        if hw is not None and hw["enforced"]:
            cap = int(hw["max_selfplay_jobs"])
            current = effective.get("selfplay")
            effective["selfplay"] = cap if current is None else min(cap, current)
        for t, limit in effective.items():
            if limit is not None:
                node_limit.add(limit, t, node)
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
    for row in waiting:
        waiters.add(row["n"], row["task_type"], row["node"])
    return nodes


def _halts(tx: Tx, local: Snapshot, now: float, fam: Families) -> None:
    from ringrift_coord import halts, identity

    doc = halts.status(tx, local, now)
    fam.set(
        "ringrift_halted",
        "1 when any halt is in force (cluster, node, type or this host's halt file), else 0.",
        1 if doc["halted"] else 0,
    )
    active = fam.gauge(
        "ringrift_halt_active",
        "1 per halt in force: scope cluster (every node), node (a drain) or file (this "
        "host's EMERGENCY_HALT file); type all or the halted type; node all or the node.",
        "scope",
        "type",
        "node",
    )
    for row in doc["halts"]:
        node = row.get("node", halts.ALL_NODES)
        whole = node == halts.ALL_NODES
        active.add(
            1,
            "cluster" if whole else "node",
            "all" if row["scope"] == halts.GLOBAL else row["scope"],
            "all" if whole else node,
        )
    if doc["halt_file"] is not None:
        active.add(1, "file", "all", identity.local_node())


def _breakers(tx: Tx, settings: Settings, now: float, fam: Families) -> None:
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
    moved = fam.counter(
        "ringrift_transfer_bytes_total",
        "Bytes moved by ended transfers whose byte count is known, per remote host.",
        "remote",
    )
    for labels, value in counters.read(tx, "transfer_bytes"):
        moved.add(value, labels.get("remote", ""))


def _readings(tx: Tx, settings: Settings, now: float, fam: Families) -> None:
    from ringrift_coord import readings

    thresholds = settings.get("thresholds")
    max_age = float(settings.get("resources.max_sample_age"))
    age = fam.gauge(
        "ringrift_node_reading_age_seconds", "Age of the node's latest stored reading.", "node"
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
        seconds = now - float(row["at"])
        age.add(max(0.0, seconds), row["node"])
        if seconds > max_age or seconds < -max_age:
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
    if not path.endswith(TEXTFILE_SUFFIX) or os.path.basename(path) == TEXTFILE_SUFFIX:
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
