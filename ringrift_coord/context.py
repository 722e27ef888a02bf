"""Everything one invocation works with: settings, the state directory, the store, the clock.

The CLI builds one ``Context`` per call; library users and tests build theirs explicitly
(``Context(settings=..., state_dir=..., store=...)``) or let ``Context.open`` resolve it.
``ProcessWide`` is the package's one singleton policy: the process-wide ``TaskCoordinator`` and
``Safeguards`` are built on a ``Context.open()`` from the environment.
"""

from __future__ import annotations

import _thread
import os

from ringrift_coord.clock import SYSTEM_CLOCK, Clock
from ringrift_coord.config import Settings, load_settings
from ringrift_coord.statedir import (
    check_state_dir_group,
    default_state_dir,
    is_private_dir,
    prepare_state_dir,
    user_cache_dir,
)
from ringrift_coord.store import Store, open_store

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Self


class Context:
    def __init__(
        self,
        *,
        settings: Settings,
        state_dir: str,
        store: Store | None = None,
        db: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        env: Mapping[str, str] | None = None,
        shared_gid: int | None = None,
        create_store: bool = True,
    ) -> None:
        self.settings = settings
        settings.state_dir = state_dir  # the event hooks' log lives there
        self.shared_gid = shared_gid  # the group of a store shared by a host's users
        self.create_store = create_store  # False: a missing SQLite store is not created
        self.state_dir = state_dir
        self.db = db
        self.clock = clock
        self.env = os.environ if env is None else env
        self._store = store

    @classmethod
    def open(
        cls,
        *,
        db: str | None = None,
        state_dir: str | None = None,
        config: str | None = None,
        env: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        overrides: list[str] | None = None,
        create_store: bool = True,
        config_file: bool = True,
    ) -> Context:
        """Resolve config and state directory (validated); the store opens on first use.

        ``config_file=False``: no YAML file at all (the built-in defaults, the environment
        and ``overrides``): what an emergency halt falls back on when the file is bad.

        ``overrides`` are ``KEY=VALUE`` strings from ``--set``: the top of the precedence
        (defaults < YAML < environment < flags). ``create_store=False`` (the read-only
        commands): a SQLite store that does not exist is "no store at PATH" (``NoStore``, on
        first use of ``store``), never created.
        """
        env = os.environ if env is None else env
        directory = os.path.abspath(state_dir or default_state_dir(env))
        if not create_store and not os.path.lexists(directory):
            # a read-only command creates nothing, not even the directory: its store (a
            # SQLite file in it) is "no store at PATH" on first use; a server's is read
            settings = load_settings(
                config if config_file else None, env, use_default_file=config_file, cache_dir=None
            )
            apply_overrides(settings, overrides or [])
            shared_gid = None
        else:
            directory = prepare_state_dir(directory)
            # the config cache lives in a private state directory; a shared store's users
            # keep theirs in their own cache directory
            cache_dir = directory if is_private_dir(directory) else user_cache_dir(env)
            settings = load_settings(
                config if config_file else None,
                env,
                use_default_file=config_file,
                cache_dir=cache_dir,
            )
            apply_overrides(settings, overrides or [])
            shared_gid = check_state_dir_group(directory, settings.get("store.shared_group"))
        return cls(
            settings=settings,
            state_dir=directory,
            db=db,
            clock=clock,
            env=env,
            shared_gid=shared_gid,
            create_store=create_store,
        )

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(
                self.db,
                self.state_dir,
                busy_timeout=float(self.settings.get("store.busy_timeout")),
                connect_timeout=float(self.settings.get("store.connect_timeout")),
                env=self.env,
                clock=self.clock,
                shared_gid=self.shared_gid,
                create=self.create_store,
            )
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def apply_overrides(settings: Settings, overrides: list[str]) -> None:
    """Apply ``--set section.key=value`` flags (value: number, true/false, null or text)."""
    from ringrift_coord.config import apply_assignments
    from ringrift_coord.errors import ConfigError, UsageError

    try:
        apply_assignments(settings, overrides, "flag --set")
    except ConfigError as exc:
        raise UsageError(exc.message) from None


class ProcessWide:
    """The singleton policy: ``get_instance()`` is one instance per process and class, its
    ``Context`` built from the environment on first use; ``reset_instance()`` forgets it
    (closing its store), so the next use builds anew. Anything can still build its own
    instance with an explicit context (what tests do)."""

    _instance: Any = None  # per subclass: get_instance assigns on the class it is called on
    _lock = _thread.allocate_lock()
    ctx: Context

    @classmethod
    def get_instance(cls) -> Self:
        with ProcessWide._lock:
            instance: Self | None = cls.__dict__.get("_instance")
            if instance is None:
                instance = cls._instance = cls()
            return instance

    @classmethod
    def reset_instance(cls) -> None:
        with ProcessWide._lock:
            instance = cls.__dict__.get("_instance")
            if instance is not None:
                instance.ctx.close()
            cls._instance = None
