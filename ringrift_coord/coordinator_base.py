"""What the coordinators share (reference: ``coordinator_base``): their lifecycle states, the
one singleton policy of the package (``ProcessWide``, kept with ``Context`` in ``context``:
the hot path does not pay for this module's enum), the async lifecycle of a long-running
component (``CoordinatorBase``) and the registry that shuts them all down in order
(``CoordinatorRegistry``).

A component's status moves INITIALIZING → READY (``initialize``) → RUNNING (``start``) →
PAUSED and back (``pause``/``resume``) → DRAINING → STOPPED (``stop``); ERROR when a hook
raises or a shutdown times out. Any other move is refused with ``LifecycleError`` naming
both states. ``shutdown`` ends in STOPPED from any state (running ``_do_stop`` only for a
component that started).

``asyncio`` is imported only inside the functions that need it: ``task_coordinator`` imports
``CoordinatorStatus`` from here, and the hot path never pays for an event loop.
"""

from __future__ import annotations

import _thread
from enum import Enum

from ringrift_coord.clock import SYSTEM_CLOCK
from ringrift_coord.context import ProcessWide
from ringrift_coord.durations import human
from ringrift_coord.errors import StateError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from ringrift_coord.clock import Clock


class CoordinatorStatus(str, Enum):  # noqa: UP042 (str() as the reference's enum)
    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"  # halted: admits nothing until unhalt or the halt's expiry
    DRAINING = "draining"
    ERROR = "error"
    STOPPED = "stopped"


_S = CoordinatorStatus
# the moves a component may make; anything else is a LifecycleError
TRANSITIONS: dict[CoordinatorStatus, frozenset[CoordinatorStatus]] = {
    _S.INITIALIZING: frozenset({_S.READY, _S.STOPPED, _S.ERROR}),
    _S.READY: frozenset({_S.RUNNING, _S.STOPPED, _S.ERROR}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.DRAINING, _S.ERROR}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.DRAINING, _S.ERROR}),
    _S.DRAINING: frozenset({_S.STOPPED, _S.ERROR}),
    _S.ERROR: frozenset({_S.DRAINING, _S.STOPPED}),
    _S.STOPPED: frozenset(),
}
# the states a healthy component is in
HEALTHY = frozenset({_S.READY, _S.RUNNING, _S.PAUSED})


class LifecycleError(StateError):
    """A lifecycle move the state machine does not allow (``start`` on a stopped component),
    or a registry misuse (two components of one name)."""


class CoordinatorBase:
    """The async lifecycle of a long-running component (the reference's ``CoordinatorBase``).

    Subclasses override the hooks ``_do_initialize``, ``_do_start``, ``_do_stop`` (and
    ``_do_pause``/``_do_resume``), and ``_stats`` for their own numbers (sync, so the
    registry's health summary can read it without a loop). ``get_stats`` is async as in the
    reference (``stats = await super().get_stats()``). A hook that raises is recorded
    (``record_error``), the status becomes ERROR, and the exception propagates.
    """

    def __init__(self, name: str | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name or type(self).__name__
        self._clock = clock
        self._status = CoordinatorStatus.INITIALIZING
        self._created = clock.monotonic()
        self._started_mono: float | None = None
        self._started_at: float | None = None  # epoch seconds
        self._ever_started = False
        self.error_count = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # epoch seconds
        self._dependencies: dict[str, Any] = {}

    # -- status -------------------------------------------------------------------------

    @property
    def status(self) -> CoordinatorStatus:
        return self._status

    def _move(self, target: CoordinatorStatus) -> None:
        if target not in TRANSITIONS[self._status]:
            raise LifecycleError(
                f"{self.name}: cannot go from {self._status.value} to {target.value}"
            )
        self._status = target

    @property
    def is_running(self) -> bool:
        return self._status is CoordinatorStatus.RUNNING

    @property
    def uptime(self) -> float:
        """Seconds since ``start`` (0 before it, frozen at the value of ``stop``)."""
        if self._started_mono is None:
            return 0.0
        end = self.__dict__.get("_stopped_mono") or self._clock.monotonic()
        return max(0.0, end - self._started_mono)

    # -- dependencies -------------------------------------------------------------------

    def set_dependency(self, name: str, value: Any) -> None:
        """Inject what the component uses (a context, another component) by name."""
        self._dependencies[name] = value

    def get_dependency(self, name: str, default: Any = None) -> Any:
        return self._dependencies.get(name, default)

    # -- errors -------------------------------------------------------------------------

    def record_error(self, exc: BaseException | str) -> None:
        """Keep ``exc`` as the last error (``Type: message``), count it, note when."""
        if isinstance(exc, BaseException):
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            text = str(exc)
        self.last_error = text
        self.error_count += 1
        self.last_error_at = self._clock.time()

    def _fail(self, exc: BaseException) -> None:
        self.record_error(exc)
        if self._status is not CoordinatorStatus.STOPPED:
            self._status = CoordinatorStatus.ERROR

    # -- lifecycle ----------------------------------------------------------------------

    async def initialize(self) -> None:
        """INITIALIZING → READY, through ``_do_initialize`` (a ``shutdown`` meanwhile wins:
        it stays STOPPED)."""
        if self._status is not CoordinatorStatus.INITIALIZING:
            raise LifecycleError(f"{self.name}: already initialized ({self._status.value})")
        try:
            await self._do_initialize()
        except Exception as exc:
            self._fail(exc)
            raise
        if self._status is not CoordinatorStatus.STOPPED:
            self._move(CoordinatorStatus.READY)

    async def start(self) -> None:
        """READY → RUNNING, through ``_do_start`` (initializing first if need be).

        A ``shutdown`` that came while ``_do_start`` was awaiting (a signal while a host name
        resolves) wins: ``start`` then closes what ``_do_start`` opened (``_do_stop``) and
        returns with the component STOPPED, instead of failing to go from stopped to
        running with a listening socket left open."""
        if self._status is CoordinatorStatus.INITIALIZING:
            await self.initialize()
            if self._status is CoordinatorStatus.STOPPED:
                return  # shut down while initializing: nothing was started
        self._move_check(CoordinatorStatus.RUNNING)
        try:
            self._ever_started = True
            await self._do_start()
        except Exception as exc:
            self._fail(exc)
            raise
        if self._status is CoordinatorStatus.STOPPED:  # shut down meanwhile
            try:
                await self._do_stop()
            except Exception as exc:  # noqa: BLE001 (recorded; it stays STOPPED)
                self.record_error(exc)
            finally:
                self.__dict__["_stopped_mono"] = self._clock.monotonic()
            return
        self._move(CoordinatorStatus.RUNNING)
        self._started_mono = self._clock.monotonic()
        self._started_at = self._clock.time()
        self.__dict__.pop("_stopped_mono", None)

    def _move_check(self, target: CoordinatorStatus) -> None:
        if target not in TRANSITIONS[self._status] or self._status is _S.PAUSED:
            raise LifecycleError(
                f"{self.name}: cannot go from {self._status.value} to {target.value}"
            )

    async def pause(self) -> None:
        """RUNNING → PAUSED, through ``_do_pause``."""
        if self._status is not CoordinatorStatus.RUNNING:
            raise LifecycleError(f"{self.name}: cannot pause while {self._status.value}")
        try:
            await self._do_pause()
        except Exception as exc:
            self._fail(exc)
            raise
        self._move(CoordinatorStatus.PAUSED)

    async def resume(self) -> None:
        """PAUSED → RUNNING, through ``_do_resume``."""
        if self._status is not CoordinatorStatus.PAUSED:
            raise LifecycleError(f"{self.name}: cannot resume while {self._status.value}")
        try:
            await self._do_resume()
        except Exception as exc:
            self._fail(exc)
            raise
        self._move(CoordinatorStatus.RUNNING)

    async def stop(self) -> None:
        """RUNNING or PAUSED → DRAINING → STOPPED, through ``_do_stop``."""
        self._move(CoordinatorStatus.DRAINING)
        await self._drain_once()

    async def _drain_once(self) -> None:
        """``_drain`` once: a ``shutdown`` that comes while a ``stop`` drains waits for that
        drain instead of running ``_do_stop`` a second time. A drain that has ended (failed
        or cancelled: a retry runs ``_do_stop`` again) or belongs to another (closed) loop is
        started anew. The drain is shielded: a caller that gives up waiting (``wait_for``)
        does not cancel it under the others that wait for it."""
        import asyncio

        loop = asyncio.get_running_loop()
        task = self.__dict__.get("_draining")
        if task is None or task.done() or task.get_loop() is not loop:
            task = self.__dict__["_draining"] = loop.create_task(self._drain())
        await asyncio.shield(task)

    async def _drain(self) -> None:
        try:
            await self._do_stop()
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            self.__dict__["_stopped_mono"] = self._clock.monotonic()
        self._move(CoordinatorStatus.STOPPED)

    async def shutdown(self) -> None:
        """End in STOPPED from any state: a component that started drains through
        ``_do_stop`` (from RUNNING, PAUSED or ERROR); one that never started just stops.
        A second call is a no-op."""
        if self._status is CoordinatorStatus.STOPPED:
            return
        if self._status is CoordinatorStatus.DRAINING:
            await self._drain_once()  # a stop in flight: wait for it (or finish it)
            return
        if self._ever_started and self._status is not CoordinatorStatus.READY:
            self._move(CoordinatorStatus.DRAINING)
            self.__dict__.pop("_draining", None)
            await self._drain_once()
            return
        self._move(CoordinatorStatus.STOPPED)

    # -- hooks --------------------------------------------------------------------------

    async def _do_initialize(self) -> None:
        """Set up (open what the component needs); READY after it."""

    async def _do_start(self) -> None:
        """Start working; RUNNING after it."""

    async def _do_stop(self) -> None:
        """Finish in-progress work and release everything; STOPPED after it."""

    async def _do_pause(self) -> None:
        """Stop taking new work for a while."""

    async def _do_resume(self) -> None:
        """Take new work again."""

    def _stats(self) -> dict[str, Any]:
        """The component's own numbers (sync): added to ``stats()`` and ``get_stats()``."""
        return {}

    # -- stats --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The stats as of now, without a loop (what the registry's health summary shows)."""
        return {
            "name": self.name,
            "status": self._status.value,
            "uptime_seconds": round(self.uptime, 3),
            "started_at": self._started_at,
            "error_count": self.error_count,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            **self._stats(),
        }

    async def get_stats(self) -> dict[str, Any]:
        """The reference's async stats: ``stats = await super().get_stats()``."""
        return self.stats()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._status.value}>"


_SHOWN = frozenset({"name", "status", "error_count", "last_error", "last_error_at"})


class CoordinatorRegistry:
    """Every registered component, shut down in order (the reference's registry).

    Shutdown order: a higher ``shutdown_priority`` stops first; among equal priorities the
    last registered stops first (the reverse of registration, so a component stops before
    the ones it was built on). Each component's ``shutdown`` gets its own ``timeout``
    (``asyncio.wait_for``): one that times out or raises is recorded as ERROR, with the
    reason as its last error, and the others still stop.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[CoordinatorBase, int, int]] = []  # (component, prio, seq)
        self._seq = 0
        self._shutdown_task: asyncio.Task[dict[str, bool]] | None = None
        self._done: asyncio.Event | None = None
        self._signals: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.signal_timeout = 30.0  # each component's timeout when a signal shuts all down
        self.received_signal: int | None = None

    # -- membership ---------------------------------------------------------------------

    def register(self, coordinator: CoordinatorBase, shutdown_priority: int = 0) -> None:
        """Add ``coordinator`` (again: its priority is updated, its place kept)."""
        for i, (known, _, seq) in enumerate(self._entries):
            if known is coordinator:
                self._entries[i] = (coordinator, int(shutdown_priority), seq)
                return
            if known.name == coordinator.name and known.status is CoordinatorStatus.STOPPED:
                del self._entries[i]  # one that stopped gives its name up (a second run)
                break
            if known.name == coordinator.name:
                raise LifecycleError(
                    f"a component named {coordinator.name!r} is already registered"
                )
        self._seq += 1
        self._entries.append((coordinator, int(shutdown_priority), self._seq))

    def unregister(self, coordinator: CoordinatorBase | str) -> bool:
        """Remove a component (or the one of that name); False when it was not there."""
        for i, (known, _, _) in enumerate(self._entries):
            if known is coordinator or known.name == coordinator:
                del self._entries[i]
                return True
        return False

    def get(self, name: str) -> CoordinatorBase | None:
        return next((c for c, _, _ in self._entries if c.name == name), None)

    @property
    def coordinators(self) -> list[CoordinatorBase]:
        """In registration order."""
        return [c for c, _, _ in self._entries]

    def shutdown_order(self) -> list[CoordinatorBase]:
        """Highest ``shutdown_priority`` first; among equals, the last registered first."""
        ordered = sorted(self._entries, key=lambda e: (e[1], e[2]), reverse=True)
        return [c for c, _, _ in ordered]

    def clear(self) -> None:
        self._entries.clear()

    # -- health -------------------------------------------------------------------------

    def get_health_summary(self) -> dict[str, Any]:
        """Each component's status, last error and stats (sync); ``healthy`` when every one
        is READY, RUNNING or PAUSED (and there is at least one)."""
        components = []
        for coordinator, priority, _ in self._entries:
            try:
                stats = coordinator.stats()
            except Exception as exc:  # noqa: BLE001 (a broken _stats is shown, not raised)
                coordinator.record_error(exc)
                stats = {"error": f"{type(exc).__name__}: {exc}"}
            components.append(
                {
                    "name": coordinator.name,
                    "status": coordinator.status.value,
                    "healthy": coordinator.status in HEALTHY,
                    "shutdown_priority": priority,
                    "error_count": coordinator.error_count,
                    "last_error": coordinator.last_error,
                    "last_error_at": coordinator.last_error_at,
                    "stats": {k: v for k, v in stats.items() if k not in _SHOWN},
                }
            )
        return {
            "healthy": bool(components) and all(c["healthy"] for c in components),
            "count": len(components),
            "shutting_down": self._shutdown_task is not None,
            "coordinators": components,
        }

    # -- shutdown -----------------------------------------------------------------------

    async def shutdown_all(self, timeout: float = 30.0) -> dict[str, bool]:
        """Shut every component down in ``shutdown_order``, each within ``timeout``
        seconds; returns name → True when it reached STOPPED. A second call (a second
        signal) while one runs waits for its result; a call after it finished shuts down
        again (the components registered since, on this loop)."""
        import asyncio

        self._begin_shutdown(timeout)
        assert self._shutdown_task is not None
        return await asyncio.shield(self._shutdown_task)

    def _begin_shutdown(self, timeout: float) -> None:
        """Start ``_shutdown_all`` on the running loop unless one is running there now."""
        import asyncio

        loop = asyncio.get_running_loop()
        task = self._shutdown_task
        if task is None or task.done() or task.get_loop() is not loop:
            if self._done is None or self._done.is_set() or self._loop is not loop:
                self._done = asyncio.Event()
                self._loop = loop
            self._shutdown_task = loop.create_task(self._shutdown_all(timeout))

    async def _shutdown_all(self, timeout: float) -> dict[str, bool]:
        import asyncio

        results: dict[str, bool] = {}
        for coordinator in self.shutdown_order():
            try:
                await asyncio.wait_for(coordinator.shutdown(), timeout)
            except TimeoutError:
                coordinator.record_error(
                    f"TimeoutError: shutdown did not finish within {human(timeout)}"
                )
                coordinator._status = CoordinatorStatus.ERROR
            except Exception as exc:  # noqa: BLE001 (recorded; the others still stop)
                coordinator._fail(exc)
                coordinator._status = CoordinatorStatus.ERROR
            results[coordinator.name] = coordinator.status is CoordinatorStatus.STOPPED
        if self._done is not None:
            self._done.set()
        return results

    def install_signal_handlers(
        self, signals: tuple[int, ...] | None = None, *, timeout: float | None = None
    ) -> None:
        """SIGTERM and SIGINT (or ``signals``) start ``shutdown_all`` on the running loop
        (call it from inside that loop). ``wait_shutdown`` returns once it finished."""
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        if timeout is not None:
            self.signal_timeout = float(timeout)
        task = self._shutdown_task
        if task is not None and (task.done() or task.get_loop() is not loop):
            self._shutdown_task = None  # a shutdown of an earlier run: this run waits anew
        if self._loop is not loop or self._done is None or self._done.is_set():
            self._done = asyncio.Event()
        self._loop = loop
        self.received_signal = None
        for sig in signals or (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, int(sig))
            self._signals.append(int(sig))

    def remove_signal_handlers(self) -> None:
        if self._loop is not None:
            for sig in self._signals:
                self._loop.remove_signal_handler(sig)
        self._signals.clear()

    def _on_signal(self, signum: int) -> None:
        import asyncio

        if self.received_signal is None:
            self.received_signal = signum
        task = self._shutdown_task
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            self._begin_shutdown(self.signal_timeout)

    async def wait_shutdown(self) -> dict[str, bool]:
        """Wait until a shutdown (a signal's or ``shutdown_all``'s) has finished."""
        import asyncio

        loop = asyncio.get_running_loop()
        task = self._shutdown_task
        if task is not None and task.get_loop() is loop:
            return await asyncio.shield(task)
        if self._done is None or self._loop is not loop:
            self._done = asyncio.Event()
            self._loop = loop
        await self._done.wait()
        assert self._shutdown_task is not None
        return self._shutdown_task.result()


_registry: CoordinatorRegistry | None = None
_registry_lock = _thread.allocate_lock()


def get_coordinator_registry() -> CoordinatorRegistry:
    """The process's one registry."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = CoordinatorRegistry()
        return _registry


def reset_coordinator_registry() -> None:
    """Forget the process's registry (tests; a fresh ``serve`` in one process)."""
    global _registry
    with _registry_lock:
        _registry = None


async def shutdown_all_coordinators(timeout: float = 30.0) -> dict[str, bool]:
    """Shut down every component of the process's registry (see ``shutdown_all``)."""
    return await get_coordinator_registry().shutdown_all(timeout)


__all__ = [
    "CoordinatorBase",
    "CoordinatorRegistry",
    "CoordinatorStatus",
    "LifecycleError",
    "ProcessWide",
    "get_coordinator_registry",
    "reset_coordinator_registry",
    "shutdown_all_coordinators",
]
