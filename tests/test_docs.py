"""Docs that are tested: every command has help and is in README.md's command reference.

Also: every option of a command is named in its README subsection, every exit code of the
contract is in the README's table, help texts survive Rich markup, and every
``ringrift-coord WORD`` the README shows in code is a real command.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import typer
from rich.text import Text

from ringrift_coord.cli.app import app
from ringrift_coord.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ROOT_CMD = typer.main.get_command(app)
CONTRACT_EXIT_CODES = (0, 1, 2, 3, 75)  # the contract, plus "child's" (run passes its own through)
HELP_OPTIONS = {"--help", "-h"}


def walk(cmd, path=()):
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield (*path, name), sub
        yield from walk(sub, (*path, name))


COMMANDS = dict(walk(ROOT_CMD))
IDS = [" ".join(p) for p in COMMANDS]


def section(text: str, heading: str, level: str = "## ") -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level.

    ``heading`` matches a heading line exactly, or (for command subsections, "### `NAME`")
    one that names `NAME` in code among other words, e.g. "### `can-spawn` (alias ...)".
    """
    lines = text.splitlines()

    def matches(line: str) -> bool:
        line = line.strip()
        if line == heading:
            return True
        code = re.fullmatch(r"(#+ )(`[^`]+`)", heading)
        return bool(code and line.startswith(code.group(1)) and code.group(2) in line)

    start = next((i for i, line in enumerate(lines) if matches(line)), None)
    assert start is not None, f"README.md has no heading {heading!r}"
    stops = tuple("#" * n + " " for n in range(1, len(level.strip()) + 1))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(stops)), len(lines))
    return "\n".join(lines[start + 1 : end])


REFERENCE = section(README, "## Command reference")


def subsection(top: str) -> str:
    return section(REFERENCE, f"### `{top}`", "### ")


def options_of(cmd) -> list[str]:
    return [
        opt
        for p in cmd.params
        if p.param_type_name == "option"
        for opt in p.opts
        if opt not in HELP_OPTIONS
    ]


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_command_has_help(path: tuple[str, ...]) -> None:
    cmd = COMMANDS[path]
    assert (cmd.help or "").strip(), f"`{' '.join(path)}` has no help text (docstring)"
    for param in cmd.params:
        if param.param_type_name == "option" and set(param.opts) <= HELP_OPTIONS:
            continue
        assert (getattr(param, "help", None) or "").strip(), (
            f"`{' '.join(path)}`: {param.opts[0]} has no help text"
        )


def _help_texts():
    for path, cmd in [((), ROOT_CMD), *COMMANDS.items()]:
        yield " ".join(path) or "(app)", cmd.help or ""
        for param in cmd.params:
            yield f"{' '.join(path)} {param.opts[0]}", getattr(param, "help", None) or ""


@pytest.mark.parametrize("where,text", list(_help_texts()))
def test_help_survives_rich_markup(where: str, text: str) -> None:
    """Typer renders help with Rich markup: "[env X]" would silently vanish."""
    plain = Text.from_markup(text).plain
    for word in re.findall(r"\w+", text):
        assert word in plain, f"{where}: {word!r} is eaten by Rich markup in {text!r}"


def _listed(cmd) -> str:
    """A command's line in its group's list, as Typer's Rich help takes it: ``short_help``,
    else the docstring's first paragraph."""
    return inspect.cleandoc(cmd.short_help or cmd.help or "").split("\n\n")[0]


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_a_commands_line_in_a_list_is_one_sentence(path: tuple[str, ...]) -> None:
    """No hard line break (Rich keeps it: a ragged list at 80 columns) and no second
    sentence: the rest of the docstring is the command's own --help."""
    listed = _listed(COMMANDS[path])
    assert "\n" not in listed, f"`{' '.join(path)}` is listed with a line break: {listed!r}"
    assert not re.search(r"[.?!] +[A-Z]", listed), f"`{' '.join(path)}`: {listed!r}"
    assert Text.from_markup(listed).plain == listed  # nothing eaten by Rich markup


GROUPS = [()] + [path for path, cmd in COMMANDS.items() if getattr(cmd, "commands", None)]


@pytest.mark.parametrize("group", GROUPS, ids=[" ".join(g) or "(app)" for g in GROUPS])
def test_command_lists_at_80_columns_wrap_only_where_a_line_is_full(coord, group) -> None:
    """In the real ``--help`` at 80 columns, a description goes on to the next line only
    when the next word did not fit on the line before (else the text has a hard break)."""
    done = coord(*group, "--help", env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("╭─ Commands"))
    rows = [x[1:-1] for x in lines[start + 1 :] if x.startswith("│")]
    width = len(rows[0])  # between the borders, one space of padding each side
    first = re.match(r" \S+ +", rows[0])
    assert first is not None, rows[0]
    column = first.end()  # where the descriptions start
    continued = 0
    for before, row in zip(rows, rows[1:], strict=False):
        if row[1:column].strip():  # a new command's first line
            continue
        continued += 1
        word = row[column:].split()[0]
        assert len(before.rstrip()) + 1 + len(word) > width - 1, (
            f"`{' '.join(group)} --help` broke the line before {word!r} early:\n{before}\n{row}"
        )
    assert continued or group  # the app's own list wraps some lines: the check ran


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_command_in_readme_reference(path: tuple[str, ...]) -> None:
    name = " ".join(path)
    assert re.search(rf"`(ringrift-coord )?{re.escape(name)}(?![\w-])", REFERENCE), (
        f"README.md's command reference does not show `{name}`"
    )
    body = subsection(path[0])
    for option in options_of(COMMANDS[path]):
        assert mentions(body, option), (
            f"README.md, section `{path[0]}`: option {option} of `{name}` is not described"
        )


def test_global_options_in_readme() -> None:
    body = section(REFERENCE, "### Global options", "### ")
    for option in options_of(ROOT_CMD):
        assert mentions(body, option), f"README.md: global option {option} is not described"


def test_every_exit_code_in_readme() -> None:
    body = section(README, "## Exit codes")
    codes = {int(m) for m in re.findall(r"^\|\s*(\d+)(?:\+N)?\s*\|", body, flags=re.M)}
    for code in (*CONTRACT_EXIT_CODES, *ExitCode.by_name().values()):
        assert code in codes, f"README.md's exit code table has no row for {code}"
    assert re.search(r"^\|\s*child's\s*\|", body, flags=re.M), "no row for the child's code"
    assert re.search(r"^\|\s*128\+N\s*\|", body, flags=re.M), "no row for 128+N (SIGNAL_BASE)"
    assert "busy timeout" in body  # a store still locked after it gives 75


def _code_in_readme() -> str:
    fenced = re.findall(r"```.*?\n(.*?)```", README, flags=re.S)
    without_fences = re.sub(r"```.*?```", "", README, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", without_fences)
    return "\n".join(fenced + inline)


def test_readme_shows_only_real_commands() -> None:
    top = {path[0] for path in COMMANDS}
    for word in re.findall(r"ringrift-coord ((?:--?)?[a-z][\w-]*)", _code_in_readme()):
        if word.startswith("-"):
            assert word in options_of(ROOT_CMD) or word in HELP_OPTIONS, word
        else:
            assert word in top, f"README.md shows `ringrift-coord {word}`: no such command"


def test_readme_names_the_ci_command() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S)
    assert first_block is not None
    assert ".ci/run" in first_block.group(1) and "pip install -e ." in first_block.group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci.replace('"$venv/bin/python"', "python")
    assert "python -m pytest -q" in README
