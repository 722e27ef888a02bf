"""Typos get the nearest name as a hint, from every parser (the fast one of the hot commands,
the Typer app, the config's ``--set`` and ``$RINGRIFT_COORD_SET``), in one style of usage
line: ``ringrift-coord: error: WHAT (did you mean X?); see 'ringrift-coord CMD --help'``,
exit 2. The same mistake given to both parsers gives the same bytes
(``tests/test_cli_parity.py``); here the real program is run."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

ENGINES = ("sqlite", "postgres")
PREFIX = "ringrift-coord: error: "
USAGE = re.compile(r"^ringrift-coord: error: .+; see 'ringrift-coord( [a-z-]+)* --help'$")


def one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0]


TYPOS = [
    # unknown options: hot commands (the fast parser) and the others (the Typer app)
    (
        ("can-spawn", "selfplay", "--nod", "n1"),
        "unknown option --nod (did you mean --node?); see 'ringrift-coord can-spawn --help'",
    ),
    (
        ("run", "selfplay", "--wiat", "--", "true"),
        "unknown option --wiat (did you mean --wait?); see 'ringrift-coord run --help'",
    ),
    (
        ("status", "--jsn"),
        "unknown option --jsn (did you mean --json?); see 'ringrift-coord status --help'",
    ),
    (
        ("tasks", "history", "--limt", "5"),
        "unknown option --limt (did you mean --limit?); see 'ringrift-coord tasks history --help'",
    ),
    (
        ("halt", "--reason", "x", "--tll", "5m"),
        "unknown option --tll (did you mean --ttl?); see 'ringrift-coord halt --help'",
    ),
    (
        ("--stat-dir", "/tmp/x", "status"),
        "unknown option --stat-dir (did you mean --state-dir?); see 'ringrift-coord --help'",
    ),
    # unknown commands
    (
        ("can-spwan", "selfplay"),
        "unknown command 'can-spwan' (did you mean can-spawn?); see 'ringrift-coord --help'",
    ),
    (
        ("tasks", "histroy"),
        "unknown command 'histroy' (did you mean history?); see 'ringrift-coord tasks --help'",
    ),
    (("frobnicate",), "unknown command 'frobnicate'; see 'ringrift-coord --help'"),
    # another tool's word for a drain (Slurm, Kubernetes) names ours
    (
        ("drain", "gpu-1"),
        "unknown command 'drain' (to drain a node: ringrift-coord halt --node N); "
        "see 'ringrift-coord --help'",
    ),
    (
        ("uncordon", "gpu-1"),
        "unknown command 'uncordon' (to resume a node: ringrift-coord unhalt --node N); "
        "see 'ringrift-coord --help'",
    ),
    (  # (not "did you mean resources?")
        ("resume", "gpu-1"),
        "unknown command 'resume' (to resume a node: ringrift-coord unhalt --node N); "
        "see 'ringrift-coord --help'",
    ),
    # the shape of the command line
    (("can-spawn",), "missing argument TYPE; see 'ringrift-coord can-spawn --help'"),
    (
        ("status", "extra"),
        "unexpected extra argument (extra); see 'ringrift-coord status --help'",
    ),
    (
        ("tasks", "history", "--limit"),
        "option --limit requires a value; see 'ringrift-coord tasks history --help'",
    ),
    (("--json=yes", "status"), "option --json takes no value; see 'ringrift-coord --help'"),
    ((), "missing command; see 'ringrift-coord --help'"),
]


@pytest.mark.parametrize(("argv", "line"), TYPOS, ids=lambda v: " ".join(v) if v else "")
def test_typo_one_line_with_a_hint(coord, argv: tuple[str, ...], line: str) -> None:
    got = one_line(coord(*argv))
    assert got == PREFIX + line
    assert USAGE.match(got), got


@pytest.mark.parametrize(
    "argv",
    [
        ("can-spawn", "traning"),
        ("register", "traning", "--node", "n1"),
        ("run", "traning", "--", "true"),
        ("tasks", "list", "--type", "traning"),
        ("halt", "--check", "--type", "traning"),
        ("reserve", "traning", "--node", "n1", "--slots", "1"),
    ],
    ids=" ".join,
)
def test_task_type_typo(coord, argv: tuple[str, ...]) -> None:
    got = one_line(coord(*argv))
    assert "unknown task type 'traning' (did you mean training?); valid types: " in got, got


def test_set_typo_gets_the_hint_the_file_gets(coord) -> None:
    """``--set …per_nod=3``, ``$RINGRIFT_COORD_SET`` and the YAML file say the same hint."""
    flag = one_line(coord("--set", "task_limits.selfplay.per_nod=3", "can-spawn", "selfplay"))
    env = coord(
        "can-spawn",
        "selfplay",
        env={"RINGRIFT_COORD_SET": "resources.live_host=false;task_limits.selfplay.per_nod=3"},
    )
    coord.write_config("task_limits:\n  selfplay:\n    per_nod: 3\n")
    from_file = one_line(coord("can-spawn", "selfplay"), 3)
    hint = "task_limits.selfplay.per_nod: unknown key (did you mean 'per_node'?)"
    assert hint in flag and hint in from_file, (flag, from_file)
    assert hint in one_line(env, env.returncode)
    coord.write_config("{}\n")
    for key, near in (
        ("stor.lease_ttl=5", "'store'"),
        ("task_limits.trainin.per_node=2", "'training'"),
        ("store.leas_ttl=5", "'lease_ttl'"),
    ):
        got = one_line(coord("--set", key, "limits"))
        assert f"unknown key (did you mean {near}?)" in got, got


def test_an_options_value_is_never_a_global_option(coord) -> None:
    """``halt --reason --json``: the reason is "--json", not the global flag (the Typer
    commands' own options are known when the global ones are moved to the front)."""
    done = coord("halt", "--reason", "--json")
    assert done.returncode == 0, done.stderr
    assert not done.stdout.lstrip().startswith("{"), done.stdout  # text, not JSON
    check = coord("--json", "halt", "--check")
    assert check.returncode == 1, check.stderr
    assert [h["reason"] for h in json.loads(check.stdout)["halts"]] == ["--json"]
    assert coord("unhalt").returncode == 0
    # a global option after the command is still the global one
    done = coord("halt", "--reason", "r2", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["reason"] == "r2", done.stdout
