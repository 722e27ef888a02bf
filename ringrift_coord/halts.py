"""Halts: the emergency stop, and the one module that knows how a halt is kept.

A halt is a row of ``halts`` in the store: cluster-wide (scope ``*``) or of one task type,
optionally expiring; every halt and unhalt is appended to ``halt_log``. A cluster-wide halt
also writes the ``EMERGENCY_HALT`` file in the state directory of the host that said it
(JSON: who, when, why, expiry, ``mirror: true``). A halt file's mere presence halts its
host, so an operator can ``touch`` one by hand; deleting it does not lift a halt said with
``halt`` (the row still halts), only ``unhalt`` or the halt's expiry does.

**The mirror rule.** A file ``halt`` wrote (``mirror: true``) is a copy of the store's
cluster-wide halt. An ``unhalt`` on another host lifts the row but cannot reach this host's
file: a mirror file while the store holds no cluster-wide halt is stale and halts nothing.
Every reader (admission, ``status``, ``halt --check``, ``get_state``, ``get_stats``) sees
the halts through ``HaltState``, which applies the rule; reading never removes the file,
only a write transaction does (admission's chores, ``unhalt``). A file without the mark (an
operator's ``touch``) is never stale.
"""

from __future__ import annotations

import json
import os

from ringrift_coord.decision import Reason
from ringrift_coord.errors import StateError
from ringrift_coord.inputs import printable, seconds
from ringrift_coord.statedir import create_file, shared_gid_of, untrusted_file
from ringrift_coord.tasktypes import TaskType

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Row, Tx

GLOBAL = "*"
FILE_NAME = "EMERGENCY_HALT"
PROBE = "(SELECT COUNT(*) FROM halts)"  # admission's probe: are there any halt rows at all?
_COLUMNS = "scope, reason, who, host, at, expires_at"


def scope_of(task_type: str | TaskType | None) -> str:
    """The scope a halt of ``task_type`` has (``*``: every type)."""
    return GLOBAL if task_type is None else TaskType.parse(task_type).value


# --------------------------------------------------------------------------- reading


class HaltState:
    """The halts in force as one transaction sees them, with the mirror rule applied.

    ``rows``: the store's unexpired halts; ``file``: this host's halt file when it halts
    (None when absent, expired, or a stale mirror); ``stale_file``: the path of a stale
    mirror, for a write transaction to remove.
    """

    __slots__ = ("rows", "file", "stale_file")

    def __init__(self, rows: list[Row], file: dict[str, Any] | None) -> None:
        self.stale_file: str | None = None
        if file is not None and file.get("mirror") and not any(r["scope"] == GLOBAL for r in rows):
            self.stale_file, file = file["path"], None  # the mirror rule
        self.rows, self.file = rows, file

    def halted(self, task_type: str | TaskType | None = None) -> bool:
        """Halted at all (no type), or for that type (a cluster-wide halt or its own)."""
        scope = scope_of(task_type)  # an unknown type is bad input, whatever is halted
        if self.file is not None:
            return True
        if task_type is None:
            return bool(self.rows)
        return any(row["scope"] in (GLOBAL, scope) for row in self.rows)

    @property
    def paused(self) -> bool:
        """Everything is halted: a cluster-wide halt, or this host's halt file."""
        return self.file is not None or any(row["scope"] == GLOBAL for row in self.rows)

    def reasons(self, now: float) -> list[Reason]:
        """Each halt as a blocking rule of admission (a file that repeats the store's
        cluster-wide halt is said once)."""
        reasons = []
        for halt in self.rows:
            scope = "cluster-wide" if halt["scope"] == GLOBAL else f"for {halt['scope']}"
            expires = halt["expires_at"]
            reasons.append(
                Reason(
                    "halt",
                    f"halted {scope} by {halt['who'] or '?'}: "
                    f"{halt['reason'] or 'no reason given'}",
                    retry_after=None if expires is None else max(0.0, expires - now),
                    details={
                        k: halt[k] for k in ("scope", "who", "host", "at", "expires_at", "reason")
                    },
                )
            )
        info = self.file
        if info is not None and not info.get("mirror"):  # a mirror here repeats a row above
            expires = info.get("expires_at")
            reasons.append(
                Reason(
                    "halt_file",
                    f"this host is halted by {info['path']}"
                    + (f" ({info['reason']})" if info.get("reason") else ""),
                    retry_after=max(0.0, expires - now)
                    if isinstance(expires, (int, float))
                    else None,
                    details=info,
                )
            )
        return reasons


def state(tx: Tx, state_dir: str | None, now: float, task_type: str | None = None) -> HaltState:
    """The halts in force (of every scope, or those that apply to ``task_type``)."""
    if task_type is None:
        rows = tx.query(
            f"SELECT {_COLUMNS} FROM halts WHERE expires_at IS NULL OR expires_at > ? ORDER BY at",
            (now,),
        )
    else:
        rows = tx.query(
            f"SELECT {_COLUMNS} FROM halts WHERE scope IN (?, ?) "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY at",
            (GLOBAL, task_type, now),
        )
    return HaltState(rows, None if state_dir is None else read_file(state_dir, now))


def file_only(state_dir: str | None, now: float) -> HaltState:
    """The halts when the store holds none (admission's probe said so): the file alone."""
    return HaltState([], None if state_dir is None else read_file(state_dir, now))


def status(
    tx: Tx, state_dir: str, now: float, task_type: str | TaskType | None = None
) -> dict[str, Any]:
    """Every halt in force, this host's halt file (when it halts), the last audit entries,
    and ``halted``: whether this host is halted at all (or for ``task_type``)."""
    halts = state(tx, state_dir, now)
    recent = tx.query(
        "SELECT action, scope, reason, who, host, at, expires_at FROM halt_log "
        "ORDER BY id DESC LIMIT 10"
    )
    return {
        "halted": halts.halted(task_type),
        "paused": halts.paused,
        "halts": halts.rows,
        "halt_file": halts.file,
        "recent": recent,
        "at": now,
    }


def read_file(state_dir: str, now: float) -> dict[str, Any] | None:
    """This host's halt file, or None (absent or expired).

    ``halt`` writes who/when/why (and an optional expiry) as JSON; a file an operator merely
    touched, or one that cannot be parsed, still halts. Its text is shown on one clean line.
    """
    path = os.path.join(state_dir, FILE_NAME)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            why = untrusted_file(path, os.fstat(handle.fileno()), shared_gid_of(state_dir))
            text = "" if why else handle.read(65536)
    except FileNotFoundError:
        return None
    except OSError:
        return {"reason": "halt file present (unreadable)", "path": path, "mirror": False}
    if why is not None:  # another user's file: neither trusted nor ignored
        raise StateError(f"refusing the halt file: {why}; remove it")
    info: dict[str, Any] = {"path": path}
    try:
        data = json.loads(text) if text.strip() else {}
        if isinstance(data, dict):
            info.update({k: data.get(k) for k in ("who", "at", "reason", "expires_at", "host")})
            info["mirror"] = data.get("mirror") is True
    except ValueError:
        info["reason"] = text
    for key in ("who", "reason", "host"):  # hand-written text must not break one-line output
        if info.get(key) is not None:
            info[key] = " ".join(printable(str(info[key])).split())[:200] or None
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires <= now:
        return None
    return info


# --------------------------------------------------------------------------- writing


def remove_stale_file(path: str) -> None:
    """Remove a stale mirror (admission does, in its write transaction)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def activate(
    ctx: Context,
    reason: str | None,
    *,
    task_type: str | TaskType | None,
    ttl: float | None,
    who: str,
    host: str,
) -> dict[str, Any]:
    """Halt every new spawn (or those of one type) until unhalt or expiry: the row, the audit
    entry, and for a cluster-wide halt this host's mirror file."""
    ttl = seconds(ttl, "ttl")
    scope = scope_of(task_type)
    reason = None if reason is None else printable(reason)
    with ctx.store.write() as tx:
        now = tx.now()
        expires = None if ttl is None else now + ttl
        tx.execute("DELETE FROM halts WHERE scope = ?", (scope,))
        tx.execute(
            f"INSERT INTO halts ({_COLUMNS}) VALUES (?,?,?,?,?,?)",
            (scope, reason, who, host, now, expires),
        )
        tx.execute(
            f"INSERT INTO halt_log (action, {_COLUMNS}) VALUES ('halt',?,?,?,?,?,?)",
            (scope, reason, who, host, now, expires),
        )
    record = {
        "scope": scope,
        "reason": reason,
        "who": who,
        "host": host,
        "at": now,
        "expires_at": expires,
    }
    if scope == GLOBAL:
        _write_file(ctx.state_dir, {**record, "mirror": True})
    return record


def deactivate(
    ctx: Context, *, task_type: str | TaskType | None, who: str, host: str
) -> dict[str, Any]:
    """Lift every halt (and remove this host's halt file), or only the halt of one type."""
    with ctx.store.write() as tx:
        now = tx.now()
        if task_type is None:
            lifted = [r["scope"] for r in tx.query("SELECT scope FROM halts")]
            tx.execute("DELETE FROM halts")
        else:
            scope = scope_of(task_type)
            lifted = [scope] if tx.execute("DELETE FROM halts WHERE scope = ?", (scope,)) else []
        for scope in lifted or ([GLOBAL] if task_type is None else []):
            tx.execute(
                "INSERT INTO halt_log (action, scope, reason, who, host, at) "
                "VALUES ('unhalt',?,NULL,?,?,?)",
                (scope, who, host, now),
            )
    removed_file = False
    if task_type is None:
        path = os.path.join(ctx.state_dir, FILE_NAME)
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


def _write_file(state_dir: str, record: dict[str, Any]) -> None:
    path = os.path.join(state_dir, FILE_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        try:
            fd = create_file(tmp, shared_gid_of(state_dir))
        except FileExistsError:  # left by a process with our pid that died: start afresh
            os.unlink(tmp)
            fd = create_file(tmp, shared_gid_of(state_dir))
        with open(fd, "w", encoding="utf-8") as handle:
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
