"""Open the store a ``--db`` value names: a path or ``sqlite:///path`` (SQLite, the embedded
default) or ``postgresql://…`` (the cluster-wide engine)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ringrift_coord.clock import SYSTEM_CLOCK, Clock
from ringrift_coord.errors import ConfigError, UsageError
from ringrift_coord.statedir import refuse_network_filesystem
from ringrift_coord.store.base import Row, Store, Tx

DB_ENV = "RINGRIFT_COORD_DB"
DEFAULT_DB_NAME = "tasks.db"

__all__ = ["DB_ENV", "Row", "Store", "Tx", "open_store", "resolve_db"]


def resolve_db(db: str | None, state_dir: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(engine, location) for a ``--db`` value, ``$RINGRIFT_COORD_DB``, or the default."""
    origin_is_flag = db is not None
    value = db if db is not None else env.get(DB_ENV) or None
    if value is None:
        return "sqlite", os.path.join(state_dir, DEFAULT_DB_NAME)
    if value.startswith(("postgresql://", "postgres://")):
        return "postgres", value
    if value.startswith("sqlite:///"):
        return "sqlite", value[len("sqlite://") :]
    if value.startswith("sqlite://"):
        value = value[len("sqlite://") :]
    if "://" in value or not value.strip():
        message = (
            f"unsupported database {value!r}: give a path, sqlite:///path or postgresql://host/db"
        )
        if origin_is_flag:
            raise UsageError(message)
        raise ConfigError(f"{DB_ENV}: {message}")
    return "sqlite", os.path.expanduser(value)


def open_store(
    db: str | None,
    state_dir: str,
    *,
    busy_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    env: Mapping[str, str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    shared_gid: int | None = None,
) -> Store:
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
        )
    refuse_network_filesystem(location)
    from ringrift_coord.store.sqlite import SQLiteStore

    return SQLiteStore(location, busy_timeout=busy_timeout, clock=clock, shared_gid=shared_gid)
