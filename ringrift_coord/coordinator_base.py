"""What the coordinators share (reference: ``coordinator_base``): their lifecycle states and
the one singleton policy of the package."""

from __future__ import annotations

import _thread
from enum import Enum

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any, Self

    from ringrift_coord.context import Context


class CoordinatorStatus(str, Enum):  # noqa: UP042 (str() as the reference's enum)
    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"  # halted: admits nothing until unhalt or the halt's expiry
    DRAINING = "draining"
    ERROR = "error"
    STOPPED = "stopped"


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


__all__ = ["CoordinatorStatus", "ProcessWide"]
