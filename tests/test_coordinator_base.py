"""CoordinatorBase and CoordinatorRegistry with real asyncio: the lifecycle's moves, error
recording, stats, the registry's shutdown order and timeouts, and real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ringrift_coord.clock import ManualClock
from ringrift_coord.coordinator_base import (
    CoordinatorBase,
    CoordinatorRegistry,
    CoordinatorStatus,
    LifecycleError,
    get_coordinator_registry,
    reset_coordinator_registry,
    shutdown_all_coordinators,
)
from ringrift_coord.errors import StateError

S = CoordinatorStatus
ROOT = Path(__file__).resolve().parent.parent


class Recorder(CoordinatorBase):
    """Writes each hook it runs into ``log`` (shared between components: the order)."""

    def __init__(self, name: str, log: list[str], **kw: object) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.log = log
        self.fail_on: str | None = None
        self.stop_delay = 0.0
        self.items = 0

    async def _hook(self, what: str) -> None:
        self.log.append(f"{self.name}:{what}")
        if self.fail_on == what:
            raise RuntimeError(f"{what} broke")

    async def _do_initialize(self) -> None:
        await self._hook("init")

    async def _do_start(self) -> None:
        await self._hook("start")

    async def _do_stop(self) -> None:
        if self.stop_delay:
            await asyncio.sleep(self.stop_delay)
        await self._hook("stop")

    async def _do_pause(self) -> None:
        await self._hook("pause")

    async def _do_resume(self) -> None:
        await self._hook("resume")

    async def get_stats(self) -> dict[str, object]:  # the reference's way to extend stats
        stats = await super().get_stats()
        stats["custom_metric"] = self.items
        return stats


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_full_lifecycle_and_hooks() -> None:
    log: list[str] = []
    c = Recorder("c", log)
    assert c.status is S.INITIALIZING

    async def go() -> list[S]:
        seen = [c.status]
        await c.initialize()
        seen.append(c.status)
        await c.start()
        seen.append(c.status)
        await c.pause()
        seen.append(c.status)
        await c.resume()
        seen.append(c.status)
        await c.stop()
        seen.append(c.status)
        return seen

    assert run(go()) == [S.INITIALIZING, S.READY, S.RUNNING, S.PAUSED, S.RUNNING, S.STOPPED]
    assert log == ["c:init", "c:start", "c:pause", "c:resume", "c:stop"]


def test_start_initializes_first_and_stop_drains() -> None:
    log: list[str] = []
    c = Recorder("c", log)
    states: list[S] = []

    class Watch(Recorder):
        async def _do_stop(self) -> None:
            states.append(self.status)  # what the component is while it finishes its work
            await super()._do_stop()

    w = Watch("w", log)

    async def go() -> None:
        await c.start()
        await w.start()
        await w.stop()

    run(go())
    assert c.status is S.RUNNING and log[:2] == ["c:init", "c:start"]
    assert states == [S.DRAINING] and w.status is S.STOPPED


@pytest.mark.parametrize(
    ("steps", "bad", "message"),
    [
        ([], "stop", "cannot go from initializing to draining"),
        (["initialize"], "initialize", "already initialized (ready)"),
        (["initialize"], "pause", "cannot pause while ready"),
        (["start"], "start", "cannot go from running to running"),
        (["start"], "resume", "cannot resume while running"),
        (["start", "stop"], "start", "cannot go from stopped to running"),
        (["start", "stop"], "stop", "cannot go from stopped to draining"),
        (["start", "pause"], "start", "cannot go from paused to running"),
    ],
)
def test_illegal_moves_are_refused(steps: list[str], bad: str, message: str) -> None:
    c = Recorder("comp", [])

    async def go() -> None:
        for step in steps:
            await getattr(c, step)()
        before = c.status
        with pytest.raises(LifecycleError) as caught:
            await getattr(c, bad)()
        assert c.status is before  # a refused move changes nothing
        assert str(caught.value) == f"comp: {message}"

    run(go())
    assert issubclass(LifecycleError, StateError)  # one clear line, exit 3, at the CLI


def test_shutdown_from_any_state() -> None:
    async def go() -> None:
        fresh = Recorder("fresh", log := [])
        await fresh.shutdown()
        assert fresh.status is S.STOPPED and log == []  # never started: no _do_stop

        ready = Recorder("ready", log := [])
        await ready.initialize()
        await ready.shutdown()
        assert ready.status is S.STOPPED and log == ["ready:init"]

        paused = Recorder("paused", log := [])
        await paused.start()
        await paused.pause()
        await paused.shutdown()
        assert paused.status is S.STOPPED and log[-1] == "paused:stop"
        await paused.shutdown()  # twice: a no-op
        assert log.count("paused:stop") == 1

    run(go())


def test_errors_are_recorded_and_leave_error_state() -> None:
    clock = ManualClock()
    c = Recorder("c", [], clock=clock)
    c.fail_on = "start"

    async def go() -> None:
        with pytest.raises(RuntimeError, match="start broke"):
            await c.start()
        assert c.status is S.ERROR
        assert c.last_error == "RuntimeError: start broke"
        assert c.error_count == 1 and c.last_error_at == clock.time()
        # from ERROR, shutdown still runs _do_stop (it had started) and ends STOPPED
        c.fail_on = None
        await c.shutdown()
        assert c.status is S.STOPPED and c.log[-1] == "c:stop"

    run(go())
    c.record_error("by hand")
    assert c.last_error == "by hand" and c.error_count == 2


def test_stats_uptime_and_reference_get_stats() -> None:
    clock = ManualClock()
    c = Recorder("c", [], clock=clock)
    c.set_dependency("ctx", "the context")
    assert c.get_dependency("ctx") == "the context" and c.get_dependency("x", 7) == 7

    async def go() -> dict[str, object]:
        assert (await c.get_stats())["uptime_seconds"] == 0.0
        await c.start()
        clock.advance(12.5)
        c.items = 3
        stats = await c.get_stats()
        await c.stop()
        clock.advance(100)  # frozen after stop
        assert c.uptime == 12.5
        return stats

    stats = run(go())
    assert stats["status"] == "running" and stats["uptime_seconds"] == 12.5
    assert stats["custom_metric"] == 3 and stats["error_count"] == 0
    assert stats["started_at"] == clock.time() - 112.5


def test_registry_stops_in_reverse_order_priority_first() -> None:
    log: list[str] = []
    registry = CoordinatorRegistry()
    a, b, c, d = (Recorder(n, log) for n in "abcd")
    registry.register(a)
    registry.register(b)
    registry.register(c, shutdown_priority=5)  # stops first whatever its place
    registry.register(d)
    assert [x.name for x in registry.shutdown_order()] == ["c", "d", "b", "a"]

    async def go() -> dict[str, bool]:
        for comp in registry.coordinators:
            await comp.start()
        log.clear()
        return await registry.shutdown_all(timeout=5)

    results = run(go())
    assert log == ["c:stop", "d:stop", "b:stop", "a:stop"]
    assert results == {"c": True, "d": True, "b": True, "a": True}


def test_registry_timeout_and_failure_still_stop_the_rest() -> None:
    log: list[str] = []
    registry = CoordinatorRegistry()
    first, slow, broken, last = (Recorder(n, log) for n in ("first", "slow", "broken", "last"))
    slow.stop_delay = 60  # never finishes in time
    broken.fail_on = "stop"
    for comp in (first, slow, broken, last):
        registry.register(comp)

    async def go() -> tuple[dict[str, bool], float]:
        for comp in registry.coordinators:
            await comp.start()
        started = time.monotonic()
        results = await registry.shutdown_all(timeout=0.3)
        return results, time.monotonic() - started

    results, took = run(go())
    assert results == {"last": True, "broken": False, "slow": False, "first": True}
    assert took < 3  # the slow one was given 0.3 s, not 60
    assert slow.status is S.ERROR and "did not finish within 0.3 s" in (slow.last_error or "")
    assert broken.status is S.ERROR and broken.last_error == "RuntimeError: stop broke"
    assert first.status is last.status is S.STOPPED
    summary = registry.get_health_summary()
    assert summary["healthy"] is False and summary["shutting_down"] is True
    by_name = {c["name"]: c for c in summary["coordinators"]}
    assert by_name["slow"]["status"] == "error" and by_name["slow"]["error_count"] == 1
    assert by_name["first"]["stats"]["uptime_seconds"] >= 0


def test_registry_membership_and_health_summary() -> None:
    registry = CoordinatorRegistry()
    assert registry.get_health_summary() == {
        "healthy": False,
        "count": 0,
        "shutting_down": False,
        "coordinators": [],
    }
    a = Recorder("a", [])
    registry.register(a)
    registry.register(a, shutdown_priority=2)  # again: the priority changes, not the list
    assert registry.coordinators == [a] and registry.get("a") is a
    with pytest.raises(LifecycleError, match="named 'a' is already registered"):
        registry.register(Recorder("a", []))

    run(a.start())
    summary = registry.get_health_summary()
    assert summary["healthy"] is True
    (entry,) = summary["coordinators"]
    assert entry["status"] == "running" and entry["shutdown_priority"] == 2
    assert entry["last_error"] is None and "uptime_seconds" in entry["stats"]
    assert registry.unregister("a") is True and registry.unregister(a) is False


def test_process_registry_singleton_and_module_shutdown() -> None:
    reset_coordinator_registry()
    try:
        registry = get_coordinator_registry()
        assert get_coordinator_registry() is registry
        log: list[str] = []
        registry.register(Recorder("one", log))
        registry.register(Recorder("two", log))

        async def go() -> dict[str, bool]:
            for comp in registry.coordinators:
                await comp.start()
            # two concurrent shutdowns (two signals): each component stops once
            first, second = await asyncio.gather(
                shutdown_all_coordinators(timeout=5), shutdown_all_coordinators(timeout=5)
            )
            assert first == second
            return first

        assert run(go()) == {"two": True, "one": True}
        assert log[-2:] == ["two:stop", "one:stop"]
    finally:
        reset_coordinator_registry()
    assert get_coordinator_registry() is not registry


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from ringrift_coord.coordinator_base import CoordinatorBase, get_coordinator_registry

    class Worker(CoordinatorBase):
        async def _do_stop(self):
            await asyncio.sleep(0.1)  # finishing in-progress work
            print(f"stopped {self.name}", flush=True)

    async def main():
        registry = get_coordinator_registry()
        for name in ("store", "collector", "listener"):
            registry.register(Worker(name))
            await registry.get(name).start()
        registry.install_signal_handlers()
        print("ready", flush=True)
        results = await registry.wait_shutdown()
        print(f"signal {registry.received_signal} results {sorted(results.items())}", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_handlers_shut_everything_down(tmp_path: Path, signum: int) -> None:
    script = tmp_path / "svc.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - started
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == [
        "stopped listener",
        "stopped collector",
        "stopped store",
        f"signal {int(signum)} results [('collector', True), ('listener', True), ('store', True)]",
    ]
    assert took < 5
    assert b"Traceback" not in err


def test_module_import_stays_cheap() -> None:
    # task_coordinator imports CoordinatorStatus from here: no event loop on the hot path
    code = (
        "import sys, ringrift_coord.coordinator_base, ringrift_coord.task_coordinator; "
        "print('asyncio' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_shutdown_waits_for_a_stop_in_flight() -> None:
    """shutdown (shutdown_all) while a stop() drains: _do_stop runs once, both end STOPPED."""
    log: list[str] = []
    comp = Recorder("slow", log)
    comp.stop_delay = 0.2
    registry = CoordinatorRegistry()
    registry.register(comp)

    async def go() -> dict[str, bool]:
        await comp.start()
        stopping = asyncio.ensure_future(comp.stop())
        await asyncio.sleep(0.05)
        results = await registry.shutdown_all(timeout=2)
        await stopping  # does not raise
        return results

    assert run(go()) == {"slow": True}
    assert log.count("slow:stop") == 1
    assert comp.status is S.STOPPED and comp.last_error is None


def test_a_shutdown_during_start_wins_and_closes_what_start_opened() -> None:
    """A shutdown (a signal) while _do_start awaits: start closes what it opened and returns
    with the component STOPPED (no "cannot go from stopped to running")."""
    log: list[str] = []

    class SlowStart(Recorder):
        async def _do_start(self) -> None:
            await asyncio.sleep(0.2)  # a host name resolving
            await self._hook("start")

    comp = SlowStart("listener", log)
    registry = CoordinatorRegistry()
    registry.register(comp)

    async def go() -> dict[str, bool]:
        starting = asyncio.ensure_future(comp.start())
        await asyncio.sleep(0.05)
        results = await registry.shutdown_all(timeout=2)
        await starting  # returns, no LifecycleError
        return results

    assert run(go()) == {"listener": True}
    assert comp.status is S.STOPPED
    assert log == ["listener:init", "listener:start", "listener:stop"]


def test_shutdown_all_works_again_after_a_first_one() -> None:
    """A registry shuts down again after its first shutdown (a second asyncio.run in one
    process, components registered since, a new stopped one under the old one's name)."""
    registry = CoordinatorRegistry()
    log: list[str] = []

    async def one_run(name: str) -> dict[str, bool]:
        comp = Recorder(name, log)
        registry.register(comp)
        await comp.start()
        registry.install_signal_handlers()
        try:
            return await registry.shutdown_all(timeout=2)
        finally:
            registry.remove_signal_handlers()

    assert run(one_run("a")) == {"a": True}
    assert run(one_run("b")) == {"b": True, "a": True}
    assert run(one_run("a")) == {"a": True, "b": True}  # the stopped "a" gave its name up
    assert log.count("b:stop") == 1 and log.count("a:stop") == 2


def test_readme_python_api_example_runs_twice_in_one_process(tmp_path: Path) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "MyCoordinator" in b
    )
    script = tmp_path / "twice.py"
    script.write_text(block + "\nasyncio.run(main())\nprint('twice ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("twice ok") and "Traceback" not in proc.stderr


def test_a_stop_that_failed_can_be_retried_and_runs_do_stop_again() -> None:
    calls: list[int] = []

    class Flaky(CoordinatorBase):
        async def _do_stop(self) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("first stop fails")

    async def main() -> None:
        c = Flaky("flaky")
        await c.start()
        with pytest.raises(RuntimeError):
            await c.stop()
        assert c.status is S.ERROR
        await c.stop()  # the retry drains again instead of re-raising the old failure
        assert c.status is S.STOPPED and len(calls) == 2
        await c.shutdown()  # and shutdown after it is a no-op
        assert c.status is S.STOPPED and len(calls) == 2

    asyncio.run(main())


def test_a_stop_caller_that_gives_up_does_not_cancel_the_drain_others_wait_for() -> None:
    calls: list[int] = []

    class Slow(CoordinatorBase):
        async def _do_stop(self) -> None:
            calls.append(1)
            await asyncio.sleep(0.3)

    async def main() -> None:
        registry = CoordinatorRegistry()
        c = Slow("slow")
        registry.register(c)
        await c.start()
        impatient = asyncio.create_task(asyncio.wait_for(c.stop(), 0.05))
        await asyncio.sleep(0.01)
        assert await registry.shutdown_all(timeout=5) == {"slow": True}
        with pytest.raises(TimeoutError):
            await impatient
        assert c.status is S.STOPPED and len(calls) == 1

    asyncio.run(main())
