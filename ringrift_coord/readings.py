"""Node readings: CPU, memory, disk, load and GPUs, sampled here or reported from elsewhere.

``sample`` (the ``report`` command) uses psutil and NVML; absent NVML or no GPU is a normal
case, not an error. ``live_host`` is what admission may read on the hot path for this host
without a fresh sample: memory from /proc/meminfo, disk from statvfs, the load average —
a fraction of a millisecond, no imports. The latest reading of every node is kept in the
store with its time and the node's hardware.
"""

from __future__ import annotations

import os

from ringrift_coord.store.base import Row, Tx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROBE = "(SELECT COUNT(*) FROM readings WHERE node = ?)"  # admission's probe: (node,)
RESOURCES = ("disk", "memory", "cpu", "gpu")
FIGURES = ("cpu", "gpu", "memory", "disk", "load_avg")  # what `report` takes by hand
HARDWARE = ("gpu_name", "gpu_count", "cpus", "memory_gb")  # kept from the previous reading
FIELDS = (
    "cpu",
    "memory",
    "disk",
    "gpu",
    "gpu_memory",
    "load_avg",
    "cpus",
    "memory_gb",
    "gpu_name",
    "gpu_count",
)


def expand_paths(paths: list[str]) -> list[str]:
    """``paths`` with ``~`` and glob patterns (``resources.data_paths`` holds globs) expanded."""
    out: list[str] = []
    for path in paths:
        path = os.path.expanduser(path)
        if any(ch in path for ch in "*?["):
            import glob

            out.extend(sorted(glob.glob(path)))
        else:
            out.append(path)
    return out


def disk_percent(paths: list[str]) -> tuple[float | None, str | None]:
    """The fullest of ``paths`` (percent used, path); glob patterns are expanded."""
    worst: tuple[float | None, str | None] = (None, None)
    for path in expand_paths(paths):
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        total = st.f_blocks * st.f_frsize
        if total <= 0:
            continue
        # like df: used / (used + available to unprivileged users)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        percent = 100.0 * used / (used + avail) if used + avail else 0.0
        if worst[0] is None or percent > worst[0]:
            worst = (round(percent, 1), path)
    return worst


def _meminfo() -> tuple[float | None, float | None]:
    """(percent used, total GiB) from /proc/meminfo (Linux), else (None, None)."""
    try:
        with open("/proc/meminfo", "rb", buffering=0) as handle:
            text = handle.read(512).decode("ascii", "replace")  # MemTotal..MemAvailable lead
    except OSError:
        return None, None
    values: dict[str, int] = {}
    for line in text.splitlines()[:5]:
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            values[key] = int(rest.split()[0])
    total, avail = values.get("MemTotal"), values.get("MemAvailable")
    if not total or avail is None:
        return None, None
    return round(100.0 * (total - avail) / total, 1), round(total / 1048576, 1)


def live_host(paths: list[str]) -> dict[str, Any]:
    """Cheap readings of this host for admission (no CPU or GPU utilisation)."""
    memory, memory_gb = _meminfo()
    disk, disk_path = disk_percent(paths)
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "memory": memory,
        "memory_gb": memory_gb,
        "disk": disk,
        "load_avg": load,
        "cpus": _cpus(),
        "details": {"disk_path": disk_path},
        "source": "live",
    }


_CPUS: list[int | None] = []


def _cpus() -> int | None:
    if not _CPUS:  # os.cpu_count() reads sysfs each time: once per process is enough
        _CPUS.append(os.cpu_count())
    return _CPUS[0]


def sample(paths: list[str], cpu_interval: float = 0.2) -> dict[str, Any]:
    """A full reading of this host: psutil for CPU/memory/disk/load, NVML for GPUs."""
    import psutil

    reading = live_host(paths)
    reading["cpu"] = round(psutil.cpu_percent(interval=cpu_interval), 1)
    memory = psutil.virtual_memory()
    reading["memory"] = round(memory.percent, 1)
    reading["memory_gb"] = round(memory.total / 2**30, 1)
    reading["cpus"] = psutil.cpu_count(logical=True) or os.cpu_count()
    reading.update(gpu_readings())
    reading["source"] = "psutil" + ("+nvml" if reading.get("gpu_count") else "")
    return reading


def gpu_readings() -> dict[str, Any]:
    """Utilisation and memory per GPU through NVML; no NVML or no GPU → gpu_count 0."""
    try:
        import pynvml  # type: ignore[import-untyped]  # (nvidia-ml-py ships no stubs)
    except ImportError:
        return {
            "gpu_count": 0,
            "gpu": None,
            "gpu_memory": None,
            "gpu_name": None,
            "gpu_note": "NVML bindings not installed",
        }
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {
            "gpu_count": 0,
            "gpu": None,
            "gpu_memory": None,
            "gpu_name": None,
            "gpu_note": f"no NVML: {exc}",
        }
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "util": float(util.gpu),
                    "memory": round(100.0 * mem.used / mem.total, 1),
                    "memory_gb": round(mem.total / 2**30, 1),
                }
            )
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    if not gpus:
        return {"gpu_count": 0, "gpu": None, "gpu_memory": None, "gpu_name": None, "gpus": []}
    return {
        "gpu_count": len(gpus),
        "gpu_name": gpus[0]["name"],
        "gpus": gpus,
        "gpu": round(max(g["util"] for g in gpus), 1),
        "gpu_memory": round(max(g["memory"] for g in gpus), 1),
    }


def store_reading(tx: Tx, node: str, reading: dict[str, Any], now: float) -> None:
    details = dict(reading.get("details") or {})  # live_host's own details, flattened
    details.update(
        {
            k: v
            for k, v in reading.items()
            if k not in FIELDS and k not in ("source", "details", "node", "at")
        }
    )
    import json

    tx.execute("DELETE FROM readings WHERE node = ?", (node,))
    tx.execute(
        f"INSERT INTO readings (node, at, source, {', '.join(FIELDS)}, details) "
        f"VALUES (?, ?, ?, {', '.join('?' for _ in FIELDS)}, ?)",
        (
            node,
            now,
            reading.get("source", "manual"),
            *(reading.get(f) for f in FIELDS),
            json.dumps(details, default=str),
        ),
    )


def is_stale(at: float, now: float, max_age: float) -> bool:
    """Whether a reading taken at ``at`` is stale by ``now`` (older than ``max_age``:
    ``resources.max_sample_age``). The one freshness test: admission, ``resources`` and
    ``metrics`` all use it. A reading dated in the future (a node whose clock runs ahead) is
    fresh, whatever how far ahead."""
    return now - at > max_age


def forget(tx: Tx, node: str) -> bool:
    """Drop ``node``'s stored reading (a retired or mistyped node); False: it had none."""
    if not tx.execute("DELETE FROM readings WHERE node = ?", (node,)):
        return False
    tx.ring(None, node)  # a reading over a threshold no longer holds its waiters back
    return True


def latest(tx: Tx, node: str) -> Row | None:
    return tx.one("SELECT * FROM readings WHERE node = ?", (node,))


def all_latest(tx: Tx) -> list[Row]:
    return tx.query("SELECT * FROM readings ORDER BY node")


def decode(row: Row | None) -> Row | None:
    """A stored reading with its ``details`` JSON decoded."""
    if row is None:
        return None
    out = dict(row)
    raw = out.get("details")
    if isinstance(raw, str):
        import json

        try:
            out["details"] = json.loads(raw)
        except ValueError:
            out["details"] = {"raw": raw}
    return out


def level(value: float | None, limits: dict[str, Any]) -> str | None:
    """A reading against its thresholds: ``critical``, ``warning``, ``ok`` (None: no value)."""
    if value is None:
        return None
    if value >= limits["critical"]:
        return "critical"
    return "warning" if value >= limits["warning"] else "ok"


def critical_load(cpus: int | None, thresholds: dict[str, Any]) -> float | None:
    """The load average at which a node with ``cpus`` CPUs is critical (None: CPUs unknown)."""
    return float(thresholds["load_avg_critical_per_cpu"]) * cpus if cpus else None


def levels(reading: Row | dict[str, Any], thresholds: dict[str, Any]) -> dict[str, str | None]:
    """Each resource's level, and the load average's (``critical`` or ``ok``: no warning)."""
    out = {resource: level(reading.get(resource), thresholds[resource]) for resource in RESOURCES}
    load, limit = reading.get("load_avg"), critical_load(reading.get("cpus"), thresholds)
    out["load_avg"] = (
        None if load is None or limit is None else ("critical" if load >= limit else "ok")
    )
    return out


def alerts(reading: Row | dict[str, Any], thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """What a reading is past: each resource at or above its warning or critical level
    (``level``, ``value``, ``limit``, ``message``), critical first. Admission refuses the
    node for a critical one while the reading is fresh; a warning is reported only."""
    marks = levels(reading, thresholds)
    out: list[dict[str, Any]] = []
    for resource in RESOURCES:
        lv, value = marks[resource], reading.get(resource)
        if lv in ("critical", "warning") and value is not None:
            limit = thresholds[resource][lv]
            out.append(
                {
                    "resource": resource,
                    "level": lv,
                    "value": value,
                    "limit": limit,
                    "message": f"{resource} at {value:.0f}% >= {lv} {limit}%",
                }
            )
    if marks["load_avg"] == "critical":
        load, cpus = reading["load_avg"], reading["cpus"]
        limit = critical_load(cpus, thresholds)
        per_cpu = thresholds["load_avg_critical_per_cpu"]
        out.append(
            {
                "resource": "load_avg",
                "level": "critical",
                "value": load,
                "limit": limit,
                "message": f"load average {load:.2f} >= critical {limit:g} "
                f"({per_cpu:g} x {cpus} cpus)",
            }
        )
    out.sort(key=lambda a: a["level"] != "critical")
    return out


def assess(
    reading: Row | dict[str, Any], thresholds: dict[str, Any], now: float, max_age: float
) -> dict[str, Any]:
    """A reading against the thresholds: each resource's level (ok / warning / critical),
    the load average against its critical level, the sample's age and staleness.

    ``blocking`` says whether admission would refuse the node for it (critical and fresh);
    stale samples are ignored by admission.
    """
    out: dict[str, Any] = {
        "node": reading.get("node"),
        "at": reading.get("at", now),
        "source": reading.get("source"),
    }
    for field in FIELDS:
        out[field] = reading.get(field)
    out["details"] = reading.get("details") or {}
    at = out["at"]
    out["age"] = None if at is None else round(now - at, 3)
    out["stale"] = at is not None and is_stale(at, now, max_age)
    limit = critical_load(reading.get("cpus"), thresholds)
    out["load_critical"] = None if limit is None else round(limit, 3)
    out["levels"] = levels(reading, thresholds)
    out["blocking"] = not out["stale"] and "critical" in out["levels"].values()
    return out
