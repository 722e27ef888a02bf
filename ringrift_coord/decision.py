"""What admission is asked and what it answers: ``Request``, ``Reason``, ``Decision``.

Plain classes with ``__slots__`` rather than dataclasses: building a dataclass costs
milliseconds of start-up on every ``can-spawn``. Nothing here reads the store; every module
that decides (the rules, admission) or shows a decision imports these from here.
"""

from __future__ import annotations

from ringrift_coord import identity, procs
from ringrift_coord.durations import human

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ringrift_coord.store.base import Tx


class Request:
    """Who asks for which slot; the holder identity is what the reaper watches."""

    __slots__ = (
        "task_type",
        "node",
        "source",
        "pid",
        "pid_start",
        "pgid",
        "wrapper_pid",
        "wrapper_start",
        "task_id",
        "config_name",
        "command",
        "who",
        "waiter_seq",
        "host",
        "boot_id",
    )

    def __init__(
        self,
        task_type: str,
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
        self.host = host or identity.host_name()
        self.boot_id = boot_id if boot_id is not None else procs.boot_id()


class Reason:
    """One blocking rule with its numbers: requested / used / limit, and when to retry."""

    __slots__ = ("rule", "message", "requested", "used", "limit", "retry_after", "details")

    def __init__(
        self,
        rule: str,
        message: str,
        *,
        requested: int | None = None,
        used: float | None = None,
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
    """The outcome of admission: allowed, or every blocking rule and a retry-after.

    ``_breaker`` and ``_rate`` are what admission passes on when it takes the slot (the
    (node, type) breaker the task goes through, the bucket's rate after backpressure);
    ``_chores`` are the writes the read-only evaluation found due (see
    ``admission.evaluate``), each a function of the write transaction.
    """

    __slots__ = (
        "allowed",
        "task_type",
        "node",
        "reasons",
        "retry_after",
        "queued",
        "task_id",
        "lease_token",
        "warnings",
        "trial",
        "_breaker",
        "_rate",
        "_chores",
    )

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
        self._breaker: Any = None
        self._rate: tuple[float, float] | None = None
        self._chores: list[Callable[[Tx], None]] = []

    def __repr__(self) -> str:
        return f"Decision({self.summary()!r})"

    @property
    def halted(self) -> bool:
        """Denied by a halt (in the store, or this host's halt file), whatever else denies
        it: an operator's stop, not a lack of room (a waiter holds no place meanwhile)."""
        return any(r.rule in ("halt", "halt_file") for r in self.reasons)

    @property
    def held_back(self) -> bool:
        """Denied by something that no freed slot changes: a halt, or peak hours (the task
        may not start before the window ends). A waiter so denied holds no place in line,
        so it blocks no one that may start meanwhile."""
        return self.halted or any(r.rule == "peak_hours" for r in self.reasons)

    def summary(self) -> str:
        if self.allowed:
            return f"allowed: {self.task_type} on {self.node}"
        parts = "; ".join(r.message for r in self.reasons)
        retry = "" if self.retry_after is None else f" (retry in {human(self.retry_after)})"
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
