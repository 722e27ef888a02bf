"""``tasks cancel``, ``tasks show`` and ``tasks history``'s filters, with real wrappers and jobs.

The orphan: a ``run`` wrapper killed by ``kill -9`` leaves its job running, and the slot stays
held while any process of the job's group lives (the reaper watches the group). ``tasks
cancel`` is how an operator ends it: the group is signalled on its own host, SIGKILLed after
the grace when it ignores the signal, and the slot is released as ``stopped``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Coord, alive, wait_for

# the other local user, played for real (root only): the machinery of the file-trust tests
from test_file_trust import (  # noqa: F401 (host and users are fixtures)
    ALICE,
    PYTHON,
    Host,
    _shared_store,
    host,
    users,
)

from ringrift_coord import cancel, procs
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import StateError
from ringrift_coord.store import open_store
from ringrift_coord.task_coordinator import Holder, TaskCoordinator

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits: {selfplay: {per_node: 4, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}, training: {per_minute: null}}
circuit_breaker: {failure_threshold: 1}
"""


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups to SIGKILL when the test ends, whatever happened."""
    found: list[int] = []
    yield found
    for pgid in found:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2 :].split()
            if fields[0] != b"Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def _start(coord: Coord, script: str) -> tuple[subprocess.Popen[str], dict]:
    """A real ``run`` wrapper around ``sh -c script``; returns it and its task once the job
    has written ``ready``."""
    ready = coord.tmp / "ready"
    wrapper = coord.popen(
        "run",
        "selfplay",
        "--node",
        "n1",
        "--",
        "sh",
        "-c",
        f"{script}",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"READY": str(ready)},
    )
    wait_for(ready.exists, 30, "the job to start")
    (task,) = json.loads(coord("tasks", "--json").stdout)["tasks"]
    assert task["wrapper_pid"] == wrapper.pid and task["pgid"]
    return wrapper, task


def _orphan(coord: Coord, script: str, groups: list[int]) -> dict:
    wrapper, task = _start(coord, script)
    groups.append(task["pgid"])
    os.kill(wrapper.pid, signal.SIGKILL)
    wrapper.wait(timeout=10)
    # the job outlives its wrapper and keeps its slot: the reaper sees its group alive
    assert coord("tasks", "reap").returncode == 0
    assert [t["task_id"] for t in json.loads(coord("tasks", "--json").stdout)["tasks"]] == [
        task["task_id"]
    ]
    assert alive(task["pgid"])
    return task


def _nothing_learned(coord: Coord) -> None:
    breakers = json.loads(coord("breakers", "list", "--json").stdout)["breakers"]
    assert [b for b in breakers if b.get("failures")] == [], breakers
    assert json.loads(coord("limits", "--json").stdout)["backpressure"] == []


def test_cancel_ends_the_orphan_of_a_kill_9ed_wrapper(coord: Coord, groups: list[int]) -> None:
    coord.write_config(CONFIG)
    task = _orphan(coord, 'touch "$READY"; sleep 300 & sleep 300; wait', groups)
    pgid = task["pgid"]
    assert len(_group_members(pgid)) >= 2  # the shell and its sleeps

    result = coord("tasks", "cancel", task["task_id"], "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1
    assert (doc["task_id"], doc["node"], doc["task_type"], doc["status"]) == (
        task["task_id"],
        "n1",
        "selfplay",
        "stopped",
    )
    assert (doc["signal"], doc["escalated"], doc["released_by"]) == ("SIGTERM", False, "cancel")
    assert doc["exit_code"] == 143
    assert _group_members(pgid) == []  # every process of the group, not just the leader
    assert json.loads(coord("tasks", "--json").stdout)["tasks"] == []
    (row,) = json.loads(coord("tasks", "history", "--json").stdout)["tasks"]
    assert (row["status"], row["exit_code"]) == ("stopped", 143)
    assert "cancelled by" in row["reason"] and "SIGTERM" in row["reason"]
    _nothing_learned(coord)  # an operator's stop: the breaker (threshold 1) stays closed
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    # again: the task has ended, nothing to do (not an error)
    again = coord("tasks", "cancel", task["task_id"])
    assert again.returncode == 0 and "already ended" in again.stdout


def test_a_job_that_ignores_term_gets_kill_after_the_grace(coord: Coord, groups: list[int]) -> None:
    coord.write_config(CONFIG)
    task = _orphan(coord, "trap '' TERM; touch \"$READY\"; while :; do sleep 0.1; done", groups)
    result = coord("--set", "run.kill_grace=0.5", "tasks", "cancel", task["task_id"])
    assert result.returncode == 0, result.stderr
    assert "then SIGKILL" in result.stdout
    assert _group_members(task["pgid"]) == []
    (row,) = json.loads(coord("tasks", "history", "--json").stdout)["tasks"]
    assert (row["status"], row["exit_code"]) == ("stopped", 137)
    assert "SIGKILL after the 0.5 s grace" in row["reason"]
    _nothing_learned(coord)


def test_cancel_with_a_live_wrapper_lets_it_stop_the_job(coord: Coord, groups: list[int]) -> None:
    coord.write_config(CONFIG)
    wrapper, task = _start(coord, 'touch "$READY"; sleep 300')
    groups.append(task["pgid"])
    result = coord("tasks", "cancel", task["task_id"], "--signal", "INT", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["released_by"]) == ("stopped", "wrapper")
    assert "forwarded SIGINT" in doc["reason"] and doc["reason"].startswith("cancelled by ")
    assert wrapper.wait(timeout=30) == 130
    history = json.loads(coord("--json", "tasks", "history").stdout)["tasks"]
    assert history[0]["reason"] == doc["reason"]  # the operator is on record, not in JSON only
    assert _group_members(task["pgid"]) == []
    _nothing_learned(coord)


def test_cancel_from_another_host_is_refused(coord: Coord) -> None:
    coord.write_config(CONFIG)
    other = {"RINGRIFT_COORD_HOST": "gpu-host-7"}
    registered = coord("register", "selfplay", "--node", "n1", "--pid", str(os.getpid()), env=other)
    assert registered.returncode == 0, registered.stderr
    task_id = registered.stdout.strip()
    refused = coord("tasks", "cancel", task_id)
    assert refused.returncode == 3
    assert "runs on host gpu-host-7" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert [t["task_id"] for t in json.loads(coord("tasks", "--json").stdout)["tasks"]] == [task_id]


def test_cancel_of_another_users_job_is_refused(host: Host, groups: list[int]) -> None:  # noqa: F811
    """In a store shared by a host's users, alice may not end root's job: one line, exit 3,
    nothing signalled, the slot kept; with the wrapper alive and once it was kill -9ed (the
    orphan: the wait after SIGKILL would otherwise never end)."""
    store = _shared_store(host, CONFIG)
    env = {u: host.env(u, RINGRIFT_COORDINATOR_DIR=str(store)) for u in ("root", ALICE)}
    ready = host.base / "ready"
    wrapper = subprocess.Popen(
        [*PYTHON, "-m", "ringrift_coord", "run", "selfplay", "--node", "n1", "--"]
        + ["sh", "-c", 'touch "$READY"; sleep 300'],
        env={**env["root"], "READY": str(ready)},
        cwd=host.home("root"),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(ready.exists, 30, "root's job to start")
        listed = host.run(ALICE, "tasks", "--json", env=env[ALICE])
        assert listed.returncode == 0, listed.stderr
        (task,) = json.loads(listed.stdout)["tasks"]
        groups.append(task["pgid"])

        def refused() -> None:
            result = host.run(
                ALICE, "--set", "run.kill_grace=0.5", "tasks", "cancel", task["task_id"],
                env=env[ALICE],
            )  # fmt: skip
            assert result.returncode == 3, result.stderr
            assert result.stderr.strip() == (
                f"ringrift-coord: error: task {task['task_id']}'s processes belong to uid 0: "
                f"run `ringrift-coord tasks cancel {task['task_id']}` as that user or root "
                "(nothing was signalled); the task keeps its slot"
            )
            assert alive(task["pgid"])
            held = json.loads(host.run(ALICE, "tasks", "--json", env=env[ALICE]).stdout)
            assert [t["task_id"] for t in held["tasks"]] == [task["task_id"]]

        refused()  # the wrapper lives
        assert wrapper.poll() is None
        wrapper.kill()  # kill -9: the orphan
        wrapper.wait(timeout=10)
        refused()
        # root may
        done = host.run("root", "tasks", "cancel", task["task_id"], env=env["root"])
        assert done.returncode == 0, done.stderr
        assert _group_members(task["pgid"]) == []
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


class RefillingClock(ManualClock):
    """A test clock that, whenever the code looks at it, adds a fresh process to the job's
    group: a group SIGKILL never empties, as one whose process sits in uninterruptible sleep.
    Each wait moves it a whole second."""

    def __init__(self, pgid: int) -> None:
        super().__init__()
        self.pgid = pgid
        self.added: list[subprocess.Popen[bytes]] = []
        self.refill = True

    def monotonic(self) -> float:
        if self.refill:
            if len(self.added) > 100:  # cancel would wait forever: fail, do not fork on
                raise AssertionError("cancel still waits after 100 looks at its clock")
            self.added.append(subprocess.Popen(["sleep", "300"], process_group=self.pgid))
        return super().monotonic()

    def wait_readable(self, fds: object, timeout: float) -> list[int]:
        self.advance(1.0)
        return []


def test_cancel_gives_up_on_processes_sigkill_does_not_end(engine_db) -> None:  # noqa: ANN001
    """Processes still there after SIGKILL: cancel says so after ``KILL_WAIT`` seconds (on
    its clock), raises a state error (exit 3) and keeps the slot, instead of waiting
    forever."""
    # the job's leader; killed, it stays a zombie (never reaped here) and keeps the group
    leader = subprocess.Popen(["sleep", "300"], process_group=0)  # in this session
    clock = RefillingClock(leader.pid)
    ctx = engine_db.context(CONFIG + "run: {kill_grace: 2}\n", clock=clock)
    try:
        decision = TaskCoordinator(ctx).acquire(
            "selfplay", "n1", holder=Holder(pid=leader.pid, pgid=leader.pid)
        )
        assert decision.allowed and decision.task_id
        with pytest.raises(StateError) as caught:
            cancel.cancel(ctx, decision.task_id, signal.SIGTERM, who="tester")
        assert str(caught.value) == (
            f"task {decision.task_id}: processes of its job still live {cancel.KILL_WAIT:g} s "
            "after SIGKILL (in uninterruptible sleep?): they could not be ended, and the task "
            "keeps its slot"
        )
        assert clock.monotonic() >= 2 + cancel.KILL_WAIT  # the grace, then the wait's end
        held = TaskCoordinator(ctx).list_tasks()
        assert [t["task_id"] for t in held] == [decision.task_id]
        assert TaskCoordinator(ctx).history() == []
    finally:
        clock.refill = False
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in [leader, *clock.added]:
            proc.wait(timeout=30)


def test_cancel_never_signals_a_stranger_that_reused_the_group_number(
    coord: Coord, groups: list[int]
) -> None:
    """The orphan's group died; its number now belongs to a new session leader (here the
    row is pointed at a stranger's pid, keeping the old leader's start time, as if the
    kernel had reused it). The stranger passes the old scan (a member of that group started
    after the leader) but is not the job: it is never signalled, and the slot is freed."""
    coord.write_config(CONFIG)
    task = _orphan(coord, 'touch "$READY"; sleep 300', groups)
    os.killpg(task["pgid"], signal.SIGKILL)
    wait_for(lambda: _group_members(task["pgid"]) == [], 10, "the job's group to end")
    stranger = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"], start_new_session=True)
    groups.append(stranger.pid)
    wait_for(lambda: len(_group_members(stranger.pid)) >= 2, 10, "the stranger's group")
    store = open_store(None, str(coord.state_dir), env=coord.env)
    try:
        with store.write() as tx:
            recorded = tx.one("SELECT pid_start FROM tasks WHERE task_id = ?", (task["task_id"],))
            assert recorded is not None and recorded["pid_start"]
            old_start = recorded["pid_start"]
            changed = tx.execute(
                "UPDATE tasks SET pid = ?, pgid = ? WHERE task_id = ?",
                (stranger.pid, stranger.pid, task["task_id"]),
            )
            assert changed == 1
    finally:
        store.close()
    result = coord("tasks", "cancel", task["task_id"], "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["released_by"], doc["escalated"]) == ("stopped", "cancel", False)
    assert "already ended" in doc["reason"]
    assert stranger.poll() is None and len(_group_members(stranger.pid)) >= 2
    assert json.loads(coord("tasks", "--json").stdout)["tasks"] == []
    # the reaper's test of a holder does not mistake it for the job either
    start = procs.start_time(stranger.pid)
    assert start is not None and start > old_start
    assert not procs.group_alive(stranger.pid, old_start)
    assert procs.group_alive(stranger.pid, start)
    stranger.kill()
    stranger.wait()


def test_group_alive_follows_the_group_after_its_leader_exits() -> None:
    """The leader's pid free again (its exit reaped) while a child of the group lives: the
    group is alive until that child ends."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; read x"],
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert leader.stdout is not None and leader.stdin is not None
    child = int(leader.stdout.readline())
    try:
        start = procs.start_time(leader.pid)
        assert start is not None
        leader.stdin.close()
        leader.wait(timeout=10)  # reaped: no process has the leader's pid now
        assert procs.start_time(leader.pid) is None
        assert procs.group_alive(leader.pid, start)
    finally:
        os.kill(child, signal.SIGKILL)
    wait_for(lambda: not procs.group_alive(leader.pid, start), 10, "the group to end")


def test_cancel_bad_input(coord: Coord) -> None:
    bad = coord("tasks", "cancel", "x", "--signal", "USR1")  # said before "no store" (3)
    assert bad.returncode == 2 and "--signal" in bad.stderr
    assert coord("tasks", "reap").returncode == 0  # a store, with no such task in it
    unknown = coord("tasks", "cancel", "no-such-task")
    assert unknown.returncode == 2 and "no task 'no-such-task'" in unknown.stderr
    bad = coord("tasks", "cancel", "x", "--signal", "USR1")
    assert bad.returncode == 2 and "--signal" in bad.stderr


def test_tasks_show_prints_everything_recorded(coord: Coord) -> None:
    coord.write_config(CONFIG)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        made = coord(
            "register", "selfplay", "--node", "n1", "--pid", str(holder.pid),
            "--config-name", "square8_2p",
        )  # fmt: skip
        task_id = made.stdout.strip()
        doc = json.loads(coord("tasks", "show", task_id, "--json").stdout)
        assert doc["schema_version"] == 1
        assert (doc["task_id"], doc["task_type"], doc["node"], doc["status"]) == (
            task_id,
            "selfplay",
            "n1",
            "running",
        )
        running = doc["running"]
        assert running["pid"] == holder.pid and running["config_name"] == "square8_2p"
        assert running["lease_token"] and running["source"] == "register"
        assert [d["allowed"] for d in doc["decisions"]] == [True]
        text = coord("tasks", "show", task_id)
        assert text.returncode == 0
        assert f"task {task_id}: running" in text.stdout
        assert f"pid: {holder.pid}" in text.stdout and "config_name: square8_2p" in text.stdout
        assert coord("unregister", task_id, "--exit-code", "3").returncode == 0
        doc = json.loads(coord("tasks", "show", task_id, "--json").stdout)
        assert doc["status"] == "failed" and doc["running"] is None
        assert doc["history"][0]["exit_code"] == 3
        assert "exit_code: 3" in coord("tasks", "show", task_id).stdout
    finally:
        holder.kill()
        holder.wait()
    missing = coord("tasks", "show", "nope")
    assert missing.returncode == 2 and "no task 'nope'" in missing.stderr


def test_tasks_history_filters(coord: Coord) -> None:
    coord.write_config(CONFIG)
    runs = [
        ("selfplay", "n1", "true"),
        ("selfplay", "n2", "exit 3"),
        ("training", "n1", "exit 3"),
        ("training", "n2", "true"),
    ]
    for ttype, node, script in runs:
        coord("run", ttype, "--node", node, "--", "sh", "-c", script)

    def ids(*args: str) -> list[tuple[str, str, str]]:
        result = coord("tasks", "history", "--json", *args)
        assert result.returncode == 0, result.stderr
        return sorted(
            (r["task_type"], r["node"], r["status"]) for r in json.loads(result.stdout)["tasks"]
        )

    assert len(ids()) == 4
    assert ids("--type", "training") == [("training", "n1", "failed"), ("training", "n2", "ok")]
    assert ids("--node", "n2") == [("selfplay", "n2", "failed"), ("training", "n2", "ok")]
    assert ids("--status", "failed", "--node", "n1") == [("training", "n1", "failed")]
    assert len(ids("--since", "1h")) == 4
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ids("--since", future) == []
    assert ids("--type", "selfplay", "--status", "ok", "--since", "10m") == [
        ("selfplay", "n1", "ok")
    ]
    for bad in (("--status", "exploded"), ("--since", "yesterday"), ("--type", "bogus")):
        result = coord("tasks", "history", *bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tasks_reap_host_frees_a_dead_hosts_slots_before_their_leases_expire(
    coord: Coord,
) -> None:
    """A host that died for good: `tasks reap --host H` frees its slots now (their leases
    have hours left); this host's live holders and other hosts' slots stay; a host no task
    names is exit 2 with the closest one; this host's name frees nothing alive."""
    coord.write_config(CONFIG + "store: {lease_ttl: 3600}\n")
    here = coord("register", "selfplay", "--node", "n1", "--pid", str(os.getpid()))
    assert here.returncode == 0, here.stderr
    held: dict[str, str] = {}
    for name, node in (("gpu-host-7", "n2"), ("gpu-host-8", "n3")):
        done = coord("register", "selfplay", "--node", node, env={"RINGRIFT_COORD_HOST": name})
        assert done.returncode == 0, done.stderr
        held[name] = done.stdout.strip()
    typo = coord("tasks", "reap", "--host", "gpu-host-77")
    assert typo.returncode == 2 and "did you mean gpu-host-7?" in typo.stderr, typo.stderr
    assert typo.stderr.count("\n") == 1
    node = coord("tasks", "reap", "--host", "n3")  # a node's name for its host's
    assert node.returncode == 2, node.stderr
    assert "n3 is a node, whose tasks are held from host gpu-host-8" in node.stderr, node.stderr
    far = coord("tasks", "reap", "--host", "zz")
    assert far.returncode == 2 and "(tasks are held from: " in far.stderr, far.stderr
    plain = coord("--json", "tasks", "reap")  # leases an hour long: nothing to reap yet
    assert json.loads(plain.stdout)["reaped"] == []
    freed = coord("--json", "tasks", "reap", "--host", "gpu-host-7")
    assert freed.returncode == 0, freed.stderr
    (row,) = json.loads(freed.stdout)["reaped"]
    assert row["task_id"] == held["gpu-host-7"] and "declared dead" in row["reason"]
    running = {t["task_id"] for t in json.loads(coord("tasks", "--json").stdout)["tasks"]}
    assert running == {here.stdout.strip(), held["gpu-host-8"]}
    history = json.loads(coord("--json", "tasks", "history").stdout)["tasks"]
    assert [(h["task_id"], h["status"]) for h in history] == [(held["gpu-host-7"], "reaped")]
    # this host's own name: its live holder stays, and the operator is told why
    me = os.uname().nodename
    own = coord("tasks", "reap", "--host", me)
    assert own.returncode == 0, own.stderr
    assert "0 slot(s) freed" in own.stdout, own.stdout
    assert f"kept 1 task(s) of live holders on {me} (this host)" in own.stdout, own.stdout
    own_json = json.loads(coord("--json", "tasks", "reap", "--host", me).stdout)
    assert own_json["reaped"] == [] and own_json["kept_live"] == 1
    assert json.loads(coord("--json", "tasks", "reap").stdout)["kept_live"] == 0
