"""The command line's edges: what ``run`` hands its job, ``--version``, bytes that are not
UTF-8, internal errors, and a stdout that is closed or a pipe nobody reads.

Every case runs the real program in a subprocess and checks the exit code, the exact
stderr line and the store afterwards (``tasks --json`` / ``tasks history --json``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Coord

import ringrift_coord

PREFIX = "ringrift-coord: error: "
EXE = Path(sys.executable).parent / "ringrift-coord"
CONFIG = "rate_limits: {selfplay: {per_minute: null}}\n"


@pytest.fixture
def c(coord: Coord) -> Coord:
    coord.write_config(CONFIG)
    return coord


def one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """Exit ``code`` and exactly one line on stderr, the boundary's; returns the message."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == code, (result.returncode, stderr, result.stdout)
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0][len(PREFIX) :]


def tasks(coord: Coord) -> list[dict]:
    """The running tasks ([] also when no store exists yet: nothing was ever recorded)."""
    done = coord("--json", "tasks")
    if done.returncode == 3 and "no store at" in done.stderr:
        return []
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["tasks"]


def history(coord: Coord) -> list[dict]:
    """The finished tasks ([] also when no store exists yet)."""
    done = coord("--json", "tasks", "history")
    if done.returncode == 3 and "no store at" in done.stderr:
        return []
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["tasks"]


def run_bytes(coord: Coord, *args: str | bytes, **kw) -> subprocess.CompletedProcess[bytes]:
    """Run with arguments given as bytes where they are not UTF-8 (what a shell passes)."""
    return subprocess.run(
        [sys.executable, "-m", "ringrift_coord", *args],
        env=coord.env,
        cwd=coord.tmp,  # a refused --db must not leave a file behind, least of all here
        capture_output=True,
        timeout=60,
        **kw,
    )


def stdout_closed(coord: Coord, *args: str) -> subprocess.CompletedProcess[str]:
    """Run with file descriptor 1 closed (``ringrift-coord ... >&-``)."""
    return subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *coord.argv(*args)],
        env=coord.env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def stdout_broken_pipe(coord: Coord, *args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose read end is already closed (``... | head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.Popen(
            coord.argv(*args),
            env=coord.env,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, err)


# --------------------------------------------------------------------------- defect 3: run's job


def test_words_after_the_wrapped_command_are_the_jobs(c: Coord) -> None:
    done = c("run", "selfplay", "echo", "a", "--json", "-h")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a --json -h\n"  # the job's words; no JSON, no help from the wrapper
    assert done.stderr == ""


def test_options_of_run_before_the_wrapped_command_and_job_help(c: Coord) -> None:
    job = 'echo "$RINGRIFT_NODE_ID" "$@"'
    done = c("run", "selfplay", "--node", "n1", "sh", "-c", job, "sh", "a", "-h")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "n1 a -h\n"
    done = c("run", "selfplay", "--node", "n1", "echo", "a", "-h")
    assert (done.returncode, done.stdout) == (0, "a -h\n"), done.stderr
    assert [row["node"] for row in history(c)] == ["n1", "n1"]


@pytest.mark.parametrize(
    "argv,job_output",
    [
        (("run", "selfplay", "--", "echo", "--node", "x"), "--node x\n"),
        (("run", "selfplay", "echo", "--", "x"), "-- x\n"),
        (("run", "selfplay", "sh", "-c", 'echo "$@"', "sh", "--help"), "--help\n"),
        (("run", "selfplay", "--node", "n1", "--", "echo", "--wait"), "--wait\n"),
        (("run", "--node", "n1", "selfplay", "echo", "--node", "n2"), "--node n2\n"),
    ],
    ids=" ".join,
)
def test_job_words_with_and_without_separator(c: Coord, argv, job_output: str) -> None:
    done = c(*argv)
    assert (done.returncode, done.stdout, done.stderr) == (0, job_output, "")


@pytest.mark.parametrize(
    "argv",
    [
        ("--json", "run", "selfplay", "echo", "a"),
        ("run", "selfplay", "--json", "echo", "a"),
        ("run", "--json", "selfplay", "--", "echo", "a"),
    ],
    ids=" ".join,
)
def test_global_options_before_the_wrapped_command_are_the_wrappers(c: Coord, argv) -> None:
    done = c(*argv)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["exit_code"] == 0  # the one document on stdout
    assert done.stderr == "a\n"  # the job's stdout, on run's stderr with --json


@pytest.mark.parametrize("argv", [("run", "-h"), ("run", "selfplay", "--help")], ids=" ".join)
def test_help_before_the_wrapped_command_is_help(c: Coord, argv) -> None:
    done = c(*argv)
    assert done.returncode == 0 and done.stderr == ""
    assert "Usage: ringrift-coord run" in done.stdout and "--config-name" in done.stdout
    assert history(c) == []


# --------------------------------------------------------------------------- defect 4: --version


def test_version(coord: Coord) -> None:
    expected = f"ringrift-coord {importlib.metadata.version('ringrift-coord')}\n"
    assert ringrift_coord.__version__ == importlib.metadata.version("ringrift-coord")
    for argv in (coord.argv("--version"), [str(EXE), "--version"]):
        done = subprocess.run(argv, env=coord.env, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (0, expected, ""), argv


def imported_by(coord: Coord, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ringrift_coord", *args],
        env=coord.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}


def test_version_does_not_import_typer(coord: Coord) -> None:
    assert not {"typer", "rich", "click"} & imported_by(coord, "--version")


@pytest.mark.parametrize(
    "argv",
    [
        ("can-spawn", "selfplay"),
        ("--json", "run", "selfplay", "--node", "n1", "--", "true"),
        ("--json", "bandwidth", "run", "h1", "--", "true"),
    ],
    ids=" ".join,
)
def test_hot_commands_import_nothing_heavy(c: Coord, argv) -> None:
    heavy = {"typer", "rich", "click", "typing", "dataclasses", "inspect"}
    assert heavy & imported_by(c, *argv) == set()


ROOT = Path(__file__).resolve().parent.parent


def bare_env(tmp: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "XDG_CONFIG_HOME": str(tmp / "no-config"),
        "RINGRIFT_COORDINATOR_DIR": str(tmp / "state"),
        # psutil is not on this path; one selfplay slot per node, for the refusals
        "RINGRIFT_COORD_SET": "resources.live_host=false;task_limits.selfplay.per_node=1",
        "PYTHONPATH": str(ROOT),
    }


def imported_bare(tmp: Path, *args: str, returncode: int = 0) -> set[str]:
    """The modules a command imports in an interpreter without ``site`` (``python -S``, the
    package found through PYTHONPATH): what the command itself loads, not what an editable
    install's import hook or a venv's ``.pth`` files load into every interpreter. The
    modules of a bare ``python -S -c pass`` are taken out."""

    def loaded(*argv: str, rc: int = 0) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-S", "-X", "importtime", *argv],
            env=bare_env(tmp),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == rc, done.stderr[-2000:]
        return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}

    main = "from ringrift_coord.cli.main import console_main; console_main()"
    return loaded("-c", main, *args, rc=returncode) - loaded("-c", "pass")


@pytest.mark.parametrize(
    "argv",
    [
        ("can-spawn", "selfplay", "--node", "n1"),
        ("register", "selfplay", "--node", "n1", "--pid", str(os.getpid())),
        ("run", "selfplay", "--node", "n1", "--", "true"),
    ],
    ids=lambda argv: argv[0],
)
def test_hot_commands_load_no_enum_re_or_signal(tmp_path: Path, argv) -> None:
    """``enum`` (~2 ms), ``re`` through ``shlex`` (~5 ms) and ``signal`` (enum) are start-up
    time of every launch that these commands have no use for: the exit codes and task types
    are plain values on this path, ``run`` quotes and names signals itself. (``_sqlite3``
    loads ``functools``/``collections`` for its statement cache: not ours to avoid.)"""
    loaded = imported_bare(tmp_path, *argv)
    assert "ringrift_coord.store.sqlite" in loaded  # it ran: the store was opened
    assert {"enum", "re", "shlex", "signal", "typing", "dataclasses"} & loaded == set()
    # (run's job: its child searches PATH itself, os.execvpe would import warnings there)
    assert "warnings" not in loaded


@pytest.mark.parametrize("why", ["full", "halted"])
def test_a_refusal_loads_no_json_re_enum_or_hashlib(tmp_path: Path, why: str) -> None:
    """A refusal is the common answer on a busy cluster (every waiting ``run --wait`` gets
    one first): it logs its rules, counts the denial and publishes TASK_DENIED, all JSON
    text and a SHA-256, without ``json`` (which loads ``re`` and ``enum``) or ``hashlib``
    (OpenSSL): ~20 ms of CPU of a ~60 ms refusal. (A halted host reads its halt file,
    JSON, with ``json``.)"""
    cli = [sys.executable, "-m", "ringrift_coord"]
    if why == "full":
        take = [*cli, "register", "selfplay", "--node", "n1", "--pid", str(os.getpid())]
    else:
        take = [*cli, "halt", "--reason", "maintenance"]
    done = subprocess.run(take, env=bare_env(tmp_path), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = imported_bare(tmp_path, "can-spawn", "selfplay", "--node", "n1", returncode=1)
    assert "ringrift_coord.events" in loaded  # it published the refusal
    assert {"hashlib", "_hashlib", "fnmatch"} & loaded == set()
    if why == "full":
        assert {"json", "re", "enum"} & loaded == set()


def test_a_refused_can_spawn_imports_nothing_heavy(c: Coord) -> None:
    """A refusal publishes TASK_DENIED: with no hook matching it, nothing to start a runner
    with (subprocess, tempfile) nor typing is loaded."""
    assert c("halt", "--reason", "x").returncode == 0
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ringrift_coord", "can-spawn", "selfplay"],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    heavy = {"typer", "rich", "click", "typing", "dataclasses", "inspect"}
    assert (heavy | {"subprocess", "tempfile"}) & loaded == set()


# --------------------------------------------------------------------------- defect 5: not UTF-8

BAD = b"n\xff1"
SHOWN = repr(os.fsdecode(BAD))  # 'n\udcff1'

BAD_ARGS = {
    "can-spawn --node": ([b"can-spawn", b"selfplay", b"--node", BAD], "option --node"),
    "--node= inline": ([b"can-spawn", b"selfplay", b"--node=" + BAD], "option --node"),
    "register --task-id": ([b"register", b"selfplay", b"--task-id", BAD], "option --task-id"),
    "register --config-name": (
        [b"register", b"selfplay", b"--config-name", BAD],
        "option --config-name",
    ),
    "register --node": ([b"register", b"selfplay", b"--node", BAD], "option --node"),
    "unregister --reason": ([b"unregister", b"x-1", b"--reason", BAD], "option --reason"),
    "unregister ID": ([b"unregister", BAD], "argument ID"),
    "run --node": ([b"run", b"selfplay", b"--node", BAD, b"--", b"true"], "option --node"),
    "run --config-name": (
        [b"run", b"selfplay", b"--config-name", BAD, b"true"],
        "option --config-name",
    ),
    "global --set": ([b"can-spawn", b"selfplay", b"--set", BAD], "option --set"),
    "halt --reason": ([b"halt", b"--reason", BAD], "option --reason"),
    "reserve --node": (
        [b"reserve", b"selfplay", b"--node", BAD, b"--slots", b"1"],
        "option --node",
    ),
    "breakers record-failure --reason": (
        [b"breakers", b"record-failure", b"--type", b"selfplay", b"--reason", BAD],
        "option --reason",
    ),
    "tasks list --node": ([b"tasks", b"list", b"--node", BAD], "option --node"),
}


@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_argument_not_utf8_is_a_usage_error(c: Coord, name: str) -> None:
    argv, where = BAD_ARGS[name]
    done = run_bytes(c, *argv)
    assert one_error_line(done, 2) == f"{where}: {SHOWN} is not valid UTF-8"
    assert done.stdout == b""


def test_argument_not_utf8_with_json(c: Coord) -> None:
    done = run_bytes(c, b"--json", b"halt", b"--reason", BAD)
    message = one_error_line(done, 2)
    assert json.loads(done.stdout) == {"schema_version": 1, "error": message, "exit_code": 2}


def test_nothing_is_stored_from_an_argument_not_utf8(c: Coord) -> None:
    one_error_line(run_bytes(c, b"halt", b"--reason", BAD), 2)
    one_error_line(run_bytes(c, b"register", b"selfplay", b"--task-id", BAD), 2)
    one_error_line(run_bytes(c, b"reserve", b"selfplay", b"--node", BAD, b"--slots", b"1"), 2)
    assert not c.db.exists()  # nothing at all was stored: not even the store was made
    check = c("halt", "--check")
    assert check.returncode == 3 and "no store at" in check.stderr
    assert tasks(c) == [] and history(c) == []
    assert c("--json", "reserve", "list").returncode == 3


@pytest.mark.parametrize("option", [b"--state-dir", b"--db"])
def test_a_path_may_be_any_bytes(c: Coord, option: bytes) -> None:
    """A file or directory name is whatever the file system allows: the emergency halt
    never fails because the state directory's name is not UTF-8."""
    place = os.fsencode(str(c.tmp)) + b"/place" + BAD
    if option == b"--db":
        place += b".db"
    done = run_bytes(c, option, place, b"halt", b"--reason", b"maintenance")
    assert done.returncode == 0, done.stderr
    assert os.path.exists(place)
    check = run_bytes(c, option, place, b"halt", b"--check")
    assert check.returncode == 1, check.stderr
    assert b"maintenance" in check.stdout


def test_a_path_with_a_control_character_is_refused(c: Coord) -> None:
    done = run_bytes(c, b"--state-dir", os.fsencode(str(c.tmp)) + b"/s\x1b[2J", b"status")
    assert one_error_line(done, 2) == (
        f"option --state-dir: {str(c.tmp) + '/s' + chr(27) + '[2J'!r} contains control characters"
    )


@pytest.mark.parametrize("argv", [("can-spawn", "selfplay"), ("status",)])
def test_a_db_address_with_a_control_character_is_refused_without_its_password(
    c: Coord, argv: tuple[str, ...]
) -> None:
    """``--db`` refused for a control character shows the address, never its password."""
    for address in (
        "postgresql://u:sekrit@h/d\n",
        "postgresql://u\tv:sekrit@h/d",
        "host=h password=sekrit\tdbname=d",
    ):
        for where in ("before", "after"):
            words = ("--db", address, *argv) if where == "before" else (*argv, "--db", address)
            line = one_error_line(c(*words), 2)
            assert "contains control characters" in line and "sekrit" not in line, line
            assert "***" in line, line


@pytest.mark.parametrize("name", ["RINGRIFT_COORD_DB", "RINGRIFT_COORDINATOR_DIR"])
@pytest.mark.parametrize("argv", [("can-spawn", "selfplay"), ("halt", "--check"), ("status",)])
def test_a_control_character_in_a_path_from_the_environment_is_refused(
    c: Coord, name: str, argv: tuple[str, ...]
) -> None:
    """A stray newline in an env file would otherwise name a new store (or state directory)
    of its own, silently: limits and halts of the real one would not apply."""
    value = str(c.tmp / ("tasks.db\n" if name == "RINGRIFT_COORD_DB" else "state\n"))
    assert one_error_line(c(*argv, env={name: value}), 3) == (
        f"{name}: {value!r} contains control characters (a stray newline or escape?): set "
        "it to the path or address alone"
    )
    assert not [p for p in c.tmp.iterdir() if "\n" in p.name]  # nothing made so named
    if name == "RINGRIFT_COORD_DB":  # (an address's password is not shown)
        secret = c(*argv, env={name: "postgresql://u:sekrit@h/d\x1b"})
        assert "sekrit" not in one_error_line(secret, 3)
        # a control character before the password (in the user name) hides it from the
        # address's own pattern: the password libpq reads there is masked all the same
        for inside in ("postgresql://u\tv:sekrit@h/d", "postgresql://u\nv:sekrit@h/d"):
            secret = c(*argv, env={name: inside})
            assert "sekrit" not in one_error_line(secret, 3)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_line_separator_in_a_value_is_refused_whole(c: Coord, separator: str) -> None:
    """A Unicode line break would cut the one error line (and a stored name) in two."""
    node = f"a{separator}b"
    done = c("can-spawn", "selfplay", "--node", node)
    assert one_error_line(done, 2) == f"option --node: {node!r} contains control characters"


def test_json_mode_is_what_the_parser_read(c: Coord) -> None:
    """``--node --json`` is a node called --json: an error is then one line, no JSON."""
    done = c("can-spawn", "bogus", "--node", "--json")
    assert one_error_line(done, 2).startswith("unknown task type 'bogus'")
    assert done.stdout == ""


def test_help_before_an_unknown_option_is_refused_by_both_parsers(c: Coord) -> None:
    done = c("can-spawn", "-h", "--bogus")
    assert "--bogus" in one_error_line(done, 2)


def test_no_option_of_run_is_completed_among_the_jobs_words(c: Coord) -> None:
    def complete(*words: str) -> list[str]:
        env = {
            **c.env,
            "_RINGRIFT_COORD_COMPLETE": "complete_bash",
            "COMP_WORDS": " ".join(["ringrift-coord", *words]),
            "COMP_CWORD": str(len(words)),
        }
        done = subprocess.run([str(EXE)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert "--node" in complete("run", "selfplay", "--n")
    assert complete("run", "selfplay", "echo", "--n") == []


def test_the_jobs_words_may_be_any_bytes(c: Coord) -> None:
    for argv in (
        [b"run", b"selfplay", b"printf", b"%s|", BAD, b"-h"],
        [b"run", b"selfplay", b"--", b"printf", b"%s|", BAD, b"-h"],
    ):
        done = run_bytes(c, *argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, BAD + b"|-h|", b"")


@pytest.mark.parametrize(
    "argv,where",
    [
        (("tasks", "list", "--node", "a\nb"), "option --node"),
        (("decisions", "--node", "\x1b[2J"), "option --node"),
        (("breakers", "list", "--node", "a\tb"), "option --node"),
        (("report", "--node", "n\x1b]0;x\x07"), "option --node"),
        (("can-spawn", "selfplay", "--set", "a=\x1b[31m"), "option --set"),
        (("unregister", "x\n1"), "argument ID"),
    ],
    ids=lambda v: repr(v) if isinstance(v, tuple) else v,
)
def test_control_characters_refused_in_every_command(c: Coord, argv, where: str) -> None:
    value = next(a for a in argv if any(ch < " " for ch in a))
    assert one_error_line(c(*argv), 2) == f"{where}: {value!r} contains control characters"


@pytest.mark.parametrize("argv", [("status", "--x\x1b[2J"), ("can-spawn", "selfplay", "-\x1b")])
def test_an_error_line_never_carries_an_escape(c: Coord, argv) -> None:
    message = one_error_line(c(*argv), 2)
    assert "\x1b" not in message and "\\x1b" in message


# --------------------------------------------------------------------------- defect 6: exit codes

BOOM = """
import runpy, sys
import ringrift_coord.cli.hot as hot

def boom(*args, **kwargs):
    raise RuntimeError("boom")

hot.can_spawn = boom
sys.argv = ["ringrift-coord", *sys.argv[1:]]
runpy.run_module("ringrift_coord", run_name="__main__", alter_sys=True)
"""


def test_internal_error_exits_70(c: Coord) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BOOM, "can-spawn", "selfplay"],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    message = one_error_line(done, 70)
    assert message == (
        "internal error: RuntimeError: boom (set RINGRIFT_COORD_DEBUG=1 for a traceback)"
    )
    done = subprocess.run(
        [sys.executable, "-c", BOOM, "--json", "can-spawn", "selfplay"],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == {
        "schema_version": 1,
        "error": one_error_line(done, 70),
        "exit_code": 70,
    }


def test_exit_codes_are_named() -> None:
    from ringrift_coord.errors import ExitCode

    assert ExitCode.by_name() == {
        "OK": 0,
        "DENIED": 1,
        "USAGE": 2,
        "CONFIG": 3,
        "SOFTWARE": 70,
        "TEMPFAIL": 75,
        "CANNOT_EXECUTE": 126,
        "NOT_FOUND": 127,
        "SIGNAL_BASE": 128,
        "INTERRUPTED": 130,
    }
    assert ExitCode.for_signal(9) == 137 and ExitCode.for_signal(2) == ExitCode.INTERRUPTED


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("closed", [stdout_closed, stdout_broken_pipe], ids=["closed", "epipe"])
def test_can_spawn_with_stdout_lost_keeps_the_decisions_code(c: Coord, json_mode, closed) -> None:
    args = ("--json",) if json_mode else ()
    done = closed(c, *args, "can-spawn", "selfplay")
    assert (done.returncode, done.stderr) == (0, "")
    assert c("halt", "--type", "selfplay").returncode == 0
    done = closed(c, *args, "can-spawn", "selfplay")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


@pytest.mark.parametrize("closed", [stdout_closed, stdout_broken_pipe], ids=["closed", "epipe"])
@pytest.mark.parametrize("argv", [("status",), ("tasks",), ("--json", "status"), ("limits",)])
def test_listing_into_a_closed_stdout_is_quiet(c: Coord, argv, closed) -> None:
    assert c("tasks", "reap").returncode == 0  # a store to list (read-only commands make none)
    done = closed(c, *argv)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("argv", [("status", "--format", "plain"), ("status", "--brief")])
def test_an_output_encoding_without_the_symbols_escapes_them_not_drops_everything(
    c: Coord, argv: tuple[str, ...]
) -> None:
    """``PYTHONIOENCODING=ascii`` (or a terminal's legacy charset): "∞" and "·" cannot be
    encoded; the listing is still printed whole, those characters escaped."""
    assert c("tasks", "reap").returncode == 0
    whole = c(*argv)
    assert "\u221e" in whole.stdout  # (the builtin types include unlimited per-node ones)
    done = c(*argv, env={"PYTHONIOENCODING": "ascii"})
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.isascii(), done.stdout
    assert len(done.stdout.splitlines()) == len(whole.stdout.splitlines()), done.stdout
    assert "\\u221e" in done.stdout, done.stdout


def both_broken(coord: Coord, *args: str, env: dict[str, str]) -> int:
    """Run with stdout and stderr one pipe whose read end is already closed
    (``ringrift-coord ... 2>&1 | true``); return the exit code."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.Popen(
            coord.argv(*args),
            env={**coord.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
        )
    finally:
        os.close(write_end)
    return proc.wait(timeout=60)


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_a_gone_reader_of_stderr_keeps_the_commands_code(c: Coord, json_mode) -> None:
    """A warning (here a bad optimizer setting's) written to a stderr nobody reads is dropped:
    the exit code stays the decision's, never 70 (internal error) or another."""
    args = ("--json",) if json_mode else ()
    bad = {"RINGRIFT_TARGET_UTIL_MIN": "75"}
    assert both_broken(c, *args, "can-spawn", "training", env=bad) == 0
    assert both_broken(c, *args, "report", "--node", "g9", "--gpu", "95", env=bad) == 0
    assert both_broken(c, *args, "status", env=bad) == 0
    assert both_broken(c, *args, "can-spawn", "selfplay", "--node", "g9", env=bad) == 1
    assert both_broken(c, *args, "can-spawn", "selfplay", "--bogus", env=bad) == 2


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("closed", [stdout_closed, stdout_broken_pipe], ids=["closed", "epipe"])
def test_register_that_cannot_deliver_its_id_keeps_no_slot(c: Coord, json_mode, closed) -> None:
    args = ("--json",) if json_mode else ()
    done = closed(c, *args, "register", "selfplay", "--pid", str(os.getpid()))
    message = one_error_line(done, 75)
    assert message == (
        "register: the task id could not be written to stdout; its slot was released "
        "(nothing is held: try again)"
    )
    assert tasks(c) == []
    (row,) = history(c)
    assert row["status"] == "stopped" and row["reason"] == "id could not be delivered"


def test_run_with_stdout_closed_returns_the_jobs_code(c: Coord) -> None:
    done = stdout_closed(c, "--json", "run", "selfplay", "--", "sh", "-c", "exit 5")
    assert (done.returncode, done.stderr) == (5, "")
    assert tasks(c) == []


# --------------------------------------------------------------------------- a quick exit


def test_a_quick_exit_still_runs_atexit_callbacks_and_flushes(c: Coord) -> None:
    """The program skips the interpreter's teardown only when nothing waits for it: with an
    ``atexit`` callback registered (a coverage tool) the exit is the normal one, and either
    way everything written reaches the pipe. Logging's own callback (psycopg imports
    ``logging``) does not force the slow exit: its handlers are flushed first."""
    code = (
        "import atexit, sys\n"
        "class Torn:\n"
        "    def __del__(self):\n"
        "        sys.stderr.write('torn down\\n')\n"
        "torn = Torn()\n"
        "if sys.argv[1] == 'hook':\n"
        "    atexit.register(lambda: print('atexit ran', flush=True))\n"
        "if sys.argv[1] == 'logging':\n"
        "    import logging, logging.handlers\n"
        "    shown = logging.StreamHandler(sys.stdout)\n"
        "    held = logging.handlers.MemoryHandler(100, logging.CRITICAL, shown)\n"
        "    logging.getLogger('x').addHandler(held)\n"
        "    logging.getLogger('x').warning('logged')\n"
        "sys.argv = ['ringrift-coord', '--json', 'status']\n"
        "from ringrift_coord.cli.main import console_main\n"
        "console_main()\n"
    )
    assert c("tasks", "reap").returncode == 0  # a store to read
    seen = {}
    for case in ("hook", "logging", "none"):
        done = subprocess.run(
            [sys.executable, "-c", code, case], env=c.env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        document, _, tail = done.stdout.partition("\n")
        assert json.loads(document)["state"] == "running"
        seen[case] = (tail, done.stderr)
    assert seen == {
        "hook": ("atexit ran\n", "torn down\n"),
        "logging": ("logged\n", ""),
        "none": ("", ""),
    }


def test_main_in_process_returns_through_system_exit(c: Coord, tmp_path: Path) -> None:
    """A Python program that calls ``main`` keeps its own exit: SystemExit comes back to it,
    and what it wrote before is still flushed when it ends."""
    out = tmp_path / "caller.txt"
    code = (
        "import sys\n"
        f"f = open({str(out)!r}, 'w'); f.write('before\\n')\n"
        "from ringrift_coord.cli.main import main\n"
        "try:\n"
        "    main(['--json', 'status'])\n"
        "except SystemExit as exc:\n"
        "    f.write(f'exit {exc.code}\\n')\n"
        "f.close()\n"
    )
    assert c("tasks", "reap").returncode == 0  # a store to read
    done = subprocess.run([sys.executable, "-c", code], env=c.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "before\nexit 0\n"
