"""``halt --node N``: drain one node (it refuses new spawns, the others go on); ``unhalt
--node N``; node-scoped halts in ``halt --check``, ``status`` and the audit trail; a store
written before halts had a node keeps its halts, cluster-wide."""

from __future__ import annotations

import json

from ringrift_coord import halts
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")


def test_halt_node_refuses_spawns_on_that_node_only(coord) -> None:
    made = coord("halt", "--node", "n1", "--reason", "disk swap")
    assert made.returncode == 0, made.stderr
    assert "every task type on node n1 only in " in made.stdout
    assert not (coord.state_dir / "EMERGENCY_HALT").exists()  # the file halts a whole host

    denied = coord("can-spawn", "selfplay", "--node", "n1")
    assert denied.returncode == 1
    assert "halted every task type on node n1 in " in denied.stderr
    assert "disk swap" in denied.stderr
    for ttype in ("training", "sync"):
        assert coord("can-spawn", ttype, "--node", "n1").returncode == 1
    assert coord("can-spawn", "selfplay", "--node", "n2").returncode == 0
    run = coord("run", "selfplay", "--node", "n1", "--", "sh", "-c", f"touch {coord.tmp}/ran")
    assert run.returncode == 75 and not (coord.tmp / "ran").exists()
    assert coord("run", "selfplay", "--node", "n2", "--", "true").returncode == 0

    decision = json.loads(coord("can-spawn", "selfplay", "--node", "n1", "--json").stdout)
    (reason,) = decision["reasons"]
    assert reason["rule"] == "halt" and reason["details"]["node"] == "n1"

    assert coord("halt", "--check", "--node", "n1").returncode == 1
    assert coord("halt", "--check", "--node", "n2").returncode == 0
    # RINGRIFT_NODE_ID is the node --check asks about when none is named
    assert coord("halt", "--check", env={"RINGRIFT_NODE_ID": "n1"}).returncode == 1
    assert coord("halt", "--check", env={"RINGRIFT_NODE_ID": "n2"}).returncode == 0

    status = json.loads(coord("status", "--json").stdout)
    assert [(h["scope"], h["node"]) for h in status["halt"]["halts"]] == [("*", "n1")]
    assert status["state"] == "running"  # a drained node does not pause the cluster
    assert "HALTED all types on node n1" in coord("status").stdout

    lifted = coord("unhalt", "--node", "n1")
    assert lifted.returncode == 0 and "on node n1" in lifted.stdout
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    audit = json.loads(coord("halt", "--check", "--json").stdout)["recent"]
    assert [(a["action"], a["scope"], a["node"]) for a in audit[:2]] == [
        ("unhalt", "*", "n1"),
        ("halt", "*", "n1"),
    ]


def test_halt_one_type_on_one_node(coord) -> None:
    assert coord("halt", "--type", "training", "--node", "n2", "--reason", "x").returncode == 0
    assert coord("can-spawn", "training", "--node", "n2").returncode == 1
    assert coord("can-spawn", "selfplay", "--node", "n2").returncode == 0
    assert coord("can-spawn", "training", "--node", "n3").returncode == 0
    assert coord("halt", "--check", "--type", "training", "--node", "n2").returncode == 1
    assert coord("halt", "--check", "--type", "selfplay", "--node", "n2").returncode == 0
    # unhalt --type without --node lifts the type's cluster-wide halt, not a node's drain
    assert coord("unhalt", "--type", "training").returncode == 0
    assert coord("can-spawn", "training", "--node", "n2").returncode == 1
    result = json.loads(coord("unhalt", "--type", "training", "--node", "n2", "--json").stdout)
    assert result["lifted_halts"] == [{"scope": "training", "node": "n2"}]
    assert coord("can-spawn", "training", "--node", "n2").returncode == 0


def test_a_cluster_wide_halt_and_unhalt_cover_drains_too(coord) -> None:
    assert coord("halt", "--node", "n1", "--reason", "drain").returncode == 0
    assert coord("halt", "--reason", "all").returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "n2").returncode == 1
    # unhalt --node lifts only the drain: the cluster-wide halt stays
    assert coord("unhalt", "--node", "n1").returncode == 0
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 1
    assert coord("halt", "--node", "n1", "--reason", "again").returncode == 0
    assert coord("unhalt").returncode == 0  # every halt
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


def test_a_drain_of_a_node_no_one_has_named_warns_with_the_closest(coord) -> None:
    """A typo in the node name drains nothing that runs: the drain stands (a node may be
    drained before it first reports), with one warning naming the closest known node."""
    assert coord("register", "selfplay", "--node", "gpu-node-17", "-q").returncode == 0
    typo = coord("halt", "--node", "gpu-nod-17", "--reason", "disk")
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr.startswith("ringrift-coord: warning: no task, waiter, reading"), typo
    assert "(did you mean gpu-node-17?)" in typo.stderr and typo.stderr.count("\n") == 1
    assert coord("can-spawn", "selfplay", "--node", "gpu-node-17").returncode == 0
    known = coord("halt", "--node", "gpu-node-17", "--reason", "disk")
    assert known.returncode == 0 and known.stderr == "", known.stderr
    assert coord("can-spawn", "selfplay", "--node", "gpu-node-17").returncode == 1


def test_halt_node_bad_input(coord) -> None:
    for bad in ("", "   ", "*"):
        result = coord("halt", "--node", bad, "--reason", "x")
        assert result.returncode == 2, (bad, result.stderr)
        assert "--node" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_store_from_before_node_halts_keeps_its_halts_cluster_wide(engine_db) -> None:
    """A store with migrations 0001-0002 only (halts keyed by scope) and a halt in it."""
    store = engine_db.open()
    with store.write() as tx:
        tx.execute("DROP TABLE halts")
        tx.execute(
            "CREATE TABLE halts (scope TEXT PRIMARY KEY, reason TEXT, who TEXT, host TEXT, "
            "at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION)"
        )
        tx.execute("ALTER TABLE halt_log DROP COLUMN node")
        tx.execute("DELETE FROM schema_migrations WHERE name = '0003_node_halts'")
        tx.execute(
            "INSERT INTO halts (scope, reason, who, host, at, expires_at) "
            "VALUES ('training', 'old halt', 'ops', 'h', 1, NULL)"
        )
    store.close()
    ctx = engine_db.context()  # opening applies the migration
    with ctx.store.read() as tx:
        names = {r["name"] for r in tx.query("SELECT name FROM schema_migrations")}
        state = halts.state(tx, None, tx.now())
    assert "0003_node_halts" in names
    assert [(r["scope"], r["node"], r["reason"]) for r in state.rows] == [
        ("training", "*", "old halt")
    ]
    coord = TaskCoordinator(ctx)
    for node in ("n1", "n2"):
        assert not coord.check("training", node).allowed
        assert coord.check("selfplay", node).allowed
