"""The cluster-wide engine: several simulated nodes (own state dir, node id and host name)
share one real PostgreSQL server started by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REQUIRE_PG, Coord, wait_for

if not REQUIRE_PG:
    pytest.importorskip("psycopg", reason="pip install -e '.[postgres]'")

RACER = textwrap.dedent("""
    import io, json, os, sys, time
    import psycopg  # imported before the start signal: the race is the admission, not imports
    from ringrift_coord.cli.main import run_cli
    work, index, node, holder = sys.argv[1:5]
    rounds = int(sys.argv[5])
    for r in range(rounds):
        go = os.path.join(work, f"go-{r}")
        while not os.path.exists(go):
            time.sleep(0.002)
        out, sys.stdout = sys.stdout, io.StringIO()
        try:
            code = run_cli(["register", "selfplay", "--node", node, "--pid", holder, "--json"])
            doc = sys.stdout.getvalue()
        finally:
            sys.stdout = out
        tmp = os.path.join(work, f"tmp-{r}-{index}")
        with open(tmp, "w") as f:
            f.write(json.dumps({"code": code, "doc": doc}))
        os.replace(tmp, os.path.join(work, f"res-{r}-{index}"))
""")


class Node(Coord):
    """One simulated node: its own state dir, node id and host name, the shared server."""

    def __init__(self, tmp: Path, name: str, url: str, config: str) -> None:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        super().__init__(tmp / name)
        self.write_config(config)
        self.name = name
        self.env.update(
            {
                "RINGRIFT_COORD_DB": url,
                "RINGRIFT_NODE_ID": name,
                "RINGRIFT_COORD_HOST": f"host-{name}",
            }
        )


CONFIG = """
task_limits: {selfplay: {per_node: 6, cluster: 20}}
rate_limits: {selfplay: {per_minute: null}}
store: {lease_ttl: 120, connect_timeout: 2, busy_timeout: 30}
"""
# a registered holder's lease is max(lease_ttl, 2 x the type's expected duration)
SHORT_LEASE = (
    CONFIG.replace("lease_ttl: 120", "lease_ttl: 2").replace("per_node: 6", "per_node: 1")
    + "durations: {selfplay: 1}\n"
)


@pytest.fixture
def nodes(tmp_path, pg_url):
    return [Node(tmp_path, f"n{k}", pg_url, CONFIG) for k in range(4)]


def free_all(node: Node) -> None:
    """Release every slot (in-process: one psycopg import instead of one per task)."""
    from ringrift_coord.context import Context
    from ringrift_coord.task_coordinator import TaskCoordinator

    with Context.open(
        db=node.env["RINGRIFT_COORD_DB"],
        state_dir=str(node.state_dir),
        config=str(node.config),
        env=node.env,
    ) as ctx:
        coord = TaskCoordinator(ctx)
        for row in coord.list_tasks():
            assert coord.unregister_task(row["task_id"]) is not None


def race(nodes, tmp_path, rounds: int, per_node: int = 16) -> list[dict[str, int]]:
    """64 racers (16 per node) register at once, ``rounds`` times; returns wins per node."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    work = tmp_path / "race"
    work.mkdir()
    racers = []
    try:
        for node in nodes:
            for i in range(per_node):
                racers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            RACER,
                            str(work),
                            f"{node.name}-{i}",
                            node.name,
                            str(holder.pid),
                            str(rounds),
                        ],
                        env=node.env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        outcomes = []
        for r in range(rounds):
            (work / f"go-{r}").touch()
            deadline = time.monotonic() + 120
            while len(list(work.glob(f"res-{r}-*"))) < len(racers):
                assert time.monotonic() < deadline, "racers did not finish"
                assert all(p.poll() in (None, 0) for p in racers), "a racer crashed"
                time.sleep(0.02)
            wins: dict[str, int] = {}
            codes = []
            for path in work.glob(f"res-{r}-*"):
                result = json.loads(path.read_text())
                codes.append(result["code"])
                if result["code"] == 0:
                    assert result["doc"], result
                    doc = json.loads(result["doc"])
                    wins[doc["node"]] = wins.get(doc["node"], 0) + 1
            assert set(codes) <= {0, 1}, codes
            outcomes.append(wins)
            free_all(nodes[0])
        for p in racers:
            assert p.wait(60) == 0
        return outcomes
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
        holder.kill()
        holder.wait()


@pytest.mark.pg_empty  # 64 first opens race to migrate the empty database
def test_cluster_limit_across_four_nodes(nodes, tmp_path):
    (wins,) = race(nodes, tmp_path, rounds=1)
    assert sum(wins.values()) == 20
    assert all(count <= 6 for count in wins.values()), wins


@pytest.mark.pg_empty
@pytest.mark.stress
def test_cluster_limit_across_four_nodes_20_rounds(nodes, tmp_path):
    for wins in race(nodes, tmp_path, rounds=20):
        assert sum(wins.values()) == 20, wins
        assert all(count <= 6 for count in wins.values()), wins


def test_halt_from_one_node_reaches_every_node(nodes):
    a, b, c, d = nodes
    assert b("can-spawn", "selfplay").returncode == 0
    assert a("halt", "--reason", "bad model").returncode == 0
    for other in (b, c, d):
        denied = other("can-spawn", "selfplay", "--json")
        assert denied.returncode == 1
        assert json.loads(denied.stdout)["reasons"][0]["rule"] == "halt"
        assert other("halt", "--check").returncode == 1
    assert c("unhalt").returncode == 0
    for other in (a, b, d):
        assert other("can-spawn", "selfplay").returncode == 0
        assert other("halt", "--check").returncode == 0
    # a's copy of the halt in its own state dir was lifted with the store's row
    assert not (a.state_dir / "EMERGENCY_HALT").exists()
    # while a file an operator touched on one host still halts only that host
    (b.state_dir / "EMERGENCY_HALT").touch()
    assert b("can-spawn", "selfplay").returncode == 1
    assert a("can-spawn", "selfplay").returncode == 0


def test_expired_lease_on_another_node_is_reaped_and_fenced(nodes):
    a, b = nodes[0], nodes[1]
    a.write_config(SHORT_LEASE)
    b.write_config(SHORT_LEASE)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        first = a(
            "register",
            "selfplay",
            "--node",
            "shared",
            "--pid",
            str(holder.pid),
            "--task-id",
            "job-1",
            "--json",
        )
        assert first.returncode == 0, first.stderr
        old_token = json.loads(first.stdout)["lease_token"]
        # b sees a live slot on another host: only the lease can free it
        assert (
            b(
                "register",
                "selfplay",
                "--node",
                "shared",
                "--pid",
                str(holder.pid),
                "--task-id",
                "job-1",
            ).returncode
            == 1
        )
        time.sleep(2.5)  # a's host never renews: the lease (2 s, database clock) expires
        second = b(
            "register",
            "selfplay",
            "--node",
            "shared",
            "--pid",
            str(holder.pid),
            "--task-id",
            "job-1",
            "--json",
        )
        assert second.returncode == 0, second.stderr
        new_token = json.loads(second.stdout)["lease_token"]
        assert new_token > old_token
        late = a("unregister", "job-1", "--token", str(old_token))
        assert late.returncode == 1 and "no longer holds" in late.stderr
        rows = json.loads(a("tasks", "list", "--json").stdout)["tasks"]
        assert [(r["task_id"], r["host"]) for r in rows] == [("job-1", "host-n1")]
        history = json.loads(a("tasks", "history", "--json").stdout)["tasks"]
        assert history[0]["status"] == "reaped" and "lease expired" in history[0]["reason"]
    finally:
        holder.kill()
        holder.wait()


def test_server_stopped_mid_run(nodes, pg_server, tmp_path):
    a, b = nodes[0], nodes[1]
    marker, finish = tmp_path / "job-done", tmp_path / "finish"
    job = a.popen(
        "run",
        "training",
        "--",
        "sh",
        "-c",
        'while [ ! -e "$0" ]; do sleep 0.05; done; touch "$1"',
        str(finish),
        str(marker),
    )
    wait_for(lambda: json.loads(b("tasks", "list", "--json").stdout)["tasks"], 30, "the job's slot")
    pg_server.stop()
    try:
        started = time.monotonic()
        down = b("can-spawn", "training")
        elapsed = time.monotonic() - started
        assert down.returncode == 75, down.stderr
        assert "unreachable" in down.stderr and "Traceback" not in down.stderr
        assert len(down.stderr.strip().splitlines()) == 1
        # refused at once (connect timeout 2 s), not after the 30 s busy timeout
        assert elapsed < 20, f"took {elapsed:.1f} s"
        assert b("register", "training", "--pid", str(os.getpid())).returncode == 75
        assert job.poll() is None  # the job runs on while its server is down
    finally:
        pg_server.start()
    finish.touch()  # the job ends only now, with the server back: run releases its slot
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert marker.exists()
    history = json.loads(b("tasks", "history", "--json").stdout)["tasks"]
    assert history[0]["task_type"] == "training" and history[0]["status"] == "ok"
    assert json.loads(b("tasks", "list", "--json").stdout)["tasks"] == []
    assert b("can-spawn", "training").returncode == 0


def waiting_pids(url: str) -> list[int]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM waiters ORDER BY seq")]


def test_run_and_run_wait_share_one_slot_across_nodes(nodes, pg_url, tmp_path):
    """A real `run` on one node holds the cluster's one slot; `run --wait` on another node
    queues in the server's line and runs as soon as the first job finishes."""
    a, b = nodes[0], nodes[1]
    one_slot = CONFIG.replace("cluster: 20", "cluster: 1") + "run: {poll_interval: 0.05}\n"
    a.write_config(one_slot)
    b.write_config(one_slot)
    log, finish = tmp_path / "log", tmp_path / "finish"
    first = a.popen(
        "run",
        "selfplay",
        "--",
        "sh",
        "-c",
        'echo "first $RINGRIFT_NODE_ID" >> "$0"; while [ ! -e "$1" ]; do sleep 0.05; done',
        str(log),
        str(finish),
    )
    second = None
    try:
        wait_for(lambda: log.exists(), 30, "the first job to start")
        (held,) = json.loads(b("tasks", "list", "--json").stdout)["tasks"]
        assert (held["node"], held["host"], held["source"]) == ("n0", "host-n0", "run")
        # without --wait another node is refused at once (75: try later)
        refused = b("run", "selfplay", "--", "true")
        assert refused.returncode == 75 and "cluster limit 1" in refused.stderr, refused.stderr
        second = b.popen(
            "run",
            "selfplay",
            "--wait",
            "--timeout",
            "120",
            "--",
            "sh",
            "-c",
            'echo "second $RINGRIFT_NODE_ID $RINGRIFT_TASK_ID" >> "$0"',
            str(log),
        )
        wait_for(lambda: second.pid in waiting_pids(pg_url), 30, "the waiter to queue")
        assert log.read_text().splitlines() == ["first n0"]  # it waits: the slot is held
        finish.touch()
        assert first.wait(timeout=60) == 0
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    assert lines[0] == "first n0" and lines[1].startswith("second n1 selfplay-"), lines
    assert waiting_pids(pg_url) == []
    history = json.loads(a("tasks", "history", "--json").stdout)["tasks"]
    assert [(h["node"], h["status"]) for h in history] == [("n1", "ok"), ("n0", "ok")]
    assert history[0]["task_id"] == lines[1].split()[2]
    assert json.loads(a("tasks", "list", "--json").stdout)["tasks"] == []


def test_status_names_the_server_and_refuses_passwords_on_the_command_line(nodes, pg_url):
    a = nodes[0]
    status = json.loads(a("status", "--json").stdout)
    assert status["store"]["engine"] == "postgres"
    assert status["store"]["server"].startswith("127.0.0.1:")
    with_password = pg_url.replace("ringrift@", "ringrift:s3cret@")
    refused = a("--db", with_password, "can-spawn", "selfplay")
    assert refused.returncode == 2
    assert "s3cret" not in refused.stderr and "PGPASSFILE" in refused.stderr
    screen = a("status")
    assert "engine postgres" in screen.stdout


def test_unreachable_server_never_allows(tmp_path):
    node = Node(tmp_path, "lonely", "postgresql://nobody@127.0.0.1:9/none", CONFIG)
    for args in (
        ("can-spawn", "selfplay"),
        ("register", "selfplay", "--pid", str(os.getpid())),
        ("run", "selfplay", "--", "true"),
    ):
        result = node(*args)
        assert result.returncode == 75, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_migrated_store_opens_read_only_for_a_role_that_may_only_select(
    pg_server, pg_url: str, tmp_path: Path
) -> None:
    """Opening a store that is already migrated writes nothing and takes no lock: a monitoring
    role with SELECT only runs `metrics` and `status`; a write is refused with the server's own
    reason."""
    import psycopg

    coord = Coord(tmp_path)
    coord.env["RINGRIFT_COORD_DB"] = pg_url
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0  # migrates
    role = f"monitor_{os.getpid()}_{time.monotonic_ns() % 100000}"
    admin = pg_server.admin_url.rsplit("/", 1)[0] + "/" + pg_url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
        c.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        c.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    (tmp_path / "monitor").mkdir()
    monitor = Coord(tmp_path / "monitor")
    monitor.env["RINGRIFT_COORD_DB"] = pg_url.replace("ringrift@", f"{role}@")
    shown = monitor("metrics")
    assert shown.returncode == 0, shown.stderr
    assert "ringrift_store_up 1.0" in shown.stdout
    assert 'ringrift_tasks{node="n1",type="selfplay"} 1.0' in shown.stdout
    status = monitor("--json", "status")
    assert status.returncode == 0, status.stderr
    assert [t["node"] for t in json.loads(status.stdout)["tasks"]] == ["n1"]
    # a write is refused by the server, with its reason, and exits 3
    refused = monitor("register", "selfplay", "--node", "n1", "-q")
    assert refused.returncode == 3 and "permission denied" in refused.stderr, refused.stderr
    # a store a newer version wrote: that role is told so, not "permission denied"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_future', 0)")
    newer = monitor("status")
    assert newer.returncode == 3 and "written by a newer ringrift-coord" in newer.stderr, (
        newer.stderr
    )
