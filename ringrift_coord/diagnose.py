"""Who holds the store: the processes (SQLite) or sessions (PostgreSQL) that hold the lock every
admission takes, or a read snapshot, and for how long. ``doctor`` and ``status`` name them.

**SQLite** (WAL mode) keeps its locks as POSIX byte-range locks (``fcntl``) on the ``-shm``
file: byte 120 is the write lock (every admission takes it, ``BEGIN IMMEDIATE``), 121 the
checkpointer's, 122 recovery's, 123-127 the five read marks (a read transaction holds one as a
shared lock for as long as it lasts; the WAL cannot be checkpointed past the oldest of them),
and 128 is held shared by every open connection. The kernel lists every POSIX lock with its
owner's pid in ``/proc/locks``; a lock found there on the ``-shm`` file's inode names the
process that holds it. The kernel does not say since when: a holder is named only when it
is seen holding the same lock in every one of many looks spread over a while (a process that
takes and lets go of the lock many times a second, as a healthy busy one does, is missed by
one of them), or when it is stopped; how long is said only as measured so (at least the time
between the first and last look), with the process's age beside it. An open-file-description
lock (pid -1) cannot be named, nor a process in another pid namespace (pid 0).

**PostgreSQL**: ``pg_stat_activity`` (with ``pg_locks`` for the admission advisory lock)
lists every session of the database with the start of its transaction, its state (``idle in
transaction``: a client that began and went quiet), its application name and client address.
A role without ``pg_read_all_stats`` sees other roles' sessions without those columns; the
holder of the admission lock is still found in ``pg_locks``, which every role can read.
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
RANK = ("write lock", "write gate", "checkpoint lock", "recovery lock", "read snapshot")
GATE_SUFFIX = "-gate"  # store/gate.py's file: every ringrift-coord writer queues on it
WRITE_LOCKS = ("write lock", "write gate")  # a holder of either stalls every admission
LOOK_INTERVAL = 0.025  # between two looks at the lock table: a passing holder is missed by one
STATUS_WATCH = 0.5  # status looks this long at a holder before naming it (stays cheap)
DOCTOR_WATCH = 1.0  # doctor looks this long
CMDLINE_MAX = 120  # characters of a holder's command line kept


def sqlite_holders(db_path: str, locks_file: str = LOCKS_FILE) -> list[dict[str, Any]]:
    """Every other process holding a lock of the SQLite store at ``db_path`` now: one entry per
    process (its strongest lock), with its command line, whether it is stopped, and
    ``process_age_seconds`` (how long it has run: an upper bound of how long it holds anything).
    Empty when there is no ``-shm`` file or no lock table to read (not Linux)."""
    now = time.time()
    return [
        {"pid": pid if pid > 0 else None, "lock": lock, **process_info(pid, now)}
        for pid, lock in sorted(lock_table(db_path, locks_file).items())
    ]


def lock_table(db_path: str, locks_file: str = LOCKS_FILE) -> dict[int, str]:
    """pid -> the strongest lock it holds on the store at ``db_path`` now (one read of the
    kernel's lock table; no process is looked at)."""
    files = {}  # "-shm" / the write gate (an flock on PATH-gate) -> (device:inode, :inode)
    for suffix in ("-shm", GATE_SUFFIX):
        try:
            st = os.stat(db_path + suffix)
        except OSError:
            continue
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        files[suffix] = (device, f":{st.st_ino}")
    if not files:
        return {}
    try:
        with open(locks_file, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return {}
    exact: dict[int, set[str]] = {}
    by_inode: dict[int, set[str]] = {}
    for raw in text.splitlines():
        parts = raw.split()
        if "->" in parts or len(parts) < 8:  # "->": a lock waited for, not held
            continue
        _, kind, _, _, pid_text, where, start_text, end_text = parts[:8]
        which = next(
            (k for k, (dev, ino) in files.items() if where == dev or where.endswith(ino)), None
        )
        if which is None:
            continue
        if kind not in (("FLOCK",) if which == GATE_SUFFIX else ("POSIX", "OFDLCK")):
            continue
        try:
            pid, start = int(pid_text), int(start_text)
            end = start if end_text == "EOF" else int(end_text)
        except ValueError:
            continue
        if which == GATE_SUFFIX:
            if where != files[which][0]:
                continue  # an flock on another device's file with the same inode number
            names = {"write gate"}
        else:
            names = {LOCK_KINDS[b] for b in range(max(start, 120), min(end, 127) + 1)}
        device = files[which][0]
        if names and pid != os.getpid():
            found = exact if where == device else by_inode
            found.setdefault(pid, set()).update(names)
    # the inode alone decides only when no lock matches the device too (an overlay filesystem
    # may show another device; elsewhere the same inode number on another device is another file)
    found = exact or by_inode
    held = {pid: next(name for name in RANK if name in names) for pid, names in found.items()}
    if "write lock" in held.values():  # a gate holder besides it waits for it (not in line)
        held = {pid: name for pid, name in held.items() if name != "write gate"}
    return held


def process_info(pid: int, now: float) -> dict[str, Any]:
    """A process's command line, whether it is stopped, and its age in seconds (None each when
    it cannot be read: gone, another user's under ``hidepid``, psutil missing)."""
    info: dict[str, Any] = {"cmdline": None, "stopped": False, "process_age_seconds": None}
    if pid == 0:
        info["cmdline"] = "(a process in another pid namespace: a container's; not named here)"
        return info
    if pid < 0:
        info["cmdline"] = "(an open-file-description lock: no process is named)"
        return info
    try:
        import psutil

        proc = psutil.Process(pid)
        with proc.oneshot():
            words = proc.cmdline() or [proc.name()]
            info["stopped"] = proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
            info["process_age_seconds"] = round(max(0.0, now - proc.create_time()), 3)
    except ImportError:
        return info
    except Exception:  # noqa: BLE001 (gone meanwhile, or not ours to read: said as unknown)
        return info
    line = " ".join(" ".join(words).split())  # one line: a -c script's newlines as spaces
    info["cmdline"] = line if len(line) <= CMDLINE_MAX else line[: CMDLINE_MAX - 1] + "…"
    return info


def watch_sqlite_holders(
    db_path: str,
    span: float,
    long_hold: float,
    *,
    first: list[dict[str, Any]] | None = None,
    first_at: float | None = None,
    interval: float = LOOK_INTERVAL,
) -> list[dict[str, Any]]:
    """The holders of ``db_path``'s locks that hold them for long, by looking at the lock table
    every ``interval`` seconds for ``span`` seconds: one is kept only when it is seen holding
    the same lock in every look, or when it is stopped (SIGSTOP: it cannot let go). A holder
    whose process is younger than ``long_hold`` cannot have held anything that long and is
    left out (unless stopped). The looks end early once no one is left to name, so a store no
    one holds costs one look.

    ``first``/``first_at``: a look taken earlier (``time.monotonic()``) that counts as the
    first. Each holder kept gets ``held_seconds``: the time from the first look to the last
    that saw it (a lower bound of how long it has held it; None when seen in one look),
    ``looks``, and its ``message``."""
    started = time.monotonic() if first is None or first_at is None else first_at
    seen = sqlite_holders(db_path) if first is None else first
    candidates = {
        (h["pid"], h["lock"]): h
        for h in seen
        if h["stopped"] or _old_enough(h.get("process_age_seconds"), long_hold)
    }
    looks, last = 1, started
    # at least one look per interval of the span, however late a loaded machine wakes us:
    # a busy process that holds the lock half the time is in all of them once in 2**20;
    # of the span still ahead only, when an earlier look was given (doctor's: the failed
    # probe between the two found the lock held all through; counting its seconds as looks
    # still to take made doctor watch 6 s more after a 5 s probe)
    ahead = span - (time.monotonic() - started)
    enough = int(max(ahead, 0.0) / interval) + 1 + (first is not None)
    # a stopped holder cannot let go: named at once, unless an earlier look was given (then
    # one look now tells how long it has held the lock at least)
    while candidates and (first is not None or not all(h["stopped"] for h in candidates.values())):
        if looks >= 2 and all(h["stopped"] for h in candidates.values()):
            break
        if looks >= enough and time.monotonic() - started >= span:
            break
        time.sleep(interval)
        table = lock_table(db_path)
        last, looks = time.monotonic(), looks + 1
        candidates = {key: h for key, h in candidates.items() if _holds(table, *key)}
    kept = list(candidates.values())
    now = time.time()
    for holder in kept:
        if holder["pid"] is not None:  # (stopped or resumed meanwhile: said as now)
            holder.update(process_info(holder["pid"], now))
        holder["held_seconds"] = round(last - started, 3) if looks > 1 else None
        holder["held_at_least"] = True
        holder["looks"] = looks
        holder["message"] = holder_line(holder)
    return kept


def _holds(table: dict[int, str], pid: int | None, lock: str) -> bool:
    if pid is None:  # not named: pid 0 (another pid namespace) or -1 (an OFD lock)
        return lock in (table.get(0), table.get(-1))
    return table.get(pid) == lock


def _old_enough(age: float | None, long_hold: float) -> bool:
    return age is None or age >= long_hold


def holder_line(holder: dict[str, Any], *, advice: bool = True) -> str:
    """One sentence naming a holder, what it holds, for how long (only what was measured),
    and (``advice``) what to do."""
    if holder.get("engine") == "postgres":
        return _session_line(holder, advice)
    pid = holder["pid"]
    who = f"pid {pid}" if pid is not None else "a process"
    if holder.get("cmdline"):
        who += f" ({holder['cmdline']})"
    lock = holder["lock"]
    held = holder.get("held_seconds")
    looks = holder.get("looks") or 1
    if held is not None and looks > 1:
        since = f" for at least the last {_secs(held)} ({looks} looks)"
    else:
        since = " now"
    age = holder.get("process_age_seconds")
    started = "" if age is None else f"; the process started {_secs(age)} ago"
    stopped = ", stopped (SIGSTOP)," if holder["stopped"] else ""
    if lock in WRITE_LOCKS:
        effect = "every admission waits for it and then exits 75 (store busy)"
    elif lock == "read snapshot":
        effect = "the WAL cannot be checkpointed past it and grows while it lasts"
    elif lock == "checkpoint lock":
        effect = "only other checkpoints wait for it; admissions go on"
    else:
        effect = "connections opening the store wait for it"
    if holder["stopped"]:
        action = f"resume it (kill -CONT {pid}) or end it (kill {pid})"
    elif lock == "checkpoint lock":
        action = "let it finish (a checkpoint ends by itself)"
    else:
        action = "end it" + (f" (kill {pid})" if pid is not None else "")
        action += " if it is not expected to hold the store that long"
    verb = "has held" if held is not None and looks > 1 else "holds"
    return f"{who}{stopped} {verb} the store's {lock}{since}{started}: {effect}" + (
        f"; {action}" if advice else ""
    )


def busy_hint(db_path: str) -> str:
    """For a store-busy message: " (held by pid N (command), stopped: what to do)" naming
    the other processes holding the SQLite store's write lock or gate now; "" when none is
    seen (gone by now, another pid namespace, no lock table to read)."""
    named = []
    try:
        # the lock table alone first: only a writer's process is looked at (not every reader)
        writers = [p for p, lock in sorted(lock_table(db_path).items()) if lock in WRITE_LOCKS]
        now = time.time()
        for pid in writers[:3]:
            if pid <= 0:  # pid 0 (another pid namespace) or an open-file-description lock
                named.append("a process not named here (`ringrift-coord doctor` looks longer)")
                continue
            info = process_info(pid, now)
            who = f"pid {pid}" + (f" ({info['cmdline']})" if info.get("cmdline") else "")
            if info["stopped"]:
                who += f", stopped: resume it (kill -CONT {pid}) or end it (kill {pid})"
            named.append(who)
    except Exception:  # noqa: BLE001 (a hint for an error message: never a second error)
        return ""
    # (one look, at the moment of giving up: a stopped holder is the cause; a live one may
    # be one writer of a herd, which doctor's watch tells apart)
    return f" (held now by {'; '.join(named)})" if named else ""


def _session_line(holder: dict[str, Any], advice: bool) -> str:
    where = holder.get("application_name") or "no application name"
    if holder.get("client_addr"):
        where += f" from {holder['client_addr']}"
    if holder.get("hidden"):
        state = "its state and times hidden from this role (grant it pg_read_all_stats)"
    else:
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

    return human(round(seconds)) if seconds >= 1 else human(seconds)


# --------------------------------------------------------------------------- PostgreSQL


def postgres_sessions(tx: Tx) -> list[dict[str, Any]]:
    """Every other client session of this database with a transaction open, or holding or
    waiting for the admission lock, oldest first: pid, application name, client address,
    state, seconds since its transaction began, whether it holds or waits for the admission
    lock. A session of another role is seen without its state and times unless this role has
    ``pg_read_all_stats`` (``hidden``): it is still listed when ``pg_locks`` (readable by
    every role) shows it holding or waiting for the admission lock."""
    from ringrift_coord.store.postgres import ADMISSION_LOCK

    high, low = ADMISSION_LOCK >> 32, ADMISSION_LOCK & 0xFFFFFFFF
    rows = tx.query(
        "SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.state, "
        "a.state IS NULL AS hidden, "
        "extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS held_seconds, "
        "COALESCE(l.holds, false) AS holds_admission, "
        "COALESCE(l.waits, false) AS waits_admission "
        "FROM pg_stat_activity a LEFT JOIN ("
        "SELECT pid, bool_or(granted) AS holds, bool_or(NOT granted) AS waits FROM pg_locks "
        "WHERE locktype = 'advisory' AND classid::bigint = ? AND objid::bigint = ? "
        "AND objsubid = 1 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY pid"
        ") l ON l.pid = a.pid "
        "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
        "AND (a.backend_type = 'client backend' OR a.backend_type IS NULL) "
        "AND (a.xact_start IS NOT NULL OR l.pid IS NOT NULL) "
        "ORDER BY a.xact_start NULLS LAST, a.pid",
        (high, low),
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
                "hidden": bool(row["hidden"]),
                "held_seconds": None if held is None else round(max(0.0, float(held)), 3),
                "held_at_least": False,
                "waiting": bool(row["waits_admission"]),
                "stopped": False,
                "cmdline": None,
            }
        )
    return sessions


def long_postgres_sessions(tx: Tx, long_hold: float) -> list[dict[str, Any]]:
    """The sessions whose transaction is open longer than ``long_hold`` (waiters on the
    admission lock are the symptom, not the cause: left out), and a holder of the admission
    lock whose times this role cannot see (``hidden``)."""
    kept = []
    for session in postgres_sessions(tx):
        held = session["held_seconds"]
        if session["waiting"]:
            continue
        if held is None:
            if not (session["hidden"] and session["lock"] == "admission lock"):
                continue
        elif held < long_hold:
            continue
        session["message"] = holder_line(session)
        kept.append(session)
    return kept


def long_holds(store: Store, long_hold: float) -> list[dict[str, Any]]:
    """Who holds the store's write lock (or a read snapshot, or a transaction) for long, each
    with a ``message`` line; what ``status`` warns of. SQLite: a process seen holding the same
    lock in every look over ``STATUS_WATCH`` seconds, or stopped. PostgreSQL: a transaction
    open longer than ``long_hold``; a holder of the admission lock whose times are hidden from
    this role, when a second look ``STATUS_WATCH`` later still finds it holding it. Never
    fails: a store that cannot be asked gives an empty list (``doctor`` says why)."""
    from ringrift_coord.errors import CoordError

    if store.engine == "sqlite":
        return watch_sqlite_holders(str(getattr(store, "path", "")), STATUS_WATCH, long_hold)
    try:
        with store.read() as tx:
            kept = long_postgres_sessions(tx, long_hold)
        if any(s["held_seconds"] is None for s in kept):
            time.sleep(STATUS_WATCH)
            with store.read() as tx:
                again = {s["pid"] for s in postgres_sessions(tx) if s["lock"] == "admission lock"}
            kept = [s for s in kept if s["held_seconds"] is not None or s["pid"] in again]
        return kept
    except CoordError:
        return []
