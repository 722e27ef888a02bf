"""Lifecycle states shared by the coordinators (reference: ``coordinator_base``)."""

from __future__ import annotations

from enum import Enum


class CoordinatorStatus(str, Enum):
    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"  # halted: admits nothing until unhalt or the halt's expiry
    DRAINING = "draining"
    ERROR = "error"
    STOPPED = "stopped"


__all__ = ["CoordinatorStatus"]
