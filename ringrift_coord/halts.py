"""Halts: the emergency stop, and the one module that knows how a halt is kept.

A halt is a row of ``halts`` in the store: of every task type (scope ``*``) or of one, on
every node (node ``*``) or on one node only (a drain: that node refuses new spawns, the others
go on), optionally expiring; every halt and unhalt is appended to ``halt_log``. A halt of
every type on every node (cluster-wide) also writes the ``EMERGENCY_HALT`` file in the state
directory of the host that said it (JSON: who, when, why, expiry, ``mirror: true``). A halt
file's mere presence halts its host, so an operator can ``touch`` one by hand; deleting it
does not lift a halt said with ``halt`` (the row still halts), only ``unhalt`` or the halt's
expiry does.

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
from ringrift_coord.errors import StateError, UsageError
from ringrift_coord.inputs import printable, seconds
from ringrift_coord.tasktypes import TaskType

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Row, Tx

GLOBAL = "*"
ALL_NODES = "*"  # a halt's node when it halts every node
FILE_NAME = "EMERGENCY_HALT"
PROBE = "(SELECT COUNT(*) FROM halts)"  # admission's probe: are there any halt rows at all?
_COLUMNS = "scope, node, reason, who, host, at, expires_at"


def scope_of(task_type: str | TaskType | None) -> str:
    """The scope a halt of ``task_type`` has (``*``: every type)."""
    return GLOBAL if task_type is None else TaskType.parse(task_type).value


def node_of(node: str | None) -> str:
    """The node a halt on ``node`` has (``*``: every node)."""
    if node is None:
        return ALL_NODES
    node = printable(node).strip()
    if not node or node == ALL_NODES:
        raise UsageError("must name one node (omit it to halt every node)", field="node")
    return node


def _cluster_wide(row: Row) -> bool:
    return bool(row["scope"] == GLOBAL and row.get("node", ALL_NODES) == ALL_NODES)


def _applies(row: Row, scope: str | None, node: str | None) -> bool:
    """Whether a halt row stops ``scope`` (None: any type) on ``node`` (None: any node)."""
    if scope is not None and row["scope"] not in (GLOBAL, scope):
        return False
    return node is None or row.get("node", ALL_NODES) in (ALL_NODES, node)


def describe(row: Row) -> str:
    """Where a halt applies, in words: "cluster-wide", "for training", "on node n1",
    "for training on node n1"."""
    node = row.get("node", ALL_NODES)
    if row["scope"] == GLOBAL:
        return "cluster-wide" if node == ALL_NODES else f"on node {node}"
    return f"for {row['scope']}" + ("" if node == ALL_NODES else f" on node {node}")


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
        if file is not None and file.get("mirror") and not any(_cluster_wide(r) for r in rows):
            self.stale_file, file = file["path"], None  # the mirror rule
        self.rows, self.file = rows, file

    def halted(self, task_type: str | TaskType | None = None, node: str | None = None) -> bool:
        """Halted at all (no type), or for that type (a halt of every type or its own); on
        ``node`` only (a halt of every node or of that one), or on any node (None)."""
        scope = scope_of(task_type)  # an unknown type is bad input, whatever is halted
        if self.file is not None:
            return True
        return any(_applies(row, None if task_type is None else scope, node) for row in self.rows)

    @property
    def paused(self) -> bool:
        """Everything is halted: a cluster-wide halt, or this host's halt file."""
        return self.file is not None or any(_cluster_wide(row) for row in self.rows)

    def reasons(self, now: float) -> list[Reason]:
        """Each halt as a blocking rule of admission (a file that repeats the store's
        cluster-wide halt is said once)."""
        reasons = []
        for halt in self.rows:
            scope = describe(halt)
            expires = halt["expires_at"]
            reasons.append(
                Reason(
                    "halt",
                    f"halted {scope} by {halt['who'] or '?'}: "
                    f"{halt['reason'] or 'no reason given'}",
                    retry_after=None if expires is None else max(0.0, expires - now),
                    details={
                        k: halt.get(k)
                        for k in ("scope", "node", "who", "host", "at", "expires_at", "reason")
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


def state(
    tx: Tx,
    state_dir: str | None,
    now: float,
    task_type: str | None = None,
    node: str | None = None,
) -> HaltState:
    """The halts in force (of every scope and node, or those that apply to ``task_type``
    on ``node``: admission asks for its request's)."""
    where = "(expires_at IS NULL OR expires_at > ?)"
    args: list[object] = [now]
    if task_type is not None:
        where += " AND scope IN (?, ?)"
        args += [GLOBAL, task_type]
    if node is not None:
        where += " AND node IN (?, ?)"
        args += [ALL_NODES, node]
    rows = tx.query(f"SELECT {_COLUMNS} FROM halts WHERE {where} ORDER BY at, node", args)
    return HaltState(rows, None if state_dir is None else read_file(state_dir, now))


def file_only(state_dir: str | None, now: float) -> HaltState:
    """The halts when the store holds none (admission's probe said so): the file alone."""
    return HaltState([], None if state_dir is None else read_file(state_dir, now))


def status(
    tx: Tx,
    state_dir: str,
    now: float,
    task_type: str | TaskType | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Every halt in force, this host's halt file (when it halts), the last audit entries,
    and ``halted``: whether this host is halted at all (or for ``task_type``; on ``node``
    only, when given: a drain of another node does not halt it)."""
    halts = state(tx, state_dir, now)
    recent = tx.query(
        "SELECT action, scope, node, reason, who, host, at, expires_at FROM halt_log "
        "ORDER BY id DESC LIMIT 10"
    )
    return {
        "halted": halts.halted(task_type, node),
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
            text = handle.read(65536)
    except FileNotFoundError:
        return None
    except OSError:
        return {"reason": "halt file present (unreadable)", "path": path, "mirror": False}
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
    node: str | None = None,
) -> dict[str, Any]:
    """Halt every new spawn (or those of one type; on every node, or on ``node`` only) until
    unhalt or expiry: the row, the audit entry, and for a cluster-wide halt this host's
    mirror file."""
    ttl = seconds(ttl, "ttl")
    scope, on = scope_of(task_type), node_of(node)
    reason = None if reason is None else printable(reason)
    with ctx.store.write() as tx:
        now = tx.now()
        expires = None if ttl is None else now + ttl
        tx.execute("DELETE FROM halts WHERE scope = ? AND node = ?", (scope, on))
        tx.execute(
            f"INSERT INTO halts ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            (scope, on, reason, who, host, now, expires),
        )
        tx.execute(
            f"INSERT INTO halt_log (action, {_COLUMNS}) VALUES ('halt',?,?,?,?,?,?,?)",
            (scope, on, reason, who, host, now, expires),
        )
    record = {
        "scope": scope,
        "node": on,
        "reason": reason,
        "who": who,
        "host": host,
        "at": now,
        "expires_at": expires,
    }
    if scope == GLOBAL and on == ALL_NODES:
        _write_file(ctx.state_dir, {**record, "mirror": True})
    return record


def deactivate(
    ctx: Context,
    *,
    task_type: str | TaskType | None,
    who: str,
    host: str,
    node: str | None = None,
) -> dict[str, Any]:
    """Lift every halt (and remove this host's halt file), or only the halt of one type (on
    every node); with ``node``, only that node's own halts (of every type, or of one).

    ``lifted``: the scopes lifted; ``lifted_halts``: each as (scope, node)."""
    on = None if node is None else node_of(node)
    with ctx.store.write() as tx:
        now = tx.now()
        where, args = "", list[object]()
        if task_type is not None:
            where, args = " WHERE scope = ? AND node = ?", [scope_of(task_type), on or ALL_NODES]
        elif on is not None:
            where, args = " WHERE node = ?", [on]
        found = tx.query(f"SELECT scope, node FROM halts{where} ORDER BY scope, node", args)
        tx.execute(f"DELETE FROM halts{where}", args)
        audit = found or ([{"scope": GLOBAL, "node": ALL_NODES}] if not where else [])
        for row in audit:
            tx.execute(
                "INSERT INTO halt_log (action, scope, node, reason, who, host, at) "
                "VALUES ('unhalt',?,?,NULL,?,?,?)",
                (row["scope"], row["node"], who, host, now),
            )
    lifted = [r["scope"] for r in found]
    removed_file = False
    if task_type is None and on is None:
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
    return {
        "lifted": lifted,
        "lifted_halts": found,
        "node": on,
        "removed_halt_file": removed_file,
        "who": who,
        "at": now,
    }


def _write_file(state_dir: str, record: dict[str, Any]) -> None:
    path = os.path.join(state_dir, FILE_NAME)
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
