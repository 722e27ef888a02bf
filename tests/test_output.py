"""Human output that scripts, pipes and small terminals can use.

Ids, node names, types and times are never cut (``selfplay…``, ``gpu-nod…``): at 80 columns
free text wraps first, then a terminal table drops whole columns and says which; a pipe gets
plain aligned columns without box drawing; ``--format tsv`` feeds ``cut``; ``--no-header``
drops the titles and column names. Colour is never the only signal: a node a reading blocks
says ``BLOCKED``, one past a warning level ``warn``, with ``NO_COLOR=1`` too; ``report``,
``can-spawn`` and ``register`` say on stderr what a reading does to admission.

Every test runs the real program in a subprocess, on both engines where the store is read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import Coord, wait_for

ENGINES = ("sqlite", "postgres")

NODE = "gpu-node-h100-us-east-17"
NODE2 = "cpu-node-epyc-us-central-08"
CONFIG = "hexagonal_4p_long_config_name"
BOX = set("│┃━─┏┓┗┛┡┩└┘")
NARROW = {"COLUMNS": "80"}


@pytest.fixture
def holder():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def words(text: str) -> set[str]:
    return set(text.split())


def populate(coord: Coord, holder: int) -> dict[str, str]:
    """Two running tasks with long names, a failed one in the history (its breaker), a
    blocking reading on NODE and a warning one on NODE2."""
    ids = {
        "selfplay": ok(
            coord(
                "register",
                "selfplay",
                "--node",
                NODE,
                "--pid",
                str(holder),
                "--config-name",
                CONFIG,
            )
        ).strip(),
        "improvement_loop": ok(
            coord("register", "improvement_loop", "--node", NODE2, "--pid", str(holder))
        ).strip(),
    }
    failed = coord("--json", "run", "gauntlet", "--node", NODE2, "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3, failed.stderr
    ids["gauntlet"] = json.loads(failed.stdout.splitlines()[-1])["task_id"]
    ok(coord("report", "--node", NODE, "--gpu", "93", "--mem", "40", "--disk", "10", "--cpu", "5"))
    ok(coord("report", "--node", NODE2, "--mem", "75", "--disk", "10", "--cpu", "5"))
    return ids


# --------------------------------------------------------------------------- 80 columns


def test_nothing_is_cut_at_80_columns_in_a_pipe_or_a_table(coord, holder):
    ids = populate(coord, holder)
    assert len(ids["improvement_loop"]) > 28  # "improvement_loop-" + 12 hex digits
    listings = [
        ("tasks",),
        ("tasks", "history"),
        ("status",),
        ("resources",),
        ("decisions",),
        ("breakers", "list"),
    ]
    for args in listings:
        for fmt in ([], ["--format", "plain"], ["--format", "table"]):
            out = ok(coord(*args, *fmt, env=NARROW))
            assert "…" not in out, (args, fmt, out)
            if fmt != ["--format", "table"]:  # a pipe gets plain columns, no box drawing
                assert not BOX & set(out), (args, out)
            else:  # Rich, fitted to 80 columns: whole columns are left out instead
                assert all(len(line) <= 80 for line in out.splitlines()), (args, out)
            shown = words(out)
            if args[0] != "resources":
                assert NODE in shown or NODE2 in shown, (args, out)
            if args == ("tasks",):
                assert {ids["selfplay"], ids["improvement_loop"], NODE, NODE2} <= shown
                assert CONFIG in shown or "config" in out.splitlines()[-2]  # whole, or left out
            if args == ("tasks", "history"):
                assert {ids["gauntlet"], NODE2, "failed"} <= shown
            if args == ("resources",):
                assert {NODE, NODE2, "BLOCKED", "warn"} <= shown, out
            if args == ("breakers", "list"):
                assert {NODE2, "gauntlet", "closed"} <= shown
    plain = ok(coord("tasks", "history", env=NARROW))
    assert "exit code 3" in plain  # nothing is left out in plain output, however wide
    table = ok(coord("tasks", "history", "--format", "table", env=NARROW))
    assert "left out at 80 columns" in table and "--format plain" in table
    # a wide terminal has room for every column
    assert "left out" not in ok(coord("tasks", "history", "--format", "table"))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_real_80_column_terminal(tmp_path, holder):
    """In a tmux pane 80 columns wide (stdout a terminal): Rich tables, every line within
    the pane, every id whole."""
    coord = Coord(tmp_path)
    ids = populate(coord, holder)
    socket = ["-L", f"ringrift-output-{tmp_path.name}"[:60]]  # a tmux server of its own
    env_words = " ".join(f"{k}={_sh(v)}" for k, v in coord.env.items() if k != "COLUMNS")
    done = tmp_path / "done"
    shell = (
        f"env -u COLUMNS {env_words} {_sh(sys.executable)} -m ringrift_coord tasks; "
        f"touch {_sh(str(done))}; sleep 60"
    )
    subprocess.run(
        ["tmux", *socket, "new-session", "-d", "-x", "80", "-y", "50", shell], check=True
    )
    try:
        wait_for(done.exists, 30, "the command in tmux")
        screen = subprocess.run(
            ["tmux", *socket, "capture-pane", "-p"], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run(["tmux", *socket, "kill-server"], capture_output=True)
    shown = words(screen)
    assert {ids["selfplay"], ids["improvement_loop"], NODE, NODE2} <= shown, screen
    assert "left out at 80 columns" in screen  # the config column, whole, did not fit
    assert "…" not in screen and all(len(line) <= 80 for line in screen.splitlines())


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------- tsv, --no-header


def test_tsv_feeds_cut_and_no_header_drops_titles(coord, holder):
    ids = populate(coord, holder)
    tsv = ok(coord("tasks", "--format", "tsv"))
    lines = tsv.splitlines()
    assert lines[0].split("\t")[:3] == ["task_id", "type", "node"]
    assert {len(line.split("\t")) for line in lines} == {len(lines[0].split("\t"))}
    cut = subprocess.run(["cut", "-f1,3"], input=tsv, capture_output=True, text=True, check=True)
    assert f"{ids['selfplay']}\t{NODE}" in cut.stdout.splitlines()

    bare = ok(coord("tasks", "list", "--format", "tsv", "--no-header"))
    assert sorted(line.split("\t")[0] for line in bare.splitlines()) == sorted(
        [ids["selfplay"], ids["improvement_loop"]]
    )
    group = ok(coord("tasks", "--no-header", "--format", "tsv"))  # the group's options
    assert [r.split("\t")[:5] for r in group.splitlines()] == [
        r.split("\t")[:5] for r in bare.splitlines()
    ]
    plain = ok(coord("tasks", "--no-header")).splitlines()
    assert len(plain) == 2 and all(line.split()[0] in ids.values() for line in plain)

    history = ok(coord("tasks", "history", "--format", "tsv", "--no-header")).splitlines()
    (row,) = history
    cells = row.split("\t")
    assert cells[0] == ids["gauntlet"] and cells[2] == NODE2 and "failed" in cells

    status = ok(coord("status", "--format", "tsv", "--no-header")).splitlines()
    assert sorted(status) == sorted(
        [f"{NODE}\tselfplay\t1\t32", f"{NODE2}\timprovement_loop\t1\t-"]
    ), status
    bare_status = ok(coord("status", "--no-header")).splitlines()  # plain: the same rows
    assert sorted(line.split()[:3] for line in bare_status) == sorted(
        [[NODE, "selfplay", "1"], [NODE2, "improvement_loop", "1"]]
    ), bare_status
    resources = ok(coord("resources", "--format", "tsv")).splitlines()
    header = resources[0].split("\t")
    rows = {r.split("\t")[0]: dict(zip(header, r.split("\t"), strict=True)) for r in resources[1:]}
    assert rows[NODE]["admission"] == "BLOCKED gpu" and rows[NODE]["gpu"] == "93%"
    assert rows[NODE2]["admission"] == "warn mem"
    breakers = ok(coord("breakers", "--format", "tsv", "--no-header")).splitlines()
    assert [b.split("\t")[:3] for b in breakers] == [[NODE2, "gauntlet", "closed"]]


def test_limits_tsv_has_a_dash_for_no_limit_and_unset_words_elsewhere(coord):
    """tsv's empty cell is ``-`` for no limit and an unset setting, as in ``status``;
    table and plain keep the words for people."""
    tsv = ok(coord("limits", "--format", "tsv", "--no-header")).splitlines()
    cells = {r.split("\t")[0]: r.split("\t") for r in tsv}
    assert cells["task_limits.cmaes.per_node"] == ["task_limits.cmaes.per_node", "-", "default"]
    assert cells["store.shared_group"] == ["store.shared_group", "-", "default"]
    assert not [r for r in tsv if "null" in r], tsv
    plain = [r.split() for r in ok(coord("limits", "--format", "plain")).splitlines()]
    assert ["task_limits.cmaes.per_node", "null", "(unlimited)", "default"] in plain
    assert ["store.shared_group", "null", "(not", "set)", "default"] in plain


def test_status_brief_and_one_screen(coord, holder):
    populate(coord, holder)
    brief = ok(coord("status", "--brief")).splitlines()
    by_type = {line.split(":")[0]: line for line in brief}
    assert by_type["selfplay"].startswith("selfplay: 1/500 running on 1 node(s)")
    assert "FULL" in by_type["improvement_loop"]  # its cluster limit is 1
    assert "gauntlet" not in by_type  # no limit, nothing running or queued
    tsv = ok(coord("status", "--brief", "--format", "tsv")).splitlines()
    assert tsv[0].split("\t")[:3] == ["type", "running", "queued"]
    assert "improvement_loop\t1\t0\t1\t1\t-\t-" in tsv
    screen = ok(coord("status", env=NARROW))
    assert "running tasks" not in screen  # the task list itself is `tasks`
    rows = [line.split() for line in screen.splitlines()]
    assert [NODE, "1", "BLOCKED", "gpu", "selfplay=1/32"] in rows  # its reading, in words
    assert [NODE2, "1", "warn", "mem", "improvement_loop=1/∞"] in rows
    assert any(r[:1] == ["improvement_loop"] and "FULL" in r for r in rows)


def test_status_brief_never_hides_a_halt(coord):
    """The short form is what cron mails and small screens show: a halt or a drain is said
    first, and on each type it stops (tsv: a ``halt`` column)."""
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    calm = ok(coord("status", "--brief"))
    assert "HALTED" not in calm and "drained" not in calm
    assert coord("halt", "--type", "training", "--reason", "bad model").returncode == 0
    assert coord("halt", "--node", "n7", "--type", "selfplay", "--reason", "disk").returncode == 0
    brief = ok(coord("status", "--brief")).splitlines()
    assert brief[0].startswith("HALTED training in ") and brief[0].endswith(": bad model")
    assert brief[1].startswith("HALTED selfplay on node n7 in ")
    by_type = {line.split(":")[0]: line for line in brief[2:]}
    assert by_type["training"].endswith("[HALTED]")
    assert by_type["selfplay"].endswith("[drained n7]")
    assert "[" not in by_type["cmaes"]
    tsv = [r.split("\t") for r in ok(coord("status", "--brief", "--format", "tsv")).splitlines()]
    column = {row[0]: row[tsv[0].index("halt")] for row in tsv[1:]}
    assert column["training"] == "HALTED" and column["selfplay"] == "drained n7"
    assert column["cmaes"] == "-"
    # a drain of every type on a node: said once on its own line, in each type's tsv cell
    assert coord("halt", "--node", "n8", "--reason", "swap").returncode == 0
    brief = ok(coord("status", "--brief")).splitlines()
    assert any(line.startswith("HALTED all types on node n8 in ") for line in brief), brief
    assert "[" not in next(line for line in brief if line.startswith("cmaes:"))
    tsv = [r.split("\t") for r in ok(coord("status", "--brief", "--format", "tsv")).splitlines()]
    assert {row[0]: row[-1] for row in tsv[1:]}["cmaes"] == "drained n8"
    assert coord("halt", "--reason", "everything").returncode == 0
    everything = [
        r.split("\t") for r in ok(coord("status", "--brief", "--format", "tsv")).splitlines()
    ]
    assert {row[-1] for row in everything[1:]} == {"HALTED"}


def test_bad_format_is_one_line_exit_2(coord):
    for args in (("tasks", "--format", "xml"), ("status", "--format", "TSV")):
        result = coord(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "--format" in result.stderr


# --------------------------------------------------------------------------- colour


def test_no_color_still_says_blocked_and_warn(coord, holder):
    populate(coord, holder)
    no_color = {"NO_COLOR": "1", **NARROW}
    for fmt in ("plain", "table"):
        out = ok(coord("resources", "--format", fmt, env=no_color))
        assert "\x1b[" not in out
        node_line = next(line for line in out.splitlines() if line.startswith(NODE))
        assert "BLOCKED" in node_line and "gpu" in node_line
        warn_line = next(line for line in out.splitlines() if line.startswith(NODE2))
        assert "warn" in warn_line and "mem" in warn_line
    forced = ok(coord("resources", "--format", "table", env={"FORCE_COLOR": "1", **NARROW}))
    assert "\x1b[" in forced and "BLOCKED" in forced  # colour repeats the word, never replaces it


def test_report_says_on_stderr_what_its_reading_does(coord):
    blocked = coord("report", "--node", NODE, "--gpu", "93", "--mem", "75")
    ok(blocked)
    lines = blocked.stderr.splitlines()
    assert (
        f"ringrift-coord: warning: node {NODE} gpu at 93% >= critical 80%: "
        "new spawns on this node are refused"
    ) in lines
    assert any(
        "memory at 75% >= warning 70%" in line and "still admitted" in line for line in lines
    )
    assert blocked.stdout.startswith(f"reported {NODE}")
    as_json = coord("--json", "report", "--node", NODE, "--disk", "95")
    assert json.loads(as_json.stdout)["disk"] == 95  # stdout stays one document
    assert "disk at 95% >= critical 70%" in as_json.stderr
    fine = coord("report", "--node", NODE, "--gpu", "10", "--mem", "10", "--disk", "10")
    ok(fine)
    assert fine.stderr == ""


def test_can_spawn_and_register_warn_on_stderr_in_text_mode(coord, holder):
    ok(coord("report", "--node", NODE, "--mem", "75", "--gpu", "10"))
    warned = coord("can-spawn", "selfplay", "--node", NODE)
    assert ok(warned) == f"allowed: selfplay on {NODE}\n"
    assert warned.stderr.startswith(f"ringrift-coord: warning: memory at 75% on {NODE}")
    quiet = coord("can-spawn", "-q", "selfplay", "--node", NODE)
    assert ok(quiet) == "" and quiet.stderr == ""
    as_json = coord("--json", "can-spawn", "selfplay", "--node", NODE)
    assert as_json.stderr == "" and json.loads(ok(as_json))["warnings"]

    reg = coord("register", "selfplay", "--node", NODE, "--pid", str(holder))
    task_id = ok(reg).strip()
    assert task_id.startswith("selfplay-") and "memory at 75%" in reg.stderr
    reg_q = coord("register", "-q", "selfplay", "--node", NODE, "--pid", str(holder))
    assert ok(reg_q).strip().startswith("selfplay-") and reg_q.stderr == ""

    ok(coord("report", "--node", NODE, "--mem", "85", "--gpu", "75"))
    denied = coord("can-spawn", "selfplay", "--node", NODE)
    assert denied.returncode == 1
    lines = denied.stderr.splitlines()
    assert "denied" in lines[0] and "memory at 85%" in lines[0]
    assert any(line.startswith("ringrift-coord: warning: gpu at 75%") for line in lines[1:])


def test_piped_output_is_the_same_whatever_the_width(coord, holder):
    """Plain output does not depend on COLUMNS: a cron mail reads like a wide terminal."""
    populate(coord, holder)
    narrow = ok(coord("tasks", "--format", "plain", env={"COLUMNS": "40"}))
    wide = ok(coord("tasks", "--format", "plain", env={"COLUMNS": "300"}))
    strip = [line.split()[:3] + line.split()[4:5] for line in narrow.splitlines()]
    assert strip == [line.split()[:3] + line.split()[4:5] for line in wide.splitlines()]


def test_status_of_28_nodes_fits_one_screen(tmp_path, holder):
    """28 nodes at 80 columns: one row per node, every name whole, within 50 lines; the
    layout does not depend on the engine (SQLite only)."""
    coord = Coord(tmp_path)
    nodes = [f"gpu-node-h100-us-east-{i:02d}" for i in range(1, 21)]
    nodes += [f"cpu-node-epyc-us-central-{i:02d}" for i in range(1, 9)]
    for i, node in enumerate(nodes):
        ok(coord("register", "selfplay", "--node", node, "--pid", str(holder)))
        if i % 10 == 0:  # three of them: the cluster limit of training
            ok(coord("register", "training", "--node", node, "--pid", str(holder)))
    ok(coord("report", "--node", nodes[3], "--disk", "99"))
    screen = ok(coord("status", "--format", "table", env=NARROW)).splitlines()
    assert len(screen) <= 51, "\n".join(screen)  # 50, and the optimizer's one line
    assert all(len(line) <= 80 for line in screen)
    rows = {line.split()[0]: line.split()[1:] for line in screen if line.strip()}
    assert set(nodes) <= set(rows)
    assert rows[nodes[3]][:3] == ["1", "BLOCKED", "disk"]
    assert rows[nodes[0]][:2] == ["2", "-"] and "training=1/1" in rows[nodes[0]]
    assert "running tasks" not in "\n".join(screen)


def test_tasks_per_node_counts_every_node_it_lists(coord):
    """A node with no task but a reading that blocks admission is listed: the title's count
    is the rows shown, not only the nodes with tasks."""
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    done = coord(
        "report", "--node", "g1", "--cpu", "10", "--mem", "10", "--disk", "10", "--gpu", "95"
    )
    assert done.returncode == 0, done.stderr
    shown = coord("status").stdout
    assert "tasks per node (2 node(s);" in shown, shown
    assert "BLOCKED gpu" in shown
