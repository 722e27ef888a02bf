"""The JSON vocabulary of ``--json``: one document per command, the same name for the same
concept in every command, numbers typed and rounded one way.

Every command's ``--json`` output goes through ``envelope``: the document gets
``schema_version`` (its first key) and is normalised here, in one place, so the read models
and the Python API keep their own shapes while the command line speaks one vocabulary:

- renamed fields (``RENAMED``): a reservation is ``reservation_id``, the blocking rules of a
  decision are ``reasons`` (also in the decision log), a moment ends in ``_at``
  (``lease_expires_at``); a node's own backpressure factor is ``backpressure_factor`` (the
  name ``backpressure`` is the list of every node's factor); ``status``'s running tasks of a
  type per node are ``running_by_node`` (``nodes`` is the list of node readings);
- moments (``at``, ``*_at``, ``MOMENTS``) are epoch seconds, numbers rounded to the millisecond;
  durations in seconds (``DURATIONS``) likewise; percentages to 0.1, load averages to 0.01,
  factors to 0.001; a number that is not finite is ``null`` (jq refuses ``NaN``);
- flags (``BOOLEANS``) are booleans, never 0/1;
- configuration values (``values[].value``, ``thresholds``) are shown as configured, never
  rounded.

``FIELDS`` (the shared names and their types) and ``COMMANDS`` (each command's top-level
keys) are the schema the README's "JSON output" section shows and the tests check every
command against. Changing a name or a type there means a new ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1

RENAMED = {"res_id": "reservation_id", "rules": "reasons", "lease_expires": "lease_expires_at"}
RENAMED_NUMBER = {"backpressure": "backpressure_factor"}  # a node's own factor (a number)
RENAMED_OBJECT = {"nodes": "running_by_node"}  # node -> running tasks (an object)
DURATIONS = frozenset({"duration", "age", "retry_after", "lease_left", "max_sample_age"})
PERCENTS = frozenset({"cpu", "gpu", "memory", "disk", "gpu_memory"})
LOADS = frozenset({"load_avg", "load_critical"})
FACTORS = frozenset({"factor", "backpressure_factor", "stored_factor"})
BOOLEANS = frozenset({"allowed", "trial", "mirror", "stale", "blocking", "released", "escalated"})
VERBATIM = frozenset({"thresholds", "value", "payload"})  # as configured, as published
# objects keyed by data (task type, node or resource names), not by field names
MAPS = frozenset({"by_type", "running_by_node", "per_node", "lowered", "effective", "levels"})
# names version 1 no longer uses (``id``: no bare ids, every id says what it identifies)
RETIRED = frozenset({"res_id", "rules", "lease_expires", "file", "id"})


# moments whose names predate the ``_at`` rule (peak hours): epoch seconds all the same
MOMENTS = frozenset({"expected_finish", "peak_start", "peak_end"})


def is_moment(key: str | None) -> bool:
    return key is not None and (key == "at" or key.endswith("_at") or key in MOMENTS)


def _digits(key: str | None) -> int | None:
    """How many decimals a number under ``key`` keeps (None: as it is)."""
    if key is None:
        return None
    if is_moment(key) or key in DURATIONS or key in FACTORS:
        return 3
    if key in PERCENTS:
        return 1
    if key in LOADS:
        return 2
    return None


def normalise(value: Any, key: str | None = None) -> Any:
    """``value`` in the vocabulary (see the module's docstring); ``key``: its field name."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for name, item in value.items():
            name = str(name)
            if name in VERBATIM:
                out[name] = _finite(item)
                continue
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                name = RENAMED_NUMBER.get(name, name)
            elif isinstance(item, dict):
                name = RENAMED_OBJECT.get(name, name)
            name = RENAMED.get(name, name)
            if name == "id":  # no bare ids: a decision log entry's id is its decision_id
                name = "decision_id" if "action" in value else name
                if name == "id":
                    continue  # a history row's number: not a name anyone refers to
            out[name] = normalise(item, name)
        return out
    if isinstance(value, (list, tuple)):
        return [normalise(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        if isinstance(value, str) and is_moment(key):
            return None  # a moment that is not a number (a hand-written halt file)
        return value
    if isinstance(value, (int, float)):
        if key in BOOLEANS:
            return bool(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            digits = _digits(key)
            return value if digits is None else round(value, digits)
        return int(value)
    return str(value)


def _finite(value: Any) -> Any:
    """A verbatim value with every non-finite number as ``null`` (else it is no JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def envelope(document: dict[str, Any]) -> dict[str, Any]:
    """A command's JSON document: ``schema_version`` first, then ``document`` normalised."""
    return {"schema_version": SCHEMA_VERSION, **normalise(document)}


# --------------------------------------------------------------------------- the schema

# The shared names: one meaning and one JSON type wherever they appear (``?``: or null).
# Moments (``at`` and every ``*_at``) are "number?" epoch seconds, rounded to 1 ms.
FIELDS: dict[str, tuple[str, str]] = {
    "schema_version": ("integer", "the version of this vocabulary; top level of every document"),
    "error": ("string", "what went wrong (with exit_code: the document of a failed command)"),
    "exit_code": ("integer?", "a command's or a job's exit code"),
    "task_id": ("string?", "a task (a slot and its holder), as register prints it"),
    "transfer_id": ("string?", "a transfer, as bandwidth start prints it"),
    "remote": ("string?", "the host at the other end of a transfer, whose link is limited"),
    "reservation_id": ("string", "a reservation, as reserve prints it"),
    "decision_id": ("integer", "an entry of the decision log"),
    "event_id": ("integer", "an event of the event log, as events publish prints it"),
    "lease_token": ("integer?", "the fencing token of a task's slot"),
    "task_type": ("string", "a task type: selfplay, training, ..."),
    "node": ("string?", "a node id"),
    "host": ("string?", "the host name a process ran on"),
    "pid": ("integer?", "a process id on that host"),
    "who": ("string?", "the operator, user@host"),
    "at": ("number?", "the moment a document or entry is of, epoch seconds"),
    "started_at": ("number?", "a task's start"),
    "ended_at": ("number?", "a task's end"),
    "expires_at": ("number?", "when a halt or reservation lapses (null: never)"),
    "lease_expires_at": ("number?", "when a task's lease lapses"),
    "allowed": ("boolean", "the admission decision"),
    "reasons": ("array", "the blocking rules: rule, message, requested, used, limit, ..."),
    "retry_after": ("number?", "seconds until a retry may pass (null: none known)"),
    "warnings": ("array", "readings past their warning level, as text"),
    "status": ("string?", "how a task ended: ok, failed, oom, killed, stopped, ..."),
    "reason": ("string?", "why (a halt, a task's end)"),
    "duration": ("number?", "seconds a task ran"),
    "age": ("number?", "seconds since a task started or a reading was taken"),
    "lease_left": ("number?", "seconds until a task's lease lapses"),
    "released": ("boolean", "a slot or reservation was released by this call"),
    "scope": ("string", "what a halt stops: * (every type) or a task type"),
    "store_scope": (
        "string",
        "where a halt holds: this host's SQLite store, or cluster-wide on PostgreSQL",
    ),
    "slots": ("integer", "slots a reservation holds"),
    "state": ("string", "a breaker's state, or the coordinator's: running / paused"),
    "failures": ("integer", "failures inside the breaker's window"),
    "spawn_failures": ("integer", "jobs that could not be started (126/127) in the window"),
    "factor": ("number", "a node's backpressure factor in a list of nodes"),
    "backpressure_factor": ("number", "one node's backpressure factor (1: none)"),
    "backpressure": ("array", "every node's backpressure: node, factor, stored_factor, updated_at"),
    "stored_factor": ("number", "the backpressure factor the last job left (before recovery)"),
    "config_file": ("string?", "the YAML file in effect (null: built-in defaults)"),
    "values": ("array", "settings: key, value, source"),
    "trial": ("boolean", "admitted as a half-open breaker's trial"),
    "stale": ("boolean", "a reading older than resources.max_sample_age"),
    "blocking": ("boolean", "a reading that makes admission refuse its node"),
    "expected_seconds": (
        "number?",
        "seconds a task of a type (and config) is expected to run (null: unknown)",
    ),
    "expected_finish": ("number?", "when a task started now is expected to end (null: unknown)"),
    "peak_start": ("number", "the start of the peak window that blocks a task, or the next one"),
    "peak_end": ("number", "the end of that peak window"),
    "now": ("string", "the moment a what-if answer is for, ISO 8601 in UTC"),
}

# Each command's top-level keys (besides schema_version). "*": a list command's items.
_DECISION = ("allowed", "task_type", "node", "reasons", "retry_after", "task_id", "warnings")
_BREAKER = (
    "node",
    "task_type",
    "state",
    "stored_state",
    "failures",
    "last_reason",
    "last_failure_at",
    "opened_at",
    "retry_at",
    "retry_after",
    "trials_in_flight",
    "backpressure_factor",
)
_READING = (
    "node",
    "at",
    "source",
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
    "details",
)
_SETTINGS = ("config_file", "values")
# an event as every command and hook shows it (``events.Event.to_dict``)
EVENT = (
    "event_id",
    "type",
    "payload",
    "source",
    "host",
    "node",
    "who",
    "at",
    "last_at",
    "seen",
    "digest",
)
# an ended transfer's history row as ``bandwidth end --json`` shows it (null: already ended)
TRANSFER_ENDED = (
    "remote",
    "kind",
    "priority",
    "kbps",
    "node",
    "host",
    "started_at",
    "ended_at",
    "seconds",
    "bytes",
    "observed_kbps",
    "ema_kbps",
    "status",
    "reason",
)
_TRANSFER = (
    "allowed",
    "remote",
    "host_type",
    "priority",
    "factor",
    "kbps",
    "limit_kbps",
    "active",
    "queued",
    "cap",
    "free_kbps",
    "reasons",
    "retry_after",
)
COMMANDS: dict[str, tuple[str, ...]] = {
    "can-spawn": _DECISION,
    "can-spawn --now": (*_DECISION, "what_if", "now"),
    "register": (*_DECISION, "lease_token"),
    "unregister": ("task_id", "released", "duration"),
    "run": ("task_id", "task_type", "node", "exit_code", "status", "reason", "duration"),
    "bandwidth run": (
        "task_id",
        "task_type",
        "node",
        "exit_code",
        "status",
        "reason",
        "duration",
        "transfer_id",
        "remote",
        "host_type",
        "priority",
        "kbps",
        "limit_kbps",
        "bytes",
        "observed_kbps",
    ),
    "tasks list": ("tasks",),
    "tasks history": ("tasks",),
    "tasks reap": ("reaped", "reaped_transfers", "kept_live"),
    "tasks show": (
        "task_id",
        "task_type",
        "node",
        "host",
        "status",
        "running",
        "history",
        "decisions",
        "at",
    ),
    "tasks cancel": (
        "task_id",
        "task_type",
        "node",
        "host",
        "signal",
        "escalated",
        "released_by",
        "status",
        "exit_code",
        "reason",
    ),
    "reserve": ("reservation_id", "node", "task_type", "slots", "created_at", "expires_at", "who"),
    "reserve list": ("reservations",),
    "reserve release": ("reservation_id", "released"),
    "halt": ("scope", "node", "reason", "who", "host", "at", "expires_at", "store_scope"),
    "halt --check": ("halted", "paused", "halts", "halt_file", "recent", "at", "store_scope"),
    "unhalt": (
        "lifted",
        "lifted_halts",
        "node",
        "removed_halt_file",
        "who",
        "at",
        "store_scope",
    ),
    "decisions": ("decisions",),
    "limits": (*_SETTINGS, "lowered_caps", "backpressure"),
    "targets": (*_SETTINGS, "notes"),
    "status": (
        "state",
        "total_tasks",
        "by_type",
        "reservations",
        "halt",
        "tasks",
        "breakers",
        "store",
        "at",
        "optimizer",
        "long_holds",
    ),
    "config show": _SETTINGS,
    "config validate": ("valid", "config_file"),
    "doctor": ("healthy", "failed_checks", "warned_checks", "checks", "at"),
    "metrics": ("at", "store_up", "problem", "families"),
    "metrics --textfile": ("at", "store_up", "problem", "textfile"),
    "breakers list": ("at", "breakers", "backpressure"),
    "breakers reset": ("reset", "backpressure_reset"),
    "breakers record-failure": _BREAKER,
    "breakers record-success": _BREAKER,
    "report": _READING,
    "forget-node": ("node", "forgotten", "reading_at"),
    "resources": ("at", "thresholds", "max_sample_age", "live_host", "local_node", "nodes", "live"),
    "capacity": (
        "max_selfplay_jobs",
        "bounded_by",
        "per_gpu",
        "gpu_model",
        "bounds",
        "inputs",
        "source",
        "enforced",
    ),
    "rate show": (
        "rate",
        "stored",
        "action",
        "confidence",
        "reason",
        "updated_at",
        "updated_by",
        "bounds",
        "history",
        "at",
    ),
    "rate negotiate": (
        "approved_rate",
        "requested_rate",
        "previous_rate",
        "limited_by",
        "action",
        "over_target",
        "reason",
        "requestor",
        "bounds",
        "node_targets",
        "at",
    ),
    "distribution": ("total", "unit", "basis", "node", "parts"),
    "adjust": (
        "acted",
        "dry_run",
        "action",
        "rate",
        "previous_rate",
        "confidence",
        "reason",
        "utilization",
        "controlling",
        "measurement",
        "forecast",
        "controller",
        "node_targets",
        "at",
    ),
    "utilization": (
        "at",
        "utilization",
        "targets",
        "in_range",
        "scale_up",
        "scale_down",
        "controlling",
        "rate",
        "action",
        "confidence",
        "reason",
        "updated_at",
        "updated_by",
        "age",
        "stored",
        "selfplay_targets",
        "nodes",
    ),
    "bandwidth allocate": (*_TRANSFER, "unit", "rate"),
    "bandwidth start": (*_TRANSFER, "transfer_id", "lease_token"),
    "bandwidth end": ("transfer_id", "ended", *TRANSFER_ENDED, "limit_kbps"),
    "bandwidth status": ("active", "dead", "hosts", "host_types", "cap", "at"),
    "schedule can-start": (
        "task_type",
        "config_name",
        "allowed",
        "reason",
        "expected_seconds",
        "expected_finish",
        "peak_start",
        "peak_end",
        "in_peak",
        "retry_after",
        "timezone",
        "now",
    ),
    "schedule expected": (
        "task_type",
        "config_name",
        "expected_seconds",
        "source",
        "samples",
        "used",
        "needed",
        "default_seconds",
    ),
    "schedule record": (
        "task_type",
        "config_name",
        "recorded_seconds",
        "expected_seconds",
        "expected_source",
        "samples",
        "used",
        "needed",
        "at",
    ),
    "schedule forget": ("task_type", "config_name", "all_configs", "forgotten"),
    "schedule stale": ("at", "stale_factor", "checked", "tasks"),
    "schedule next-slot": (
        "task_type",
        "node",
        "at",
        "free_now",
        "free_at",
        "in_seconds",
        "expected_seconds",
        "limits",
        "basis",
    ),
    "events publish": (*EVENT, "new", "known"),
    "events list": ("events",),
    "events tail": ("events",),
    "--version": ("version",),
    "config init": ("path",),
    "completion": ("shell", "script"),
    "(any command that fails)": ("error", "exit_code"),
}
