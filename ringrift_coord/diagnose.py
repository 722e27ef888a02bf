"""Who holds the store: the processes (SQLite) or sessions (PostgreSQL) that hold the lock every
admission takes, or a read snapshot, and for how long. ``doctor`` and ``status`` name them.

**SQLite** (WAL mode) keeps its locks as POSIX byte-range locks (``fcntl``) on the ``-shm``
file: byte 120 is the write lock (every admission takes it, ``BEGIN IMMEDIATE``), 121 the
checkpointer's, 122 recovery's, 123-127 the five read marks (a read transaction holds one as a
shared lock for as long as it lasts; the WAL cannot be checkpointed past the oldest of them),
and 128 is held shared by every open connection. The kernel lists every POSIX lock with its
owner's pid in ``/proc/locks``; a lock found there on the ``-shm`` file's inode names the
process that holds it. The kernel does not say since when: the process's start is an upper
bound, and a second look a moment later tells a holder that stays from one passing through.
An open-file-description lock (pid -1) cannot be named.

**PostgreSQL**: ``pg_stat_activity`` (with ``pg_locks`` for the admission advisory lock)
lists every session of the database with the start of its transaction, its state (``idle in
transaction``: a client that began and went quiet), its application name and client address.
A role without ``pg_read_all_stats`` sees other roles' sessions without those columns.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.store.base import Store, Tx

LOCKS_FILE = "/proc/locks"
WAL_WRITE = 120  # SQLite's unix VFS: UNIX_SHM_BASE = (22 + SQLITE_SHM_NLOCK) * 4
LOCK_KINDS = {120: "write lock", 121: "checkpoint lock", 122: "recovery lock"}
LOCK_KINDS.update({byte: "read snapshot" for byte in range(123, 128)})
# what a holder of several locks is named by: the write lock stalls admission, the others less
RANK = ("write lock", "checkpoint lock", "recovery lock", "read snapshot")
CONFIRM_SECONDS = 0.2  # between the two looks that tell a lasting holder from a passing one
CMDLINE_MAX = 120  # characters of a holder's command line kept


def sqlite_holders(db_path: str, locks_file: str = LOCKS_FILE) -> list[dict[str, Any]]:
    """Every other process holding a lock of the SQLite store at ``db_path`` now: one entry per
    process (its strongest lock), with its command line, whether it is stopped, and
    ``held_seconds``: an upper bound (the process's age). Empty when there is no ``-shm`` file
    or no lock table to read (not Linux)."""
    try:
        st = os.stat(db_path + "-shm")
        with open(locks_file, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return []
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    inode = f":{st.st_ino}"
    found: dict[int, set[str]] = {}
    for raw in text.splitlines():
        parts = raw.split()
        if "->" in parts or len(parts) < 8:  # "->": a lock waited for, not held
            continue
        _, kind, _, _, pid_text, where, start_text, end_text = parts[:8]
        if where != device and not where.endswith(inode):
            continue  # (an overlay filesystem may show another device: the inode decides)
        if kind not in ("POSIX", "OFDLCK"):
            continue
        try:
            pid, start = int(pid_text), int(start_text)
            end = start if end_text == "EOF" else int(end_text)
        except ValueError:
            continue
        names = {LOCK_KINDS[b] for b in range(max(start, 120), min(end, 127) + 1)}
        if names and pid != os.getpid():
            found.setdefault(pid, set()).update(names)
    now = time.time()
    holders = []
    for pid, names in sorted(found.items()):
        lock = next(name for name in RANK if name in names)
        holders.append({"pid": pid if pid > 0 else None, "lock": lock, **process_info(pid, now)})
    return holders


def process_info(pid: int, now: float) -> dict[str, Any]:
    """A process's command line, whether it is stopped, and its age in seconds (None each when
    it cannot be read: gone, another user's under ``hidepid``, psutil missing)."""
    info: dict[str, Any] = {"cmdline": None, "stopped": False, "held_seconds": None}
    if pid <= 0:
        info["cmdline"] = "(an open-file-description lock: no process is named)"
        return info
    try:
        import psutil

        proc = psutil.Process(pid)
        with proc.oneshot():
            words = proc.cmdline() or [proc.name()]
            info["stopped"] = proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
            info["held_seconds"] = round(max(0.0, now - proc.create_time()), 3)
    except ImportError:
        return info
    except Exception:  # noqa: BLE001 (gone meanwhile, or not ours to read: said as unknown)
        return info
    line = " ".join(" ".join(words).split())  # one line: a -c script's newlines as spaces
    info["cmdline"] = line if len(line) <= CMDLINE_MAX else line[: CMDLINE_MAX - 1] + "…"
    return info


def long_sqlite_holders(
    db_path: str, long_hold: float, confirm: float = CONFIRM_SECONDS
) -> list[dict[str, Any]]:
    """The holders of ``db_path``'s locks that hold them long: stopped, or alive longer than
    ``long_hold`` and still holding the same lock ``confirm`` seconds later (one look alone
    cannot tell a lasting holder from one passing through)."""
    first = [h for h in sqlite_holders(db_path) if _long(h, long_hold)]
    if not first:
        return []
    time.sleep(confirm)
    again = {(h["pid"], h["lock"]): h for h in sqlite_holders(db_path)}
    kept = [again[(h["pid"], h["lock"])] for h in first if (h["pid"], h["lock"]) in again]
    for holder in kept:
        holder["held_at_most"] = True
        holder["message"] = holder_line(holder)
    return kept


def _long(holder: dict[str, Any], long_hold: float) -> bool:
    held = holder["held_seconds"]
    return bool(holder["stopped"]) or held is None or held >= long_hold


def holder_line(holder: dict[str, Any], *, advice: bool = True) -> str:
    """One sentence naming a holder, what it holds, for how long, and (``advice``) what to
    do."""
    pid = holder["pid"]
    who = f"pid {pid}" if pid is not None else "a process"
    if holder.get("cmdline"):
        who += f" ({holder['cmdline']})"
    held = holder.get("held_seconds")
    lock = holder["lock"]
    if holder.get("engine") == "postgres":
        return _session_line(holder, advice)
    since = "" if held is None else f" for at most {_secs(held)} (it started then)"
    stopped = ", stopped (SIGSTOP)," if holder["stopped"] else ""
    if lock == "write lock":
        effect = "every admission waits for it and then exits 75 (store busy)"
    elif lock == "read snapshot":
        effect = "the WAL cannot be checkpointed past it and grows while it lasts"
    else:
        effect = "writers wait for it"
    action = f"resume it (kill -CONT {pid}) or end it" if holder["stopped"] else "end it"
    if pid is not None:
        action += f" (kill {pid})"
    return f"{who}{stopped} holds the store's {lock}{since}: {effect}" + (
        f"; {action}" if advice else ""
    )


def _session_line(holder: dict[str, Any], advice: bool) -> str:
    where = holder.get("application_name") or "no application name"
    if holder.get("client_addr"):
        where += f" from {holder['client_addr']}"
    state = holder.get("session_state") or "state unknown"
    held = holder.get("held_seconds")
    since = "" if held is None else f" for {_secs(held)}"
    if holder["lock"] == "admission lock":
        effect = "every admission waits for it and then exits 75 (store busy)"
    else:
        effect = "it holds its snapshot and row locks while it lasts"
    pid = holder["pid"]
    holding = " holding the admission lock" if holder["lock"] == "admission lock" else ""
    return (
        f"PostgreSQL session {pid} ({where}, {state}) has a transaction open{since}"
        f"{holding}: {effect}" + (f"; end it: SELECT pg_terminate_backend({pid})" if advice else "")
    )


def _secs(seconds: float) -> str:
    from ringrift_coord.durations import human

    return human(round(seconds)) if seconds >= 1 else f"{seconds:.1f} s"


# --------------------------------------------------------------------------- PostgreSQL


def postgres_sessions(tx: Tx) -> list[dict[str, Any]]:
    """Every other session of this database with a transaction open (or waiting on the
    admission lock), oldest first: pid, application name, client address, state, seconds
    since its transaction began, whether it holds or waits for the admission lock."""
    from ringrift_coord.store.postgres import ADMISSION_LOCK

    high, low = ADMISSION_LOCK >> 32, ADMISSION_LOCK & 0xFFFFFFFF
    rows = tx.query(
        "SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.state, "
        "a.wait_event_type, "
        "extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS held_seconds, "
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' "
        "AND l.classid::bigint = ? AND l.objid::bigint = ? AND l.objsubid = 1 AND l.granted) "
        "AS holds_admission, "
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' "
        "AND l.classid::bigint = ? AND l.objid::bigint = ? AND l.objsubid = 1 "
        "AND NOT l.granted) AS waits_admission "
        "FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL "
        "ORDER BY a.xact_start",
        (high, low, high, low),
    )
    sessions = []
    for row in rows:
        held = row["held_seconds"]
        sessions.append(
            {
                "engine": "postgres",
                "pid": int(row["pid"]),
                "lock": "admission lock" if row["holds_admission"] else "transaction",
                "application_name": row["application_name"] or None,
                "client_addr": row["client_addr"],
                "session_state": row["state"],
                "held_seconds": None if held is None else round(max(0.0, float(held)), 3),
                "held_at_most": False,
                "waiting": bool(row["waits_admission"]),
                "stopped": False,
                "cmdline": None,
            }
        )
    return sessions


def long_postgres_sessions(tx: Tx, long_hold: float) -> list[dict[str, Any]]:
    """The sessions whose transaction is open longer than ``long_hold`` (waiters on the
    admission lock are the symptom, not the cause: left out)."""
    kept = []
    for session in postgres_sessions(tx):
        held = session["held_seconds"]
        if session["waiting"] or held is None or held < long_hold:
            continue
        session["message"] = holder_line(session)
        kept.append(session)
    return kept


def long_holds(store: Store, long_hold: float) -> list[dict[str, Any]]:
    """Who holds the store's write lock (or a read snapshot, or a transaction) longer than
    ``long_hold`` seconds, each with a ``message`` line; what ``status`` warns of. Never fails:
    a store that cannot be asked gives an empty list (``doctor`` says why)."""
    from ringrift_coord.errors import CoordError

    if store.engine == "sqlite":
        return long_sqlite_holders(str(getattr(store, "path", "")), long_hold)
    try:
        with store.read() as tx:
            return long_postgres_sessions(tx, long_hold)
    except CoordError:
        return []
