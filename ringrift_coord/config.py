"""Configuration: built-in defaults < YAML file < environment < command-line flags.

``load_settings`` is the one function that resolves it. Every effective value remembers where
it came from (``Settings.source``), which ``limits`` and ``targets`` print. The YAML is read
through PyYAML's safe composer and validated node by node so that every error names the
file, the line and the key.
"""

from __future__ import annotations

import math
import os

from ringrift_coord.errors import ConfigError, CoordError, ExitCode
from ringrift_coord.inputs import did_you_mean, number_hint, printable, strict_float, strict_int
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

CONFIG_ENV = "RINGRIFT_COORD_CONFIG"
SET_ENV = "RINGRIFT_COORD_SET"  # "key=value;key=value": settings from the environment
DEFAULT_CONFIG_NAME = "unified_loop.yaml"


def user_config_path(env: Mapping[str, str]) -> str:
    """The user's own config file: ``$XDG_CONFIG_HOME/ringrift-coord/unified_loop.yaml``
    (``~/.config/...`` by default); where ``config init`` writes without a path."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ringrift-coord", DEFAULT_CONFIG_NAME)


# --------------------------------------------------------------------------- defaults

DEFAULTS: dict[str, Any] = {
    "task_limits": {
        # null = unlimited
        "selfplay": {"per_node": 32, "cluster": 500},
        "training": {"per_node": 1, "cluster": 3},
        "cmaes": {"per_node": None, "cluster": 1},
        "tournament": {"per_node": None, "cluster": 2},
        "pipeline": {"per_node": None, "cluster": 1},
        "improvement_loop": {"per_node": None, "cluster": 1},
        "gauntlet": {"per_node": None, "cluster": None},
        "evaluation": {"per_node": None, "cluster": None},
        "hybrid_selfplay": {"per_node": None, "cluster": None},
        "sync": {"per_node": None, "cluster": None},
        "export": {"per_node": None, "cluster": None},
    },
    "rate_limits": {
        # token bucket per (node, type); per_minute null = no rate limit
        "selfplay": {"per_minute": 120, "burst": 32},
        "training": {"per_minute": 6, "burst": 2},
    },
    "circuit_breaker": {
        "failure_threshold": 3,
        "window": 600,
        "recovery_timeout": 300,
        "half_open_trials": 1,
        "success_threshold": 1,
    },
    "thresholds": {
        "disk": {"warning": 65, "critical": 70},
        "memory": {"warning": 70, "critical": 80},
        "cpu": {"warning": 70, "critical": 80},
        "gpu": {"warning": 70, "critical": 80},
        "load_avg_critical_per_cpu": 1.5,
    },
    "resource_targets": {
        "cpu_min": 60,
        "cpu_max": 80,
        "cpu_target": 70,
        "gpu_min": 60,
        "gpu_max": 80,
        "gpu_target": 70,
        "scale_up_below": 55,
        "scale_down_above": 85,
        "pid": {"kp": 0.3, "ki": 0.05, "kd": 0.1, "gain_scheduling": True},
    },
    "hardware": {
        "gpu_jobs": {
            "GH200": 48,
            "H100": 24,
            "H200": 24,
            "A100": 16,
            "L40": 16,
            "RTX 4090": 10,
            "RTX 4080": 8,
            "RTX 3070": 4,
        },
        "default_gpu_jobs": 8,  # a GPU model not in gpu_jobs
        "jobs_per_cpu": 1,  # every node: at most this many self-play jobs per logical CPU
        "memory_gb_per_job": 2,  # ... and one job per this many GiB of memory
        "cap_selfplay": False,  # admission: the node's hardware cap limits its self-play jobs
    },
    "bandwidth": {
        "host_types": {
            "runpod": {"match": ["*runpod*"], "mbps": 1000},
            "gh200": {"match": ["*gh200*"], "mbps": 2500},
            "aws": {"match": ["*aws*"], "mbps": 500},
        },
        "default_mbps": 100,
        "priorities": {"critical": 1.0, "high": 0.5, "normal": 0.25, "background": 0.1},
        "max_concurrent_transfers": 4,
    },
    "durations": {"selfplay": 3600, "training": 14400, "cmaes": 28800, "pipeline": 21600},
    # enforce: admission refuses the task_types that would run into a peak window
    "peak_hours": {
        "start": "14:00",
        "end": "22:00",
        "timezone": "UTC",
        "enforce": False,
        "task_types": ["training", "cmaes", "pipeline"],
    },
    # learned durations: the last `samples` successful runs of each (type, config) are kept;
    # `min_samples` of them replace the default; a run shorter than `min_seconds` (a smoke
    # test, an instant exit) is not recorded; a running task older than stale_factor x its
    # expected duration is listed as stale
    "schedule": {"samples": 20, "min_samples": 3, "min_seconds": 60, "stale_factor": 2.0},
    # the event log: events not published again for retention_days are pruned; each hook runs
    # its command (a list of words, never through a shell) on the events whose type matches one
    # of its `on` globs, the event as JSON on stdin, killed after `timeout` seconds
    "events": {"retention_days": 7, "hooks": {}},
    # `serve`: loopback unless asked; store_timeout bounds each store read of a request
    "serve": {"host": "127.0.0.1", "port": 9464, "store_timeout": 2.0},
    # the feedback loop (`adjust`) and the self-play rate it steers, in games per hour
    "optimizer": {
        "rate": {"initial": 1000, "min": 100, "max": 5000},
        "interval": 300,
        "min_interval": 60,
        "max_gap": 900,
        "max_step": 0.2,
        "max_change": 0.25,
        "smoothing": 0.5,
        "state_ttl": 1800,
        "trend": {"window": 1800, "horizon": 300, "min_samples": 3},
        "enforce_config_shares": False,
    },
    "selfplay_configs": {
        "square8_2p": 0.4,
        "square8_3p": 0.1,
        "square8_4p": 0.1,
        "square19_2p": 0.2,
        "hexagonal_2p": 0.2,
    },
    # shared_group: the Unix group of a state directory shared by a host's users (null: private)
    "store": {
        "busy_timeout": 5,
        "connect_timeout": 5,
        "lease_ttl": 120,
        "decision_log_days": 7,
        "shared_group": None,
        "long_hold": 30,
    },
    "run": {"kill_grace": 10, "poll_interval": 0.05, "wake_poll": 2},
    # readings: disk is checked on the state directory and these paths; older samples are stale
    # live_host: without a fresh sample, admission reads this host's memory/disk/load itself
    "resources": {
        "data_paths": [],
        "max_sample_age": 600,
        "live_host": True,
        "retire_after": 86400,
    },
    # node spawn-rate factor: x decrease per failed/killed job, + increase per success
    # ... and the gap to 1 halves every recovery_half_life seconds (0: only successes restore)
    "backpressure": {
        "decrease": 0.5,
        "increase": 0.1,
        "min_factor": 0.1,
        "recovery_half_life": 600,
    },
    # lower a node's cap for a type after lower_after OOMs within window; +1 per decay_interval
    "oom": {"lower_after": 2, "window": 3600, "factor": 0.75, "decay_interval": 3600},
}

# --------------------------------------------------------------------------- schema


class Leaf:
    """One setting's kind: "count", "number", "seconds", "percent", "bool", "str", "hhmm",
    "globs", "argv" (a command as a list of words, or one string split as a shell would split
    it, never run through one), "timezone" (a name in the time-zone database), "group" (a Unix
    group name or id), "task_types" (a list of task type names). A "seconds" setting is a
    number of seconds or a duration with units, "5m"."""

    __slots__ = ("kind", "nullable")

    def __init__(self, kind: str, nullable: bool = False) -> None:
        self.kind, self.nullable = kind, nullable

    def describe(self) -> str:
        text = {
            "count": "a non-negative integer",
            "number": "a non-negative number",
            "seconds": 'a number of seconds or a duration like "90s", "5m", "1h30m"',
            "percent": "a number from 0 to 100",
            "fraction": "a number from 0 to 1",
            "bool": "true or false",
            "str": "a string",
            "hhmm": 'a time "HH:MM"',
            "globs": "a list of glob patterns",
            "argv": "a command: a list of words or one string",
            "timezone": 'a time-zone name such as "UTC" or "Europe/Berlin"',
            "group": "a Unix group name or id",
            "task_types": "a list of task types",
        }[self.kind]
        if not self.nullable:
            return text
        return text + (" or null (not shared)" if self.kind == "group" else " or null (unlimited)")


class MapOf:
    """A mapping whose keys are ``keys`` (or any string when None), each holding ``item``.

    With ``replace``, a file's mapping replaces the default one instead of merging into it.
    """

    __slots__ = ("keys", "item", "replace")

    def __init__(self, keys: tuple[str, ...] | None, item: Any, replace: bool = False) -> None:
        self.keys, self.item, self.replace = keys, item, replace


COUNT, OPT_COUNT = Leaf("count"), Leaf("count", nullable=True)
NUM, OPT_NUM, PCT = Leaf("number"), Leaf("number", nullable=True), Leaf("percent")
PCT_FRACTION = Leaf("fraction")
SECS = Leaf("seconds")
LEVELS = {"warning": PCT, "critical": PCT}

SCHEMA: dict[str, Any] = {
    "task_limits": MapOf(TASK_TYPE_NAMES, {"per_node": OPT_COUNT, "cluster": OPT_COUNT}),
    "rate_limits": MapOf(TASK_TYPE_NAMES, {"per_minute": OPT_NUM, "burst": NUM}),
    "circuit_breaker": {
        "failure_threshold": COUNT,
        "window": SECS,
        "recovery_timeout": SECS,
        "half_open_trials": COUNT,
        "success_threshold": COUNT,
    },
    "thresholds": {
        "disk": LEVELS,
        "memory": LEVELS,
        "cpu": LEVELS,
        "gpu": LEVELS,
        "load_avg_critical_per_cpu": NUM,
    },
    "resource_targets": {
        "cpu_min": PCT,
        "cpu_max": PCT,
        "cpu_target": PCT,
        "gpu_min": PCT,
        "gpu_max": PCT,
        "gpu_target": PCT,
        "scale_up_below": PCT,
        "scale_down_above": PCT,
        "pid": {"kp": NUM, "ki": NUM, "kd": NUM, "gain_scheduling": Leaf("bool")},
    },
    "hardware": {
        "gpu_jobs": MapOf(None, COUNT),
        "default_gpu_jobs": COUNT,
        "jobs_per_cpu": NUM,
        "memory_gb_per_job": NUM,
        "cap_selfplay": Leaf("bool"),
    },
    "bandwidth": {
        "host_types": MapOf(None, {"match": Leaf("globs"), "mbps": NUM}),
        "default_mbps": NUM,
        "priorities": MapOf(("critical", "high", "normal", "background"), PCT_FRACTION),
        "max_concurrent_transfers": COUNT,
    },
    "durations": MapOf(TASK_TYPE_NAMES, SECS),
    "peak_hours": {
        "start": Leaf("hhmm"),
        "end": Leaf("hhmm"),
        "timezone": Leaf("timezone"),
        "enforce": Leaf("bool"),
        "task_types": Leaf("task_types"),
    },
    "schedule": {"samples": COUNT, "min_samples": COUNT, "min_seconds": SECS, "stale_factor": NUM},
    "events": {
        "retention_days": NUM,
        "hooks": MapOf(
            None, {"on": Leaf("globs"), "command": Leaf("argv"), "timeout": SECS}, replace=True
        ),
    },
    "serve": {"host": Leaf("str"), "port": COUNT, "store_timeout": SECS},
    "optimizer": {
        "rate": {"initial": NUM, "min": NUM, "max": NUM},
        "interval": SECS,
        "min_interval": SECS,
        "max_gap": SECS,
        "max_step": PCT_FRACTION,
        "max_change": PCT_FRACTION,
        "smoothing": PCT_FRACTION,
        "state_ttl": SECS,
        "trend": {"window": SECS, "horizon": SECS, "min_samples": COUNT},
        "enforce_config_shares": Leaf("bool"),
    },
    "selfplay_configs": MapOf(None, NUM, replace=True),
    "store": {
        "busy_timeout": SECS,
        "connect_timeout": SECS,
        "lease_ttl": SECS,
        "decision_log_days": NUM,
        "shared_group": Leaf("group", nullable=True),
        "long_hold": SECS,
    },
    "run": {"kill_grace": SECS, "poll_interval": SECS, "wake_poll": SECS},
    "resources": {
        "data_paths": Leaf("globs"),
        "max_sample_age": SECS,
        "live_host": Leaf("bool"),
        "retire_after": SECS,
    },
    "backpressure": {
        "decrease": PCT_FRACTION,
        "increase": PCT_FRACTION,
        "min_factor": PCT_FRACTION,
        "recovery_half_life": NUM,
    },
    "oom": {"lower_after": COUNT, "window": SECS, "factor": PCT_FRACTION, "decay_interval": SECS},
}

# the least value a setting takes (and why): below it the loop it paces would only load the store
FLOORS: dict[str, tuple[float, str]] = {
    "run.poll_interval": (0.05, "seconds (polling the store faster only loads it)"),
    "run.wake_poll": (0.05, "seconds (polling the store faster only loads it)"),
    "store.lease_ttl": (1, "second"),
    "oom.decay_interval": (1, "second"),
}

# Settings that are validated and shown but that nothing reads yet: ``config show`` and the
# shipped YAML mark them "(not used yet)". Whatever starts reading one removes it here.
NOT_USED_YET: frozenset[str] = frozenset()


def is_used(dotted: str) -> bool:
    """False for a setting (or a section) in ``NOT_USED_YET`` or under one of them."""
    parts = dotted.split(".")
    return not any(".".join(parts[:i]) in NOT_USED_YET for i in range(1, len(parts) + 1))


# The optimizer's, the bandwidth manager's, the scheduler's, the event log's and the server's
# sections: an error in one (a bad value from the file, the environment or --set, or a
# cross-check among them) does not stop loading. The section keeps its values from the layers
# below, the error is kept in ``Settings.problems``, and ``Settings.require`` raises it: only
# the commands that use the section fail; admission goes on.
DEFERRED_SECTIONS: tuple[str, ...] = (
    "resource_targets",
    "optimizer",
    "hardware",
    "selfplay_configs",
    "bandwidth",
    "schedule",
    "events",
    "serve",
)

# environment variable -> keys it sets (below the file's values: environment > file > defaults)
ENV_KEYS: dict[str, tuple[str, ...]] = {
    "RINGRIFT_TARGET_UTIL_MIN": ("resource_targets.cpu_min", "resource_targets.gpu_min"),
    "RINGRIFT_TARGET_UTIL_MAX": ("resource_targets.cpu_max", "resource_targets.gpu_max"),
    "RINGRIFT_PID_KP": ("resource_targets.pid.kp",),
    "RINGRIFT_PID_KI": ("resource_targets.pid.ki",),
    "RINGRIFT_PID_KD": ("resource_targets.pid.kd",),
}

# --------------------------------------------------------------------------- settings


class Settings:
    """Resolved configuration: nested values plus the source of every leaf."""

    def __init__(
        self,
        values: dict[str, Any],
        sources: dict[str, str],
        file: str | None,
        problems: dict[str, ConfigError] | None = None,
    ):
        self.values = values
        self.sources = sources
        self.file = file
        # section -> the first error found in it (``DEFERRED_SECTIONS`` only); the section
        # holds its values from the layers below the bad one
        self.problems: dict[str, ConfigError] = {} if problems is None else problems
        self.state_dir: str | None = None  # set by Context: where the event hooks log

    def require(self, section: str) -> None:
        """Raise the error kept for ``section`` (exit 3, or 2 for a ``--set`` flag): what a
        command that uses one of the ``DEFERRED_SECTIONS`` calls before reading it."""
        problem = self.problems.get(section)
        if problem is not None:
            raise problem

    def get(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            node = node[part]
        return node

    def source(self, dotted: str) -> str:
        while dotted:
            if dotted in self.sources:
                return self.sources[dotted]
            dotted = dotted.rpartition(".")[0]
        return "default"

    def set(self, dotted: str, value: Any, source: str) -> None:
        """Apply a command-line override (validated like any other value)."""
        leaf = _schema_at(dotted)
        if not isinstance(leaf, Leaf):
            raise ConfigError(f"{dotted} is not a single setting", key=dotted)
        checked = _check_leaf(leaf, value, dotted, source, None)
        parts = dotted.split(".")
        node = self.values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = checked
        self.sources[dotted] = source

    # conveniences the domain code uses
    def task_limit(self, task_type: str, scope: str) -> int | None:
        entry = self.values["task_limits"].get(task_type) or {}
        value: int | None = entry.get(scope)
        return value

    def rate_limit(self, task_type: str) -> tuple[float, float] | None:
        entry = self.values["rate_limits"].get(task_type)
        if not entry or entry.get("per_minute") is None:
            return None
        return float(entry["per_minute"]), float(entry.get("burst", 1) or 1)

    def duration(self, task_type: str) -> float | None:
        value = self.values["durations"].get(task_type)
        return None if value is None else float(value)

    def flat(self, section: str | None = None) -> list[tuple[str, Any, str]]:
        """(key, value, source) for every leaf, optionally of one section."""
        out: list[tuple[str, Any, str]] = []

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and node and not _is_leaf_path(prefix):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else key, value)
            else:
                out.append((prefix, node, self.source(prefix)))

        walk(section or "", self.values if section is None else self.values[section])
        if section:
            out = [(k if k.startswith(section) else f"{section}.{k}", v, s) for k, v, s in out]
        return out


def _is_leaf_path(dotted: str) -> bool:
    return isinstance(_schema_at(dotted, missing=None), Leaf)


def _schema_at(dotted: str, missing: Any = KeyError) -> Any:
    node: Any = SCHEMA
    for part in dotted.split("."):
        if isinstance(node, MapOf):
            if node.keys is not None and part not in node.keys:
                if missing is KeyError:
                    raise ConfigError("unknown key" + _nearest(part, node.keys), key=dotted)
                return missing
            node = node.item
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if missing is KeyError:
                hint = _nearest(part, node) if isinstance(node, dict) else ""
                raise ConfigError("unknown key" + hint, key=dotted)
            return missing
    return node


# --------------------------------------------------------------------------- loading


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The config file to read: flag, then $RINGRIFT_COORD_CONFIG, then the user's own
    (``$XDG_CONFIG_HOME/ringrift-coord/``), then the system's: each of ``$XDG_CONFIG_DIRS``
    (default /etc/xdg) and ``/etc/ringrift-coord/``. The first that exists is read."""
    path = explicit or env.get(CONFIG_ENV) or None
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} does not exist")
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} is not a regular file")
        return path
    for candidate in config_search_path(env):
        try:
            os.stat(candidate)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue
        except OSError as exc:  # there but unreadable: never silently the defaults instead
            raise ConfigError(f"cannot read config file {candidate}: {exc.strerror}") from None
        if os.path.isfile(candidate):
            return candidate
    return None


def config_search_path(env: Mapping[str, str]) -> list[str]:
    """Where the config file is looked for when no flag or variable names one, in order."""
    dirs = [d for d in (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":") if d]
    system = [os.path.join(d, "ringrift-coord", DEFAULT_CONFIG_NAME) for d in dirs]
    return [user_config_path(env), *system, os.path.join(SYSTEM_CONFIG_DIR, DEFAULT_CONFIG_NAME)]


SYSTEM_CONFIG_DIR = "/etc/ringrift-coord"


# A config file is a few KiB; parsing 10 MB of YAML took 9.5 s and 670 MB of memory, so a
# file past this is refused before it is parsed (a runaway generator, a wrong path).
MAX_CONFIG_BYTES = 1 << 20


def read_config_bytes(path: str) -> bytes:
    """The whole text of the config file ``path``, refused (exit 3) when another user could
    have written it: it, and every directory above it, must be owned by you or root and
    writable by no one else (as the state directory)."""
    import stat

    from ringrift_coord.errors import StateError
    from ringrift_coord.statedir import check_parents

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=path) from None
    with open(fd, "rb") as handle:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("config file is not a regular file", file=path)
        if st.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"config file is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}) or "
                "root; refusing it",
                file=path,
            )
        if mode & 0o022:
            raise ConfigError(
                f"config file is writable by group or others (mode {mode:04o}); refusing it: "
                f"run chmod go-w {path}",
                file=path,
            )
        try:
            check_parents(path, "config file")
        except StateError as exc:
            raise ConfigError(exc.message) from None
        try:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", file=path) from None
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file is larger than {MAX_CONFIG_BYTES // 1024} KiB; refusing to parse "
                "it (a config file is a few KiB: is this the right path?)",
                file=path,
            )
        return data


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    use_default_file: bool = True,
    cache_dir: str | None = None,
) -> Settings:
    """Resolve defaults < YAML < environment. Flags are applied by the caller with ``set``.

    With ``cache_dir`` (the private state directory), the validated result of the YAML file
    is cached there as JSON keyed by the file's identity, so a launch script's every call
    does not pay for importing and running the YAML parser (~30 ms).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: dict[str, ConfigError] = {}
    path = find_config_file(config_file, env) if (config_file or use_default_file) else None
    text = read_config_bytes(path) if path else None
    cache_key = _cache_key(path, text) if path and text is not None and cache_dir else None
    cached = _read_cache(cache_dir, cache_key) if cache_dir and cache_key else None
    if cached is not None:
        values, sources = cached
    else:
        values = _copy_tree(DEFAULTS)
        if path:
            document = read_yaml_file(path, text)
            file_layer = _Layer(values, sources, problems)
            if document is not None:
                _merge(values, document, SCHEMA, "", path, sources, file_layer)
            _cross_checks(values, sources, path)
            file_layer.finish(path)
            if cache_dir and cache_key and not problems:  # a bad section: parsed each time
                _write_cache(cache_dir, cache_key, values, sources)
    assignments = [a for a in env.get(SET_ENV, "").split(";") if a.strip()]
    given = [(var, keys, env[var]) for var, keys in ENV_KEYS.items() if env.get(var)]
    # (the snapshot of the deferred sections costs, so it is taken when there is a layer)
    layer = _Layer(values, sources, problems) if given or assignments else None
    for var, keys, raw in given:
        assert layer is not None
        section = keys[0].partition(".")[0]
        if section in layer.failed:
            continue
        try:
            number = strict_float(raw)
            if number is None:
                hint = number_hint(raw)
                raise ConfigError(
                    f"env {var}={raw!r}: expected a number" + (f"; {hint}" if hint else "")
                )
            for key in keys:
                leaf = _schema_at(key)
                checked = _check_leaf(leaf, number, key, f"env {var}", None)
                node = values[section]
                parts = key.split(".")[1:]
                for part in parts[:-1]:
                    node = node[part]
                node[parts[-1]] = checked
                sources[key] = f"env {var}"
        except ConfigError as exc:
            if section not in DEFERRED_SECTIONS:
                raise
            layer.fail(section, exc)
    settings = Settings(values, sources, path, problems)
    # the environment's variables and its RINGRIFT_COORD_SET are one layer, checked together
    apply_assignments(settings, assignments, f"env {SET_ENV}", layer)
    return settings


def apply_assignments(
    settings: Settings, assignments: list[str], origin: str, layer: _Layer | None = None
) -> None:
    """Apply ``KEY=VALUE`` strings (``--set`` flags, or ``$RINGRIFT_COORD_SET`` split on ';').
    A bad one for a ``DEFERRED_SECTIONS`` key is kept in ``settings.problems`` (that section
    keeps its values from before these assignments, or from before ``layer``); any other
    raises. The cross-checks run after them."""
    checks = bool(assignments) or layer is not None
    if not checks:
        return
    if layer is None:
        layer = _Layer(settings.values, settings.sources, settings.problems)
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{origin} {item!r}: expected KEY=VALUE, e.g. store.lease_ttl=60")
        section = key.partition(".")[0]
        if section in layer.failed:
            continue
        try:
            settings.set(key, parse_scalar(raw.strip()), f"{origin} {key}")
        except ConfigError as exc:
            error = ConfigError(f"{origin} {item!r}: {exc.message}")
            if section not in DEFERRED_SECTIONS:
                raise error from None
            if origin.startswith("flag "):
                error.exit_code = ExitCode.USAGE  # a bad flag is bad usage, as everywhere
            layer.fail(section, error)
    if checks:  # the same cross-checks as the file and the environment
        _cross_checks(settings.values, settings.sources, settings.file)
        layer.finish(settings.file)


class _Layer:
    """One layer of settings (the file, the environment, ``RINGRIFT_COORD_SET``, ``--set``)
    as it lands on the ``DEFERRED_SECTIONS``: what they held before it, so that a section the
    layer gets wrong goes back to that, with its error kept in ``problems``."""

    def __init__(
        self, values: dict[str, Any], sources: dict[str, str], problems: dict[str, ConfigError]
    ) -> None:
        self.values, self.sources, self.problems = values, sources, problems
        self.before = {name: _copy_tree(values[name]) for name in DEFERRED_SECTIONS}
        self.before_sources = {k: v for k, v in sources.items() if _section(k) in self.before}
        self.failed: set[str] = set()

    def fail(self, section: str, error: ConfigError) -> None:
        self.values[section] = _copy_tree(self.before[section])
        for key in [k for k in self.sources if _section(k) == section]:
            del self.sources[key]
        self.sources.update(
            {k: v for k, v in self.before_sources.items() if _section(k) == section}
        )
        self.failed.add(section)
        self.problems.setdefault(section, error)  # the first error found in the section

    def finish(self, path: str | None) -> None:
        """The cross-checks of the deferred sections, after the layer."""
        for section, error in _deferred_checks(self.values, self.sources, path):
            if isinstance(error, PartialConfigError):  # the bad part is out, the rest stays
                self.problems.setdefault(section, error)
                continue
            self.fail(section, error)


def _copy_tree(value: Any) -> Any:
    """A deep copy of settings: dicts and lists of plain values, what the defaults, the YAML
    and the cache hold. Anything else goes through ``copy.deepcopy``, imported only then (its
    import, weakref with it, cost every call ~1 ms, and it copies this tree ~3x slower)."""
    kind = type(value)
    if kind is dict:
        return {key: _copy_tree(item) for key, item in value.items()}
    if kind is list:
        return [_copy_tree(item) for item in value]
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value
    import copy

    return copy.deepcopy(value)


def _section(dotted: str) -> str:
    return dotted.partition(".")[0]


def parse_scalar(raw: str) -> Any:
    """A ``--set`` value: null, true/false, a number written as one (plain ASCII decimal), or
    text. '+5', '1_000', '٣' stay text, which a number setting refuses with what to write."""
    lowered = raw.lower()
    if lowered in ("null", "none", "~", ""):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    number: float | None = strict_int(raw)
    if number is None:
        number = strict_float(raw)
    return raw if number is None else number


CACHE_NAME = "config-cache.json"


def _cache_key(path: str, text: bytes) -> list[Any] | None:
    """The file's path and whole text (exact, unlike mtimes or a prefix), and this module's
    identity: a cache made from any other text, or by another version of the code, is not
    used."""
    try:
        code = os.stat(__file__)
    except OSError:
        return None
    return [os.path.realpath(path), text.decode("latin-1"), code.st_mtime_ns, code.st_size]


def _read_cache(cache_dir: str, key: list[Any]) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The cached settings for ``key``, when the cache file is yours alone (owned by you,
    written by no one else, one name); anything else is ignored and parsed again."""
    from ringrift_coord.statedir import untrusted_file

    try:
        fd = os.open(
            os.path.join(cache_dir, CACHE_NAME),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except OSError:
        return None
    try:
        with open(fd, encoding="utf-8") as handle:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or untrusted_file(CACHE_NAME, st, None) is not None:
                return None
            data = _json_document(handle.read())
        if data.get("key") == key:
            return data["values"], data["sources"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or damaged: parse the YAML again
    return None


def _json_document(text: str) -> Any:
    """``json.loads(text)``, by the json package's own C scanner when the interpreter has it:
    importing ``json`` compiles six regular expressions, ~1.5 ms of every call that reads the
    cache. Anything but one whole JSON document raises ``ValueError``, as ``json.loads``."""
    try:
        from _json import make_scanner
    except ImportError:  # an interpreter without the accelerator
        import json

        return json.loads(text)
    body = text.strip(" \t\n\r")  # json's whitespace
    try:
        value, end = make_scanner(_JsonDecoderDefaults)(body, 0)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if end != len(body):
        raise ValueError("extra data after the JSON document")
    return value


class _JsonDecoderDefaults:
    """What the C scanner reads from a decoder: ``json.JSONDecoder()``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__


def _write_cache(
    cache_dir: str, key: list[Any], values: dict[str, Any], sources: dict[str, str]
) -> None:
    import json

    from ringrift_coord.statedir import create_file

    target = os.path.join(cache_dir, CACHE_NAME)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        try:
            fd = create_file(tmp, None)  # 0600 whatever the umask
        except FileExistsError:  # left by a process with our pid that died
            os.unlink(tmp)
            fd = create_file(tmp, None)
        with open(fd, "w", encoding="utf-8") as handle:
            json.dump({"key": key, "values": values, "sources": sources}, handle)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _cross_fail(
    message: str, keys: tuple[str, ...], sources: dict[str, str], path: str | None
) -> ConfigError:
    """A cross-check's error, blamed on the one of ``keys`` set by the highest layer (flag >
    environment > file > default): the file's line (like every other error of the file), or
    that source in brackets (``[flag --set thresholds.cpu.warning]``)."""

    def rank(key: str) -> int:
        source = sources.get(key, "default")
        if source.startswith("flag "):
            return 3
        if source.startswith("env "):
            return 2
        return 0 if source == "default" else 1

    key = max(keys, key=rank)
    source = sources.get(key, "default")
    line = source[len(path) + 1 :] if path and source.startswith(f"{path}:") else ""
    if line.isdigit():
        return ConfigError(message, file=path, line=int(line), key=key)
    error = ConfigError(f"{message} [{source}]", key=key)
    if source.startswith("flag "):
        error.exit_code = ExitCode.USAGE  # a bad flag is bad usage, as everywhere
    return error


def _cross_checks(values: dict[str, Any], sources: dict[str, str], path: str | None) -> None:
    """Checks across settings, run after every layer (file, environment, ``--set``)."""
    for res in ("disk", "memory", "cpu", "gpu"):
        level = values["thresholds"][res]
        if level["warning"] > level["critical"]:
            raise _cross_fail(
                f"warning ({level['warning']}) is above critical ({level['critical']})",
                (f"thresholds.{res}.warning", f"thresholds.{res}.critical"),
                sources,
                path,
            )
    wake_poll, lease_ttl = values["run"]["wake_poll"], values["store"]["lease_ttl"]
    # set by hand above it: refused; the default is lowered to it (a short lease_ttl alone)
    if wake_poll > lease_ttl / 4 and sources.get("run.wake_poll", "default") != "default":
        raise _cross_fail(
            f"run.wake_poll ({wake_poll:g}) is above store.lease_ttl / 4 ({lease_ttl / 4:g}): a "
            "waiter's polls are its heartbeat, and other hosts would drop it from the line",
            ("run.wake_poll", "store.lease_ttl"),
            sources,
            path,
        )
    peak = values["peak_hours"]
    if peak["start"] == peak["end"]:
        raise _cross_fail(
            f"start and end are both {peak['start']}: a peak window needs two different times "
            "(pick two; peak hours refuse admissions only when peak_hours.enforce is true)",
            ("peak_hours.start", "peak_hours.end"),
            sources,
            path,
        )
    for name, entry in values["rate_limits"].items():
        if entry.get("per_minute") is not None and entry.get("burst", 1) < 1:
            raise _cross_fail(
                f"burst must be at least 1 when per_minute is set, got {entry['burst']}",
                (f"rate_limits.{name}.burst",),
                sources,
                path,
            )


def _deferred_checks(
    values: dict[str, Any], sources: dict[str, str], path: str | None
) -> list[tuple[str, ConfigError]]:
    """The cross-checks of the ``DEFERRED_SECTIONS``: (section, error) for each that fails
    one (its first failure only)."""
    found: list[tuple[str, ConfigError]] = []
    rt = values["resource_targets"]
    for kind in ("cpu", "gpu"):
        order = ["scale_up_below", f"{kind}_min", f"{kind}_target", f"{kind}_max"]
        order.append("scale_down_above")
        bad = next(((a, b) for a, b in zip(order, order[1:], strict=False) if rt[a] > rt[b]), None)
        if bad is not None:
            a, b = bad
            found.append(
                (
                    "resource_targets",
                    _cross_fail(
                        f"{a} ({rt[a]:g}) is above {b} ({rt[b]:g}); the targets need "
                        + " <= ".join(order),
                        (f"resource_targets.{a}", f"resource_targets.{b}"),
                        sources,
                        path,
                    ),
                )
            )
            break
    rate = values["optimizer"]["rate"]
    problem = None
    if rate["min"] <= 0:
        problem = _cross_fail(
            f"the least self-play rate must be above 0, got {rate['min']:g}",
            ("optimizer.rate.min",),
            sources,
            path,
        )
    else:
        for a, b in (("min", "initial"), ("initial", "max")):
            if rate[a] > rate[b]:
                problem = _cross_fail(
                    f"{a} ({rate[a]:g}) is above {b} ({rate[b]:g}); the rate needs "
                    "min <= initial <= max",
                    (f"optimizer.rate.{a}", f"optimizer.rate.{b}"),
                    sources,
                    path,
                )
                break
    if problem is None:
        problem = _timing_problem(values["optimizer"], sources, path)
    if problem is not None:
        found.append(("optimizer", problem))
    hw = values["hardware"]
    if hw["jobs_per_cpu"] <= 0:  # 0 would cap every node at one job, not "no bound"
        found.append(
            (
                "hardware",
                _cross_fail(
                    f"jobs_per_cpu must be above 0, got {hw['jobs_per_cpu']:g}",
                    ("hardware.jobs_per_cpu",),
                    sources,
                    path,
                ),
            )
        )
    weights = values["selfplay_configs"]
    if weights and not any(w > 0 for w in weights.values()):
        found.append(
            (
                "selfplay_configs",
                _cross_fail(
                    "every weight is 0: at least one board config needs a weight above 0",
                    tuple(f"selfplay_configs.{name}" for name in weights),
                    sources,
                    path,
                ),
            )
        )
    bandwidth = _bandwidth_problem(values["bandwidth"], sources, path)
    if bandwidth is not None:
        found.append(("bandwidth", bandwidth))
    schedule = _schedule_problem(values["schedule"], sources, path)
    if schedule is not None:
        found.append(("schedule", schedule))
    events = _events_problem(values["events"], sources, path)
    if events is not None:
        found.append(("events", events))
    serve = _serve_problem(values["serve"], sources, path)
    if serve is not None:
        found.append(("serve", serve))
    return found


class PartialConfigError(ConfigError):
    """An error that costs only the bad part of its section (one event hook): the part is
    left out, the rest of the section stays as given. Kept in ``Settings.problems`` all the
    same: the commands that require the section fail on it."""


def _events_problem(
    ev: dict[str, Any], sources: dict[str, str], path: str | None
) -> ConfigError | None:
    """Each event hook needs ``on`` (the type globs it runs on), ``command`` and a timeout
    above 0. A bad hook is left out, the good ones stay: the error (the first bad hook's,
    naming the others) is a ``PartialConfigError``."""
    bad: list[tuple[str, str, tuple[str, ...]]] = []
    for name, hook in ev["hooks"].items():
        base = f"events.hooks.{name}"
        keys = tuple(k for k in (f"{base}.{leaf}" for leaf in ("on", "command", "timeout")))
        for leaf, example in (("on", "on: [HALT, BREAKER_*]"), ("command", "command: [prog, arg]")):
            if not hook.get(leaf):
                bad.append((name, f"hook {name} has no {leaf}: give it {example}", keys))
                break
        else:
            if hook.get("timeout") is not None and hook["timeout"] <= 0:
                message = f"hook {name}: timeout must be above 0, got {hook['timeout']:g}"
                bad.append((name, message, (f"{base}.timeout",)))
    if not bad:
        return None
    for name, _, _ in bad:
        del ev["hooks"][name]
    name, message, keys = bad[0]
    message += "; the hook is left out, the others run"
    if len(bad) > 1:
        message += " (left out too: " + ", ".join(other for other, _, _ in bad[1:]) + ")"
    error = _cross_fail(
        message, tuple(k for k in keys if k in sources) or (f"events.hooks.{name}",), sources, path
    )
    partial = PartialConfigError(str(error))
    partial.file, partial.line, partial.key = error.file, error.line, error.key
    partial.exit_code = error.exit_code
    return partial


def _serve_problem(
    serve: dict[str, Any], sources: dict[str, str], path: str | None
) -> ConfigError | None:
    """``serve`` needs a TCP port (1..65535), an address and a store timeout above 0."""
    if not 1 <= serve["port"] <= 65535:
        return _cross_fail(
            f"port must be a TCP port (1..65535), got {serve['port']}",
            ("serve.port",),
            sources,
            path,
        )
    if not str(serve["host"]).strip():
        return _cross_fail(
            "host is empty: give an address such as 127.0.0.1", ("serve.host",), sources, path
        )
    if serve["store_timeout"] <= 0:
        return _cross_fail(
            f"store_timeout must be above 0, got {serve['store_timeout']:g}",
            ("serve.store_timeout",),
            sources,
            path,
        )
    return None


def _schedule_problem(
    sched: dict[str, Any], sources: dict[str, str], path: str | None
) -> ConfigError | None:
    """The learned durations need 1 <= min_samples <= samples and a stale factor above 0."""
    if not 1 <= sched["min_samples"] <= sched["samples"]:
        return _cross_fail(
            f"min_samples ({sched['min_samples']}) must be at least 1 and at most samples "
            f"({sched['samples']}), the number of durations kept",
            ("schedule.min_samples", "schedule.samples"),
            sources,
            path,
        )
    if sched["stale_factor"] <= 0:
        return _cross_fail(
            f"stale_factor must be above 0, got {sched['stale_factor']:g}",
            ("schedule.stale_factor",),
            sources,
            path,
        )
    return None


def _bandwidth_problem(
    bw: dict[str, Any], sources: dict[str, str], path: str | None
) -> ConfigError | None:
    """A link of 0 Mbps, a priority with no share of it, or no transfer allowed at once
    would refuse every transfer: each must be above 0. A host type matches hosts by its
    ``match`` globs: it needs at least one, each a well-formed glob (no unclosed ``[``)."""
    for name, entry in bw["host_types"].items():
        patterns = entry.get("match") or []
        key = f"bandwidth.host_types.{name}.match"
        if not patterns:
            return _cross_fail(
                f"host type {name} has no match globs, so it would match no host: give it "
                'match: ["glob", ...]',
                (key, f"bandwidth.host_types.{name}.mbps"),
                sources,
                path,
            )
        for pattern in patterns:
            problem = _glob_problem(str(pattern))
            if problem is not None:
                return _cross_fail(f"{str(pattern)!r} {problem}", (key,), sources, path)
        if entry.get("mbps") is None:
            return _cross_fail(
                f"host type {name} has no mbps: give its link speed in megabits per second",
                (key,),
                sources,
                path,
            )
    keys = [f"host_types.{name}.mbps" for name in bw["host_types"]]
    keys += ["default_mbps", "max_concurrent_transfers"]
    keys += [f"priorities.{name}" for name in bw["priorities"]]
    for key in keys:
        node: Any = bw
        for part in key.split("."):
            node = node[part]
        if node <= 0:
            return _cross_fail(
                f"{key} must be above 0, got {node:g}", (f"bandwidth.{key}",), sources, path
            )
    return None


def _glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a well-formed glob (None: it is): empty, or a ``[`` that no
    ``]`` closes (fnmatch would read it as a plain character)."""
    if not pattern.strip():
        return "is empty"
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1  # a ] first in the set is one of its characters
            close = pattern.find("]", j)
            if close < 0:
                return (
                    f"is not a glob: its [ at character {i + 1} is never closed by a ] "
                    "(a literal [ is [[])"
                )
            i = close
        i += 1
    return None


def _timing_problem(
    opt: dict[str, Any], sources: dict[str, str], path: str | None
) -> ConfigError | None:
    """The optimizer's periods against each other: a run every ``interval`` (> 0); an adjust
    sooner than ``min_interval`` (<= interval) acts not; a gap past ``max_gap`` (>= interval)
    restarts the controller; targets last ``state_ttl`` (>= interval); a trend needs
    ``trend.min_samples`` >= 3 (two points always fit a line perfectly)."""
    checks = (
        (opt["interval"] > 0, "interval must be above 0", ("interval",)),
        (
            opt["min_interval"] <= opt["interval"],
            f"min_interval ({opt['min_interval']:g}) is above interval ({opt['interval']:g})",
            ("min_interval", "interval"),
        ),
        (
            opt["max_gap"] >= opt["interval"],
            f"max_gap ({opt['max_gap']:g}) is below interval ({opt['interval']:g}): every "
            "run would restart the controller",
            ("max_gap", "interval"),
        ),
        (
            opt["state_ttl"] >= opt["interval"],
            f"state_ttl ({opt['state_ttl']:g}) is below interval ({opt['interval']:g}): the "
            "targets would lapse between runs",
            ("state_ttl", "interval"),
        ),
        (
            opt["trend"]["min_samples"] >= 3,
            f"trend.min_samples must be at least 3, got {opt['trend']['min_samples']} (two "
            "points always fit a line)",
            ("trend.min_samples",),
        ),
    )
    for ok, message, keys in checks:
        if not ok:
            return _cross_fail(message, tuple(f"optimizer.{k}" for k in keys), sources, path)
    return None


# said after a top-level refusal that suggests the whole file is something else
NOT_A_CONFIG = ": is this a ringrift-coord config file?"


def salvage_shared_group(path: str | None) -> str | None:
    """``store.shared_group`` from a config file that does not load as a whole: an
    emergency halt that goes on without the file still needs the group of a shared state
    directory (else it is refused as writable by group). None when it cannot be read."""
    if not path:
        return None
    try:
        import yaml

        data = yaml.safe_load(read_config_bytes(path))
    except (CoordError, yaml.YAMLError, UnicodeDecodeError, ValueError):
        return None
    store = data.get("store") if isinstance(data, dict) else None
    group = store.get("shared_group") if isinstance(store, dict) else None
    if isinstance(group, str) and _setting_name(group) and not group.isdigit():
        return group
    return None


def read_yaml_file(path: str, data: bytes | None = None) -> Any:
    """Compose ``path`` (or its text ``data``, already read) with the safe loader; return the
    node tree (None when empty)."""
    if data is None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"config file is larger than {MAX_CONFIG_BYTES // 1024} KiB; refusing to "
                    "parse it",
                    file=path,
                )
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", file=path) from None
    import yaml

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.compose(data, Loader=loader_cls)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=path, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=path) from None


def _nearest(word: str, choices: Any) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _merge(
    target: dict[str, Any],
    node: Any,
    schema: Any,
    prefix: str,
    path: str,
    sources: dict[str, str],
    layer: _Layer | None = None,
) -> None:
    """Validate the mapping ``node`` against ``schema`` and merge it into ``target``; with
    ``layer`` (the document's top level), an error inside one of the ``DEFERRED_SECTIONS``
    is kept there instead of raised."""
    import yaml

    line = node.start_mark.line + 1
    if node.tag != "tag:yaml.org,2002:map":  # e.g. store: !!python/object:x {...}
        _reject_foreign_tags(node, path, prefix)
    if not isinstance(node, yaml.MappingNode):
        what = "the document must be" if not prefix else "must be"  # key: file:line: key: ...
        raise ConfigError(
            f"{what} a mapping of keys to values, not {_node_kind(node, quote=bool(prefix))}"
            + ("" if prefix else NOT_A_CONFIG),
            file=path,
            line=line,
            key=prefix or None,
        )
    if isinstance(schema, MapOf):
        valid_keys: Any = schema.keys
        if schema.replace:
            target.clear()
    else:
        valid_keys = tuple(schema)
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError("keys must be plain strings", file=path, line=key_line, key=prefix)
        key = str(key_node.value)
        dotted = f"{prefix}.{key}" if prefix else key
        if key in seen:
            raise ConfigError(
                f"duplicate key (first given on line {seen[key]})",
                file=path,
                line=key_line,
                key=dotted,
            )
        seen[key] = key_line
        if valid_keys is not None and key not in valid_keys:
            if not _setting_name(key):  # not a setting's name at all: a file that is no
                # config (``--config /etc/shadow``); its line is never echoed
                raise ConfigError(
                    f"a key that is not a name ({len(key)} characters, not shown)"
                    + ("" if prefix else NOT_A_CONFIG),
                    file=path,
                    line=key_line,
                    key=prefix or None,
                )
            raise ConfigError(
                "unknown key" + _nearest(key, valid_keys), file=path, line=key_line, key=dotted
            )
        sub_schema = schema.item if isinstance(schema, MapOf) else schema[key]
        if isinstance(sub_schema, Leaf):
            if sub_schema.kind == "hhmm" and _is_unquoted_time(value_node):
                # YAML 1.1 reads an unquoted 14:00 as the base-60 integer 840: a time of
                # day is what its text says (a bare 9 or 900 stays a number, refused)
                value: Any = str(value_node.value)
            else:
                _check_number_text(value_node, path, dotted)
                value = _construct(value_node, path, dotted)
            target[key] = _check_leaf(
                sub_schema, value, dotted, path, value_node.start_mark.line + 1
            )
            sources[dotted] = f"{path}:{value_node.start_mark.line + 1}"
        else:
            if _is_null(value_node):
                continue  # "section:" with nothing under it keeps the defaults
            child = target.setdefault(key, {})
            if not isinstance(child, dict):
                child = target[key] = {}
            if isinstance(sub_schema, MapOf) and not value_node.value:
                # "hooks: {}" has no leaf to carry its source: the mapping itself does
                sources[dotted] = f"{path}:{value_node.start_mark.line + 1}"
            if layer is not None and prefix == "events.hooks":  # a bad hook costs only itself
                try:
                    _merge(child, value_node, sub_schema, dotted, path, sources, layer)
                except ConfigError as exc:
                    del target[key]
                    for gone in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
                        del sources[gone]
                    partial = PartialConfigError(
                        f"{exc.message}; the hook is left out, the others run"
                    )
                    partial.file, partial.line, partial.key = exc.file, exc.line, exc.key
                    layer.problems.setdefault("events", partial)
                continue
            if layer is None or prefix or key not in DEFERRED_SECTIONS:
                _merge(child, value_node, sub_schema, dotted, path, sources, layer)
                continue
            try:
                _merge(child, value_node, sub_schema, dotted, path, sources, layer)
            except ConfigError as exc:
                layer.fail(key, exc)


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _check_number_text(node: Any, path: str, dotted: str) -> None:
    """A number in the file is written in plain decimal: YAML 1.1 also reads 010 as 8,
    0x10 as 16, 1:30 as 90, +5 and 1_000; each is refused with what to write instead.
    (``.inf`` and ``.nan`` pass here; the range check names them.)"""
    if node.tag not in _NUMBER_TAGS or not hasattr(node.value, "lower"):
        return
    text = node.value
    if text.lower().lstrip("-") in (".inf", ".nan"):
        return
    if node.tag == _NUMBER_TAGS[0]:
        digits = text[1:] if text.startswith("-") else text
        plain = strict_int(text) is not None and (digits == "0" or digits[0] != "0")  # 010: 8
    else:
        plain = strict_float(text) is not None
    if not plain:
        hint = number_hint(text, yaml=True) or "write it in plain decimal"
        read = _construct(node, path, dotted)
        raise ConfigError(
            f"YAML 1.1 reads {text} as {read!r}: {hint}",
            file=path,
            line=node.start_mark.line + 1,
            key=dotted,
        )


def _is_null(node: Any) -> bool:
    import yaml

    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _node_kind(node: Any, *, quote: bool = True) -> str:
    """What ``node`` is, in words; a scalar is quoted only when ``quote`` and short: a
    whole file that is no config (``--config /etc/passwd``) is never echoed."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    text = str(node.value)
    if quote and len(text) <= 64 and "\n" not in text:
        return f"the scalar '{printable(text)}'"
    return f"text ({len(text)} characters, not shown)"


def _is_unquoted_time(node: Any) -> bool:
    """A plain scalar that YAML 1.1 resolves to a base-60 integer (``14:00``, ``9:5``)."""
    import yaml

    return (  # a quoted "14:00" is a string already
        isinstance(node, yaml.ScalarNode)
        and node.tag == "tag:yaml.org,2002:int"
        and ":" in str(node.value)
    )


def _construct(node: Any, path: str, dotted: str) -> Any:
    import yaml
    from yaml.constructor import SafeConstructor

    line = node.start_mark.line + 1
    _reject_foreign_tags(node, path, dotted)
    try:
        return SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read value: {exc}", file=path, line=line, key=dotted) from None


def _setting_name(key: str) -> bool:
    """A key that could be a setting's name, mistyped (letters, digits, ``_``, ``-``, ``.``;
    at most 64): quoted in "unknown key" with the closest one."""
    return 0 < len(key) <= 64 and all(c.isalnum() or c in "_-." for c in key) and key.isascii()


def _reject_foreign_tags(node: Any, path: str, dotted: str, seen: set[int] | None = None) -> None:
    import yaml

    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: visited once, so nested aliases cannot take forever
        return
    seen.add(id(node))
    tag = node.tag or ""
    if tag.startswith("tag:yaml.org,2002:python/") or not tag.startswith("tag:yaml.org,2002:"):
        raise ConfigError(
            f"tag {tag!r} is not allowed: the configuration is read with a safe loader only",
            file=path,
            line=node.start_mark.line + 1,
            key=dotted,
        )
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _reject_foreign_tags(child, path, dotted, seen)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _reject_foreign_tags(k, path, dotted, seen)
            _reject_foreign_tags(v, path, dotted, seen)


def _check_leaf(leaf: Leaf, value: Any, dotted: str, origin: str, line: int | None) -> Any:
    """Validate one value; ``origin`` is the file (with ``line``) or another source."""

    where = (dotted, origin, line)

    def bad(reason: str) -> ConfigError:
        if line is None:
            return ConfigError(f"{reason} [{origin}]", key=dotted)
        return ConfigError(reason, file=origin, line=line, key=dotted)

    if value is None:
        if leaf.nullable:
            return None
        raise bad(f"expected {leaf.describe()}, got null")
    kind = leaf.kind
    if kind == "seconds" and isinstance(value, str):  # "5m", "1h30m": durations.parse
        from ringrift_coord import durations

        try:
            seconds = durations.parse(value)
        except ValueError:
            pass  # refused below, with the number form's hint where there is one ("0o10")
        else:
            value = int(seconds) if seconds.is_integer() else seconds
    if kind in ("count", "number", "seconds", "percent", "fraction"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = None
            if isinstance(value, str):  # 7 in quotes; YAML 1.1 also reads 09 and 1e3 as text
                number = strict_float(value)
                if number is not None and not math.isfinite(number):  # 1e400, "inf"
                    words = "inf" in value.lower() or "nan" in value.lower()
                    raise bad(
                        f"expected {leaf.describe()}, got {printable(value)}, which is "
                        + ("not a finite number" if words else "out of range (no finite number)")
                    )
                if number is not None:  # 1e10: the range's word, not "write 10000000000"
                    _check_leaf(leaf, int(number) if number.is_integer() else number, *where)
                plain = number is not None
                hint = number_hint(value) or ("write it without quotes" if plain else None)
            raise bad(
                f"expected {leaf.describe()}, got {_show(value)}" + (f"; {hint}" if hint else "")
            )
        if not math.isfinite(value):
            raise bad(f"expected a finite number, got {value}")
        if value < 0:
            raise bad(f"must not be negative, got {value}")
        if value > 1e9:  # beyond any real setting; timers and the store would overflow
            raise bad(f"must be at most 1e9, got {value:g}")
        if kind == "count":
            if isinstance(value, float) and not value.is_integer():
                raise bad(f"expected a whole number, got {value}")
            return int(value)
        if kind == "percent" and value > 100:
            raise bad(f"expected a percentage from 0 to 100, got {value}")
        if kind == "fraction" and value > 1:
            raise bad(f"expected a fraction from 0 to 1, got {value}")
        floor = FLOORS.get(dotted)
        if floor is not None and value < floor[0]:
            raise bad(f"must be at least {floor[0]:g} {floor[1]}, got {value:g}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {_show(value)}")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise bad(f"expected a non-empty string, got {_show(value)}")
        return value
    if kind == "hhmm":
        if not isinstance(value, str):
            raise bad(f'expected a time "HH:MM", got {_show(value)}')
        hh, sep, mm = value.partition(":")
        digits = sep and hh.isascii() and mm.isascii() and hh.isdigit() and mm.isdigit()
        if not (digits and int(hh) < 24 and int(mm) < 60):
            midnight = " (midnight is 00:00)" if digits and int(hh) == 24 and int(mm) == 0 else ""
            raise bad(f'expected a time "HH:MM", got {value!r}{midnight}')
        return f"{int(hh):02d}:{int(mm):02d}"
    if kind == "timezone":
        if not isinstance(value, str) or not value:
            raise bad(f"expected {leaf.describe()}, got {_show(value)}")
        problem = _timezone_problem(value)
        if problem:
            raise bad(problem)
        return value
    if kind == "globs":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad(f"expected a list of glob patterns, got {_show(value)}")
        return value
    if kind == "argv":
        if isinstance(value, str):
            import shlex

            try:
                value = shlex.split(value)
            except ValueError as exc:  # an unclosed quote
                raise bad(f"cannot split the command into words: {exc}") from None
        if not isinstance(value, list):
            raise bad(f"expected {leaf.describe()}, got {_show(value)}")
        if not value:
            raise bad(f"the command is empty: expected {leaf.describe()}")
        for i, word in enumerate(value, 1):
            if not isinstance(word, str):  # [true], [run, 5]: YAML read a word as another type
                raise bad(
                    f"word {i} of the command is not text (YAML read it as {_yaml_kind(word)}): "
                    "put it in quotes"
                )
        if not value[0]:
            raise bad("the command's first word (the program) is empty")
        return value
    if kind == "task_types":
        if isinstance(value, str):  # from --set or the environment: "training,cmaes"
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"expected a list of task types, got {_show(value)}")
        for name in value:
            if name not in TASK_TYPE_NAMES:
                raise bad(f"unknown task type {name!r}{did_you_mean(name, TASK_TYPE_NAMES)}")
        return list(dict.fromkeys(value))
    if kind == "group":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if not isinstance(value, str) or not value or not value.isprintable() or ":" in value:
            raise bad(f"expected a Unix group name or id, got {_show(value)}")
        return value
    raise AssertionError(kind)  # pragma: no cover


def _timezone_problem(name: str) -> str | None:
    """Why ``name`` is not a zone of the time-zone database (None when it is one)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    if name == "UTC":  # no database installed at all: UTC needs none
        return None
    import difflib

    known = zoneinfo.available_timezones()
    by_fold = {zone.casefold(): zone for zone in known}
    match = by_fold.get(name.casefold()) or next(
        iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)), None
    )
    if match:
        return f"unknown time zone {name!r} (did you mean {match!r}?)"
    return f"unknown time zone {name!r}: write a name of the tz database, e.g. Europe/Berlin"


def _yaml_kind(value: Any) -> str:
    """What YAML made of a plain word, in its terms: ``true``, ``null``, ``the number 750``
    (``12:30`` in YAML 1.1's base 60), ``the date 2026-01-01``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if hasattr(value, "isoformat"):
        return f"the date {value.isoformat()}"
    return _show(value)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)
