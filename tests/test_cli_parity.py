"""One declaration (``cli/spec.py``), two parsers: the fast one and the Typer app agree.

``can-spawn``, ``register``, ``unregister`` and ``run`` are parsed by ``cli/parser.py`` on
every launch (no Typer import) and by the Typer app for ``--help`` and completion; both are
built from the spec. These tests check the construction both ways (every spec option is a
Click option with the same destination, kind, metavar, help and completion, and Click has
no other), and that both read the same argv the same way: a fixed corpus (the wrapped
command's words included) and random argv from the spec's own vocabulary. A mistake gets the
same one line from both, byte for byte, with the same "did you mean" hint.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer._click import core as click
from typer._click import exceptions as click_exceptions

from ringrift_coord.cli import build, main, parser, spec
from ringrift_coord.cli.app import app
from ringrift_coord.errors import UsageError
from ringrift_coord.task_coordinator import RELEASE_STATUSES
from ringrift_coord.tasktypes import TASK_TYPE_NAMES

ROOT_CMD = typer.main.get_command(app)
HOT = [cmd.name for cmd in spec.HOT_COMMANDS]
ALL_NAMES = [*HOT, *spec.ALIASES]
KIND_OF_TYPE = {"str": "str", "int": "int", "float": "float"}


def _kind(param: click.Parameter) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    if getattr(param, "multiple", False):
        return "append"
    return KIND_OF_TYPE.get(param.type.name, param.type.name)


def _complete(param: click.Parameter, incomplete: str = "") -> list[str]:
    ctx = ROOT_CMD.make_context("ringrift-coord", [], resilient_parsing=True)
    return [item.value for item in param.shell_complete(ctx, incomplete)]


def _expected_completion(hint: Any) -> list[str]:
    if hint is None:
        return []
    return list(TASK_TYPE_NAMES) if hint == spec.TASK_TYPES else list(hint)


def click_command(name: str) -> click.Command:
    """The Click command of a spec name (``bandwidth run``: the group's ``run``)."""
    command: click.Command = ROOT_CMD
    for word in name.split(" "):
        command = command.commands[word]  # type: ignore[attr-defined]
    return command


def _click_options(cmd: click.Command) -> dict[str, click.Parameter]:
    return {
        opt: p
        for p in cmd.params
        if p.param_type_name == "option"
        for opt in p.opts
        if opt not in spec.HELP_OPTIONS
    }


# --------------------------------------------------------------------------- construction


def test_hot_commands_are_typer_commands() -> None:
    for name in ALL_NAMES:
        assert click_command(name).name == name.split(" ")[-1]
    assert spec.GROUPS == {"bandwidth"}
    assert spec.ALIASES == {"spawn-check": "can-spawn"}
    for alias, name in spec.ALIASES.items():
        command = ROOT_CMD.commands[alias]
        assert command.hidden and "alias" in (command.help or "").lower()
        assert spec.hot_command(alias) is spec.hot_command(name)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_same_options_both_ways(name: str) -> None:
    declared = spec.hot_command(name)
    assert declared is not None
    click_opts = _click_options(click_command(name))
    assert set(click_opts) == {name for opt in declared.options for name in opt.names}
    for opt in declared.options:
        param = click_opts[opt.name]
        assert sorted(param.opts) == sorted(opt.names)  # the short name is the same option
        assert (param.name, _kind(param), param.help) == (opt.dest, opt.kind, opt.help)
        if opt.kind != "flag":
            assert param.metavar == opt.metavar
        assert sorted(_complete(param)) == sorted(_expected_completion(opt.complete))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_same_arguments_both_ways(name: str) -> None:
    declared = spec.hot_command(name)
    assert declared is not None
    params = [p for p in click_command(name).params if p.param_type_name == "argument"]
    expected = [(a.dest, 1, a.metavar, a.help) for a in declared.args]
    if declared.rest is not None:
        r = declared.rest
        expected.append((r.dest, -1, r.metavar, r.help))
    assert [(p.name, p.nargs, p.metavar, getattr(p, "help", None)) for p in params] == expected
    for param, arg in zip(params, declared.args, strict=False):
        assert _complete(param) == _expected_completion(arg.complete)


@pytest.mark.parametrize("name", HOT)
def test_same_help(name: str) -> None:
    declared = spec.hot_command(name)
    assert declared is not None and click_command(name).help == declared.help


def test_same_global_options_both_ways() -> None:
    click_opts = _click_options(ROOT_CMD)
    assert set(click_opts) == set(spec.GLOBAL_BY_NAME)
    for opt in spec.GLOBAL_OPTIONS:
        param = click_opts[opt.name]
        assert (param.name, _kind(param), param.help) == (opt.dest, opt.kind, opt.help)
        assert getattr(param, "is_eager", False) == opt.eager


def test_completion_words_are_the_cores() -> None:
    assert spec.RELEASE_STATUSES == RELEASE_STATUSES


def test_spec_imports_nothing() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(spec.__file__).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [getattr(n, "module", None) for n in imports] == ["__future__"]


# --------------------------------------------------------------------------- same parse


def typer_parse(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """What the Typer app calls the command with (argv after ``parser.globals_first``)."""
    argv = parser.globals_first(list(argv))
    ctx = ROOT_CMD.make_context("ringrift-coord", argv)
    rest = [*(getattr(ctx, "_protected_args", None) or []), *ctx.args]
    if not rest:
        raise click_exceptions.UsageError("Missing command.")
    name, sub = _descend(ctx, rest)
    assert sub.args == [], sub.args
    params = dict(sub.params)
    declared = spec.hot_command(name)
    assert declared is not None
    values = {
        opt.dest: (
            list(ctx.params[opt.dest] or []) if opt.kind == "append" else ctx.params[opt.dest]
        )
        for opt in spec.GLOBAL_OPTIONS
        if not opt.eager
    }
    return declared.name, values, params


def _descend(ctx: click.Context, rest: list[str]) -> tuple[str, click.Context]:
    """Resolve ``rest`` down to its command (through a group: ``bandwidth run``): the
    command's name as the spec has it and its context."""
    words: list[str] = []
    group: click.Command = ROOT_CMD
    while True:
        name, cmd, args = group.resolve_command(ctx, rest)  # type: ignore[attr-defined]
        assert name is not None and cmd is not None
        words.append(name)
        sub = cmd.make_context(name, args, parent=ctx)
        if not hasattr(cmd, "commands"):
            return " ".join(words), sub
        group, ctx = cmd, sub
        rest = [*(getattr(sub, "_protected_args", None) or []), *sub.args]


def fast_parse(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    parsed = parser.parse(list(argv))
    assert parsed is not None and parsed.command is not None, argv
    return parsed.command.name, parsed.globals, parsed.params


SAME_PARSE = [
    ["can-spawn", "selfplay"],
    ["can-spawn", "selfplay", "--node", "n1"],
    ["spawn-check", "training", "--node=n2", "--json"],
    ["--json", "--db", "/tmp/x.db", "can-spawn", "selfplay"],
    ["--set", "a.b=1", "can-spawn", "selfplay", "--set=store.busy_timeout=2"],
    ["can-spawn", "selfplay", "--state-dir", "/tmp/s", "--config", "/tmp/c.yaml"],
    ["can-spawn", "selfplay", "--node", "--json"],  # a node called --json
    ["can-spawn", "--", "selfplay"],
    ["register", "training", "--node", "n1", "--pid", "123", "--task-id", "t-1"],
    ["register", "--node", "n1", "selfplay", "--json", "--config-name", "square8_2p"],
    ["unregister", "t-1"],
    ["unregister", "t-1", "--exit-code", "-9", "--status", "oom", "--token", "7"],
    ["unregister", "--reason", "OOM killer", "t-1", "--exit-code=0"],
    ["run", "selfplay", "echo", "hi"],
    ["run", "--node", "n1", "--wait", "--timeout", "2.5", "selfplay", "sh", "-c", "exit 3"],
    ["run", "--config-name", "square8_2p", "selfplay", "python", "x.py", "--node", "7"],
    # the contract's own form, and the wrapped command's words (defect 3)
    ["run", "selfplay", "--", "python", "-c", "pass"],
    ["run", "selfplay", "--node", "n1", "--", "true"],
    ["run", "selfplay", "--node", "n1", "--wait", "--timeout", "5", "--", "true"],
    ["run", "--node", "n1", "selfplay", "--", "sh", "-c", "exit 3"],
    ["run", "selfplay", "echo", "a", "--json", "-h"],
    ["run", "selfplay", "--node", "n1", "echo", "a", "-h"],
    ["run", "selfplay", "--json", "echo", "--", "--node"],
    ["run", "selfplay", "--node", "--", "echo"],  # a node called --
    ["run", "selfplay"],
    ["run", "selfplay", "--"],
    # -q/--quiet, short flags together, --no-slot-exit-code
    ["can-spawn", "selfplay", "-q"],
    ["can-spawn", "training", "--now", "2026-12-01T12:00", "--node", "n1"],
    ["spawn-check", "training", "--now=2026-12-01T12:00+02:00"],
    ["can-spawn", "-q", "selfplay", "--quiet"],
    ["spawn-check", "selfplay", "-qq"],
    ["register", "selfplay", "--quiet", "--pid", "1"],
    ["run", "selfplay", "-q", "--no-slot-exit-code", "9", "--", "sh", "-c", "exit 75"],
    ["run", "-q", "selfplay", "--no-slot-exit-code=300", "true"],  # range: the handler's
    ["run", "selfplay", "--node", "-q", "true"],  # a node called -q
    ["run", "selfplay", "true", "-q"],  # the job's -q
    # durations: seconds, or with units (one parser, durations.parse, on both sides)
    ["run", "selfplay", "--wait", "--timeout", "5m", "--", "true"],
    ["run", "selfplay", "--wait", "--timeout=1h30m", "--", "true"],
    ["run", "--wait", "--timeout", "0.3s", "selfplay", "true"],
    ["run", "--wait", "--timeout", "2d", "selfplay", "--", "true"],
    # bandwidth run: two words select it
    ["bandwidth", "run", "h1", "rsync", "-a", "--bwlimit={bwlimit}", "a/", "b/"],
    ["bandwidth", "run", "h1", "--priority", "high", "--kind", "models", "--", "true"],
    ["--json", "bandwidth", "run", "--wait", "--timeout", "5m", "h1", "--", "true"],
    ["bandwidth", "run", "h1", "--json", "--bytes-from", "/tmp/n", "-q", "true", "--json"],
    ["bandwidth", "run", "--node", "n1", "--no-slot-exit-code", "9", "h1", "true"],
    ["bandwidth", "run", "h1", "--priority", "--json", "true"],  # a priority called --json
    ["bandwidth", "run", "h1"],
]


@pytest.mark.parametrize("argv", SAME_PARSE, ids=" ".join)
def test_same_parse(argv: list[str]) -> None:
    assert typer_parse(argv) == fast_parse(argv)


def test_the_wrapped_command_is_the_jobs() -> None:
    _, values, params = fast_parse(["run", "selfplay", "echo", "a", "--json", "-h"])
    assert params["command"] == ["echo", "a", "--json", "-h"] and values["json"] is False
    _, _, params = fast_parse(["run", "selfplay", "--node", "n1", "echo", "a", "-h"])
    assert (params["node"], params["command"]) == ("n1", ["echo", "a", "-h"])


HELP = [
    ["can-spawn", "--help"],
    ["can-spawn", "selfplay", "-qh"],
    ["run", "-h"],
    ["run", "selfplay", "--node", "n1", "-h", "echo"],
    ["register", "--json", "-h"],
    ["bandwidth", "run", "--help"],
    ["bandwidth", "run", "h1", "-h", "rsync"],
    ["bandwidth", "--help"],
]


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_same_help_requests(argv: list[str]) -> None:
    assert parser.parse(argv) is None  # the Typer app reads a help request whole
    with pytest.raises(typer.Exit):  # Click prints the help and exits 0
        ctx = ROOT_CMD.make_context("ringrift-coord", parser.globals_first(argv))
        rest = [*(getattr(ctx, "_protected_args", None) or []), *ctx.args]
        _descend(ctx, rest)


# --------------------------------------------------------------------------- same refusals

BAD = [
    ["can-spawn"],
    ["can-spawn", "selfplay", "training"],
    ["can-spawn", "selfplay", "--bogus"],
    ["can-spawn", "selfplay", "-x"],
    ["can-spawn", "selfplay", "--node"],
    ["can-spawn", "selfplay", "--json=yes"],
    ["can-spawn", "selfplay", "--node", "a\nb"],
    ["can-spawn", "selfplay", "--node", "n\udcff"],
    ["can-spawn", "n\udcff"],
    ["can-spawn", "selfplay", "--node", "a\u2028b"],
    ["register", "selfplay", "--pid", "abc"],
    ["register", "selfplay", "--pid", "99999999999999999999"],
    ["register", "selfplay", "--pid", "--"],
    ["unregister"],
    ["unregister", "x", "--token", "1.5"],
    ["unregister", "x\x1b"],
    ["run", "--", "true"],
    ["run", "selfplay", "--timeout", "nan", "--", "true"],
    ["run", "selfplay", "--timeout", "soon", "true"],
    ["run", "selfplay", "--bogus", "true"],
    ["run", "selfplay", "--set", "x=\x7f", "true"],
    ["can-spawn", "selfplay", "-q=1"],
    ["register", "selfplay", "--pid", "-q"],  # the value of --pid, not a flag: no integer
    ["can-spawn", "selfplay", "--quiet=yes"],
    ["can-spawn", "selfplay", "-qx"],
    ["can-spawn", "selfplay", "-xq"],
    ["unregister", "t-1", "-q"],  # unregister has no --quiet
    ["run", "selfplay", "--no-slot-exit-code", "nine", "true"],
    ["run", "selfplay", "--no-slot-exit-code", "1.5", "true"],
    ["run", "selfplay", "--no-slot-exit-code"],
    ["run", "selfplay", "--wait", "--timeout", "5x", "true"],
    ["run", "selfplay", "--wait", "--timeout", "-5m", "true"],
    ["run", "selfplay", "--wait", "--timeout", "1h30", "true"],
    ["can-spawn", "selfplay", "--nod", "n1"],
    ["bandwidth", "run"],
    ["bandwidth", "run", "--", "true"],
    ["bandwidth", "run", "h1", "--prio", "high", "true"],
    ["bandwidth", "run", "h1", "--priority"],
    ["bandwidth", "run", "h1", "--timeout", "soon", "true"],
    ["bandwidth", "run", "h1", "--bytes-from", "a\x01b", "true"],
    ["bandwidth", "run", "h\x1b", "true"],
]


def typer_refusal(argv: list[str]) -> str | None:
    """The Typer app's one line for ``argv`` (None: it accepts it), as the boundary says it."""
    try:
        typer_parse(argv)
    except click_exceptions.UsageError as exc:
        return main._shown(build.usage_from_click(exc))
    except UsageError as exc:
        return main._shown(exc)
    return None


def typer_refuses(argv: list[str]) -> bool:
    return typer_refusal(argv) is not None


def fast_refusal(argv: list[str]) -> str:
    with pytest.raises(UsageError) as raised:
        parser.parse(argv)
    return main._shown(raised.value)


@pytest.mark.parametrize("argv", BAD, ids=repr)
def test_same_refusals(argv: list[str]) -> None:
    assert typer_refusal(argv) == fast_refusal(argv)


# (argv, the one line both parsers give): typos get the nearest name as a hint; a mistake in
# the command line's shape points to the help of the command as typed
MISTAKES = [
    (["can-spawn", "selfplay", "--nod", "n1"], "unknown option --nod (did you mean --node?)"),
    (["can-spawn", "selfplay", "--nod=n1"], "unknown option --nod (did you mean --node?)"),
    (["spawn-check", "selfplay", "--nod", "n1"], "unknown option --nod (did you mean --node?)"),
    (["can-spawn", "selfplay", "--qiuet"], "unknown option --qiuet (did you mean --quiet?)"),
    (["can-spawn", "selfplay", "--jsn"], "unknown option --jsn (did you mean --json?)"),
    (["can-spawn", "selfplay", "--hlep"], "unknown option --hlep (did you mean --help?)"),
    (["can-spawn", "selfplay", "--bogus"], "unknown option --bogus"),
    # matched by name: the shared dashes do not make --fix look like --config
    (["can-spawn", "selfplay", "--fix"], "unknown option --fix"),
    (["can-spawn", "selfplay", "--confg", "x"], "unknown option --confg (did you mean --config?)"),
    (["can-spawn", "selfplay", "-x"], "unknown option -x"),
    (["can-spawn", "selfplay", "-qx"], "unknown option -x"),
    (["register", "selfplay", "--pdi", "5"], "unknown option --pdi (did you mean --pid?)"),
    (
        ["register", "selfplay", "--task-di", "t"],
        "unknown option --task-di (did you mean --task-id?)",
    ),
    (
        ["unregister", "t-1", "--exit-cod", "3"],
        "unknown option --exit-cod (did you mean --exit-code?)",
    ),
    (["unregister", "t-1", "--stauts", "ok"], "unknown option --stauts (did you mean --status?)"),
    (["run", "selfplay", "--wiat", "--", "true"], "unknown option --wiat (did you mean --wait?)"),
    (
        ["run", "--timeuot", "5", "selfplay", "--", "true"],
        "unknown option --timeuot (did you mean --timeout?)",
    ),
    (
        ["run", "selfplay", "--no-slot-exit", "9", "--", "true"],
        "unknown option --no-slot-exit (did you mean --no-slot-exit-code?)",
    ),
    (
        ["run", "--nod", "n1", "selfplay", "--", "true"],
        "unknown option --nod (did you mean --node?)",
    ),
    (["can-spawn"], "missing argument TYPE"),
    (["register", "--node", "n1"], "missing argument TYPE"),
    (["unregister"], "missing argument ID"),
    (["run", "--", "true"], "missing argument TYPE"),
    (["can-spawn", "selfplay", "training"], "unexpected extra argument (training)"),
    (["can-spawn", "selfplay", "training", "cmaes"], "unexpected extra arguments (training cmaes)"),
    (["unregister", "a", "b"], "unexpected extra argument (b)"),
    (["can-spawn", "selfplay", "--node"], "option --node requires a value"),
    (["register", "selfplay", "--pid"], "option --pid requires a value"),
    (["run", "selfplay", "--no-slot-exit-code"], "option --no-slot-exit-code requires a value"),
    (["can-spawn", "selfplay", "--quiet=yes"], "option --quiet takes no value"),
]
# a global option's mistake points to the program's help, wherever it is given
GLOBAL_MISTAKES = [
    (["can-spawn", "selfplay", "--json=yes"], "option --json takes no value"),
    (["--json=yes", "can-spawn", "selfplay"], "option --json takes no value"),
    (["can-spawn", "selfplay", "--db"], "option --db requires a value"),
    (["run", "selfplay", "--set"], "option --set requires a value"),
    (["--db"], "option --db requires a value"),
]
# a bad value names the option and says what is wrong
VALUE_MISTAKES = [
    (["register", "selfplay", "--pid", "abc"], "option --pid: 'abc' is not an integer"),
    (["unregister", "t-1", "--token", "1.5"], "option --token: '1.5' is not an integer"),
    (
        ["run", "selfplay", "--wait", "--timeout", "-1", "--", "true"],
        "option --timeout: '-1' is negative: a duration is 0 or more "
        "(e.g. 90, 45s, 5m, 1h30m, 2d or 3w)",
    ),
    (
        ["run", "selfplay", "--wait", "--timeout", "5x", "--", "true"],
        "option --timeout: '5x' is not a number of seconds or a duration with units s, m, h, "
        "d, w (e.g. 90, 45s, 5m, 1h30m, 2d or 3w)",
    ),
]
# bandwidth run: the two words are the command's name in every line
BANDWIDTH_MISTAKES = [
    (
        ["bandwidth", "run", "h1", "--prio", "high", "--", "true"],
        "unknown option --prio (did you mean --priority?)",
    ),
    (["bandwidth", "run", "--", "true"], "missing argument HOST"),
    (["bandwidth", "run", "h1", "--kind"], "option --kind requires a value"),
]
CORPUS = [
    *[(argv, f"{text}; see 'ringrift-coord {argv[0]} --help'") for argv, text in MISTAKES],
    *[
        (argv, f"{text}; see 'ringrift-coord bandwidth run --help'")
        for argv, text in BANDWIDTH_MISTAKES
    ],
    *[(argv, f"{text}; see 'ringrift-coord --help'") for argv, text in GLOBAL_MISTAKES],
    *VALUE_MISTAKES,
]
CORPUS_IDS = [" ".join(argv) for argv, _ in CORPUS]


@pytest.mark.parametrize(("argv", "line"), CORPUS, ids=CORPUS_IDS)
def test_same_line_for_the_same_mistake(argv: list[str], line: str) -> None:
    """Both parsers' own messages, compared with each other and with the expected line."""
    assert fast_refusal(argv) == line
    assert typer_refusal(argv) == line


@pytest.mark.parametrize(("argv", "line"), CORPUS, ids=CORPUS_IDS)
def test_byte_identical_stderr(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real boundary (``main.run_cli``): the fast parser's stderr, then the
    Typer app's for the same argv (the fast parser told to hand everything over): the same
    bytes and exit 2."""
    assert main.run_cli(list(argv)) == 2
    fast = capsys.readouterr()
    monkeypatch.setattr(parser, "parse", lambda argv: None)
    assert main.run_cli(list(argv)) == 2
    slow = capsys.readouterr()
    assert fast.err == slow.err == f"ringrift-coord: error: {line}\n"
    assert fast.out == slow.out == ""


# --------------------------------------------------------------------------- random argv

WORDS = [
    *dict.fromkeys(word for name in ALL_NAMES for word in name.split(" ")),
    *(opt.name for opt in spec.GLOBAL_OPTIONS if not opt.eager),
    *{opt.name for cmd in spec.HOT_COMMANDS for opt in cmd.options},
    "--node=n1",
    "--set=a=1",
    "--",
    "-h",
    "--bogus",
    "-x",
    "-q",
    "-qq",
    "-qx",
    "-qh",
    "-q=1",
    "--no-slot-exit-code=9",
    "256",
    "-",
    "selfplay",
    "training",
    "echo",
    "7",
    "-9",
    "2.5",
    "5m",
    "1h30m",
    "-5m",
    "--nod",
    "--timeuot",
    "nan",
    "abc",
    "",
    "a\nb",
    "h1",
    "--priority",
    "{bwlimit}",
]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    st.sampled_from(ALL_NAMES),
    st.lists(st.sampled_from(WORDS), max_size=7),
    st.lists(st.sampled_from(WORDS), max_size=2),
)
def test_random_argv_same_parse(name: str, tail: list[str], head: list[str]) -> None:
    """Any argv from the spec's vocabulary: both accept it alike, or both refuse it."""
    argv = [*head, *name.split(" "), *tail]
    try:
        fast = parser.parse(argv)
    except UsageError as exc:
        assert typer_refusal(argv) == main._shown(exc), argv
        return
    if fast is None or fast.version or fast.command is None:
        return  # not a hot command, help or version: only the Typer app reads it
    assert typer_parse(argv) == fast_parse(argv), argv


def test_spawn_check_answers_like_can_spawn(coord) -> None:
    a = coord("can-spawn", "selfplay", "--node", "n1", "--json")
    b = coord("spawn-check", "selfplay", "--node", "n1", "--json")
    assert (a.returncode, b.returncode) == (0, 0), (a.stderr, b.stderr)
    assert '"allowed": true' in a.stdout and '"allowed": true' in b.stdout
