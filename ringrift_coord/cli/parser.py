"""The fast argv parser of the hot commands, read from ``cli/spec.py``.

It reads argv the way Click reads it (an option's value is the next word, whatever it
looks like; ``--`` ends the options; ``--help``/``-h`` anywhere among the options hands
the whole argv to the Typer app, which shows the help or refuses what comes before it),
plus the global options after the command name and the one rule of a wrapped command
(``split_rest``), which the Typer ``run`` shares. No Typer, no Rich, no ``typing``.

``check_text`` and ``convert`` are the value rules of every option of every command: the
Typer app's parameter types call them too (``cli/build.py``). ``usage_error`` is the one form
of a mistake in the command line's shape (``unknown option --nod (did you mean --node?);
see 'ringrift-coord can-spawn --help'``); ``build.usage_from_click`` words Click's the same.
"""

from __future__ import annotations

from ringrift_coord.cli.spec import (
    GLOBAL_BY_NAME,
    HELP_OPTIONS,
    PROG,
    Command,
    Option,
    hot_command,
    hot_command_at,
)
from ringrift_coord.errors import UsageError
from ringrift_coord.inputs import did_you_mean, number_hint, strict_float, strict_int

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
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
    stays a lone surrogate, as ``os.fsdecode`` gives it), but no control character and not
    empty (``--config ''`` would silently mean no file at all)."""
    if not value:
        raise UsageError(f"{label}: an empty name: give one, or leave it out")
    if value.isprintable() or not any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in value):
        return value
    shown = value
    if "://" in value or "=" in value:  # a store's address may hold a password: never shown
        from ringrift_coord.store.postgres import mask_secret, password_of, redact

        shown = mask_secret(redact(value), password_of(value))
    raise UsageError(f"{label}: {shown!r} contains control characters")


def convert(label: str, raw: str, kind: str) -> Any:
    """The value of an option of ``kind`` (str, int, float, duration, append) given as
    ``raw``."""
    if kind in ("str", "append"):
        return check_text(label, raw)
    if kind == "path":
        return check_path(label, raw)
    if kind == "duration":
        from ringrift_coord import durations

        try:
            return durations.parse(raw)
        except ValueError as exc:
            hint = number_hint(raw)  # '+5', '1_000', '٣': the same advice as a number option
            raise UsageError(f"{label}: {exc}" + (f"; {hint}" if hint else "")) from None
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


# --------------------------------------------------------------------------- usage errors


def usage_error(detail: str, command: str = "") -> UsageError:
    """A mistake in the command line's shape, in the one form both parsers give (the Typer
    app's through ``cli/main.py``): what is wrong, then where the help is, e.g.
    ``unknown option --nod (did you mean --node?); see 'ringrift-coord can-spawn --help'``.
    ``command`` is the command as typed (``tasks history``); "" for the program itself."""
    path = f"{PROG} {command}" if command else PROG
    return UsageError(f"{detail}; see '{path} --help'")


def shown(word: str) -> str:
    """A word of argv in a message: as it is, or quoted with its escapes when unprintable."""
    return word if word.isprintable() else repr(word)


def unknown_option(name: str, choices: Iterable[str], command: str = "") -> UsageError:
    """``--nod`` is no option here; the nearest of ``choices`` is the hint. ``-5`` is a
    negative number where a value was expected: said as one."""
    if name.startswith("-") and name[1:2].isdigit():
        try:
            float(name)
        except ValueError:
            pass
        else:
            return usage_error(
                f"unknown option {shown(name)} (if it is meant as a number: none here may be "
                "below 0)",
                command,
            )
    return usage_error(f"unknown option {shown(name)}{did_you_mean(name, choices)}", command)


def option_choices(command: Command | None) -> list[str]:
    """Every option name a command line may give there: the command's own, the global
    options (read anywhere before a wrapped command) and the help options."""
    names = [*GLOBAL_BY_NAME, *HELP_OPTIONS]
    if command is not None:
        names.extend(name for opt in command.options for name in opt.names)
    return names


def missing_value(name: str, command: str = "") -> UsageError:
    return usage_error(f"option {name} requires a value", command)


def no_value(name: str, command: str = "") -> UsageError:
    return usage_error(f"option {name} takes no value", command)


def extra_arguments(words: list[str], command: str = "") -> UsageError:
    """Words past a command's last argument (listed as Click lists them)."""
    plural = "s" if len(words) > 1 else ""
    return usage_error(f"unexpected extra argument{plural} ({' '.join(words)})", command)


# --------------------------------------------------------------------------- argv


def _is_option(word: str) -> bool:
    return word.startswith("-") and word != "-"


def _is_cluster(word: str) -> bool:
    """``-qx``: several one-letter options in one word (only flags have short names, in
    ``spec``, so none of them takes a value). As in Click, every character after the dash is
    one (``-q=1`` is ``-q``, ``-=`` and ``-1``)."""
    return len(word) > 2 and word[0] == "-" and word[1] != "-"


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

    Raises ``UsageError`` for bad input, with the message both parsers give. Of several
    mistakes, the one the Typer app meets first is the one said: the global options' (the
    app reads them first, wherever they are given: ``globals_first``), their values, then
    the command's own options as they come, their values in the order they were first given,
    the arguments', and last the words past the arguments.
    """
    values: dict[str, Any] = {}
    order: list[Option] = []  # global options, as first given
    i = 0
    while i < len(argv):  # global options before the command
        word = argv[i]
        name, eq, inline = word.partition("=")
        opt = GLOBAL_BY_NAME.get(name)
        if opt is not None:
            i = _take(argv, i, opt, inline if eq else None, values, "", order)
            continue
        if _is_option(word):
            return None  # --help, --, an unknown option: the Typer app says what it is
        break
    if i == len(argv):
        return Parsed(None, values, {}, version=True) if values.get("version") else None
    command, after = hot_command_at(argv, i)
    if command is None:
        if values.get("version"):
            return Parsed(None, values, {}, version=True)
        return None  # not a hot command
    where = " ".join(argv[i:after])  # the name as typed (an alias too), for its help
    head, rest = split_rest(command, argv[after:])
    params: dict[str, Any] = {}
    own: list[Option] = []  # the command's options, as first given
    positional: list[str] = []
    mistake: UsageError | None = None  # the first one among the command's own words
    j = 0
    while j < len(head):
        word = head[j]
        if word == "--":  # (commands without a rest) everything after it is an argument
            positional.extend(head[j + 1 :])
            break
        if word in HELP_OPTIONS:
            return None  # help (or Click's refusal of what follows): the Typer app's, whole
        if not _is_option(word):
            positional.append(word)
            j += 1
            continue
        j += 1
        name, eq, inline = word.partition("=")
        opt = command.option(name)
        if _is_cluster(word):  # -qx: short flags given together
            cluster = [command.option(f"-{ch}") for ch in word[1:]]
            if any(f"-{ch}" in HELP_OPTIONS for ch in word[1:]):
                return None  # help among them: the Typer app's, as above
            if all(cluster):
                for flag in cluster:
                    assert flag is not None and flag.kind == "flag"
                    _take([word], 0, flag, None, params, where, own)
            elif mistake is None:
                name = next(
                    f"-{ch}" for ch, flag in zip(word[1:], cluster, strict=True) if flag is None
                )
                mistake = unknown_option(name, option_choices(command), where)
            continue
        if opt is None:
            mistake = mistake or unknown_option(name, option_choices(command), where)
            continue
        if name in GLOBAL_BY_NAME:  # read first, as the program's own (its help)
            width = 1 if eq or not opt.takes_value else 2
            if j - 1 + width > len(head):  # no value: left with the command, where it fails
                mistake = mistake or missing_value(opt.name, "")
            else:
                _take(head, j - 1, opt, inline if eq else None, values, "", order)
            j += width - 1
            continue
        try:
            j = _take(head, j - 1, opt, inline if eq else None, params, where, own)
        except UsageError as exc:
            mistake = mistake or exc
            j += 1 if opt.takes_value and not eq else 0
    if values.get("version"):
        return Parsed(command, values, {}, version=True)
    for opt in order:
        values[opt.dest] = _value(opt, values)
    if mistake is not None:
        raise mistake
    for opt in own:
        params[opt.dest] = _value(opt, params)
    args = command.args
    for n, arg in enumerate(args):
        if n >= len(positional):
            raise usage_error(f"missing argument {arg.metavar}", where)
        params[arg.dest] = check_text(f"argument {arg.metavar}", positional[n])
    if len(positional) > len(args):
        raise extra_arguments(positional[len(args) :], where)
    for opt in command.options:
        if opt not in own:
            params[opt.dest] = _value(opt, params)
    for opt in GLOBAL_BY_NAME.values():
        if opt not in order:
            values[opt.dest] = _value(opt, values)
    if command.rest is not None:
        params[command.rest.dest] = rest
    return Parsed(command, _globals(values), params)


def _take(
    argv: list[str],
    i: int,
    opt: Option,
    inline: str | None,
    into: dict[str, Any],
    where: str,
    order: list[Option],
) -> int:
    """Store ``opt``'s value from ``argv[i]`` (and the next word); the index after it.
    ``order``: the options given so far, in the order they were first given."""
    if opt.kind == "flag":
        if inline is not None:
            raise no_value(opt.name, where)
        into[opt.dest] = True
        if opt not in order:
            order.append(opt)
        return i + 1
    if inline is None:
        if i + 1 >= len(argv):
            raise missing_value(opt.name, where)
        raw, nxt = argv[i + 1], i + 2
    else:
        raw, nxt = inline, i + 1
    if opt not in order:
        order.append(opt)
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
        command, after = hot_command_at(argv, i)
        if command is not None:
            return argv[: after + _own_end(command, argv[after:])]
    return argv[: argv.index("--")] if "--" in argv else argv


def globals_first(
    argv: list[str], takes_value: Callable[[list[str], str], bool | None] | None = None
) -> list[str]:
    """argv with the global options given after the command moved to the front, where the
    Typer app reads them; a wrapped command's words (and any after ``--``) stay put.

    The values of a command's own options are skipped (``--node --json`` is a node called
    ``--json``, ``halt --reason --json`` a reason): for a hot command from the spec, for any
    other from ``takes_value(words, name)`` (the Typer app's answer for the command named by
    ``words``: True or False for its own option ``name``, None for none of its own).
    """
    own = options_part(argv)
    front: list[str] = []
    rest: list[str] = []
    command: Command | None = None
    words: list[str] = []  # a non-hot command's name (and subcommand, arguments) so far
    i = 0
    while i < len(own):
        word = own[i]
        name, eq, _ = word.partition("=")
        mine = None
        if command is None and words and takes_value is not None and _is_option(word):
            mine = takes_value(words, name)
        if mine is not None:  # the command's own option, whatever its name
            is_global, width = False, 2 if mine and not eq else 1
        else:
            opt = GLOBAL_BY_NAME.get(name) if command is None else command.option(name)
            is_global = opt is not None and name in GLOBAL_BY_NAME
            width = 1 if opt is None or eq or not opt.takes_value else 2
        if is_global and i + width <= len(own):
            front.extend(own[i : i + width])
        else:
            if not _is_option(word):
                if not rest:
                    command = hot_command_at([word], 0)[0]
                elif command is None and words == rest and len(words) == 1:
                    command = hot_command(f"{words[0]} {word}")  # bandwidth run
                words.append(word)
            rest.extend(own[i : i + width])
        i += width
    return front + rest + argv[len(own) :]
