"""Open the store a ``--db`` value names: a path or ``sqlite:///path`` (SQLite, the embedded
default) or ``postgresql://…`` / a libpq keyword string ``host=… dbname=…`` (the
cluster-wide engine).

An address is never misread: a keyword string is PostgreSQL, never a file name; SQLite's
``:memory:`` and ``file:`` URIs are refused, and so are ``sqlite:`` without ``//`` and a
``sqlite://`` address with a query (none is a file name anyone meant); a SQLite path that
is a symlink is refused (never followed into another store); a password is never shown
(``redact``).
"""

from __future__ import annotations

import os
import stat

from ringrift_coord.clock import SYSTEM_CLOCK, Clock
from ringrift_coord.errors import ConfigError, StateError, UsageError
from ringrift_coord.statedir import clean_env_path, refuse_network_filesystem
from ringrift_coord.store.base import NoStore, Row, Store, StoreGone, Tx, is_conninfo

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Mapping

DB_ENV = "RINGRIFT_COORD_DB"
DEFAULT_DB_NAME = "tasks.db"

__all__ = [
    "DB_ENV",
    "NoStore",
    "Row",
    "Store",
    "StoreGone",
    "Tx",
    "check_sqlite_path",
    "is_conninfo",
    "open_store",
    "resolve_db",
]


def resolve_db(db: str | None, state_dir: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(engine, location) for a ``--db`` value, ``$RINGRIFT_COORD_DB``, or the default."""
    origin_is_flag = db is not None
    value = db if db is not None else env.get(DB_ENV) or None
    if value is None:
        return "sqlite", os.path.join(state_dir, DEFAULT_DB_NAME)
    if not origin_is_flag and not value.isprintable():  # (--db: the parser's own check)
        from ringrift_coord.store.postgres import mask_secret, password_of, redact

        # (a control character may stand where redact's patterns look for the password:
        # the one libpq reads is masked as well)
        shown = mask_secret(redact(value), password_of(value))
        clean_env_path(DB_ENV, value, shown=repr(shown))
    if value.startswith(("postgresql://", "postgres://")) or is_conninfo(value):
        return "postgres", value

    from ringrift_coord.store.postgres import redact  # only now: a SQLite path is the hot path

    def refuse(message: str) -> UsageError | ConfigError:
        if origin_is_flag:
            return UsageError(message)
        return ConfigError(f"{DB_ENV}: {message}")

    scheme = value[:9].lower()
    if scheme.startswith("sqlite:") and not scheme.startswith("sqlite://"):  # not a file name
        raise refuse(
            f"{redact(value)!r} is no SQLite address (no '//' after 'sqlite:'): give "
            f"sqlite:///path or the file's path (a file so named: ./{redact(value)})"
        )
    if value.startswith("sqlite://") and ("?" in value or "#" in value):
        bare = value.partition("?")[0].partition("#")[0]
        plain = value[len("sqlite://") :]
        raise refuse(
            f"{redact(value)!r}: a sqlite:// address takes no '?' query or '#' fragment "
            f"(nothing reads it: it would become part of the file name): give {bare}, or "
            f"the file's plain path ({plain}) if the name holds them"
        )
    if value.startswith("sqlite:///"):
        path = value[len("sqlite://") :]
    else:
        path = value[len("sqlite://") :] if value.startswith("sqlite://") else value
        if "://" in path or not path.strip():
            raise refuse(
                f"unsupported database {redact(value)!r}: give a path, sqlite:///path or "
                "postgresql://host/db"
            )
    if path == ":memory:" or path.startswith("file:"):
        raise refuse(
            f"{redact(value)!r} is an in-memory or URI SQLite name, not a store every command "
            "shares: give a file path or sqlite:///path (or postgresql://host/db)"
        )
    return "sqlite", os.path.expanduser(path)


def open_store(
    db: str | None,
    state_dir: str,
    *,
    busy_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    env: Mapping[str, str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    shared_gid: int | None = None,
    create: bool = True,
    statement_timeout: float | None = None,
    migrate: bool = True,
) -> Store:
    """The store; ``create=False`` (read-only commands): a SQLite file that does not exist
    is not created, ``StateError`` "no store at PATH" instead. ``migrate=False`` (``doctor``):
    nothing is created or migrated on either engine, the schema is only read
    (``Store.applied_migrations``). ``statement_timeout``
    (PostgreSQL): the server cancels a statement running longer (``serve``'s reads)."""
    env = os.environ if env is None else env
    engine, location = resolve_db(db, state_dir, env)
    if engine == "postgres":
        from ringrift_coord.store.postgres import PostgresStore, check_url

        check_url(location, from_flag=db is not None)
        return PostgresStore(
            location,
            busy_timeout=busy_timeout,
            connect_timeout=connect_timeout,
            clock=None if clock is SYSTEM_CLOCK else clock,
            statement_timeout=statement_timeout,
            migrate=migrate,
        )
    refuse_network_filesystem(location)
    directory = os.path.dirname(os.path.abspath(location))
    in_state_dir = directory == os.path.abspath(state_dir)  # (a writing command makes it)
    check_sqlite_path(location, create=create and migrate, made_by_writes=in_state_dir)
    if not in_state_dir:  # the state directory was checked already
        from ringrift_coord.statedir import check_parents

        check_parents(location, "database")
    from ringrift_coord.store.sqlite import SQLiteStore

    return SQLiteStore(
        location,
        busy_timeout=busy_timeout,
        clock=clock,
        shared_gid=shared_gid,
        migrate=migrate,
        read_only_ok=not (create and migrate),  # a command that only reads, or doctor
    )


def check_sqlite_path(path: str, *, create: bool = True, made_by_writes: bool = False) -> None:
    """Refuse a SQLite path that is a symlink (it would lead into another store, silently),
    and, unless ``create``, one where no store exists yet. ``made_by_writes``: the path is
    in the state directory, which the first command that writes creates."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        from ringrift_coord.store.sqlite import deleted_store  # only now: no file there

        gone = deleted_store(path)
        if gone is not None:
            raise gone from None
        if os.path.lexists(path):  # created meanwhile (deleted_store looked again)
            return check_sqlite_path(path, create=create, made_by_writes=made_by_writes)
        if not create:
            directory = os.path.dirname(os.path.abspath(path))
            if not made_by_writes and not os.path.isdir(directory):  # no command creates it
                from ringrift_coord.statedir import missing_directory

                raise NoStore(
                    f"no store at {os.path.abspath(path)}: {missing_directory(directory)}"
                ) from None
            raise NoStore(
                f"no store at {os.path.abspath(path)} (nothing recorded there yet; a command "
                "that writes creates it)"
            ) from None
        return
    except OSError:
        return  # the engine says what is wrong with it
    if stat.S_ISLNK(st.st_mode):
        raise StateError(
            f"database {os.path.abspath(path)} is a symlink; refusing it (a symlink could lead "
            "into another store): give the real file's path"
        )
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open; a directory is no store
        raise StateError(f"database {os.path.abspath(path)} is not a regular file; refusing it")
