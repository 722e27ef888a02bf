"""The fast argv parser of the hot commands, read from ``cli/spec.py``.

It reads argv the way Click reads it (an option's value is the next word, whatever it
looks like; ``--`` ends the options; ``--help``/``-h`` anywhere among the options hands
the whole argv to the Typer app, which shows the help or refuses what comes before it),
plus the global options after the command name and the one rule of a wrapped command
(``split_rest``), which the Typer ``run`` shares. No Typer, no Rich, no ``typing``.

``check_text`` and ``convert`` are the value rules of every option of every command: the
Typer app's parameter types call them too (``cli/build.py``).
"""

from __future__ import annotations

from ringrift_coord.cli.spec import (
    GLOBAL_BY_NAME,
    HELP_OPTIONS,
    PROG,
    Command,
    Option,
    hot_command,
)
from ringrift_coord.errors import UsageError
from ringrift_coord.inputs import number_hint, strict_float, strict_int

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any


class Parsed:
    """What argv asks for: a hot command with its values, or the version."""

    __slots__ = ("command", "globals", "params", "version")

    def __init__(
        self,
        command: Command | None,
        globals: dict[str, Any],
        params: dict[str, Any],
        *,
        version: bool = False,
    ) -> None:
        self.command, self.globals, self.params = command, globals, params
        self.version = version

    def __repr__(self) -> str:
        name = self.command.name if self.command else None
        return f"Parsed({name!r}, {self.globals!r}, {self.params!r})"


# --------------------------------------------------------------------------- value rules


def check_text(label: str, value: str) -> str:
    """``value`` if it is valid UTF-8 made of printable characters, else a usage error.

    Arguments arrive with undecodable bytes as lone surrogates (``os.fsdecode``); storing or
    printing one would fail much later. A control character (C0, DEL, C1) or a line or
    paragraph separator would break the one-line messages or reach an operator's terminal
    as an escape sequence. The rule is ``str.isprintable``, as for names from the
    environment (``identity``).
    """
    if value.isprintable():
        return value  # the common case, in one C loop
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{label}: {value!r} is not valid UTF-8") from None
    raise UsageError(f"{label}: {value!r} contains control characters")


def check_path(label: str, value: str) -> str:
    """A file or directory name: whatever bytes the file system allows (an undecodable byte
    stays a lone surrogate, as ``os.fsdecode`` gives it), but no control character."""
    if value.isprintable() or not any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in value):
        return value
    raise UsageError(f"{label}: {value!r} contains control characters")


def convert(label: str, raw: str, kind: str) -> Any:
    """The value of an option of ``kind`` (str, int, float, append) given as ``raw``."""
    if kind in ("str", "append"):
        return check_text(label, raw)
    if kind == "path":
        return check_path(label, raw)
    # plain ASCII decimal only: int() and float() also take '٣', ' 7 ', '+5' and '1_000'
    value = strict_int(raw) if kind == "int" else strict_float(raw)
    if value is None:
        expected = "an integer" if kind == "int" else "a number"
        hint = number_hint(raw)
        raise UsageError(f"{label}: {raw!r} is not {expected}" + (f"; {hint}" if hint else ""))
    if kind == "float" and value != value:  # NaN
        raise UsageError(f"{label}: {raw!r} is not a number")
    if kind == "int" and not -(2**63) <= value < 2**63:  # the store keeps 64-bit integers
        raise UsageError(f"{label}: {raw!r} is out of range")
    return value


# --------------------------------------------------------------------------- argv


def _is_option(word: str) -> bool:
    return word.startswith("-") and word != "-"


def _is_cluster(word: str) -> bool:
    """``-qx``: several one-letter options in one word (only flags have short names, in
    ``spec``, so none of them takes a value)."""
    return len(word) > 2 and word[0] == "-" and word[1] != "-" and "=" not in word


def _own_end(command: Command, words: list[str]) -> int:
    """How many of ``words`` (after the command name) are the command's own options and
    arguments: up to ``--`` (one that is not an option's value) or the wrapped command."""
    given, i = 0, 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return i
        if _is_option(word):
            name, eq, _ = word.partition("=")
            opt = command.option(name)
            i += 2 if opt is not None and opt.takes_value and not eq else 1
            continue
        if command.rest is not None and given == len(command.args):
            return i
        given += 1
        i += 1
    return len(words)


def split_rest(command: Command, words: list[str]) -> tuple[list[str], list[str]]:
    """``words`` after the command name, split into (run's own words, the wrapped command).

    The wrapped command starts after ``--``, or at the first word that is neither an option
    nor an option's value once every argument of ``command`` is given. Nothing after its
    first word is looked at: every word from there on is the job's.
    """
    if command.rest is None:
        return words, []
    end = _own_end(command, words)
    if end < len(words) and words[end] == "--":
        return words[:end], words[end + 1 :]
    return words[:end], words[end:]


def parse(argv: list[str]) -> Parsed | None:
    """Parse a hot command; None: not a hot command, for the Typer app to read.

    Raises ``UsageError`` for bad input, with the message both parsers give.
    """
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):  # global options before the command
        word = argv[i]
        name, eq, inline = word.partition("=")
        opt = GLOBAL_BY_NAME.get(name)
        if opt is not None:
            i = _take(argv, i, opt, inline if eq else None, values)
            continue
        if _is_option(word):
            return None  # --help, --, an unknown option: the Typer app says what it is
        break
    if i == len(argv):
        return Parsed(None, values, {}, version=True) if values.get("version") else None
    command = hot_command(argv[i])
    if command is None:
        if values.get("version"):
            return Parsed(None, values, {}, version=True)
        return None  # not a hot command
    head, rest = split_rest(command, argv[i + 1 :])
    params: dict[str, Any] = {}
    positional: list[str] = []
    j = 0
    while j < len(head):
        word = head[j]
        if word == "--":  # (commands without a rest) everything after it is an argument
            positional.extend(head[j + 1 :])
            break
        if word in HELP_OPTIONS:
            return None  # help (or Click's refusal of what follows): the Typer app's, whole
        if _is_option(word):
            name, eq, inline = word.partition("=")
            opt = command.option(name)
            if opt is None and _is_cluster(word):  # -qx: short flags given together
                cluster = [command.option(f"-{ch}") for ch in word[1:]]
                if any(f"-{ch}" in HELP_OPTIONS for ch in word[1:]):
                    return None  # help among them: the Typer app's, as above
                if all(cluster):
                    for flag in cluster:
                        assert flag is not None and flag.kind == "flag"
                        params[flag.dest] = True
                    j += 1
                    continue
                name = next(
                    f"-{ch}" for ch, flag in zip(word[1:], cluster, strict=True) if flag is None
                )
            if opt is None:
                shown = name if name.isprintable() else repr(name)  # an escape stays inert
                raise UsageError(
                    f"{command.name}: no such option {shown} (see {PROG} {command.name} --help)"
                )
            into = values if name in GLOBAL_BY_NAME else params
            j = _take(head, j, opt, inline if eq else None, into)
            continue
        positional.append(word)
        j += 1
    if values.get("version"):
        return Parsed(command, values, {}, version=True)
    args = command.args
    if len(positional) < len(args):
        missing = args[len(positional)].metavar
        raise UsageError(
            f"{command.name}: missing argument {missing} (see {PROG} {command.name} --help)"
        )
    if len(positional) > len(args):
        raise UsageError(
            f"{command.name}: unexpected extra argument {positional[len(args)]!r} "
            f"(see {PROG} {command.name} --help)"
        )
    for arg, word in zip(args, positional, strict=True):
        params[arg.dest] = check_text(f"argument {arg.metavar}", word)
    for opt in command.options:
        params[opt.dest] = _value(opt, params)
    for opt in GLOBAL_BY_NAME.values():
        values[opt.dest] = _value(opt, values)
    if command.rest is not None:
        params[command.rest.dest] = rest
    return Parsed(command, _globals(values), params)


def _take(argv: list[str], i: int, opt: Option, inline: str | None, into: dict[str, Any]) -> int:
    """Store ``opt``'s value from ``argv[i]`` (and the next word); the index after it."""
    if opt.kind == "flag":
        if inline is not None:
            raise UsageError(f"option {opt.name} takes no value")
        into[opt.dest] = True
        return i + 1
    if inline is None:
        if i + 1 >= len(argv):
            raise UsageError(f"option {opt.name} requires a value")
        raw, nxt = argv[i + 1], i + 2
    else:
        raw, nxt = inline, i + 1
    if opt.kind == "append":
        into.setdefault(opt.dest, []).append(raw)
    else:
        into[opt.dest] = raw  # the last one counts (as in Click); converted by _value
    return nxt


def _value(opt: Option, raw: dict[str, Any]) -> Any:
    """``opt``'s value from the words ``_take`` stored (its default when not given)."""
    if opt.dest not in raw:
        return False if opt.kind == "flag" else [] if opt.kind == "append" else None
    given = raw[opt.dest]
    label = f"option {opt.name}"
    if opt.kind == "flag":
        return given
    if opt.kind == "append":
        return [convert(label, word, opt.kind) for word in given]
    return convert(label, given, opt.kind)


def _globals(values: dict[str, Any]) -> dict[str, Any]:
    """The global options' values for ``hot.Globals`` (not the eager ones)."""
    return {opt.dest: values[opt.dest] for opt in GLOBAL_BY_NAME.values() if not opt.eager}


def options_part(argv: list[str]) -> list[str]:
    """The leading words of argv that may hold options: not a wrapped command's words, nor
    any after ``--`` (for a hot command, one that is not an option's value)."""
    i = 0
    while i < len(argv) and _is_option(argv[i]) and argv[i] != "--":
        name, eq, _ = argv[i].partition("=")
        opt = GLOBAL_BY_NAME.get(name)
        i += 2 if opt is not None and opt.takes_value and not eq else 1
    if i < len(argv) and argv[i] != "--":
        command = hot_command(argv[i])
        if command is not None:
            return argv[: i + 1 + _own_end(command, argv[i + 1 :])]
    return argv[: argv.index("--")] if "--" in argv else argv


def globals_first(argv: list[str]) -> list[str]:
    """argv with the global options given after the command moved to the front, where the
    Typer app reads them; a wrapped command's words (and any after ``--``) stay put.

    For a hot command the values of its own options are skipped (``--node --json`` is a
    node called ``--json``); other commands' options are not known here.
    """
    own = options_part(argv)
    front: list[str] = []
    rest: list[str] = []
    command: Command | None = None
    i = 0
    while i < len(own):
        word = own[i]
        name, eq, _ = word.partition("=")
        opt = GLOBAL_BY_NAME.get(name) if command is None else command.option(name)
        width = 1 if opt is None or eq or not opt.takes_value else 2
        if opt is not None and name in GLOBAL_BY_NAME and i + width <= len(own):
            front.extend(own[i : i + width])
        else:
            if not rest and not _is_option(word):
                command = hot_command(word)
            rest.extend(own[i : i + width])
        i += width
    return front + rest + argv[len(own) :]
