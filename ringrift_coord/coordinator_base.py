"""What the coordinators share (reference: ``coordinator_base``): their lifecycle states and
the one singleton policy of the package (``ProcessWide``, kept with ``Context`` in
``context``: the hot path does not pay for this module's enum)."""

from __future__ import annotations

from enum import Enum

from ringrift_coord.context import ProcessWide


class CoordinatorStatus(str, Enum):  # noqa: UP042 (str() as the reference's enum)
    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"  # halted: admits nothing until unhalt or the halt's expiry
    DRAINING = "draining"
    ERROR = "error"
    STOPPED = "stopped"


__all__ = ["CoordinatorStatus", "ProcessWide"]
