"""Bad input through the CLI: exit 2 and one clear line on stderr, never a traceback.

Both parsers are covered: the fast argv parser of ``cli/parser.py`` (can-spawn, register,
unregister, run) and the Typer app (everything else). With ``--json`` an error is also one
JSON document ``{"error": ..., "exit_code": ...}`` on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PREFIX = "ringrift-coord: error: "


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, exactly one line on stderr containing every fragment; returns the message."""
    no_traceback(result)
    assert result.returncode == 2, (result.returncode, result.stderr, result.stdout)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    message = lines[0][len(PREFIX) :]
    assert message.strip(), "an empty error message"
    for fragment in fragments:
        assert fragment in message, message
    return message


def dead_pid() -> int:
    """A pid that no process has: one above the kernel's maximum."""
    try:
        with open("/proc/sys/kernel/pid_max") as handle:
            return int(handle.read()) + 1
    except OSError:
        return 2**22 + 1


def reaped_pid() -> int:
    """The pid of a process that has just exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- cases

PID = str(os.getpid())

# (argv, fragments the one line must contain)
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # unknown command
    "unknown-command": (("frobnicate",), ("unknown command", "frobnicate")),
    "unknown-command-typo": (("can-spwan", "selfplay"), ("can-spwan", "can-spawn")),
    "unknown-subcommand": (("tasks", "bogus"), ("unknown command", "bogus")),
    "empty-command": (("",), ("unknown command",)),
    "missing-command": ((), ("missing command",)),
    "missing-subcommand": (("config",), ("missing command",)),
    # unknown options: fast parser ...
    "unknown-option-can-spawn": (("can-spawn", "selfplay", "--bogus"), ("--bogus",)),
    "unknown-option-register": (
        ("register", "selfplay", "--pid", PID, "--bogus", "1"),
        ("--bogus",),
    ),
    "unknown-option-unregister": (("unregister", "x-1", "--bogus"), ("--bogus",)),
    "unknown-option-run": (("run", "selfplay", "--bogus", "--", "true"), ("--bogus",)),
    "unknown-short-option": (("can-spawn", "selfplay", "-x"), ("-x",)),
    "typer-option-on-hot-command": (("can-spawn", "selfplay", "--type", "training"), ("--type",)),
    # ... and Typer
    "unknown-option-status": (("status", "--bogus"), ("unknown option", "--bogus")),
    "unknown-option-halt": (("halt", "--bogus"), ("--bogus",)),
    "unknown-option-decisions": (("decisions", "--pid", "1"), ("--pid",)),
    "unknown-global-option": (("--bogus", "can-spawn", "selfplay"), ("--bogus",)),
    "flag-with-value": (("can-spawn", "selfplay", "--json=yes"), ("--json",)),
    "option-without-value": (("can-spawn", "selfplay", "--node"), ("--node", "requires a value")),
    "option-value-is-separator": (("register", "selfplay", "--pid", "--"), ("--pid",)),
    # unknown task type
    "unknown-type-can-spawn": (
        ("can-spawn", "quantum"),
        ("unknown task type 'quantum'", "selfplay"),
    ),
    "unknown-type-register": (("register", "quantum", "--pid", PID), ("unknown task type",)),
    "unknown-type-run": (("run", "quantum", "--", "true"), ("unknown task type",)),
    "unknown-type-reserve": (
        ("reserve", "quantum", "--node", "n1", "--slots", "1"),
        ("unknown task type",),
    ),
    "unknown-type-halt-check": (("halt", "--check", "--type", "quantum"), ("unknown task type",)),
    "unknown-type-tasks": (("tasks", "list", "--type", "quantum"), ("unknown task type",)),
    # --pid
    "pid-not-integer": (
        ("register", "selfplay", "--pid", "abc"),
        ("--pid", "'abc'", "not an integer"),
    ),
    "pid-empty": (("register", "selfplay", "--pid="), ("--pid",)),
    "pid-too-large": (("register", "selfplay", "--pid", "99999999999999999999"), ("--pid",)),
    "pid-does-not-exist": (
        ("register", "selfplay", "--pid", str(dead_pid())),
        ("no running process",),
    ),
    "pid-zero": (("register", "selfplay", "--pid", "0"), ("no running process",)),
    "pid-negative": (("register", "selfplay", "--pid", "-7"), ("no running process",)),
    # missing arguments
    "missing-type-can-spawn": (("can-spawn",), ("missing argument", "TYPE")),
    "missing-type-register": (("register", "--pid", PID), ("missing argument", "TYPE")),
    "missing-type-run": (("run", "--", "true"), ("missing argument", "TYPE")),
    "missing-id-unregister": (("unregister",), ("missing argument",)),
    "extra-argument": (("can-spawn", "selfplay", "training"), ("extra argument", "training")),
    # run
    "run-no-command": (("run", "selfplay"), ("needs a command",)),
    "run-empty-command": (("run", "selfplay", "--"), ("needs a command",)),
    "run-timeout-without-wait": (
        ("run", "selfplay", "--timeout", "5", "--", "true"),
        ("--timeout", "--wait"),
    ),
    "run-timeout-not-a-number": (
        ("run", "selfplay", "--wait", "--timeout", "soon", "--", "true"),
        ("--timeout", "not a number"),
    ),
    "run-timeout-nan": (
        ("run", "selfplay", "--wait", "--timeout", "nan", "--", "true"),
        ("--timeout",),
    ),
    "run-timeout-negative": (
        ("run", "selfplay", "--wait", "--timeout", "-1", "--", "true"),
        ("--timeout",),
    ),
    # reserve
    "reserve-no-node-no-slots": (("reserve", "selfplay"), ("--node", "--slots")),
    "reserve-no-slots": (("reserve", "selfplay", "--node", "n1"), ("--slots",)),
    "reserve-no-node": (("reserve", "selfplay", "--slots", "2"), ("--node",)),
    "reserve-zero-slots": (("reserve", "selfplay", "--node", "n1", "--slots", "0"), ("--slots",)),
    "reserve-huge-slots": (
        ("reserve", "selfplay", "--node", "n1", "--slots", "99999999999999999999"),
        ("--slots",),
    ),
    "reserve-huge-ttl": (
        ("reserve", "selfplay", "--node", "n1", "--slots", "1", "--ttl", "1e308"),
        ("--ttl",),
    ),
    "reserve-release-unknown": (
        ("reserve", "release", "res-doesnotexist"),
        ("no reservation", "res-doesnotexist"),
    ),
    "reserve-release-no-id": (("reserve", "release"), ("reservation ID",)),
    # a subcommand mistyped gets the subcommand, not only "unknown task type"
    "reserve-list-typo": (
        ("reserve", "lst", "--node", "vm", "--slots", "1"),
        ("did you mean list?",),
    ),
    "reserve-list-typo-alone": (("reserve", "lst"), ("'lst' (did you mean list?)",)),
    "reserve-release-typo": (("reserve", "relese", "x"), ("did you mean release?",)),
    "reserve-type-typo-alone": (("reserve", "selfply"), ("did you mean selfplay?",)),
    # unregister
    "unregister-unknown-id": (
        ("unregister", "selfplay-000000000000"),
        ("no task", "selfplay-000000000000"),
    ),
    "unregister-bad-status": (("unregister", "x-1", "--status", "exploded"), ("--status",)),
    "unregister-bad-exit-code": (("unregister", "x-1", "--exit-code", "one"), ("--exit-code",)),
    "unregister-negative-exit-code": (("unregister", "x-1", "--exit-code", "-1"), ("0-255",)),
    "unregister-exit-code-300": (("unregister", "x-1", "--exit-code", "300"), ("--exit-code",)),
    "unregister-huge-exit-code": (
        ("unregister", "x-1", "--exit-code", "99999999999999999999"),
        ("--exit-code",),
    ),
    # halt
    "halt-negative-ttl": (("halt", "--ttl", "-5"), ("--ttl", "negative")),
    "halt-zero-ttl": (("halt", "--ttl", "0"), ("--ttl",)),
    "halt-nan-ttl": (("halt", "--ttl", "nan"), ("--ttl",)),
    "halt-huge-ttl": (("halt", "--ttl", "1e308"), ("--ttl",)),
    "halt-ttl-not-a-number": (("halt", "--ttl", "soon"), ("--ttl",)),
    "halt-check-with-reason": (("halt", "--check", "--reason", "x"), ("--check",)),
    "halt-reason-newline": (("halt", "--reason", "line one\nline two"), ("--reason", "control")),
    # decisions
    "decisions-since-garbage": (("decisions", "--since", "garbage"), ("--since", "'garbage'")),
    "decisions-since-bad-date": (("decisions", "--since", "2024-13-45"), ("--since",)),
    # a range in the words of every other option, not Click's "invalid value for '--limit'"
    "decisions-limit-zero": (
        ("decisions", "--limit", "0"),
        ("option --limit: 0 is not an integer from 1 to 1000000",),
    ),
    "history-limit-zero": (
        ("tasks", "history", "--limit", "0"),
        ("option --limit: 0 is not an integer from 1 to 1000000",),
    ),
    "history-limit-over": (
        ("tasks", "history", "--limit", "1000001"),
        ("option --limit: 1000001 is not an integer from 1 to 1000000",),
    ),
    "decisions-limit-huge": (("decisions", "--limit", "99999999999999999999"), ("--limit",)),
    "history-limit-huge": (("tasks", "history", "--limit", "99999999999999999999"), ("--limit",)),
    # text that later messages print must stay one line
    "node-empty": (("can-spawn", "selfplay", "--node", ""), ("--node",)),
    # an empty file or directory name would silently mean "none given"
    "config-empty": (("--config", "", "status"), ("--config", "empty name")),
    "config-empty-fast": (("--config=", "can-spawn", "selfplay"), ("--config", "empty name")),
    "state-dir-empty": (("--state-dir", "", "can-spawn", "selfplay"), ("--state-dir", "empty")),
    "db-empty": (("--db", "", "tasks"), ("--db", "empty name")),
    "validate-empty": (("config", "validate", ""), ("FILE", "empty name")),
    "node-newline": (("can-spawn", "selfplay", "--node", "gpu-1\ngpu-2"), ("--node", "control")),
    "node-escape": (("register", "selfplay", "--pid", PID, "--node", "n\x1b[2J"), ("--node",)),
    "reserve-node-newline": (
        ("reserve", "selfplay", "--node", "a\nb", "--slots", "1"),
        ("--node",),
    ),
    "db-scheme": (("--db", "mysql://host/db", "can-spawn", "selfplay"), ("unsupported database",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exit_2_one_line(coord, name: str) -> None:
    argv, fragments = CASES[name]
    result = coord(*argv, input="")
    usage_error(result, *fragments)
    if name != "missing-command" and name != "missing-subcommand":
        assert result.stdout == ""  # nothing half-done was printed (help is the exception)


JSON_CASES = [
    "unknown-command",
    "unknown-option-can-spawn",
    "unknown-option-status",
    "unknown-type-register",
    "pid-not-integer",
    "pid-does-not-exist",
    "run-no-command",
    "run-timeout-without-wait",
    "reserve-no-slots",
    "reserve-release-unknown",
    "unregister-unknown-id",
    "halt-negative-ttl",
    "decisions-since-garbage",
]


@pytest.mark.parametrize("name", JSON_CASES)
def test_bad_input_with_json_prints_one_error_document(coord, name: str) -> None:
    argv, fragments = CASES[name]
    # --json before the command, or after it (alternately, to keep the suite fast)
    args = ("--json", *argv) if JSON_CASES.index(name) % 2 else (*argv[:1], "--json", *argv[1:])
    result = coord(*args, input="")
    message = usage_error(result, *fragments)
    document = json.loads(result.stdout)  # exactly one JSON document
    assert document == {"schema_version": 1, "error": message, "exit_code": 2}


def test_pid_of_a_process_that_just_exited(coord) -> None:
    pid = reaped_pid()
    usage_error(
        coord("register", "selfplay", "--pid", str(pid)), f"--pid {pid}", "no running process"
    )
    # and nothing was registered: not even the store was created
    listed = coord("--json", "tasks")
    assert listed.returncode == 3 and "no store at" in listed.stderr
    assert not coord.db.exists()


def test_rejected_halt_leaves_no_halt(coord) -> None:
    for ttl in ("-5", "1e308", "nan"):
        usage_error(coord("halt", "--ttl", ttl))
    usage_error(coord("halt", "--reason", "a\nb"))
    check = coord("halt", "--check")  # nothing at all was written: not even the store
    assert check.returncode == 3 and "no store at" in check.stderr, check.stdout + check.stderr
    assert not (coord.state_dir / "EMERGENCY_HALT").exists() and not coord.db.exists()


def test_a_ttl_in_exponent_form_gets_the_limit_not_a_refused_value(coord) -> None:
    """--ttl 1e10 said "write 10000000000, not 1e10", which is refused in turn (more than
    1e9 s): a number no form of which is taken gets the limit; one within it, the advice."""
    for argv, says in (
        (("halt", "--ttl", "1e10"), "1e+10 is more than 1e9 seconds"),
        (("reserve", "selfplay", "--node", "n1", "--slots", "1", "--ttl", "2e9"), "more than"),
        (("halt", "--ttl", "-1e10"), "is not a positive number of seconds"),
    ):
        message = usage_error(coord(*argv), "option --ttl: ", says)
        assert "write" not in message, message
    usage_error(coord("halt", "--ttl", "1e3"), "--ttl", "write 1000, not 1e3")
    assert not coord.db.exists()  # nothing was halted: not even the store made


def test_rejected_reserve_leaves_no_reservation(coord) -> None:
    usage_error(coord("reserve", "selfplay", "--node", "n1", "--slots", "1", "--ttl", "1e308"))
    usage_error(coord("reserve", "selfplay", "--node", "n1", "--slots", "99999999999999999999"))
    listed = coord("--json", "reserve", "list")
    if coord.engine == "sqlite":  # nothing was written: not even the store
        assert listed.returncode == 3 and "no store at" in listed.stderr, listed.stderr
        assert not coord.db.exists()
        return
    assert listed.returncode == 0 and json.loads(listed.stdout)["reservations"] == []
    status = coord("status")  # and every listing still renders
    assert status.returncode == 0, status.stderr


def test_help_is_not_an_error(coord) -> None:
    for argv in (("--help",), ("can-spawn", "--help"), ("run", "-h"), ("halt", "--help")):
        result = coord(*argv)
        no_traceback(result)
        assert result.returncode == 0 and "Usage" in result.stdout and result.stderr == ""


# --------------------------------------------------------------------------- random argv

COMMANDS = [
    ("can-spawn",),
    ("spawn-check",),
    ("register",),
    ("unregister",),
    ("run",),
    ("tasks",),
    ("tasks", "list"),
    ("tasks", "reap"),
    ("tasks", "history"),
    ("reserve",),
    ("reserve", "release"),
    ("reserve", "list"),
    ("halt", "--check"),
    ("unhalt",),
    ("decisions",),
    ("limits",),
    ("targets",),
    ("status",),
    ("config", "show"),
    ("config", "validate"),
    ("frobnicate",),
    ("config",),
    (),
]
OPTIONS = [
    "--node",
    "--pid",
    "--task-id",
    "--config-name",
    "--exit-code",
    "--status",
    "--token",
    "--reason",
    "--wait",
    "--timeout",
    "--type",
    "--ttl",
    "--denied",
    "--since",
    "--limit",
    "--slots",
    "--json",
    "--help",
    "-h",
    "--version",
    "--bogus",
    "-x",
    "--node=",
    "--pid=",
    "--ttl=",
    "--set",
]
WORDS = [
    "selfplay",
    "training",
    "cmaes",
    "gauntlet",
    "quantum",
    "SELFPLAY",
    "cma-es",
    "release",
    "list",
    "0",
    "1",
    "-1",
    "7",
    "2.5",
    "1e999",
    "-1e999",
    "nan",
    "inf",
    "99999999999999999999",
    "abc",
    "",
    " ",
    "--",
    "=",
    "30m",
    "garbage",
    "2024-01-01T00:00:00Z",
    "res-x",
    "selfplay-1",
    "ok",
    "oom",
    "exploded",
    "a\nb",
    "\x1b[31m",
    "üñí",
    "$(echo pwned)",
    "%s%n",
    "store.lease_ttl=1",
    "task_limits.selfplay.per_node=-1",
    "true",
    "false",
]

# run's command, when there is one, is always a short harmless one (or a missing program)
argv_strategy = st.builds(
    lambda command, tail: [*command, *tail],
    st.sampled_from(COMMANDS),
    st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(WORDS)), max_size=6),
)

# processes that may legitimately exit with a command's own status
RUN_CODES = {126, 127} | {128 + n for n in range(1, 65)}


def _allowed(argv: list[str], code: int) -> bool:
    if code in (0, 1, 2, 3, 75):
        return True
    return "run" in argv and code in RUN_CODES


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=argv_strategy)
def test_random_argv_never_tracebacks(coord, argv: list[str]) -> None:
    if argv[:1] == ["run"] and "--wait" in argv:
        argv = [a for a in argv if a != "--wait"]  # never queue behind anything
    with tempfile.TemporaryDirectory(dir=coord.tmp) as state:  # a fresh store per example
        result = coord(
            *argv, input="", timeout=60, env={"RINGRIFT_COORDINATOR_DIR": os.path.join(state, "s")}
        )
    no_traceback(result)
    assert "internal error" not in result.stderr, (argv, result.stderr)
    assert _allowed(argv, result.returncode), (argv, result.returncode, result.stderr)
    if result.returncode in (2, 3):
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith(PREFIX)]
        assert len(lines) == 1, (argv, result.stderr)
        assert lines[0][len(PREFIX) :].strip(), (argv, result.stderr)
        if result.stdout and "--json" in argv and not ({"--help", "-h", "--"} & set(argv)):
            last = result.stdout.splitlines()[-1]
            assert json.loads(last)["exit_code"] == result.returncode, (argv, result.stdout)


def test_shell_syntax_in_values_is_never_interpreted(coord) -> None:
    """Values are data: no shell, no format strings (the random vocabulary has these too)."""
    result = coord("can-spawn", "selfplay", "--node", "$(touch pwned)", input="")
    assert result.returncode == 0, result.stderr
    assert not Path("pwned").exists() and not (coord.tmp / "pwned").exists()


@pytest.mark.parametrize(
    "argv", [("status",), ("tasks",), ("halt", "--check"), ("breakers", "list")]
)
def test_a_read_only_command_on_a_new_machine_creates_no_state_directory(
    coord, tmp_path, argv: tuple[str, ...]
) -> None:
    """Before anything was recorded a read-only command says so (exit 3 "no store at") and
    leaves the machine as it found it: no state directory, no config cache, no store."""
    if coord.engine != "sqlite":
        pytest.skip("a server's store is read wherever the state directory is")
    missing = tmp_path / "never-made" / "ringrift-coord"
    done = coord("--state-dir", str(missing), *argv)
    assert done.returncode == 3 and "no store at" in done.stderr, done.stdout + done.stderr
    assert not missing.parent.exists()


@pytest.mark.parametrize("argv", [("config", "show"), ("targets",), ("limits",)])
def test_a_settings_listing_on_a_new_machine_answers_and_creates_nothing(
    coord, tmp_path, argv: tuple[str, ...]
) -> None:
    """The settings in effect need no store: the listing is printed (exit 0) and no state
    directory is left behind (``config show`` and ``targets`` made one)."""
    if coord.engine != "sqlite":
        pytest.skip("a server's store is read wherever the state directory is")
    missing = tmp_path / "never-made" / "ringrift-coord"
    done = coord("--state-dir", str(missing), *argv)
    assert done.returncode == 0 and "default" in done.stdout, done.stdout + done.stderr
    assert not missing.parent.exists()


def test_a_reason_longer_than_what_is_kept_is_cut_and_said_never_refused(coord) -> None:
    """Every reason keeps at most MAX_REASON characters: a longer --reason is cut (its last
    kept character '…') and the command says so on stderr, but does what it was asked: a
    halt must not fail over its reason (a 70,000-character one made the halt's HALT event
    too big), nor a release (run's own 'cannot run ...' reason for a long program name)."""
    from ringrift_coord.feedback import MAX_REASON as BREAKER_KEEPS
    from ringrift_coord.inputs import MAX_REASON

    longest, over = "r" * MAX_REASON, "o" * (70 * MAX_REASON)
    kept = "o" * (MAX_REASON - 1) + "…"
    task = coord("register", "selfplay", "--node", "n1", "-q")
    transfer = coord("bandwidth", "start", "aws-1", "--kind", "d")
    assert task.returncode == 0 and transfer.returncode == 0, task.stderr + transfer.stderr
    commands = [
        ("halt",),
        ("unregister", task.stdout.strip()),
        ("breakers", "record-failure", "--type", "selfplay", "--node", "n1"),
        ("bandwidth", "end", transfer.stdout.strip()),
    ]
    for argv in commands:
        keeps = BREAKER_KEEPS if argv[0] == "breakers" else MAX_REASON  # (one line of 300)
        said = f"warning: --reason has {len(over):,} characters; its first {keeps:,} are kept"
        done = coord("--json", *argv, "--reason", over)
        assert done.returncode == 0 and said in done.stderr, (argv, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
    failure = json.loads(coord("--json", "breakers", "list").stdout)["breakers"][0]
    assert len(failure["last_reason"]) == BREAKER_KEEPS, failure
    halted = json.loads(coord("--json", "halt", "--check").stdout)
    assert [h["reason"] for h in halted["halts"]] == [kept]
    (ended,) = json.loads(coord("--json", "tasks", "history").stdout)["tasks"]
    assert ended["reason"] == kept
    # one of exactly the limit is kept whole, and nothing is said; nor of a blank one (none)
    whole = coord("halt", "--reason", longest)
    assert whole.returncode == 0 and "warning" not in whole.stderr, whole.stderr
    halted = json.loads(coord("--json", "halt", "--check").stdout)
    assert [h["reason"] for h in halted["halts"]] == [longest]
    blank = coord("halt", "--reason", " " * (2 * MAX_REASON))
    assert blank.returncode == 0 and "warning" not in blank.stderr, blank.stderr
    halted = json.loads(coord("--json", "halt", "--check").stdout)
    assert [h["reason"] for h in halted["halts"]] == [None]
    # run's own reason for a program it could not start: cut, and the slot released
    assert coord("unhalt").returncode == 0
    missing = "/" + "p" * 1200
    failed = coord("run", "training", "--node", "n1", "--", missing)
    assert failed.returncode == 126 and "could not release" not in failed.stderr, failed.stderr
    assert coord("tasks", "--format", "tsv", "--no-header").stdout == ""
