"""Circuit breakers per (node, task type), kept in the store and shared by every process.

CLOSED → OPEN when the failures inside the window reach the threshold → HALF_OPEN once the
recovery timeout has passed → CLOSED after ``success_threshold`` successful trials (at most
``half_open_trials`` run at once); a failed trial reopens it.

The state machine is pure (``Breaker`` + ``BreakerConfig``, no I/O, time passed in) so it can be
property-tested against a reference model; ``load``/``save`` move it to and from the store.
Reading (``view``) never writes, so looking at a breaker never restarts its timer. Time comes
from the store's clock; when that clock steps back past the moment a breaker opened, the
wait is re-based on the new "now" and never exceeds one recovery timeout; when it jumps
forward past the retry time, the breaker goes HALF_OPEN and still needs its trial.
"""

from __future__ import annotations

from ringrift_coord.store.base import Row, Tx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PROBE = "(SELECT COUNT(*) FROM breakers WHERE node = ? AND task_type = ?)"  # (node, type)


class BreakerConfig:
    __slots__ = (
        "failure_threshold",
        "window",
        "recovery_timeout",
        "half_open_trials",
        "success_threshold",
    )

    def __init__(
        self,
        failure_threshold: int = 3,
        window: float = 600.0,
        recovery_timeout: float = 300.0,
        half_open_trials: int = 1,
        success_threshold: int = 1,
    ) -> None:
        self.failure_threshold = max(1, int(failure_threshold))
        self.window = float(window)
        self.recovery_timeout = float(recovery_timeout)
        self.half_open_trials = max(1, int(half_open_trials))
        self.success_threshold = max(1, int(success_threshold))

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerConfig:
        cb = settings.get("circuit_breaker")
        return cls(
            cb["failure_threshold"],
            cb["window"],
            cb["recovery_timeout"],
            cb["half_open_trials"],
            cb["success_threshold"],
        )


class Breaker:
    """One breaker's stored state. ``failures`` holds the failure times inside the window;
    ``stored``: the state as read from the store (closed for one not stored yet), which
    ``save`` compares with to publish a change."""

    __slots__ = (
        "node",
        "task_type",
        "state",
        "opened_at",
        "retry_at",
        "trials_in_flight",
        "trial_successes",
        "closed_at",
        "last_reason",
        "last_failure_at",
        "failures",
        "stored",
    )

    def __init__(self, node: str, task_type: str, now: float = 0.0) -> None:
        self.node, self.task_type = node, task_type
        self.state = self.stored = CLOSED
        self.opened_at: float | None = None
        self.retry_at: float | None = None
        self.trials_in_flight = 0
        self.trial_successes = 0
        self.closed_at = now  # failures before this moment no longer count
        self.last_reason: str | None = None
        self.last_failure_at: float | None = None
        self.failures: list[float] = []

    # -- pure transitions ---------------------------------------------------------------

    def view(self, now: float, cfg: BreakerConfig) -> tuple[str, float | None]:
        """(effective state, retry time) at ``now``, without changing anything."""
        if self.state != OPEN:
            return self.state, None
        retry_at = self._retry_at(now, cfg)
        if now >= retry_at:
            return HALF_OPEN, None
        return OPEN, retry_at

    def _retry_at(self, now: float, cfg: BreakerConfig) -> float:
        assert self.retry_at is not None and self.opened_at is not None
        if now < self.opened_at:  # the clock stepped back: wait at most one timeout from now
            return min(self.retry_at, now + cfg.recovery_timeout)
        return self.retry_at

    def recent_failures(self, now: float, cfg: BreakerConfig) -> int:
        # ``failures`` only ever holds failures since the last close (``_close`` empties it),
        # so the window alone decides; comparing with ``closed_at`` would drop a failure that
        # came after the close but was stamped before it by a clock stepped back
        since = now - cfg.window
        return sum(1 for at in self.failures if at >= since)

    def rebase(self, now: float, cfg: BreakerConfig) -> bool:
        """After a clock step back past the opening, wait at most one timeout from ``now``.

        Only ever shortens the wait; True when something changed (the caller saves it).
        """
        if self.state != OPEN or self.opened_at is None or now >= self.opened_at:
            return False
        self.opened_at, self.retry_at = now, self._retry_at(now, cfg)
        return True

    def admit(self, now: float, cfg: BreakerConfig) -> tuple[bool, bool, float | None]:
        """Take a spawn through the breaker: (allowed, is_trial, retry_after)."""
        if self.state == OPEN:
            self.rebase(now, cfg)
            retry_at = self._retry_at(now, cfg)
            if now < retry_at:
                return False, False, retry_at - now
            # trials_in_flight is kept: trials of an earlier half-open period that still run
            # count against the cap, so no more than half_open_trials ever run at once
            self.state, self.trial_successes = HALF_OPEN, 0
        if self.state == CLOSED:
            return True, False, None
        if self.trials_in_flight < cfg.half_open_trials:
            self.trials_in_flight += 1
            return True, True, None
        return False, False, None  # wait for the trial in flight to finish

    def record(
        self,
        now: float,
        cfg: BreakerConfig,
        *,
        ok: bool,
        trial: bool,
        reason: str | None = None,
    ) -> None:
        """A task's outcome (or a script's record-failure / record-success)."""
        if trial and self.trials_in_flight > 0:
            self.trials_in_flight -= 1
        if ok:
            if self.state == HALF_OPEN and trial:
                self.trial_successes += 1
                if self.trial_successes >= cfg.success_threshold:
                    self._close(now)
            return
        self.last_reason, self.last_failure_at = reason, now
        self.failures = [at for at in self.failures if at >= now - cfg.window] + [now]
        if self.state == CLOSED and self.recent_failures(now, cfg) >= cfg.failure_threshold:
            self._open(now, cfg)
        elif self.state == HALF_OPEN and trial:
            self._open(now, cfg)

    def trial_lost(self) -> None:
        """A trial whose holder vanished without an outcome: let another trial run."""
        if self.trials_in_flight > 0:
            self.trials_in_flight -= 1

    # trials_in_flight counts trial tasks still running, whatever the state: each one
    # gives its place back when it ends (record with trial=True, or trial_lost)

    def _open(self, now: float, cfg: BreakerConfig) -> None:
        self.state, self.opened_at, self.retry_at = OPEN, now, now + cfg.recovery_timeout
        self.trial_successes = 0

    def _close(self, now: float) -> None:
        self.state, self.opened_at, self.retry_at = CLOSED, None, None
        self.trial_successes = 0
        self.closed_at = now
        self.failures = []

    def to_dict(self, now: float, cfg: BreakerConfig) -> dict[str, Any]:
        state, retry_at = self.view(now, cfg)
        return {
            "node": self.node,
            "task_type": self.task_type,
            "state": state,
            "stored_state": self.state,
            "failures": self.recent_failures(now, cfg),
            "last_reason": self.last_reason,
            "last_failure_at": self.last_failure_at,
            "opened_at": self.opened_at,
            "retry_at": retry_at,
            "retry_after": None if retry_at is None else max(0.0, retry_at - now),
            "trials_in_flight": self.trials_in_flight,
        }


# --------------------------------------------------------------------------- the store

# "failures" has its own table; "stored" is what was read, not a column
_COLUMNS = tuple(name for name in Breaker.__slots__ if name not in ("failures", "stored"))


def _from_row(row: Row, failures: list[float]) -> Breaker:
    breaker = Breaker(row["node"], row["task_type"])
    for name in _COLUMNS[2:]:
        setattr(breaker, name, row[name])
    breaker.stored = breaker.state
    breaker.failures = failures
    return breaker


def load(tx: Tx, node: str, task_type: str, now: float) -> Breaker:
    row = tx.one(
        f"SELECT {', '.join(_COLUMNS)} FROM breakers WHERE node = ? AND task_type = ?",
        (node, task_type),
    )
    if row is None:
        return Breaker(node, task_type, now)
    failures = [
        r["at"]
        for r in tx.query(
            "SELECT at FROM breaker_failures WHERE node = ? AND task_type = ? ORDER BY at",
            (node, task_type),
        )
    ]
    return _from_row(row, failures)


def load_all(tx: Tx) -> list[Breaker]:
    failures: dict[tuple[str, str], list[float]] = {}
    for r in tx.query("SELECT node, task_type, at FROM breaker_failures ORDER BY at"):
        failures.setdefault((r["node"], r["task_type"]), []).append(r["at"])
    return [
        _from_row(row, failures.get((row["node"], row["task_type"]), []))
        for row in tx.query(f"SELECT {', '.join(_COLUMNS)} FROM breakers ORDER BY node, task_type")
    ]


def save(
    tx: Tx,
    breaker: Breaker,
    *,
    evidence: str | None = None,
    new_failure: bool = False,
    settings: Settings | None = None,
) -> None:
    """Store the breaker; a change of its stored state is published as an event
    (BREAKER_OPENED, BREAKER_HALF_OPEN, BREAKER_CLOSED) in the same transaction."""
    values = [getattr(breaker, name) for name in _COLUMNS]
    if breaker.stored != breaker.state:  # read in this transaction: no second SELECT
        _publish(tx, settings, breaker, breaker.stored)
        breaker.stored = breaker.state
    tx.execute(
        "DELETE FROM breakers WHERE node = ? AND task_type = ?", (breaker.node, breaker.task_type)
    )
    tx.execute(
        f"INSERT INTO breakers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
        values,
    )
    if new_failure and breaker.last_failure_at is not None:
        tx.execute(
            "INSERT INTO breaker_failures (node, task_type, at, reason, evidence) "
            "VALUES (?,?,?,?,?)",
            (
                breaker.node,
                breaker.task_type,
                breaker.last_failure_at,
                breaker.last_reason,
                evidence,
            ),
        )
    oldest = min(breaker.failures) if breaker.failures else None
    if oldest is None:
        tx.execute(
            "DELETE FROM breaker_failures WHERE node = ? AND task_type = ?",
            (breaker.node, breaker.task_type),
        )
    else:
        tx.execute(
            "DELETE FROM breaker_failures WHERE node = ? AND task_type = ? AND at < ?",
            (breaker.node, breaker.task_type, oldest),
        )


_EVENT_OF = {OPEN: "BREAKER_OPENED", HALF_OPEN: "BREAKER_HALF_OPEN", CLOSED: "BREAKER_CLOSED"}


def _publish(
    tx: Tx, settings: Settings | None, breaker: Breaker, previous: str, kind: str | None = None
) -> None:
    from ringrift_coord import events

    now = tx.now()
    payload = {
        "node": breaker.node,
        "type": breaker.task_type,
        "from": previous,
        "to": breaker.state,
        "reason": breaker.last_reason,
        "opened_at": breaker.opened_at,
        "at": now,
    }
    events.publish(
        tx,
        settings,
        kind or _EVENT_OF.get(breaker.state, "BREAKER_CLOSED"),
        payload,
        source="tool",
        node=breaker.node,
        now=now,
    )


def views(
    tx: Tx, cfg: BreakerConfig, now: float, node: str | None = None, task_type: str | None = None
) -> list[dict[str, Any]]:
    """Every breaker (or a node's, a type's) as ``breakers list`` shows it; only reads."""
    return [
        b.to_dict(now, cfg)
        for b in load_all(tx)
        if (node is None or b.node == node) and (task_type is None or b.task_type == task_type)
    ]


def exists(tx: Tx, node: str, task_type: str) -> bool:
    return (
        tx.one("SELECT 1 AS x FROM breakers WHERE node = ? AND task_type = ?", (node, task_type))
        is not None
    )


def record_outcome(
    tx: Tx,
    cfg: BreakerConfig,
    node: str,
    task_type: str,
    now: float,
    *,
    ok: bool,
    trial: bool,
    reason: str | None = None,
    evidence: str | None = None,
    settings: Settings | None = None,
) -> Breaker:
    """Feed one outcome to the (node, type) breaker; a success on a closed breaker with no
    history writes nothing."""
    if ok and not trial and not exists(tx, node, task_type):
        return Breaker(node, task_type, now)
    breaker = load(tx, node, task_type, now)
    breaker.record(now, cfg, ok=ok, trial=trial, reason=reason)
    save(tx, breaker, evidence=evidence, new_failure=not ok, settings=settings)
    return breaker


def reset(
    tx: Tx,
    *,
    node: str | None = None,
    task_type: str | None = None,
    settings: Settings | None = None,
) -> list[Row]:
    """Close breakers by hand: one (node and type), a node's, a type's, or all."""
    where, args = [], []
    if node is not None:
        where.append("node = ?")
        args.append(node)
    if task_type is not None:
        where.append("task_type = ?")
        args.append(task_type)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    rows = tx.query(f"SELECT node, task_type, state FROM breakers{clause}", args)
    for row in rows:  # BREAKER_RESET: closed by hand, from open or half-open (closed: none)
        if row["state"] == "closed":
            continue
        closed = Breaker(row["node"], row["task_type"])
        _publish(tx, settings, closed, row["state"], "BREAKER_RESET")
        tx.ring(row["task_type"], row["node"])
    tx.execute(f"DELETE FROM breakers{clause}", args)
    tx.execute(f"DELETE FROM breaker_failures{clause}", args)
    return rows
