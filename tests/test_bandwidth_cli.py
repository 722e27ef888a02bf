"""``bandwidth allocate/start/end/status`` through the real program, on both engines: the
allocation table (four host types x four priorities), the concurrent cap and ``end`` freeing
it, history in ``status``, the exit codes and lines of refusals and bad input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Coord

from ringrift_coord import transfers
from ringrift_coord.context import Context

ENGINES = ("sqlite", "postgres")

# remote -> KiB/s (rsync --bwlimit units, rounded down) for critical, high, normal, background
ALLOCATIONS = {
    "node-runpod-3": (122070, 61035, 30517, 12207),  # runpod: 1 Gbps
    "lambda-GH200-1": (305175, 152587, 76293, 30517),  # gh200: 2.5 Gbps
    "aws-east-2": (61035, 30517, 15258, 6103),  # aws: 500 Mbps
    "vast-7": (12207, 6103, 3051, 1220),  # any other host: 100 Mbps
}
TYPES = {"node-runpod-3": "runpod", "lambda-GH200-1": "gh200", "aws-east-2": "aws"}
PRIORITIES = ("critical", "high", "normal", "background")
FACTORS = (1.0, 0.5, 0.25, 0.1)


def _json(done: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(done.stdout)


def _store(coord: Coord) -> Context:
    """A context on the commands' store (to read it back, or to age a transfer)."""
    return Context.open(
        db=coord.env.get("RINGRIFT_COORD_DB"),
        state_dir=str(coord.state_dir),
        config=str(coord.config),
        env=coord.env,
    )


def _age(coord: Coord, transfer_id: str, seconds: float) -> None:
    """Make ``transfer_id`` started ``seconds`` earlier (a transfer that took that long),
    instead of sleeping."""
    with _store(coord) as ctx, ctx.store.write() as tx:
        tx.execute(
            "UPDATE transfers SET started_at = started_at - ? WHERE transfer_id = ?",
            (seconds, transfer_id),
        )


@pytest.mark.parametrize(
    ("remote", "priority"),
    [(r, p) for r in ALLOCATIONS for p in PRIORITIES],
)
def test_allocation_table_four_host_types_by_four_priorities(
    coord: Coord, remote: str, priority: str
) -> None:
    done = coord("--json", "bandwidth", "allocate", remote, "--priority", priority)
    assert done.returncode == 0, done.stderr
    doc = _json(done)
    index = PRIORITIES.index(priority)
    assert doc["allowed"] is True
    assert doc["kbps"] == ALLOCATIONS[remote][index]
    assert doc["host_type"] == TYPES.get(remote, "default")
    assert doc["priority"] == priority and doc["factor"] == FACTORS[index]
    assert doc["limit_kbps"] == pytest.approx(ALLOCATIONS[remote][0], abs=1)
    assert (doc["active"], doc["cap"], doc["reasons"], doc["retry_after"]) == (0, 4, [], None)
    assert doc["free_kbps"] == doc["limit_kbps"]
    # the plain form is just the number, for rsync --bwlimit=$(...)
    plain = coord("bandwidth", "allocate", remote, "--priority", priority)
    assert plain.returncode == 0 and plain.stdout == f"{ALLOCATIONS[remote][index]}\n"


def test_units_and_bad_input(coord: Coord) -> None:
    assert coord("bandwidth", "allocate", "vast-7").stdout == "3051\n"  # normal by default
    if coord.engine == "sqlite":
        assert not coord.db.exists()  # read-only: no store is created for it
    assert coord("bandwidth", "allocate", "vast-7", "--unit", "MiB").stdout == "2.9\n"
    assert coord("bandwidth", "allocate", "vast-7", "--unit", "Mbit/s").stdout == "24.9\n"
    assert coord("bandwidth", "allocate", "vast-7", "--unit", "bytes").stdout == "3124224\n"
    doc = _json(coord("--json", "bandwidth", "allocate", "vast-7", "--unit", "mbps"))
    assert (doc["unit"], doc["rate"], doc["kbps"]) == ("Mbit/s", 24.9, 3051)
    bad = coord("bandwidth", "allocate", "vast-7", "--unit", "furlongs")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "valid units: kib, mib, mbit, bytes" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    bad = coord("bandwidth", "allocate", "vast-7", "--priority", "urgent")
    assert bad.returncode == 2 and "valid priorities: critical, high" in bad.stderr
    bad = coord("bandwidth", "start", "vast-7", "--kind", "data", "--pid", "999999999")
    assert bad.returncode == 2 and "no running process" in bad.stderr
    help_text = coord("bandwidth", "allocate", "--help").stdout
    assert "KiB/s" in help_text and "rsync --bwlimit" in help_text


def test_cap_refuses_the_next_transfer_and_end_frees_it(coord: Coord) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        coord.write_config("bandwidth: {max_concurrent_transfers: 2}\n")
        pid = str(holder.pid)
        ids = []
        for _ in range(2):
            done = coord("bandwidth", "start", "aws-east-2", "--kind", "data", "--pid", pid)
            assert done.returncode == 0, done.stderr
            ids.append(done.stdout.strip())
            assert ids[-1].startswith("xfer-") and "15258 KiB/s" in done.stderr
        # the next one: refused, exit 1, the numbers on stderr, nothing on stdout
        refused = coord("bandwidth", "start", "aws-east-2", "--kind", "data", "--pid", pid)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "2 transfer(s) running, at its cap of 2" in refused.stderr
        denied = coord("--json", "bandwidth", "allocate", "aws-east-2")
        assert denied.returncode == 1
        (reason,) = _json(denied)["reasons"]
        assert (reason["rule"], reason["used"], reason["limit"]) == ("transfer_cap", 2, 2)
        assert _json(denied)["retry_after"] > 0
        plain = coord("bandwidth", "allocate", "aws-east-2")
        assert plain.returncode == 1 and plain.stdout == "" and "cap of 2" in plain.stderr
        # end frees it: one line with the bytes and the rates
        _age(coord, ids[0], 3)
        ended = coord("bandwidth", "end", ids[0], "--bytes", "10485760")
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout.startswith(f"ended {ids[0]} to aws-east-2 (ok)")
        assert "10.0 MiB" in ended.stdout and "allocated" in ended.stdout
        assert "EMA" in ended.stdout and "61035 limit" in ended.stdout
        again = coord("--json", "bandwidth", "start", "aws-east-2", "--kind", "model", "--pid", pid)
        assert again.returncode == 0, again.stderr
        doc = _json(again)
        assert doc["allowed"] and doc["transfer_id"].startswith("xfer-") and doc["lease_token"]
        # ended twice: said, exit 0; an unknown id: exit 2
        twice = coord("bandwidth", "end", ids[0], "--bytes", "1")
        assert twice.returncode == 0 and "already ended" in twice.stderr
        unknown = coord("bandwidth", "end", "xfer-000000000000")
        assert unknown.returncode == 2 and "no active transfer" in unknown.stderr
        # the history in status
        coord("bandwidth", "end", ids[1], "--bytes", "2048", "--status", "failed")
        status = _json(coord("--json", "bandwidth", "status"))
        (active,) = status["active"]
        assert active["transfer_id"] == doc["transfer_id"] and active["kind"] == "model"
        (host,) = status["hosts"]
        assert host["remote"] == "aws-east-2" and host["host_type"] == "aws"
        assert (host["active"], host["cap"], host["transfers"]) == (1, 2, 2)
        assert host["bytes"] == 10485760 + 2048
        assert host["ema_kbps"] is not None and host["ema_pct"] is not None
        assert host["limit_kbps"] == pytest.approx(61035, abs=1)
        table = coord("bandwidth", "status", env={"COLUMNS": "80"})
        assert table.returncode == 0, table.stderr
        assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
        assert doc["transfer_id"] in table.stdout and "aws-east-2" in table.stdout
        assert "10.0M" in table.stdout and "EMA" in table.stdout
        wide = coord("bandwidth", "status", "--format", "table", env={"COLUMNS": "80"})
        assert wide.returncode == 0 and "aws-east-2" in wide.stdout
        assert all(len(line) <= 80 for line in wide.stdout.splitlines()), wide.stdout
    finally:
        holder.kill()
        holder.wait()


def test_dead_transfers_are_reaped_by_tasks_reap(coord: Coord) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    started = coord("bandwidth", "start", "vast-7", "--kind", "data", "--pid", str(holder.pid))
    assert started.returncode == 0, started.stderr
    assert holder.stdin is not None
    holder.stdin.close()  # the holder exits
    holder.wait()
    transfer_id = started.stdout.strip()
    reaped = coord("--json", "tasks", "reap")
    assert reaped.returncode == 0, reaped.stderr
    (row,) = _json(reaped)["reaped_transfers"]
    assert row["transfer_id"] == transfer_id and row["status"] == "reaped"
    assert "reaped transfer" not in coord("tasks", "reap").stdout  # already gone
    history = _json(coord("--json", "bandwidth", "status"))["hosts"][0]
    assert history["transfers"] == 1 and history["active"] == 0


def test_a_bad_bandwidth_section_fails_only_bandwidth_commands(coord: Coord) -> None:
    coord.write_config("bandwidth: {default_mbps: 0}\n")
    done = coord("bandwidth", "allocate", "vast-7")
    assert done.returncode == 3 and done.stdout == ""
    assert "default_mbps must be above 0" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    other = coord("can-spawn", "selfplay", "--node", "n1")
    assert other.returncode == 0
    assert "warning" in other.stderr and "default_mbps" in other.stderr


def test_racing_starts_never_pass_the_cap_or_the_limit(coord: Coord) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        coord.write_config("bandwidth: {max_concurrent_transfers: 3}\n")
        argv = ("--json", "bandwidth", "start", "vast-7", "--kind", "data", "--pid")
        racers = [
            coord.popen(*argv, str(holder.pid), "--priority", p)
            for p in ("critical", "high", "normal", "background") * 2
        ]
        results = [(p.wait(timeout=120), p.communicate()) for p in racers]
        admitted = [json.loads(out) for code, (out, _) in results if code == 0]
        refused = [json.loads(out) for code, (out, _) in results if code == 1]
        assert len(admitted) + len(refused) == 8, results
        assert 1 <= len(admitted) <= 3
        assert sum(d["kbps"] for d in admitted) <= 12207
        assert all(d["reasons"] and d["transfer_id"] is None for d in refused)
        status = json.loads(coord("--json", "bandwidth", "status").stdout)
        assert len(status["active"]) == len(admitted)
        assert status["hosts"][0]["allocated_kbps"] == sum(d["kbps"] for d in admitted)
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- operator pass


def test_the_token_survives_jq(coord: Coord) -> None:
    """``--json`` numbers read as doubles (jq): the fencing token comes back exact, so
    ``end --token $(... | jq .lease_token)`` ends the transfer."""
    doc = _json(coord("--json", "bandwidth", "start", "vast-7", "--kind", "data"))
    as_jq = json.loads(json.dumps(doc), parse_int=float)["lease_token"]  # what jq holds
    assert as_jq == doc["lease_token"] and 0 < doc["lease_token"] < 2**53
    shown = f"{as_jq:.17g}"  # jq prints a double: the integer digits, never rounded here
    assert int(shown) == doc["lease_token"]
    _age(coord, doc["transfer_id"], 2.5)
    ended = coord("--json", "bandwidth", "end", doc["transfer_id"], "--token", shown)
    assert ended.returncode == 0, ended.stderr
    row = _json(ended)
    assert row["ended"] is True
    # numbers rounded as in the other documents: seconds to 3 places, rates to 1
    assert row["seconds"] == round(row["seconds"], 3) and row["seconds"] >= 2.5
    assert row["ended_at"] == round(row["ended_at"], 3)


def test_the_readme_allocate_snippet_fails_closed(coord: Coord) -> None:
    """A refused allocate prints nothing, and rsync reads an empty --bwlimit as no limit:
    the README's shape stops the script before the copy."""
    coord.write_config("bandwidth: {max_concurrent_transfers: 1}\n")
    held = coord("bandwidth", "start", "vast-7", "--kind", "data", "--pid", str(os.getpid()))
    assert held.returncode == 0, held.stderr
    program = " ".join(shlex.quote(w) for w in coord.argv())
    marker = coord.tmp / "copied"
    script = (
        f"rate=$({program} bandwidth allocate vast-7) || exit 75\n"
        f'echo "--bwlimit=$rate" > {shlex.quote(str(marker))}\n'
    )
    done = subprocess.run(
        ["sh", "-c", script], env=coord.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 75 and not marker.exists()
    assert "cap of 1" in done.stderr
    coord("bandwidth", "end", held.stdout.strip())
    done = subprocess.run(
        ["sh", "-c", script], env=coord.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "--bwlimit=3051\n"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "|| exit 75" in readme and 'rsync -a --bwlimit="$rate"' in readme
    assert '--bwlimit="$(ringrift-coord bandwidth allocate' not in readme.replace(
        '`rsync --bwlimit="$(ringrift-coord bandwidth allocate HOST)"` would', ""
    )
    help_text = coord("bandwidth", "allocate", "--help").stdout
    assert "|| exit 75" in help_text and "no limit" in help_text


def test_start_and_run_take_the_node_from_the_environment(coord: Coord) -> None:
    """--node, else $RINGRIFT_NODE_ID, else the host name (as run): the node recorded, and
    the node whose halt refuses allocate, start and run."""
    assert "RINGRIFT_NODE_ID" in coord("bandwidth", "start", "--help").stdout
    env = {"RINGRIFT_NODE_ID": "node-7"}
    doc = _json(coord("--json", "bandwidth", "start", "vast-7", "--kind", "d", env=env))
    status = _json(coord("--json", "bandwidth", "status"))
    assert [(r["transfer_id"], r["node"]) for r in status["active"]] == [
        (doc["transfer_id"], "node-7")
    ]
    named = _json(
        coord("--json", "bandwidth", "start", "vast-7", "--kind", "d", "--node", "n9", env=env)
    )
    ran = coord("--json", "bandwidth", "run", "vast-7", "--", "true", env=env)
    assert ran.returncode == 0, ran.stderr
    assert _json(ran)["node"] == "node-7"
    with _store(coord) as ctx, ctx.store.read() as tx:
        (hist,) = transfers.history(tx)
        nodes = {r["transfer_id"]: r["node"] for r in transfers.active(tx, tx.now())}
    assert hist["node"] == "node-7" and nodes[named["transfer_id"]] == "n9"
    # a sync halt on node-7 stops the transfers of node-7, not those of other nodes
    assert coord("halt", "--type", "sync", "--node", "node-7", "--reason", "x").returncode == 0
    for argv in (
        ("bandwidth", "allocate", "vast-7"),
        ("bandwidth", "start", "vast-7", "--kind", "d"),
    ):
        refused = coord(*argv, env=env)
        assert refused.returncode == 1 and "halt" in refused.stderr, (argv, refused.stderr)
        assert coord(*argv, env={"RINGRIFT_NODE_ID": "node-8"}).returncode == 0, argv
    refused = coord("bandwidth", "run", "vast-7", "--", "true", env=env)
    assert refused.returncode == 75 and "halt" in refused.stderr
    assert (
        coord("bandwidth", "run", "vast-7", "--node", "n9", "--", "true", env=env).returncode == 0
    )


def test_status_on_a_fresh_store_and_its_table(coord: Coord) -> None:
    fresh = coord("bandwidth", "status")
    assert fresh.returncode == 0, fresh.stderr
    assert "no transfers yet" in fresh.stderr + fresh.stdout
    doc = _json(coord("--json", "bandwidth", "status"))
    assert (doc["active"], doc["dead"], doc["hosts"], doc["cap"]) == ([], [], [], 4)
    assert len(doc["host_types"]) == 4 and doc["at"] > 0
    if coord.engine == "sqlite":
        assert not coord.db.exists()  # read-only: still no store
    # bytes unknown: "-", not 0B; a dead holder: listed, marked, not counted
    first = coord("bandwidth", "start", "aws-1", "--kind", "d").stdout.strip()
    _age(coord, first, 4)
    assert coord("bandwidth", "end", first, "--status", "failed").returncode == 0
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    gone = coord("bandwidth", "start", "aws-1", "--kind", "d", "--pid", str(child.pid))
    assert gone.returncode == 0, gone.stderr
    assert child.stdin is not None
    child.stdin.close()  # the holder exits; nothing reaps it before status
    child.wait()
    doc = _json(coord("--json", "bandwidth", "status"))
    (host,) = doc["hosts"]
    assert (host["bytes"], host["timed_seconds"], host["active"], host["dead"]) == (
        None,
        0.0,
        0,
        1,
    )
    assert host["allocated_kbps"] == 0 and doc["active"] == []
    assert [r["transfer_id"] for r in doc["dead"]] == [gone.stdout.strip()]
    plain = coord("bandwidth", "status", "--format", "plain").stdout.splitlines()
    hosts_header = next(line for line in plain if line.startswith("remote "))
    names = hosts_header.split()
    assert len(names) == len(set(names)) and "EMA%" in names and "EMA" in names
    row = next(line for line in plain if line.startswith("aws-1 ")).split()
    assert row[names.index("bytes")] == "-"
    assert row[names.index("act")].startswith("0/")
    assert f"{gone.stdout.strip()} (dead)" in coord("bandwidth", "status").stdout
    # rows only (tsv, --no-header): every line a transfer, its state in a column of its own
    tsv = coord("bandwidth", "status", "--format", "tsv").stdout.splitlines()
    header = tsv[0].split("\t")
    assert header[0] == "transfer_id" and header[-1] == "state" and len(tsv) == 2, tsv
    assert tsv[1].split("\t")[0] == gone.stdout.strip() and tsv[1].endswith("\tdead")
    bare = coord("bandwidth", "status", "--no-header").stdout.splitlines()
    assert [line.split()[0] for line in bare] == [gone.stdout.strip()], bare


def test_small_input_fixes(coord: Coord) -> None:
    for argv in (("bandwidth", "allocate", " "), ("bandwidth", "start", "", "--kind", "d")):
        done = coord(*argv)
        assert done.returncode == 2 and "argument HOST must not be empty" in done.stderr
    done = coord("bandwidth", "end", "")
    assert done.returncode == 2 and "argument ID must not be empty" in done.stderr
    bad = coord("bandwidth", "allocate", "vast-7", "--unit", "kbps")
    assert bad.returncode == 2 and "ambiguous" in bad.stderr and "mbit" in bad.stderr
    coord.write_config('bandwidth: {host_types: {lab: {match: ["lab-["], mbps: 100}}}\n')
    bad = coord("bandwidth", "allocate", "lab-1")
    assert bad.returncode == 3 and "bandwidth.host_types.lab.match" in bad.stderr
    coord.write_config("bandwidth: {host_types: {lab: {mbps: 100}}}\n")
    bad = coord("bandwidth", "allocate", "lab-1")
    assert bad.returncode == 3 and "host_types.lab" in bad.stderr and "no match" in bad.stderr
    coord.write_config('bandwidth: {host_types: {lab: {match: ["lab-[[]*"], mbps: 100}}}\n')
    assert coord("--json", "bandwidth", "allocate", "lab-[1")  # a literal [ is fine
    coord.write_config("bandwidth: {default_mbps: 0.005}\n")
    tiny = coord("bandwidth", "allocate", "vast-7")
    assert tiny.returncode == 1 and "none" not in tiny.stderr and "less than 1 KiB/s" in tiny.stderr
    assert "retry in" not in tiny.stderr  # no retry passes against this configuration
    coord.write_config("{}\n")
    started = coord("bandwidth", "start", "vast-7", "--kind", "d", "-q").stdout.strip()
    quiet = coord("bandwidth", "end", started, "--bytes", "10", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    again = coord("bandwidth", "end", started, "--quiet")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
