"""Named migrations, the same names on every engine, recorded in ``schema_migrations``.

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

# Times are seconds since the epoch (REAL / DOUBLE PRECISION), timed by the store's clock.
_INITIAL_COMMON = """
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    boot_id TEXT,
    pid INTEGER,
    pid_start BIGINT,
    pgid INTEGER,
    wrapper_pid INTEGER,
    wrapper_start BIGINT,
    config_name TEXT,
    command TEXT,
    source TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    lease_expires DOUBLE PRECISION NOT NULL,
    lease_token BIGINT NOT NULL
);
CREATE INDEX tasks_type_node ON tasks (task_type, node);
CREATE TABLE halts (
    scope TEXT PRIMARY KEY,
    reason TEXT,
    who TEXT,
    host TEXT,
    at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION
);
CREATE TABLE reservations (
    res_id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    task_type TEXT NOT NULL,
    slots INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    who TEXT
);
CREATE TABLE rate_buckets (
    node TEXT NOT NULL,
    task_type TEXT NOT NULL,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node, task_type)
);
"""

_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgres": "BIGSERIAL PRIMARY KEY"}

_INITIAL_SERIAL = """
CREATE TABLE task_history (
    id {serial},
    task_id TEXT NOT NULL,
    task_type TEXT NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER,
    config_name TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    exit_code INTEGER,
    status TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX task_history_id ON task_history (task_id);
CREATE TABLE waiters (
    seq {serial},
    task_type TEXT NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    boot_id TEXT,
    pid INTEGER NOT NULL,
    pid_start BIGINT,
    enqueued_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX waiters_type ON waiters (task_type, node);
CREATE TABLE halt_log (
    id {serial},
    action TEXT NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT,
    who TEXT,
    host TEXT,
    at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION
);
CREATE TABLE decisions (
    id {serial},
    at DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    task_type TEXT NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER,
    who TEXT,
    allowed INTEGER NOT NULL,
    rules TEXT NOT NULL,
    retry_after DOUBLE PRECISION,
    task_id TEXT
);
"""


def _initial(engine: str) -> str:
    return _INITIAL_COMMON + _INITIAL_SERIAL.format(serial=_SERIAL[engine])


_SAFEGUARDS = """
ALTER TABLE tasks ADD COLUMN trial INTEGER NOT NULL DEFAULT 0;
CREATE TABLE breakers (
    node TEXT NOT NULL,
    task_type TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at DOUBLE PRECISION,
    retry_at DOUBLE PRECISION,
    trials_in_flight INTEGER NOT NULL,
    trial_successes INTEGER NOT NULL,
    closed_at DOUBLE PRECISION NOT NULL,
    last_reason TEXT,
    last_failure_at DOUBLE PRECISION,
    PRIMARY KEY (node, task_type)
);
CREATE TABLE breaker_failures (
    id {serial},
    node TEXT NOT NULL,
    task_type TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    reason TEXT,
    evidence TEXT
);
CREATE INDEX breaker_failures_key ON breaker_failures (node, task_type, at);
CREATE TABLE readings (
    node TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    cpu DOUBLE PRECISION,
    memory DOUBLE PRECISION,
    disk DOUBLE PRECISION,
    gpu DOUBLE PRECISION,
    gpu_memory DOUBLE PRECISION,
    load_avg DOUBLE PRECISION,
    cpus INTEGER,
    memory_gb DOUBLE PRECISION,
    gpu_name TEXT,
    gpu_count INTEGER,
    details TEXT
);
CREATE TABLE backpressure (
    node TEXT PRIMARY KEY,
    factor DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE lowered_caps (
    node TEXT NOT NULL,
    task_type TEXT NOT NULL,
    cap INTEGER NOT NULL,
    lowered_at DOUBLE PRECISION NOT NULL,
    ooms INTEGER NOT NULL,
    PRIMARY KEY (node, task_type)
);
"""

# A halt may drain one node (Slurm's drain): halts are keyed by (scope, node), node "*" being
# every node; the halts already stored keep applying to every node.
_NODE_HALTS = """
CREATE TABLE halts_by_node (
    scope TEXT NOT NULL,
    node TEXT NOT NULL,
    reason TEXT,
    who TEXT,
    host TEXT,
    at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    PRIMARY KEY (scope, node)
);
INSERT INTO halts_by_node (scope, node, reason, who, host, at, expires_at)
    SELECT scope, '*', reason, who, host, at, expires_at FROM halts;
DROP TABLE halts;
ALTER TABLE halts_by_node RENAME TO halts;
ALTER TABLE halt_log ADD COLUMN node TEXT NOT NULL DEFAULT '*'
"""

# The resource optimizer: the self-play rate and its controller's state (one row per key),
# every change of the rate, each node's self-play job target, cluster utilization samples.
_OPTIMIZER = """
CREATE TABLE optimizer_state (
    key TEXT PRIMARY KEY,
    rate DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    confidence DOUBLE PRECISION,
    reason TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    updated_by TEXT,
    pid TEXT,
    detail TEXT
);
CREATE TABLE rate_history (
    id {serial},
    at DOUBLE PRECISION NOT NULL,
    rate DOUBLE PRECISION NOT NULL,
    previous_rate DOUBLE PRECISION,
    requested_rate DOUBLE PRECISION,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    confidence DOUBLE PRECISION,
    reason TEXT,
    requestor TEXT,
    who TEXT,
    host TEXT
);
CREATE INDEX rate_history_at ON rate_history (at);
CREATE TABLE selfplay_targets (
    node TEXT PRIMARY KEY,
    target INTEGER NOT NULL,
    cap INTEGER,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE utilization_samples (
    id {serial},
    at DOUBLE PRECISION NOT NULL,
    cpu DOUBLE PRECISION,
    gpu DOUBLE PRECISION,
    gpu_memory DOUBLE PRECISION,
    fresh_nodes INTEGER NOT NULL,
    stale_nodes INTEGER NOT NULL,
    running_jobs INTEGER NOT NULL
);
CREATE INDEX utilization_samples_at ON utilization_samples (at)
"""

# Transfers admitted by the bandwidth manager (holder and lease as a task's), the ended ones
# with their bytes and observed rate, and the durations of successful runs the scheduler
# learns from. ``remote`` is the host at the other end of a transfer, whose link the limit is
# for; ``host`` (as in ``tasks``) is the machine holding the transfer, which the reaper checks.
_TRANSFERS_SCHEDULE = """
CREATE TABLE transfers (
    transfer_id TEXT PRIMARY KEY,
    remote TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    kbps DOUBLE PRECISION NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    boot_id TEXT,
    pid INTEGER,
    pid_start BIGINT,
    pgid INTEGER,
    wrapper_pid INTEGER,
    wrapper_start BIGINT,
    command TEXT,
    source TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    lease_expires DOUBLE PRECISION NOT NULL,
    lease_token BIGINT NOT NULL
);
CREATE INDEX transfers_remote ON transfers (remote);
CREATE TABLE transfer_history (
    id {serial},
    transfer_id TEXT NOT NULL,
    remote TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    kbps DOUBLE PRECISION NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    bytes BIGINT,
    observed_kbps DOUBLE PRECISION,
    ema_kbps DOUBLE PRECISION,
    status TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX transfer_history_remote ON transfer_history (remote, ended_at);
CREATE TABLE duration_samples (
    id {serial},
    task_type TEXT NOT NULL,
    config_name TEXT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    task_id TEXT
);
CREATE INDEX duration_samples_key ON duration_samples (task_type, config_name, at)
"""

# (name, engine -> SQL script)
# The event log: an event is stored once per digest (a SHA-256 of its type, source, node and
# normalised canonical payload: ``events.digest``); publishing it again counts it (``seen``,
# ``last_at``). ``counters`` holds the exported Prometheus counters (refusals per rule, type
# and node; bytes moved per remote host): running totals that never go down when the decision
# log and the transfer history are pruned.
_EVENTS = """
CREATE TABLE events (
    id {serial},
    type TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    source TEXT NOT NULL,
    host TEXT NOT NULL,
    node TEXT,
    who TEXT,
    at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    seen INTEGER NOT NULL
);
CREATE INDEX events_last_at ON events (last_at);
CREATE INDEX events_type ON events (type, id);
CREATE TABLE counters (
    family TEXT NOT NULL,
    labels TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (family, labels)
);
"""

# What an admission reads of ``tasks`` with many running tasks in the store stays as cheap as
# on an empty store: the reaper reads only this host's rows, the expired leases and a dead
# host's (``slots.reap``: indexes ``tasks_host`` and ``tasks_lease``), the per-node limit
# counts one node's tasks of a type (``tasks_type_node``), and the cluster limit reads the
# type's count from ``task_counts``, which triggers keep exact in the transaction that
# inserts or deletes a task (whoever writes the row). Without them, with 10,000 running
# tasks, the reaper read every task and the cluster rule every task of the type on every
# admission: one decision cost ~400x the empty store's. The statements of this script are
# separated by lines holding only ``--;`` (a trigger's body holds semicolons).
_TASK_COUNTS_SQLITE = """
CREATE INDEX tasks_host ON tasks (host)
--;
CREATE INDEX tasks_lease ON tasks (lease_expires)
--;
CREATE TABLE task_counts (
    task_type TEXT PRIMARY KEY,
    n INTEGER NOT NULL
)
--;
INSERT INTO task_counts (task_type, n) SELECT task_type, COUNT(*) FROM tasks GROUP BY task_type
--;
CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (task_type, n) VALUES (NEW.task_type, 1)
        ON CONFLICT (task_type) DO UPDATE SET n = n + 1;
END
--;
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1 WHERE task_type = OLD.task_type;
END
--;
CREATE TRIGGER task_counts_update AFTER UPDATE OF task_type ON tasks
WHEN NEW.task_type IS NOT OLD.task_type BEGIN
    UPDATE task_counts SET n = n - 1 WHERE task_type = OLD.task_type;
    INSERT INTO task_counts (task_type, n) VALUES (NEW.task_type, 1)
        ON CONFLICT (task_type) DO UPDATE SET n = n + 1;
END
"""

_TASK_COUNTS_POSTGRES = """
CREATE INDEX tasks_host ON tasks (host)
--;
CREATE INDEX tasks_lease ON tasks (lease_expires)
--;
CREATE TABLE task_counts (
    task_type TEXT PRIMARY KEY,
    n INTEGER NOT NULL
)
--;
INSERT INTO task_counts (task_type, n) SELECT task_type, COUNT(*) FROM tasks GROUP BY task_type
--;
CREATE FUNCTION ringrift_task_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE task_counts SET n = n - 1 WHERE task_type = OLD.task_type;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO task_counts (task_type, n) VALUES (NEW.task_type, 1)
            ON CONFLICT (task_type) DO UPDATE SET n = task_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$
--;
CREATE TRIGGER task_counts_change AFTER INSERT OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION ringrift_task_counts()
--;
CREATE TRIGGER task_counts_update AFTER UPDATE OF task_type ON tasks
    FOR EACH ROW WHEN (NEW.task_type IS DISTINCT FROM OLD.task_type)
    EXECUTE FUNCTION ringrift_task_counts()
"""

STATEMENT_LINE = "--;"  # separates the statements of a script whose bodies hold semicolons

# A waiter that a halt (or peak hours) holds back keeps its row, marked held: it counts against
# nobody's limits and is rung by no line's ring, yet status and metrics can count it.
_HELD_WAITERS = "ALTER TABLE waiters ADD COLUMN held INTEGER NOT NULL DEFAULT 0"

MIGRATIONS: list[tuple[str, dict[str, str]]] = [
    ("0001_initial", {engine: _initial(engine) for engine in _SERIAL}),
    ("0002_safeguards", {engine: _SAFEGUARDS.format(serial=_SERIAL[engine]) for engine in _SERIAL}),
    ("0003_node_halts", {engine: _NODE_HALTS for engine in _SERIAL}),
    ("0004_optimizer", {engine: _OPTIMIZER.format(serial=_SERIAL[engine]) for engine in _SERIAL}),
    (
        "0005_transfers_schedule",
        {engine: _TRANSFERS_SCHEDULE.format(serial=_SERIAL[engine]) for engine in _SERIAL},
    ),
    ("0006_events", {engine: _EVENTS.format(serial=_SERIAL[engine]) for engine in _SERIAL}),
    ("0007_task_counts", {"sqlite": _TASK_COUNTS_SQLITE, "postgres": _TASK_COUNTS_POSTGRES}),
    ("0008_held_waiters", {engine: _HELD_WAITERS for engine in _SERIAL}),
]

MIGRATION_NAMES: tuple[str, ...] = tuple(name for name, _ in MIGRATIONS)


def statements(script: str) -> list[str]:
    """A script's statements: split at ``;``, or, when it has any, at its lines holding only
    ``--;`` (``STATEMENT_LINE``: a script with triggers or functions)."""
    lines = script.split("\n")
    if any(line.strip() == STATEMENT_LINE for line in lines):
        parts: list[str] = []
        current: list[str] = []
        for line in lines:
            if line.strip() == STATEMENT_LINE:
                parts.append("\n".join(current))
                current = []
            else:
                current.append(line)
        parts.append("\n".join(current))
    else:
        parts = script.split(";")
    return [part.strip() for part in parts if part.strip()]
