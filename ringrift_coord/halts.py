"""Halts: the emergency stop, and the one module that knows how a halt is kept.

A halt is a row of ``halts`` in the store: of every task type (scope ``*``) or of one, on
every node (node ``*``) or on one node only (a drain: that node refuses new spawns, the others
go on), optionally expiring; every halt and unhalt is appended to ``halt_log``. A halt of
every type on every node also writes the ``EMERGENCY_HALT`` file in the state
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

**Special files never block.** The halt file is opened with ``O_NONBLOCK | O_NOFOLLOW`` and
read only when it is a regular file: a FIFO, socket, device or symlink there is refused with
one line (``StateError``, exit 3) instead of hanging or being followed. It is read before any
transaction (``snapshot``): nothing is read from the filesystem while the store's write lock
is held. A halt's reach is said with the store's ``scope`` ("this host's store sqlite:…" or
"cluster-wide on postgres …"): a SQLite store halts only the users of that one file.
"""

from __future__ import annotations

import errno
import os
import stat

from ringrift_coord import inputs, tasktypes
from ringrift_coord.decision import Reason
from ringrift_coord.errors import StateError, StoreBusy, UsageError
from ringrift_coord.inputs import printable, seconds
from ringrift_coord.statedir import create_file, shared_gid_of, untrusted_file
from ringrift_coord.store.base import (
    OutcomeUnknown,
    StoreCorrupt,
    StoreGone,
    StoreUnreachable,
    StoreUnwritable,
)

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.context import Context
    from ringrift_coord.store.base import Row, Tx

GLOBAL = "*"
ALL_NODES = "*"  # a halt's node when it halts every node
FILE_NAME = "EMERGENCY_HALT"
# What halt and unhalt check before they write (``Store.check_integrity``): the tables they
# and admission read and write, with their indexes (never the whole file: seconds on a big
# store)
CHECKED_TABLES = ("halts", "halt_log", "events", "tasks", "task_counts", "waiters")
PROBE = "(SELECT COUNT(*) FROM halts)"  # admission's probe: are there any halt rows at all?
_COLUMNS = "scope, node, reason, who, host, at, expires_at"


def scope_of(task_type: str | None) -> str:
    """The scope a halt of ``task_type`` has (``*``: every type)."""
    return GLOBAL if task_type is None else tasktypes.parse(task_type)


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
    """What a halt stops, in words: "every task type", "training", "every task type on node
    n1", "training on node n1" (where the store reaches is said apart)."""
    node = row.get("node", ALL_NODES)
    what = "every task type" if row["scope"] == GLOBAL else str(row["scope"])
    return what if node == ALL_NODES else f"{what} on node {node}"


# --------------------------------------------------------------------------- reading


class HaltState:
    """The halts in force as one transaction sees them, with the mirror rule applied.

    ``rows``: the store's unexpired halts; ``file``: this host's halt file when it halts
    (None when absent, expired, or a stale mirror); ``stale_file``: the path of a stale
    mirror, for a write transaction to remove.
    """

    __slots__ = ("rows", "file", "stale_file", "where")

    def __init__(
        self, rows: list[Row], file: dict[str, Any] | None, where: str | None = None
    ) -> None:
        self.where = where  # the store's reach, as halt lines say it (None: not known)
        self.stale_file: str | None = None
        if file is not None and file.get("mirror") and not any(_cluster_wide(r) for r in rows):
            self.stale_file, file = file["path"], None  # the mirror rule
        self.rows, self.file = rows, file

    def halted(self, task_type: str | None = None, node: str | None = None) -> bool:
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
            scope += f" in {self.where}" if self.where else ""
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


class Snapshot:
    """This host's halt file as read before a transaction (``info``: None when absent; its
    expiry is judged later, by the transaction's clock), and ``where``, the store's scope."""

    __slots__ = ("info", "where")

    def __init__(self, info: dict[str, Any] | None, where: str | None = None) -> None:
        self.info, self.where = info, where


def snapshot(state_dir: str | None, where: str | None = None) -> Snapshot:
    """Read this host's halt file now, before any transaction takes the store's lock."""
    return Snapshot(None if state_dir is None else load_file(state_dir), where)


def _file(source: str | Snapshot | None, now: float) -> tuple[dict[str, Any] | None, str | None]:
    if source is None:
        return None, None
    if isinstance(source, Snapshot):
        return unexpired(source.info, now), source.where
    return read_file(source, now), None


def state(
    tx: Tx,
    source: str | Snapshot | None,
    now: float,
    task_type: str | None = None,
    node: str | None = None,
) -> HaltState:
    """The halts in force (of every scope and node, or those that apply to ``task_type``
    on ``node``: admission asks for its request's).

    ``source``: a ``snapshot`` taken before the transaction (what a write transaction
    passes), a state directory whose file is read now, or None (no file)."""
    where = "(expires_at IS NULL OR expires_at > ?)"
    args: list[object] = [now]
    if task_type is not None:
        where += " AND scope IN (?, ?)"
        args += [GLOBAL, task_type]
    if node is not None:
        where += " AND node IN (?, ?)"
        args += [ALL_NODES, node]
    rows = tx.query(f"SELECT {_COLUMNS} FROM halts WHERE {where} ORDER BY at, node", args)
    return HaltState(rows, *_file(source, now))


def file_only(source: str | Snapshot | None, now: float) -> HaltState:
    """The halts when the store holds none (admission's probe said so): the file alone."""
    return HaltState([], *_file(source, now))


def status(
    tx: Tx,
    source: str | Snapshot | None,
    now: float,
    task_type: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Every halt in force, this host's halt file (when it halts), the last audit entries,
    ``halted``: whether this host is halted at all (or for ``task_type``; on ``node`` only,
    when given: a drain of another node does not halt it), and ``store_scope``: the store's
    reach (when the snapshot says it)."""
    halts = state(tx, source, now)
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
        "store_scope": halts.where,
    }


def read_file(state_dir: str, now: float) -> dict[str, Any] | None:
    """This host's halt file, or None (absent or expired).

    ``halt`` writes who/when/why (and an optional expiry) as JSON; a file an operator merely
    touched, or one that cannot be parsed, still halts. Its text is shown on one clean line.
    """
    return unexpired(load_file(state_dir), now)


def unexpired(info: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The halt file's ``info`` unless it has expired by ``now``."""
    if info is None:
        return None
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires <= now:
        return None
    return info


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: str, kind: str) -> StateError:
    return StateError(
        f"halt file {path} is {kind}, not a regular file; refusing it (nothing was decided): "
        "remove it, or halt with `ringrift-coord halt`"
    )


def load_file(state_dir: str) -> dict[str, Any] | None:
    """This host's halt file as it is now (expiry not judged), or None when absent.

    Opened with ``O_NONBLOCK | O_NOFOLLOW`` and read only when it is a regular file: a FIFO
    cannot hang the caller and a symlink is never followed (both refused, ``StateError``).
    """
    path = os.path.join(state_dir, FILE_NAME)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if exc.errno in (errno.ELOOP, errno.EMLINK) or stat.S_ISLNK(mode):
            raise _refuse(path, "a symlink") from None
        if not stat.S_ISREG(mode):  # a socket (ENXIO), or a device that would not open
            raise _refuse(path, _kind(mode)) from None
        return {"reason": "halt file present (unreadable)", "path": path, "mirror": False}
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        why = untrusted_file(path, st, shared_gid_of(state_dir)) if stat.S_ISREG(mode) else None
        # never read a FIFO, nor another user's file
        raw = os.read(fd, 65536) if stat.S_ISREG(mode) and why is None else None
    except OSError:
        return {"reason": "halt file present (unreadable)", "path": path, "mirror": False}
    finally:
        os.close(fd)
    if why is not None:  # another user's file: neither trusted nor ignored
        raise StateError(f"refusing the halt file: {why}; remove it")
    if raw is None:
        raise _refuse(path, _kind(mode))
    text = raw.decode("utf-8", errors="replace")
    info: dict[str, Any] = {"path": path}
    import json

    try:
        data = json.loads(text) if text.strip() else {}
        if isinstance(data, dict):
            info.update({k: data.get(k) for k in ("who", "at", "reason", "expires_at", "host")})
            info["mirror"] = data.get("mirror") is True
            if data.get("store_busy") is True:  # written alone while the store was locked
                info["store_busy"] = True
    except ValueError:
        info["reason"] = text
    for key in ("who", "reason", "host"):  # hand-written text must not break one-line output
        if info.get(key) is not None:
            info[key] = " ".join(printable(str(info[key])).split())[:200] or None
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
    task_type: str | None,
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
    reason = inputs.reason(reason)  # (a blank one, from an empty $REASON: none)
    reason = None if reason is None else printable(reason)
    try:
        # an operator's halt never lands in a damaged file, said as ok; checked before the
        # write lock is taken (admissions go on meanwhile), the tables it and admission use
        ctx.store.check_integrity(CHECKED_TABLES)
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
            _publish(tx, ctx, "HALT", scope, on, who, host, now, reason=reason, expires_at=expires)
    except OutcomeUnknown as exc:  # the COMMIT went out and no answer came: it may be in
        # force on every host already; a file here would claim a halt no row may back
        raise OutcomeUnknown(
            f"{str(exc).split(': ')[0]}: whether the halt landed is unknown; halting again "
            "is safe (it replaces the same halt): run the same halt again, or look with "
            "`ringrift-coord halt --check`"
        ) from None
    except (StateError, StoreBusy) as exc:  # corrupt, not a database, locked: no row lands
        busy = isinstance(exc, StoreBusy)
        if scope != GLOBAL or on != ALL_NODES or isinstance(exc, StoreGone):
            raise  # (a deleted or replaced store: its own message says what to do)
        if busy and (ctx.store.engine != "sqlite" or isinstance(exc, StoreUnreachable)):
            # a server's store is every host's: a file here that no unhalt elsewhere lifts
            # would outlive the cluster's halt; try again, as for any busy store
            raise
        # An emergency halt takes effect on this host even so: the file alone halts it (not
        # a mirror: no halt row backs it, and a mirror without one would be stale). On a
        # locked SQLite store (this host's own: a writer stopped inside its transaction) the
        # unhalt of this store removes the file as it removes a mirror.
        at = ctx.clock.time()
        problem = exc.problem if isinstance(exc, StoreCorrupt) else str(exc)
        if busy:  # (its "nothing was decided, try again" is no longer so)
            problem = problem.split("; nothing was decided")[0]
        path = _write_file(
            ctx.state_dir,
            {
                "scope": scope,
                "node": on,
                "reason": reason,
                "who": who,
                "host": host,
                "at": at,
                "expires_at": None if ttl is None else at + ttl,
                _why_alone(exc): True,
            },
            not_in_store=problem,
        )
        if busy:  # exit 75: the store holds no halt row, try it again
            raise StoreBusy(
                f"{problem}: halted by {path} alone (no halt row in the store: a command "
                "using this store with another state directory is not halted); halt again "
                "once the store is free (`ringrift-coord doctor` names its holder)"
            ) from None
        alone = (
            f"this host is halted by {path} only (other hosts are not): run `ringrift-coord doctor`"
        )
        if isinstance(exc, StoreUnwritable):
            raise StoreUnwritable(f"{problem}; {alone}") from None
        raise StoreCorrupt(problem, alone) from None
    record = {
        "scope": scope,
        "node": on,
        "reason": reason,
        "who": who,
        "host": host,
        "at": now,
        "expires_at": expires,
        "store_scope": ctx.store.scope,
    }
    if scope == GLOBAL and on == ALL_NODES:
        _write_file(ctx.state_dir, {**record, "mirror": True})
    return record


def deactivate(
    ctx: Context,
    *,
    task_type: str | None,
    who: str,
    host: str,
    node: str | None = None,
) -> dict[str, Any]:
    """Lift every halt (and remove this host's halt file), or only the halt of one type (on
    every node); with ``node``, only that node's own halts (of every type, or of one).

    ``lifted``: the scopes lifted; ``lifted_halts``: each as (scope, node)."""
    try:
        return _deactivate(ctx, task_type=task_type, who=who, host=host, node=node)
    except OutcomeUnknown as exc:  # (its own advice is an admission's: "look with tasks")
        raise OutcomeUnknown(
            f"{str(exc).split(': ')[0]}: whether the unhalt landed is unknown; unhalting "
            "again is safe: run the same unhalt again, or look with `ringrift-coord halt "
            "--check`"
        ) from None
    except StoreBusy as exc:
        if task_type is not None or node is not None or isinstance(exc, StoreUnreachable):
            raise
        try:
            left = load_file(ctx.state_dir)
        except StateError:
            left = None
        if not (left and left.get("store_busy")):
            raise
        # the file a halt wrote alone while this store was locked: say how to lift it now
        path = os.path.join(ctx.state_dir, FILE_NAME)
        raise StoreBusy(
            f"{exc}; this host stays halted by {path}, written by a halt while the store was "
            "locked: unhalt again once the store is free, or remove that file by hand to let "
            "this host admit now"
        ) from None


def _deactivate(
    ctx: Context,
    *,
    task_type: str | None,
    who: str,
    host: str,
    node: str | None,
) -> dict[str, Any]:
    on = None if node is None else node_of(node)
    try:
        ctx.store.check_integrity(CHECKED_TABLES)  # (opens the store: nothing lifted yet)
    except StoreCorrupt as exc:
        path = os.path.join(ctx.state_dir, FILE_NAME)
        raise StoreCorrupt(
            exc.problem,
            "nothing was lifted: run `ringrift-coord doctor`, restore the store, then unhalt "
            f"again (to lift this host's halt file alone: remove {path} by hand)",
        ) from None
    except StoreUnwritable as exc:  # (a read-only filesystem refuses the open itself)
        raise _unwritable(ctx, exc, task_type, on) from None
    except StateError as exc:  # no store to lift anything in: not a database, newer, ...
        path = os.path.join(ctx.state_dir, FILE_NAME)
        if task_type is not None or on is not None or isinstance(exc, StoreGone):
            raise
        if not os.path.lexists(path):  # (no halt file: the store's error says it all)
            raise
        raise StateError(
            f"{exc}; nothing was lifted: this host stays halted by {path} (the store cannot "
            "be read): restore the store and unhalt again, or remove that file by hand to "
            "lift this host's halt alone"
        ) from None
    try:
        now, found = _lift(ctx, task_type, on, who, host)
    except StateError as exc:  # read-only, disk full, damaged on the way: nothing lifted
        raise _unwritable(ctx, exc, task_type, on) from None
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
        "store_scope": ctx.store.scope,
    }


def _unwritable(ctx: Context, exc: StateError, task_type: str | None, on: str | None) -> StateError:
    """What an unhalt that could not write the store raises: ``exc``, and for a whole-host
    unhalt with a halt file written alone, that this file still halts this host."""
    if task_type is not None or on is not None or isinstance(exc, (StoreGone, OutcomeUnknown)):
        return exc
    try:
        left = load_file(ctx.state_dir)
    except StateError:
        left = None
    if not left or left.get("mirror"):  # (a mirror's removal would lift nothing)
        return exc
    path = os.path.join(ctx.state_dir, FILE_NAME)
    return StateError(
        f"{exc}; nothing was lifted: this host stays halted by {path} (the store cannot "
        "be written): make the store writable and unhalt again, or remove that file by "
        "hand to lift this host's halt alone"
    )


def _why_alone(exc: StateError | StoreBusy) -> str:
    """The halt file's key for why a halt was written to it alone: the store was locked
    (``store_busy``, lifted by the unhalt of that store), could not be written
    (``store_unwritable``: read-only, immutable, disk full), or could not be used at all
    (``store_corrupt``: damaged, not a database)."""
    if isinstance(exc, StoreBusy):
        return "store_busy"
    return "store_unwritable" if isinstance(exc, StoreUnwritable) else "store_corrupt"


def _lift(
    ctx: Context, task_type: str | None, on: str | None, who: str, host: str
) -> tuple[float, list[dict[str, Any]]]:
    """Delete the halts an unhalt lifts, with their audit rows and events: (now, lifted)."""
    with ctx.store.write() as tx:
        now = tx.now()
        where, args = "", list[object]()
        if task_type is not None:
            where, args = " WHERE scope = ? AND node = ?", [scope_of(task_type), on or ALL_NODES]
        elif on is not None:
            where, args = " WHERE node = ?", [on]
        found = tx.query(
            f"SELECT scope, node, expires_at FROM halts{where} ORDER BY scope, node", args
        )
        tx.execute(f"DELETE FROM halts{where}", args)
        tx.ring(None)  # the head of every line; the halted waiters then follow one by one
        audit = found or ([{"scope": GLOBAL, "node": ALL_NODES}] if not where else [])
        for row in audit:
            tx.execute(
                "INSERT INTO halt_log (action, scope, node, reason, who, host, at) "
                "VALUES ('unhalt',?,?,NULL,?,?,?)",
                (row["scope"], row["node"], who, host, now),
            )
        for row in found:  # UNHALT: only a halt lifted (a no-op unhalt is audited, no event;
            if row["expires_at"] is None or row["expires_at"] > now:  # nor one that expired)
                _publish(tx, ctx, "UNHALT", row["scope"], row["node"], who, host, now)
        found = [{"scope": r["scope"], "node": r["node"]} for r in found]
    return now, found


def seen_nodes(tx: Tx) -> set[str]:
    """The nodes the store has heard of: running tasks and waiters, readings, and the
    latest decisions (a drain of a name none of them has is most likely a typo)."""
    rows = tx.query(
        "SELECT node FROM tasks UNION SELECT node FROM waiters UNION SELECT node FROM readings "
        "UNION SELECT node FROM (SELECT node FROM decisions ORDER BY id DESC LIMIT 20000) AS d"
    )
    return {r["node"] for r in rows}


def _publish(
    tx: Tx,
    ctx: Context,
    kind: str,
    scope: str,
    on: str,
    who: str,
    host: str,
    now: float,
    **more: Any,
) -> None:
    """The HALT / UNHALT event, in the transaction of the change: the halt's identity (its
    scope, type, node and time), so two halts are two events."""
    from ringrift_coord import events

    payload = {
        "scope": "cluster" if on == ALL_NODES else "node",
        "type": "all" if scope == GLOBAL else scope,
        "node": "all" if on == ALL_NODES else on,
        "who": who,
        "at": now,
        **more,
    }
    node = None if on == ALL_NODES else on
    events.publish(tx, ctx.settings, kind, payload, source="tool", node=node, who=who, host=host)


def _write_file(state_dir: str, record: dict[str, Any], *, not_in_store: str = "") -> str:
    """Write this host's halt file; ``not_in_store``: why the store holds no halt row (the
    file was to halt this host alone), for the message when the file cannot be written."""
    import json

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
        return path
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not_in_store:  # neither landed: say so plainly, it is an emergency halt
            try:  # (a mirror says nothing: no row can be seen to back it now)
                there = unexpired(load_file(state_dir), record["at"])
            except StateError:
                there = None
            if there is not None and there.get("mirror"):
                there = None
            already = (
                f"; this host is already halted by {path} ({there.get('reason') or 'no reason'})"
                if there is not None
                else ""
            )
            raise StateError(
                f"NOT halted: {not_in_store}, and this host's halt file {path} cannot be "
                f"written either ({exc.strerror}){already}; admissions on this host fail the "
                "same way until the store can be written, but running jobs go on: stop them "
                "by hand if they must stop now"
            ) from None
        raise StateError(
            f"halted in the store, but cannot write {path}: {exc.strerror}; this host's halt "
            "file is missing"
        ) from None
