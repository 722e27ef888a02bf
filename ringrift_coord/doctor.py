"""``doctor``: every check of this host's installation that an operator would otherwise do by
hand, each with a level (``ok``, ``warn``, ``fail``, ``skip``), one line of what was found and,
when not ok, what to do.

A ``fail`` needs an operator (exit 1): admission is stalled or refused, the store is corrupt
or newer than this program, the state directory is refused. A ``warn`` is said with its advice
and is still healthy (exit 0): a halt in force, a long reader, stale readings, a WAL past its
threshold. ``skip``: not checked, and why (a check that needs what an earlier one found
broken). A configuration that cannot be loaded at all ends the run with exit 3 (nothing else
can be checked without it). Doctor never creates a store or a state directory, and writes
nothing: the store is opened without migrating it (an older store is said, not upgraded; an
empty PostgreSQL database is left empty), and the admission probe takes the write lock and
rolls back.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping

from ringrift_coord.durations import human
from ringrift_coord.errors import ConfigError, CoordError, StateError
from ringrift_coord.statedir import (
    NETWORK_FILESYSTEMS,
    check_parents,
    check_state_dir,
    check_state_dir_group,
    default_state_dir,
    filesystem_type,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Store

LEVELS = ("ok", "warn", "fail", "skip")
WAL_WARN_BYTES = 64 << 20  # a WAL past this: something keeps it from being checkpointed
QUICK_CHECK_MAX_BYTES = 256 << 20  # a larger database is not read whole by quick_check
FREE_WARN_BYTES = 256 << 20  # free space on the state directory's filesystem
FREE_FAIL_BYTES = 16 << 20
CLOCK_WARN_SECONDS = 3.0  # this host's clock against the store's


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []

    def add(
        self, name: str, level: str, found: str, fix: str | None = None, **details: Any
    ) -> None:
        assert level in LEVELS, level
        self.checks.append(
            {"name": name, "level": level, "found": found, "fix": fix, "details": details}
        )

    def document(self) -> dict[str, Any]:
        levels = [c["level"] for c in self.checks]
        return {
            "healthy": "fail" not in levels,
            "failed_checks": levels.count("fail"),
            "warned_checks": levels.count("warn"),
            "checks": self.checks,
            "at": round(time.time(), 3),
        }


def run(
    *,
    db: str | None = None,
    state_dir: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run every check; the document ``doctor --json`` prints (``healthy``: no ``fail``).

    ``ConfigError`` (exit 3) when the configuration cannot be loaded at all."""
    from ringrift_coord.config import load_settings
    from ringrift_coord.context import apply_overrides

    env = os.environ if env is None else env
    report = Report()
    directory = os.path.abspath(state_dir or default_state_dir(env))
    try:
        settings = load_settings(config, env, cache_dir=None)
    except ConfigError as exc:
        raise ConfigError(
            f"doctor: the configuration does not load, so nothing else was checked: {exc.message}"
        ) from None
    apply_overrides(settings, overrides or [])  # a bad --set is bad input (exit 2)
    check_config(report, settings, env)
    dir_ok, shared_gid = check_directory(report, directory, settings)
    store = check_store(report, db, directory, settings, env, dir_ok, shared_gid)
    try:
        if store is not None:
            guarded(report, "clock", check_clock, report, store)
        guarded(report, "readings", check_readings, report, store, settings)
        # a cluster-wide halt lives in the store: checked even when this host's state
        # directory does not exist or cannot be used
        guarded(report, "halt", check_halt, report, store, directory if dir_ok else None)
    finally:
        if store is not None:
            store.close()
    return report.document()


# --------------------------------------------------------------------------- config


def check_config(report: Report, settings: Settings, env: Mapping[str, str]) -> None:
    from ringrift_coord.config import SET_ENV

    where = settings.file or "built-in defaults (no config file)"
    layers = sorted({s for s in settings.sources.values() if not s.startswith("/")})
    also = f"; also {', '.join(layers)}" if layers else ""
    if not settings.problems:
        report.add("config", "ok", f"loads: {where}{also}", file_path=settings.file)
        return
    for section, problem in sorted(settings.problems.items()):
        text = " ".join(problem.message.split())
        report.add(
            "config",
            "fail",
            f"section {section}: {text} (the commands that use it fail; the rest go on "
            "with the values below it)",
            f"correct the value in {settings.file or 'the --set / ' + SET_ENV + ' assignment'}, "
            "then: ringrift-coord config validate",
            section=section,
            file_path=settings.file,
        )


# --------------------------------------------------------------------------- state directory


def check_directory(report: Report, path: str, settings: Settings) -> tuple[bool, int | None]:
    """(usable, shared group id) of the state directory, after its check lines."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        report.add(
            "state directory",
            "warn",
            f"{path} does not exist yet",
            "the first command that writes creates it (mode 0700); or point "
            "--state-dir / RINGRIFT_COORDINATOR_DIR at the right one",
            path=path,
        )
        return False, None
    except OSError as exc:
        report.add("state directory", "fail", f"cannot inspect {path}: {exc.strerror}", path=path)
        return False, None
    shared_gid = None
    try:
        check_state_dir(path, st)
        check_parents(path, "state directory")
        shared_gid = check_state_dir_group(path, settings.get("store.shared_group"))
    except CoordError as exc:
        report.add(
            "state directory",
            "fail",
            exc.message,
            _fix_of(exc.message) or "give it to the user who runs ringrift-coord, mode 0700",
            path=path,
            mode=f"{stat.S_IMODE(st.st_mode):04o}",
        )
        return False, None
    mode = f"{stat.S_IMODE(st.st_mode):04o}"
    owner = _user(st.st_uid)
    shared = f", shared by group {_group(shared_gid)}" if shared_gid is not None else ""
    report.add(
        "state directory",
        "ok",
        f"{path}: owner {owner}, mode {mode}{shared}",
        path=path,
        mode=mode,
    )
    check_filesystem(report, path)
    return True, shared_gid


def _fix_of(message: str) -> str | None:
    """The command a refusal's message already gives (``...; run: chmod 700 DIR``)."""
    _, sep, fix = message.partition("run: ")
    return fix.strip() if sep else None


def check_filesystem(report: Report, path: str, name: str = "filesystem") -> None:
    """The filesystem of ``path``: the state directory's (``filesystem``), or that of a
    SQLite store outside it on another filesystem (``db filesystem``, its path said)."""
    fs_type = filesystem_type(path) or "unknown"
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        report.add(name, "fail", f"cannot read {path}'s filesystem: {exc.strerror}")
        return
    free = vfs.f_bavail * vfs.f_frsize
    words = f"{fs_type}, {_size(free)} free"
    if name != "filesystem":
        words = f"{path}: {words}"
    network = fs_type in NETWORK_FILESYSTEMS or fs_type.split(".")[-1] in NETWORK_FILESYSTEMS
    details: dict[str, Any] = {
        "fs_type": fs_type,
        "free_bytes": free,
        "read_only": bool(vfs.f_flag & os.ST_RDONLY),
    }
    if vfs.f_flag & os.ST_RDONLY:
        report.add(
            name,
            "fail",
            f"{words}, mounted read-only: nothing can be admitted or released here",
            "remount it read-write (mount -o remount,rw), or move the "
            + ("state directory" if name == "filesystem" else "store (and --db)"),
            **details,
        )
    elif free < FREE_FAIL_BYTES:
        report.add(
            name,
            "fail",
            f"{words}: the store cannot grow (every write fails 'disk full')",
            f"free space on the filesystem of {path}",
            **details,
        )
    elif free < FREE_WARN_BYTES:
        report.add(name, "warn", f"{words}: little room left", "free space there", **details)
    elif network:
        report.add(
            name,
            "warn",
            f"{words}: a network filesystem, where SQLite's locking does not work",
            "use a local state directory, or the PostgreSQL engine",
            **details,
        )
    else:
        report.add(name, "ok", words, **details)


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # (not reached)


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --------------------------------------------------------------------------- store


def check_store(
    report: Report,
    db: str | None,
    directory: str,
    settings: Settings,
    env: Mapping[str, str],
    dir_ok: bool,
    shared_gid: int | None,
) -> Store | None:
    """Open the store (never creating it) and check it; the open store, or None."""
    from ringrift_coord.store import NoStore, open_store, resolve_db

    engine, location = resolve_db(db, directory, env)
    busy = float(settings.get("store.busy_timeout"))
    long_hold = float(settings.get("store.long_hold"))
    if engine == "sqlite":
        inside = os.path.dirname(os.path.abspath(location)) == directory
        if not dir_ok and inside:
            report.add("store", "skip", "not opened: the state directory is not usable (above)")
            return None
        from ringrift_coord.store.sqlite import missing_store  # (a deleted store: fail)

        if not os.path.lexists(location) and (gone := missing_store(location)) is not None:
            report.add("store", "fail", gone.message, "do what the message says", engine=engine)
            return None
        parent = os.path.dirname(os.path.abspath(location))
        if not inside and _other_filesystem(parent, directory):  # (--db elsewhere)
            check_filesystem(report, parent, "db filesystem")
        if not os.path.lexists(location):
            if not os.path.isdir(parent):
                report.add(
                    "store",
                    "fail",
                    f"no store at {location}: its directory {parent} does not exist",
                    "point --db / RINGRIFT_COORD_DB at the right file, or create the directory",
                    engine=engine,
                )
                return None
            report.add(
                "store",
                "warn",
                f"no store yet at {location}",
                "the first admission (can-spawn, run, register) creates it",
                engine=engine,
            )
            return None
    started = time.monotonic()
    holders_before = _sqlite_holders(engine, location)
    before_at = time.monotonic()
    try:
        store = open_store(
            db,
            directory,
            busy_timeout=busy,
            connect_timeout=float(settings.get("store.connect_timeout")),
            env=env,
            shared_gid=shared_gid,
            create=False,
            migrate=False,  # an older store is said, not migrated; an empty database left empty
            statement_timeout=busy + 5,  # doctor never hangs on a server that does not answer
        )
    except NoStore as exc:
        report.add(
            "store",
            "warn",
            exc.message,
            "the first admission (can-spawn, run, register) creates it; or point --db / "
            "RINGRIFT_COORD_DB at the right one",
            engine=engine,
        )
        return None
    except CoordError as exc:
        newer = "newer ringrift-coord" in exc.message
        report.add(
            "schema" if newer else "store",
            "fail",
            exc.message,
            "upgrade ringrift-coord on this host to the version that wrote it"
            if newer
            else _store_fix(exc),
            engine=engine,
        )
        return None
    opened = time.monotonic() - started
    try:
        started = time.monotonic()
        with store.read() as tx:
            tx.query("SELECT 1")
        trip = time.monotonic() - started
    except CoordError as exc:
        report.add("store", "fail", exc.message, _store_fix(exc), engine=engine)
        store.close()
        return None
    connect = f"connect {_ms(opened)}, " if engine == "postgres" else ""
    report.add(
        "store",
        "ok",
        f"{store.scope}: {connect}round trip {_ms(trip)}",
        engine=engine,
        open_seconds=round(opened, 4),
        round_trip_seconds=round(trip, 4),
    )
    guarded(report, "schema", check_schema, report, store)
    if engine == "sqlite":
        check_writable(report, location)
        guarded(report, "integrity", check_integrity, report, store, location)
        check_wal(report, location)
    read_only = getattr(store, "read_only", None)
    if read_only is not None:  # (the writable check above fails and says why)
        for name in ("admission lock", "locks"):
            report.add(name, "skip", f"not probed: the store is read-only here ({read_only})")
        return store
    probe_ok = guarded(report, "admission lock", check_write_probe, report, store, busy)
    if engine == "sqlite":
        check_sqlite_locks(report, location, long_hold, holders_before, before_at, bool(probe_ok))
    else:
        guarded(report, "engine", check_engine, report, store, settings)
        guarded(report, "locks", check_postgres, report, store, long_hold, bool(probe_ok))
    return store


def _other_filesystem(store_dir: str, state_dir: str) -> bool:
    """Whether a SQLite store's directory lies on another filesystem than the state directory
    (whose own check then says nothing of it); False when the store's directory is missing."""
    try:
        there = os.stat(store_dir).st_dev
    except OSError:
        return False
    try:
        return there != os.stat(state_dir).st_dev
    except OSError:  # (no state directory: its filesystem check did not run)
        return True


def guarded(report: Report, name: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)``; a store error on the way is that check's ``fail`` (the others go on)."""
    try:
        return fn(*args)
    except CoordError as exc:
        report.add(name, "fail", exc.message, _store_fix(exc))
        return None


def _store_fix(exc: CoordError) -> str:
    """What to do about a store that failed to open or answer: by its cause (a full or
    read-only disk, an unreachable server are no reason to restore a backup)."""
    from ringrift_coord.errors import StoreBusy
    from ringrift_coord.store.base import StoreUnreachable, StoreUnwritable

    if isinstance(exc, StoreUnreachable):
        return "is the PostgreSQL server up and reachable from here (host, port, firewall)?"
    if isinstance(exc, StoreBusy):
        return "see the locks check; on PostgreSQL: is the server up and reachable from here?"
    if isinstance(exc, StoreUnwritable) and "disk full" in exc.message:
        return "free space where the message says, then run ringrift-coord doctor again"
    if isinstance(exc, StoreUnwritable):
        return (
            "let the user who runs ringrift-coord write the store and its directory (chmod / "
            "chown / chattr -i), or remount its filesystem read-write"
        )
    return "see the message: restore the store from a backup, or point --db at the right one"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _sqlite_holders(engine: str, location: str) -> list[dict[str, Any]]:
    if engine != "sqlite":
        return []
    from ringrift_coord.diagnose import sqlite_holders

    return sqlite_holders(location)


def check_schema(report: Report, store: Store) -> None:
    """What the store records, as opened (doctor never migrates it)."""
    from ringrift_coord.store.migrations import MIGRATION_NAMES

    applied = set(store.applied_migrations)
    known = set(MIGRATION_NAMES)
    if applied - known:  # (opening refuses such a store first: said there)
        report.add("schema", "fail", f"unknown migrations {sorted(applied - known)}")
    elif applied != known:
        missing = [name for name in MIGRATION_NAMES if name not in applied]
        report.add(
            "schema",
            "fail",
            f"{len(applied & known)} of {len(known)} migrations applied (missing: "
            f"{', '.join(missing)}); doctor does not migrate",
            "run any admission command (can-spawn, run, register) or `ringrift-coord status` "
            "to migrate it; or upgrade ringrift-coord on the hosts that still run an older one",
            missing=missing,
        )
    else:
        report.add("schema", "ok", f"{len(applied)} of {len(known)} migrations applied")


def check_writable(report: Report, path: str) -> None:
    """SQLite: can this user write the store's files and make its -wal/-shm? (The admission
    probe takes the write lock and rolls back: a file that cannot be written passes it.)"""
    from ringrift_coord.store.sqlite import why_read_only

    why = why_read_only(path)
    if why is None:
        report.add("writable", "ok", "the store's files and directory can be written", path=path)
        return
    report.add(
        "writable",
        "fail",
        f"{path} cannot be written here: {why}; every admission and release exits 3",
        "let the user who runs ringrift-coord write it (chmod / chown / chattr -i), or "
        "remount its filesystem read-write",
        path=path,
    )


def check_integrity(report: Report, store: Store, path: str) -> None:
    """``PRAGMA quick_check`` in a read transaction, when the file is not huge."""
    size = os.path.getsize(path)
    if size > QUICK_CHECK_MAX_BYTES:
        report.add(
            "integrity",
            "skip",
            f"quick_check not run: the database is {_size(size)} (over "
            f"{_size(QUICK_CHECK_MAX_BYTES)}, it would read every page)",
            f"at a quiet time: sqlite3 {path} 'PRAGMA quick_check'",
        )
        return
    started = time.monotonic()
    with store.read() as tx:
        rows = [str(next(iter(r.values()))) for r in tx.query("PRAGMA quick_check(10)")]
    took = time.monotonic() - started
    if rows == ["ok"]:
        report.add("integrity", "ok", f"quick_check ok ({_size(size)}, {_ms(took)})")
    else:
        report.add(
            "integrity",
            "fail",
            f"quick_check: {'; '.join(rows)[:300]}",
            f"stop the launchers, restore {path} from a backup (or move it aside)",
        )


def check_wal(report: Report, path: str) -> None:
    try:
        size = os.stat(path + "-wal").st_size
    except FileNotFoundError:
        report.add("wal", "ok", "no WAL file (no connection open)", wal_bytes=0)
        return
    if size > WAL_WARN_BYTES:
        report.add(
            "wal",
            "warn",
            f"the WAL is {_size(size)} (over {_size(WAL_WARN_BYTES)}): a long reader keeps it "
            "from being checkpointed (see locks), or none has run since",
            "end the long reader; the next write's checkpoint shrinks it once every "
            "connection has moved past it",
            wal_bytes=size,
        )
    else:
        report.add("wal", "ok", f"WAL {_size(size)}", wal_bytes=size)


def check_write_probe(report: Report, store: Store, busy: float) -> bool:
    from ringrift_coord.durations import human
    from ringrift_coord.errors import StoreBusy

    started = time.monotonic()
    try:
        store.probe_write_lock()
    except StoreBusy:
        report.add(
            "admission lock",
            "fail",
            f"not free within the {human(busy)} busy timeout: every admission now exits 75 "
            "(store busy)",
            "see the locks check for who holds it",
            probe_seconds=round(time.monotonic() - started, 4),
        )
        return False
    took = time.monotonic() - started
    report.add(
        "admission lock",
        "ok",
        f"free: taken and released in {_ms(took)}",
        probe_seconds=round(took, 4),
    )
    return True


def check_sqlite_locks(
    report: Report,
    path: str,
    long_hold: float,
    before: list[dict[str, Any]],
    before_at: float,
    probe_ok: bool,
) -> None:
    """The holders seen holding the same lock in every look over ``DOCTOR_WATCH`` seconds
    after the admission probe (from the look before it, when the probe found the write lock
    held all through), or stopped; none younger than ``long_hold`` (unless the probe
    failed)."""
    from ringrift_coord.diagnose import (
        DOCTOR_WATCH,
        WRITE_LOCKS,
        holder_line,
        watch_sqlite_holders,
    )

    if probe_ok:
        named = watch_sqlite_holders(path, DOCTOR_WATCH, long_hold)
    else:  # the write lock was held all through the probe: whoever holds it stalls admission
        first = [h for h in before if h["lock"] in WRITE_LOCKS]
        named = watch_sqlite_holders(
            path,
            DOCTOR_WATCH + (time.monotonic() - before_at),
            0.0,
            first=first,
            first_at=before_at,
        )
        if not any(h["lock"] in WRITE_LOCKS for h in named):
            named += [
                h
                for h in watch_sqlite_holders(path, DOCTOR_WATCH, long_hold)
                if h["lock"] not in WRITE_LOCKS
            ]
    for holder in named:
        holder["message"] = holder_line(holder, advice=False)
    if not named:
        if not probe_ok:
            report.add(
                "locks",
                "warn",
                "holder not seen: no process was seen holding the write lock all through the "
                "failed probe (one in another pid namespace or of another user under hidepid, "
                "or a string of short writers)",
                "look again in a moment: ringrift-coord doctor; fuser -v "
                f"{path}-shm lists who has the store open",
                holders=[],
            )
            return
        report.add(
            "locks",
            "ok",
            f"no process holds the write lock or a read snapshot for long (watched "
            f"{human(DOCTOR_WATCH)})",
            holders=[],
        )
        return
    stalls = any(h["lock"] in WRITE_LOCKS and (h["stopped"] or not probe_ok) for h in named)
    level = "fail" if stalls or any(h["stopped"] for h in named) else "warn"
    named.sort(key=lambda h: (h["lock"] not in WRITE_LOCKS, not h["stopped"]))
    first_named = named[0]
    more = f" (and {len(named) - 1} more: see --json)" if len(named) > 1 else ""
    pid = first_named["pid"]
    if first_named["stopped"]:
        fix = f"resume it (kill -CONT {pid}) or end it (kill {pid})"
    elif first_named["lock"] == "checkpoint lock":
        fix = "let it finish: a checkpoint ends by itself (only other checkpoints wait for it)"
    elif pid is None:
        fix = f"find it: fuser -v {path}-shm (run where the holder's pid namespace is)"
    else:
        fix = f"end it (kill {pid}) if it is not expected to hold the store that long"
    report.add("locks", level, first_named["message"] + more, fix, holders=named)


def check_engine(report: Report, store: Store, settings: Settings) -> None:
    """What every admission session gets (computed from the config, as the store sets it at
    connect), beside the server's own idle-transaction limit and keepalive."""
    from ringrift_coord.durations import human
    from ringrift_coord.store.postgres import IDLE_IN_TRANSACTION, KEEPALIVES, STATEMENT_MARGIN

    busy = float(settings.get("store.busy_timeout"))
    statement = busy + STATEMENT_MARGIN
    with store.read() as tx:
        server = {
            name: tx.one(f"SHOW {name}")[name]  # type: ignore[index]
            for name in ("idle_in_transaction_session_timeout", "tcp_keepalives_idle")
        }
    report.add(
        "engine",
        "ok",
        f"admission sessions: lock_timeout {human(busy)} (store.busy_timeout), "
        f"statement_timeout {human(statement)} (busy timeout + {human(STATEMENT_MARGIN)}), "
        f"idle_in_transaction_session_timeout {human(IDLE_IN_TRANSACTION)}, keepalives after "
        f"{KEEPALIVES['keepalives_idle']} s",
        lock_timeout_seconds=busy,
        statement_timeout_seconds=statement,
        idle_in_transaction_seconds=IDLE_IN_TRANSACTION,
        keepalives_idle_seconds=KEEPALIVES["keepalives_idle"],
        server=server,
    )


def check_postgres(report: Report, store: Store, long_hold: float, probe_ok: bool) -> None:
    """The sessions with a transaction open longer than ``long_hold``, and the holder of the
    admission lock whatever its age when the probe could not take it."""
    from ringrift_coord.diagnose import holder_line, postgres_sessions

    with store.read() as tx:
        sessions = postgres_sessions(tx)
        long = []
        for session in sessions:
            held = session["held_seconds"]
            stalls = not probe_ok and session["lock"] == "admission lock"
            if not session["waiting"] and (stalls or (held is not None and held >= long_hold)):
                session["message"] = holder_line(session, advice=False)
                long.append(session)
        waiting = sum(1 for s in sessions if s["waiting"])
    wait = f"; {waiting} session(s) waiting on the admission lock" if waiting else ""
    if not long and not probe_ok:
        report.add(
            "locks",
            "warn",
            f"holder not seen: no session was seen holding the admission lock{wait} (it let go "
            "meanwhile, or another database's session holds the same key)",
            "look again in a moment: ringrift-coord doctor",
            holders=[],
            waiting=waiting,
        )
        return
    if not long:
        report.add(
            "locks",
            "ok",
            f"no transaction open longer than {human(long_hold)}{wait}",
            holders=[],
            waiting=waiting,
        )
        return
    holds = any(s["lock"] == "admission lock" for s in long)
    more = f" (and {len(long) - 1} more: see --json)" if len(long) > 1 else ""
    report.add(
        "locks",
        "fail" if holds else "warn",
        long[0]["message"] + more + wait,
        f"end it if it is not expected: SELECT pg_terminate_backend({long[0]['pid']})",
        holders=long,
        waiting=waiting,
    )


# --------------------------------------------------------------------------- clock


def check_clock(report: Report, store: Store) -> None:
    if store.engine == "sqlite":
        report.add("clock", "ok", "SQLite: the store's clock is this host's clock")
        return
    before = time.time()
    with store.read() as tx:
        theirs = tx.now()
    after = time.time()
    skew = theirs - (before + after) / 2
    slack = (after - before) / 2
    if abs(skew) > CLOCK_WARN_SECONDS + slack:
        ahead = "ahead of" if skew > 0 else "behind"
        report.add(
            "clock",
            "warn",
            f"the store's clock is {human(abs(skew))} {ahead} this host's: leases, breakers "
            "and buckets are timed by the store's clock, readings and halt files by this host's",
            "sync this host's clock (chronyc tracking / timedatectl)",
            skew_seconds=round(skew, 3),
        )
    else:
        report.add(
            "clock", "ok", f"within {human(abs(skew))} of the store's", skew_seconds=round(skew, 3)
        )


# --------------------------------------------------------------------------- readings


def check_readings(report: Report, store: Store | None, settings: Settings) -> None:
    from ringrift_coord import readings

    try:
        import psutil

        report.add("psutil", "ok", f"psutil {psutil.__version__}")
    except ImportError:
        report.add(
            "psutil",
            "warn",
            "psutil is not importable: no live host readings, no holder names",
            "pip install psutil",
        )
    gpu = readings.gpu_readings()
    if gpu.get("gpu_count"):
        report.add("nvml", "ok", f"NVML: {gpu['gpu_count']} GPU(s), {gpu.get('gpu_name')}")
    elif gpu.get("gpu_note") == "NVML bindings not installed":
        report.add(
            "nvml",
            "warn",
            "the NVML bindings are not importable: this host reports no GPU",
            "pip install nvidia-ml-py",
        )
    else:
        note = gpu.get("gpu_note") or "no GPU"
        report.add("nvml", "ok", f"NVML bindings present; {note}: this host reports no GPU")
    if store is None:
        report.add("readings", "skip", "no store to read them from (above)")
        return
    max_age = float(settings.get("resources.max_sample_age"))
    with store.read() as tx:
        now = tx.now()
        rows = readings.all_latest(tx)
    stale = []
    for row in rows:
        at = row.get("at")
        if at is None or readings.is_stale(float(at), now, max_age):
            stale.append((row["node"], None if at is None else now - float(at)))
    if not rows:
        report.add("readings", "ok", "no node has reported a reading yet")
    elif stale:
        from ringrift_coord.durations import human

        names = ", ".join(
            f"{node} ({'never' if age is None else human(round(age)) + ' old'})"
            for node, age in stale[:5]
        )
        more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
        report.add(
            "readings",
            "warn",
            f"{len(stale)} of {len(rows)} node(s) stale (over resources.max_sample_age "
            f"{human(max_age)}, admission ignores them): {names}{more}",
            "make sure `ringrift-coord report` runs from cron on those nodes (or forget-node "
            "a retired one)",
            stale_nodes=[node for node, _ in stale],
        )
    else:
        report.add("readings", "ok", f"{len(rows)} node(s), every reading fresh")


# --------------------------------------------------------------------------- halt


def check_halt(report: Report, store: Store | None, directory: str | None) -> None:
    from ringrift_coord import halts
    from ringrift_coord.identity import host_name

    if directory is None:
        if store is None:
            report.add("halt", "skip", "the state directory is not usable and no store (above)")
            return
        with store.read() as tx:  # a cluster-wide halt is in the store whatever this host's dir
            now = tx.now()
            state = halts.state(tx, None, now)
        if state.rows:
            words = "; ".join(halts.describe(r) for r in state.rows)
            report.add(
                "halt",
                "warn",
                f"halted: {words} (this host's halt file not read: its state directory is not "
                "usable, above)",
                "ringrift-coord unhalt when it should end",
                halts=len(state.rows),
            )
        else:
            report.add(
                "halt",
                "ok",
                "no halt in force in the store (this host's halt file not read: its state "
                "directory is not usable, above)",
            )
        return
    path = os.path.join(directory, halts.FILE_NAME)
    try:
        snapshot = halts.snapshot(directory, None if store is None else store.scope)
    except StateError as exc:
        remove = f"rm {path}"
        if os.path.isdir(path) and not os.path.islink(path):  # (rm alone refuses one)
            remove = f"rmdir {path} (move it aside if it holds anything)"
        report.add("halt", "fail", exc.message, f"remove it: {remove}")
        return
    if store is None:
        info = halts.unexpired(snapshot.info, time.time())
        if info is None:
            report.add("halt", "ok", "no halt file (the store was not read)")
        else:
            report.add("halt", "warn", f"this host is halted by {path}", f"rm {path} to lift it")
        return
    with store.read() as tx:
        now = tx.now()
        state = halts.state(tx, snapshot, now)
    wide = [row for row in state.rows if halts._cluster_wide(row)]
    if state.stale_file is not None:
        report.add(
            "halt",
            "warn",
            f"the halt file {path} mirrors a halt of every type that the store no longer holds "
            "(lifted elsewhere, or the row was removed): it halts nothing",
            f"rm {path} (the next admission removes it too)",
            halt_file=path,
        )
    elif wide and snapshot.info is None and any(r.get("host") == host_name() for r in wide):
        report.add(
            "halt",
            "warn",
            f"the store holds a halt of every type said on this host, but its mirror {path} is "
            "missing (removed by hand?): the halt still holds, from the store",
            "ringrift-coord unhalt to lift it, or ringrift-coord halt --reason ... to write the "
            "file again",
            halt_file=path,
        )
    elif state.rows or state.file is not None:
        said = [halts.describe(r) for r in state.rows]
        own_file = state.file is not None and not state.file.get("mirror")
        if own_file:
            said.append(f"this host by its halt file {path}")
        report.add(
            "halt",
            "warn",
            f"halted: {'; '.join(said)}",
            "ringrift-coord unhalt when it should end"
            + (
                f" (and rm {path})"
                if state.file is not None and not state.file.get("mirror")
                else ""
            ),
            halts=len(state.rows),
        )
    else:
        report.add("halt", "ok", "no halt in force, and the halt file agrees")
