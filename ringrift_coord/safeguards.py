"""Safeguards: the emergency halt (SPEC §2, §5) and the pre-spawn check.

A halt is a row in the store (cluster-wide, or scoped to one task type, optionally
expiring) plus, for a cluster-wide halt, the ``EMERGENCY_HALT`` file in the state directory
holding who/when/why. The file's mere presence halts this host, so an operator can ``touch``
it by hand; deleting it by hand does not lift a halt said with ``halt`` (the row still
halts). Only ``unhalt`` or the halt's own expiry lifts it.
"""

from __future__ import annotations

import json
import os

from ringrift_coord.admission import HALT_FILE_NAME, Request, admit, read_halt_file
from ringrift_coord.context import Context, who_am_i
from ringrift_coord.errors import StateError, UsageError
from ringrift_coord.procs import host_name
from ringrift_coord.tasktypes import TaskType

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

GLOBAL = "*"

__all__ = [
    "Safeguards", "activate_emergency", "allow_spawn", "check_before_spawn",
    "deactivate_emergency", "get_block_reason", "halt_status", "is_halted",
]


def _scope(task_type: str | TaskType | None) -> str:
    return GLOBAL if task_type is None else TaskType.parse(task_type).value


def activate_emergency(
    ctx: Context, reason: str | None = None, *, task_type: str | TaskType | None = None,
    ttl: float | None = None, who: str | None = None,
) -> dict[str, Any]:
    """Halt every new spawn (or those of one type), cluster-wide, until unhalt or expiry."""
    if ttl is not None and not (ttl > 0 and ttl < float("inf")):
        raise UsageError("--ttl must be a positive number of seconds")
    scope, who = _scope(task_type), who or who_am_i(ctx.env)
    with ctx.store.write() as tx:
        now = tx.now()
        expires = None if ttl is None else now + ttl
        tx.execute("DELETE FROM halts WHERE scope = ?", (scope,))
        tx.execute(
            "INSERT INTO halts (scope, reason, who, host, at, expires_at) VALUES (?,?,?,?,?,?)",
            (scope, reason, who, host_name(), now, expires),
        )
        tx.execute(
            "INSERT INTO halt_log (action, scope, reason, who, host, at, expires_at) "
            "VALUES ('halt',?,?,?,?,?,?)",
            (scope, reason, who, host_name(), now, expires),
        )
    record = {"scope": scope, "reason": reason, "who": who, "host": host_name(), "at": now,
              "expires_at": expires}
    if scope == GLOBAL:
        # "mirror": a copy of the store's halt; an unhalt on any node makes it stale
        _write_halt_file(ctx.state_dir, {**record, "mirror": True})
    return record


def deactivate_emergency(
    ctx: Context, *, task_type: str | TaskType | None = None, who: str | None = None
) -> dict[str, Any]:
    """Lift the halt: every halt without ``task_type``, else only that type's."""
    who = who or who_am_i(ctx.env)
    with ctx.store.write() as tx:
        now = tx.now()
        if task_type is None:
            lifted = [r["scope"] for r in tx.query("SELECT scope FROM halts")]
            tx.execute("DELETE FROM halts")
        else:
            scope = _scope(task_type)
            lifted = [scope] if tx.execute("DELETE FROM halts WHERE scope = ?", (scope,)) else []
        for scope in lifted or ([GLOBAL] if task_type is None else []):
            tx.execute(
                "INSERT INTO halt_log (action, scope, reason, who, host, at) "
                "VALUES ('unhalt',?,NULL,?,?,?)",
                (scope, who, host_name(), now),
            )
    removed_file = False
    if task_type is None:
        path = os.path.join(ctx.state_dir, HALT_FILE_NAME)
        try:
            os.unlink(path)
            removed_file = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(
                f"lifted the halt in the store, but cannot remove {path}: {exc.strerror}; "
                "remove it by hand"
            ) from None
    return {"lifted": lifted, "removed_halt_file": removed_file, "who": who, "at": now}


def halt_status(ctx: Context) -> dict[str, Any]:
    """Every halt in force: store rows (unexpired) and this host's halt file."""
    with ctx.store.read() as tx:
        now = tx.now()
        rows = tx.query(
            "SELECT scope, reason, who, host, at, expires_at FROM halts "
            "WHERE expires_at IS NULL OR expires_at > ? ORDER BY at",
            (now,),
        )
        log = tx.query(
            "SELECT action, scope, reason, who, host, at, expires_at FROM halt_log "
            "ORDER BY id DESC LIMIT 10"
        )
    file_info = read_halt_file(ctx.state_dir, now)
    if file_info is not None and file_info.get("mirror") and not any(
        row["scope"] == GLOBAL for row in rows
    ):
        file_info = None  # a copy of a cluster-wide halt lifted since on another node
    return {"halts": rows, "halt_file": file_info, "recent": log, "at": now}


def is_halted(ctx: Context, task_type: str | TaskType | None = None) -> bool:
    status = halt_status(ctx)
    if status["halt_file"] is not None:
        return True
    scopes = {row["scope"] for row in status["halts"]}
    if task_type is None:
        return bool(scopes)
    return GLOBAL in scopes or _scope(task_type) in scopes


def check_before_spawn(
    ctx: Context, task_type: str | TaskType, node_id: str
) -> tuple[bool, str]:
    """The whole admission decision, read-only: (allowed, reason)."""
    req = Request(task_type=TaskType.parse(task_type), node=node_id, who=who_am_i(ctx.env))
    with ctx.store.write() as tx:  # write: dead holders are reaped before counting
        decision = admit(
            tx, req, ctx.settings, state_dir=ctx.state_dir, take_slot=False, action="check",
            log=False,
        )
    return decision.allowed, "" if decision.allowed else decision.summary()


def allow_spawn(ctx: Context, task_type: str | TaskType, node_id: str) -> bool:
    return check_before_spawn(ctx, task_type, node_id)[0]


def get_block_reason(ctx: Context, task_type: str | TaskType, node_id: str) -> str | None:
    allowed, reason = check_before_spawn(ctx, task_type, node_id)
    return None if allowed else reason


def _write_halt_file(state_dir: str, record: dict[str, Any]) -> None:
    path = os.path.join(state_dir, HALT_FILE_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateError(
            f"halted in the store, but cannot write {path}: {exc.strerror}; this host's halt "
            "file is missing"
        ) from None


class Safeguards:
    """Object face of the functions above (reference: ``Safeguards.get_instance()``)."""

    _instance: Safeguards | None = None

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context.open()
        self._last_block: str | None = None

    @classmethod
    def get_instance(cls) -> Safeguards:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def allow_spawn(self, task_type: str | TaskType, node_id: str) -> bool:
        allowed, reason = check_before_spawn(self.ctx, task_type, node_id)
        self._last_block = None if allowed else reason
        return allowed

    def get_block_reason(self) -> str | None:
        """Why the last ``allow_spawn`` said no (None when it said yes)."""
        return self._last_block

    def activate_emergency(self, reason: str | None = None, **kw: Any) -> dict[str, Any]:
        return activate_emergency(self.ctx, reason, **kw)

    def deactivate_emergency(self, **kw: Any) -> dict[str, Any]:
        return deactivate_emergency(self.ctx, **kw)

    def is_emergency_active(self, task_type: str | TaskType | None = None) -> bool:
        return is_halted(self.ctx, task_type)
