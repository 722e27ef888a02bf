"""The Python API (README "Python API") on a real store, with an explicit context and clock."""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from conftest import own_pg_database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringrift_coord import safeguards
from ringrift_coord.clock import ManualClock
from ringrift_coord.config import load_settings
from ringrift_coord.context import Context
from ringrift_coord.coordinator_base import CoordinatorStatus
from ringrift_coord.errors import SpawnDenied, UsageError
from ringrift_coord.slots import StaleLease
from ringrift_coord.statedir import ensure_state_dir
from ringrift_coord.store.sqlite import SQLiteStore
from ringrift_coord.task_coordinator import (
    CoordinatedTask,
    Holder,
    TaskCoordinator,
    TaskType,
)

ENGINES = ("sqlite", "postgres")


def make_ctx(
    tmp_path, yaml_text: str = "{}\n", clock: ManualClock | None = None, pg_url: str | None = None
) -> Context:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    state = ensure_state_dir(str(tmp_path / "state"))
    clock = clock or ManualClock()
    if pg_url:
        from ringrift_coord.store.postgres import PostgresStore

        store = PostgresStore(pg_url, clock=clock)
    else:
        store = SQLiteStore(os.path.join(state, "tasks.db"), clock=clock)
    settings = load_settings(str(config), env={"RINGRIFT_COORD_SET": "resources.live_host=false"})
    return Context(
        settings=settings, state_dir=state, store=store, clock=clock, env={"USER": "tester"}
    )


@pytest.fixture
def new_ctx(engine, request):
    """make_ctx on this test's engine (a fresh PostgreSQL database each call)."""
    made = []

    def factory(tmp_path, yaml_text="{}\n", clock=None):
        url = own_pg_database(request) if engine == "postgres" else None
        ctx = make_ctx(tmp_path, yaml_text, clock, url)
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        ctx.close()


@pytest.fixture
def coordinator(tmp_path, new_ctx):
    return TaskCoordinator(
        new_ctx(tmp_path, "task_limits: {training: {per_node: 1, cluster: 2}}\n")
    )


def test_register_check_unregister(coordinator):
    allowed, reason = coordinator.can_spawn_task(TaskType.TRAINING, "n1")
    assert allowed and reason == ""
    task_id = coordinator.register_task(None, TaskType.TRAINING, "n1", pid=os.getpid())
    allowed, reason = coordinator.can_spawn_task("training", "n1")
    assert not allowed and "per-node limit 1" in reason
    with pytest.raises(SpawnDenied) as denied:
        coordinator.register_task("t-2", "training", "n1")
    assert denied.value.decision.reasons[0].rule == "node_limit"
    assert denied.value.decision.reasons[0].used == 1
    coordinator.register_task("t-3", "training", "n2")
    with pytest.raises(SpawnDenied) as denied:
        coordinator.register_task("t-4", "training", "n3")
    assert [r.rule for r in denied.value.decision.reasons] == ["cluster_limit"]

    row = coordinator.unregister_task(task_id, exit_code=0)
    assert row is not None and row["task_id"] == task_id
    assert coordinator.unregister_task(task_id) is None  # exactly once
    assert coordinator.can_spawn_task("training", "n1")[0]
    history = {h["task_id"]: h for h in coordinator.history()}
    assert history[task_id]["status"] == "ok" and history[task_id]["exit_code"] == 0


def test_every_blocking_rule_is_listed(tmp_path, new_ctx):
    ctx = new_ctx(tmp_path, "task_limits: {training: {per_node: 1, cluster: 1}}\n")
    coord = TaskCoordinator(ctx)
    coord.register_task("a", "training", "n1")
    safeguards.activate_emergency(ctx, "stop", task_type="training")
    decision = coord.check("training", "n1")
    assert [r.rule for r in decision.reasons] == ["halt", "node_limit", "cluster_limit"]
    node_rule = decision.reasons[1]
    assert (node_rule.requested, node_rule.used, node_rule.limit) == (1, 1, 1)
    assert decision.retry_after is None  # the halt has no expiry
    assert decision.to_dict()["reasons"][2]["limit"] == 1
    logged = coord.decisions(denied_only=True)
    assert logged and logged[0]["rules"][0]["rule"] == "halt"  # decoded by the read model


def test_unregister_unknown_and_stale_token(coordinator):
    with pytest.raises(Exception) as unknown:
        coordinator.unregister_task("nope")
    assert unknown.value.exit_code == 2
    decision = coordinator.acquire("training", "n1", holder=Holder(pid=os.getpid()))
    with pytest.raises(StaleLease):
        coordinator.unregister_task(decision.task_id, token=decision.lease_token + 1)
    for huge in (2**64, -(2**64)):  # beyond any 64-bit column: stale, never an internal error
        with pytest.raises(StaleLease):
            coordinator.unregister_task(decision.task_id, token=huge)
    assert coordinator.list_tasks()  # still held
    assert coordinator.unregister_task(decision.task_id, token=decision.lease_token)
    with pytest.raises(UsageError):
        coordinator.unregister_task(decision.task_id, status="weird")


def test_an_exit_code_no_process_has_is_refused_and_releases_nothing(coordinator):
    """-1 and 300 were stored as failed runs (and counted by the breaker)."""
    decision = coordinator.acquire("training", "n1", holder=Holder(pid=os.getpid()))
    for bad in (-1, 256, 300, True, 1.5):
        with pytest.raises(UsageError) as refused:
            coordinator.unregister_task(decision.task_id, exit_code=bad)
        assert refused.value.field == "exit_code" and "not an exit code (0-255)" in str(refused)
    assert [t["task_id"] for t in coordinator.list_tasks()] == [decision.task_id]  # still held
    assert coordinator.history() == []  # no failure recorded
    assert coordinator.unregister_task(decision.task_id, exit_code=255)["task_id"]
    assert coordinator.history()[0]["exit_code"] == 255


def test_reused_task_id_is_fenced(coordinator):
    first = coordinator.acquire("training", "n1", holder=Holder(pid=os.getpid()), task_id="job")
    coordinator.unregister_task("job", token=first.lease_token)
    second = coordinator.acquire("training", "n1", holder=Holder(pid=os.getpid()), task_id="job")
    assert second.lease_token > first.lease_token
    with pytest.raises(StaleLease):  # the first holder's late release
        coordinator.unregister_task("job", token=first.lease_token)
    assert [t["task_id"] for t in coordinator.list_tasks()] == ["job"]


def test_fresh_task_ids_sort_by_time(tmp_path, new_ctx):
    """A fresh id is the type, the time in ms and 32 random bits: ids made later sort after
    (the history's task_id index grows at one place), ids made in the same ms differ."""
    clock = ManualClock(1_800_000_000.0)
    ctx = new_ctx(tmp_path, "task_limits: {selfplay: {per_node: 9, cluster: 9}}\n", clock)
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    made = []
    for step in (0.002, 0.0, 1.5, 3600.0):
        made.append(coord.acquire("selfplay", "n1", holder=me).task_id)
        clock.advance(step)
    assert all(re.fullmatch(r"selfplay-[0-9a-f]{19}", t) for t in made), made
    assert made[0].startswith(f"selfplay-{1_800_000_000_000:011x}")
    assert made[1][:20] == made[2][:20] and made[1] != made[2]  # the same ms
    assert made[0] < made[1] and made[2] < made[3], made
    with ctx.store.read() as tx:
        running = tx.query("SELECT task_id FROM tasks")
    assert sorted(r["task_id"] for r in running) == sorted(made)


def test_dead_local_holder_and_expired_remote_lease_are_reaped(tmp_path, new_ctx):
    clock = ManualClock()
    ctx = new_ctx(tmp_path, "task_limits: {training: {per_node: 5, cluster: 2}}\n", clock)
    coord = TaskCoordinator(ctx)
    coord.register_task("live", "training", "n1", pid=os.getpid())
    with ctx.store.write() as tx:  # a holder on another host, as a shared server would hold
        now = tx.now()
        tx.execute(
            "INSERT INTO tasks (task_id, task_type, node, host, pid, source, started_at, "
            "lease_expires, lease_token) VALUES ('remote','training','n9','elsewhere',1,'run',"
            "?,?,99)",
            (now, now + 120),
        )
    assert not coord.can_spawn_task("training", "n2")[0]
    clock.advance(60)
    assert not coord.can_spawn_task("training", "n2")[0]  # lease still valid
    clock.advance(61)
    assert coord.can_spawn_task("training", "n2")[0]  # expired lease reaped
    reaped = [h for h in coord.history() if h["task_id"] == "remote"]
    assert reaped[0]["status"] == "reaped" and "lease expired" in reaped[0]["reason"]
    # a local holder whose process is gone is reaped whatever its lease says
    with ctx.store.write() as tx:
        tx.execute("UPDATE tasks SET pid = 2147483000, pid_start = 1 WHERE task_id = 'live'")
    assert [r["task_id"] for r in coord.reap()] == ["live"]


def test_token_bucket_and_clock_steps(tmp_path, new_ctx):
    clock = ManualClock()
    ctx = new_ctx(tmp_path, "rate_limits: {sync: {per_minute: 60, burst: 3}}\n", clock)
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    assert all(coord.acquire("sync", "n1", holder=me).allowed for _ in range(3))
    denied = coord.acquire("sync", "n1", holder=me)
    assert [r.rule for r in denied.reasons] == ["rate"]
    assert 0.9 <= denied.retry_after <= 1.0
    assert coord.acquire("sync", "n2", holder=me).allowed  # buckets are per (node, type)
    clock.advance(-3600)  # a clock stepped back refills nothing (and breaks nothing)
    assert not coord.acquire("sync", "n1", holder=me).allowed
    clock.advance(1.0)
    assert coord.acquire("sync", "n1", holder=me).allowed
    assert not coord.acquire("sync", "n1", holder=me).allowed


def test_reservation_holds_slots_for_its_type(tmp_path, new_ctx):
    ctx = new_ctx(
        tmp_path,
        "task_limits: {selfplay: {per_node: 4, cluster: 500}}\n"
        "rate_limits: {selfplay: {per_minute: null}}\n",
    )
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    res = coord.reserve("gauntlet", "n1", 2, ttl=600)
    assert [coord.acquire("selfplay", "n1", holder=me).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    denied = coord.check("selfplay", "n1")
    assert denied.reasons[0].rule == "reservation" and denied.reasons[0].limit == 2
    assert coord.acquire("selfplay", "n2", holder=me).allowed  # other nodes unaffected
    gauntlet = coord.acquire("gauntlet", "n1", holder=me)
    assert gauntlet.allowed
    assert not coord.acquire("selfplay", "n1", holder=me).allowed  # one slot still held
    coord.release_reservation(res["res_id"])
    assert coord.acquire("selfplay", "n1", holder=me).allowed
    assert coord.list_reservations() == []


def test_state_and_stats(coordinator):
    assert coordinator.get_state() is CoordinatorStatus.RUNNING
    coordinator.register_task("s1", "training", "n1")
    stats = coordinator.get_stats()
    assert stats["by_type"]["training"]["running"] == 1
    assert stats["by_type"]["training"]["nodes"] == {"n1": 1}
    assert stats["by_type"]["training"]["cluster_limit"] == 2
    safeguards.activate_emergency(coordinator.ctx, "x")
    assert coordinator.get_state() is CoordinatorStatus.PAUSED
    assert safeguards.is_halted(coordinator.ctx, "selfplay")
    assert safeguards.check_before_spawn(coordinator.ctx, "selfplay", "n1")[0] is False
    assert "halted" in safeguards.get_block_reason(coordinator.ctx, "selfplay", "n1")
    lifted = safeguards.deactivate_emergency(coordinator.ctx)
    assert lifted["lifted"] == ["*"] and lifted["removed_halt_file"]
    assert coordinator.get_state() is CoordinatorStatus.RUNNING
    assert safeguards.allow_spawn(coordinator.ctx, "selfplay", "n1")


def test_safeguards_object_face(coordinator):
    guard = safeguards.Safeguards(coordinator.ctx)
    guard.activate_emergency("object api", task_type="sync")
    assert not guard.allow_spawn("sync", "n1")
    assert "object api" in guard.get_block_reason()
    assert guard.allow_spawn("selfplay", "n1") and guard.get_block_reason() is None
    assert guard.is_emergency_active("sync") and not guard.is_emergency_active("selfplay")
    guard.deactivate_emergency(task_type="sync")
    assert guard.allow_spawn("sync", "n1")


def test_coordinated_task_async_and_sync(coordinator):
    async def scenario():
        async with CoordinatedTask(TaskType.TRAINING, "n1", coordinator=coordinator) as first:
            assert first.allowed and first.task_id
            async with CoordinatedTask("training", "n1", coordinator=coordinator) as second:
                assert not second.allowed and "per-node limit" in second.reason
            assert len(coordinator.list_tasks()) == 1
        return first.task_id

    task_id = asyncio.run(scenario())
    assert coordinator.list_tasks() == []
    assert coordinator.history()[0]["task_id"] == task_id

    with pytest.raises(RuntimeError):
        with CoordinatedTask("training", "n1", coordinator=coordinator) as task:
            assert task.allowed
            raise RuntimeError("boom")
    last = coordinator.history()[0]
    assert last["status"] == "failed" and "boom" in last["reason"]


OPS = st.lists(
    st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 3), st.integers(0, 50)),
    max_size=60,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(per_node=st.integers(0, 4), cluster=st.integers(0, 8), ops=OPS)
def test_admitted_never_exceeds_limits(tmp_path_factory, new_ctx, per_node, cluster, ops):
    ctx = new_ctx(
        tmp_path_factory.mktemp("prop"),
        f"task_limits: {{tournament: {{per_node: {per_node}, cluster: {cluster}}}}}\n",
    )
    coord = TaskCoordinator(ctx)
    me = Holder(pid=os.getpid())
    held: list[tuple[str, int]] = []
    try:
        for op, node, pick in ops:
            if op == "acquire":
                before = len(held)
                decision = coord.acquire("tournament", f"n{node}", holder=me)
                expected = sum(1 for t in coord.list_tasks() if t["node"] == f"n{node}") - 0
                if decision.allowed:
                    held.append((decision.task_id, decision.lease_token))
                else:
                    assert decision.reasons and decision.retry_after is not None
                assert expected <= per_node
                assert len(held) <= before + 1
            elif held:
                task_id, token = held.pop(pick % len(held))
                assert coord.unregister_task(task_id, token=token) is not None
            rows = coord.list_tasks()
            assert len(rows) == len(held) <= cluster
            per = {}
            for row in rows:
                per[row["node"]] = per.get(row["node"], 0) + 1
            assert all(count <= per_node for count in per.values())
    finally:
        ctx.close()


def test_registered_holders_get_a_long_lease_and_waiters_stay_fresh(tmp_path, new_ctx):
    clock = ManualClock()
    ctx = new_ctx(
        tmp_path,
        "task_limits: {training: {per_node: 1, cluster: 1}}\n"
        "durations: {training: 1000}\nstore: {lease_ttl: 120}\n",
        clock,
    )
    coord = TaskCoordinator(ctx)
    held = coord.acquire("training", "n1", holder=Holder(pid=os.getpid()), source="register")
    lease = coord.list_tasks()[0]["lease_left"]
    assert lease == 2000  # nobody renews a registered holder: 2 x its expected duration
    seq = coord.enqueue("training", "n2")
    clock.advance(100)
    denied = coord.acquire("training", "n2", holder=Holder(pid=os.getpid()), waiter_seq=seq)
    assert not denied.allowed
    with ctx.store.read() as tx:
        beat = tx.one("SELECT heartbeat_at FROM waiters WHERE seq = ?", (seq,))
    assert beat is not None and beat["heartbeat_at"] == tx.now()  # a polling waiter is alive
    assert coord.unregister_task(held.task_id, token=held.lease_token)


def test_concurrent_coordinated_tasks_share_one_store_safely(coordinator):
    running, peak = [0], [0]

    async def one(i):
        async with CoordinatedTask("training", f"n{i % 5}", coordinator=coordinator) as task:
            if task.allowed:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                await asyncio.sleep(0.02)
                running[0] -= 1
            return task.allowed

    async def main():
        return await asyncio.gather(*[one(i) for i in range(20)])

    allowed = asyncio.run(main())
    assert any(allowed) and 1 <= peak[0] <= 2  # the cluster limit of this fixture is 2
    assert coordinator.list_tasks() == []  # every admitted task released, none leaked
