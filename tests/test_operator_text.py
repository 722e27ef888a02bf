"""Text from operators and the environment, shown by every view exactly as given.

Reasons, node names, config names and hand-written halt files are data, never Rich markup
(``[/x]`` once crashed ``halt --check`` and ``status``); ``$USER`` / ``$RINGRIFT_COORD_HOST``
may hold bytes that are not UTF-8 or terminal escapes: they are stored and shown in a clean
printable form, and the emergency ``halt`` never fails because of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import Coord

ENGINES = ("sqlite", "postgres")

MARKUP = "[/x] maintenance [bold]now[/bold] [red]"
NODE = "[/n]"
CONFIG_NAME = "[/c]"
NOT_UTF8 = os.fsdecode(b"\xff")  # what os.environ holds for the byte 0xff
ESC = "\x1b[31m"


@pytest.fixture
def holder():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def flat(text: str) -> str:
    """A table's cells may wrap: compare without the layout."""
    return "".join(ch for ch in text if ch not in " │┃\n")


# --------------------------------------------------------------------------- markup


def test_halt_reason_with_markup_is_shown_as_written(coord):
    assert ok(coord("halt", "--reason", MARKUP)).startswith("halted every task type")
    check = ok(coord("halt", "--check"), 1)  # halted: 1, never "config error" 3
    assert MARKUP in check
    assert flat(MARKUP) in flat(ok(coord("status")))
    assert json.loads(ok(coord("--json", "halt", "--check"), 1))["halts"][0]["reason"] == MARKUP
    denied = coord("can-spawn", "selfplay")
    assert denied.returncode == 1 and MARKUP in denied.stderr


def test_type_halt_and_hand_written_halt_file_with_markup(coord):
    ok(coord("halt", "--type", "training", "--reason", "[/t]"))
    assert "[/t]" in ok(coord("halt", "--check", "--type", "training"), 1)
    ok(coord("unhalt"))
    (coord.state_dir / "EMERGENCY_HALT").write_text(
        json.dumps({"reason": "[/file] disk swap", "who": "[/who]"})
    )
    assert "[/file] disk swap" in ok(coord("halt", "--check"), 1)
    assert flat("[/file] disk swap") in flat(ok(coord("status")))


def test_node_and_config_names_with_markup_in_every_listing(coord, holder):
    task_id = ok(
        coord(
            "register",
            "selfplay",
            "--node",
            NODE,
            "--config-name",
            CONFIG_NAME,
            "--pid",
            str(holder),
        )
    ).strip()
    for args in (("tasks",), ("tasks", "list", "--node", NODE), ("decisions",), ("status",)):
        shown = flat(ok(coord(*args)))
        assert NODE in shown, args
    assert CONFIG_NAME in flat(ok(coord("tasks")))
    assert f"{NODE}1-selfplay=1/32" in flat(ok(coord("status")))  # the node × type summary
    ok(coord("unregister", task_id, "--exit-code", "3", "--reason", "[bold]boom[/]"))
    history = flat(ok(coord("tasks", "history")))
    assert NODE in history and "[bold]boom[/]" in history


def test_reservations_breakers_and_readings_with_markup(coord):
    ok(coord("reserve", "gauntlet", "--node", NODE, "--slots", "1"))
    assert NODE in flat(ok(coord("reserve", "list")))
    assert NODE in flat(ok(coord("status")))
    ok(coord("breakers", "record-failure", "--type", "sync", "--node", NODE, "--reason", "[/r]"))
    listed = flat(ok(coord("breakers")))
    assert NODE in listed and "[/r]" in listed
    ok(coord("report", "--node", NODE, "--cpu", "10", "--gpu-name", "[/gpu]"))
    readings = flat(ok(coord("resources")))
    assert NODE in readings and "[/gpu]" in readings
    assert "[/n]" in flat(ok(coord("limits")))  # the node's backpressure after the failure


# --------------------------------------------------------------------------- the environment


def with_env(coord: Coord, **values: str) -> Coord:
    for name in ("SUDO_USER", "LOGNAME", "USER"):
        coord.env.pop(name, None)
    coord.env.update(values)
    return coord


def test_user_that_is_not_utf8_never_stops_a_halt(coord, holder):
    with_env(coord, USER=f"op{NOT_UTF8}", RINGRIFT_COORD_HOST=f"h{NOT_UTF8}")
    made = ok(coord("halt", "--reason", "emergency"))
    assert "op\\xff@h\\xff" in made
    record = json.loads(ok(coord("--json", "halt", "--check"), 1))
    assert record["halts"][0]["who"] == "op\\xff@h\\xff"
    assert record["halts"][0]["host"] == "h\\xff"
    assert "op\\xff@h\\xff" in ok(coord("status"))
    ok(coord("unhalt"))
    ok(coord("register", "selfplay", "--node", "n1", "--pid", str(holder)))
    assert "h\\xff" in flat(ok(coord("tasks")))
    ok(coord("can-spawn", "selfplay", "--node", "n1"))
    assert "op\\xff@h\\xff" in flat(ok(coord("decisions")))


def test_node_id_that_is_not_utf8_is_refused_in_one_line(coord):
    with_env(coord, RINGRIFT_NODE_ID=f"n{NOT_UTF8}")
    refused = coord("can-spawn", "selfplay")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "RINGRIFT_NODE_ID" in lines[0] and "Traceback" not in lines[0]
    assert "RINGRIFT_NODE_ID 'n\\xff' is not" in lines[0], lines[0]  # escaped once, not twice
    assert ok(coord("halt", "--reason", "still possible")).startswith("halted")
    ok(coord("halt", "--check"), 1)


def test_escape_sequences_from_the_environment_never_reach_the_terminal(coord, holder):
    with_env(coord, USER=f"op{ESC}", RINGRIFT_COORD_HOST=f"h{ESC}x")
    outputs = [coord("halt", "--reason", "r")]
    outputs.append(coord("halt", "--check"))
    outputs.append(coord("status"))
    ok(coord("unhalt"))
    outputs.append(coord("register", "selfplay", "--node", "n1", "--pid", str(holder)))
    outputs.append(coord("tasks"))
    outputs.append(coord("status"))
    outputs.append(coord("decisions"))
    for result in outputs:
        assert "Traceback" not in result.stderr, result.stderr
        assert "\x1b" not in result.stdout + result.stderr, result.args
    assert "op\\x1b[31m@h\\x1b[31mx" in outputs[0].stdout
