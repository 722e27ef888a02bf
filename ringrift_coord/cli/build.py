"""The Typer side of ``cli/spec.py``: the global options and the hot commands, generated.

``install(app)`` gives the Typer app its global callback and one command per hot command
(and a hidden one per alias), each a generated function whose signature Typer reads
(``Annotated[..., typer.Option(...)]`` from the spec's names, kinds, metavars, help and
completion hints). Their values go through the fast parser's own rules (``parser.convert``),
and ``run`` splits off the command it wraps with ``parser.split_rest``, so the two parsers
read argv alike by construction. ``Group`` applies ``parser.check_text`` to the text
options and arguments of every other command too, and ``parser.convert``'s number rules
to their integer and number options; ``usage_from_click`` words Click's usage errors as
the fast parser words the same mistake.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer._click import core as click
from typer._click import exceptions as click_exceptions
from typer._click import types as click_types
from typer.core import TyperCommand, TyperGroup

from ringrift_coord.cli import parser, spec
from ringrift_coord.cli.common import complete_types, globals_of
from ringrift_coord.cli.hot import Globals
from ringrift_coord.errors import UsageError
from ringrift_coord.inputs import did_you_mean, number_hint, seconds, strict_float

# --------------------------------------------------------------------------- value types


def _label(param: click.Parameter | None) -> str:
    if param is not None and param.param_type_name == "option":
        return "option " + next((o for o in param.opts if o.startswith("--")), param.opts[0])
    if param is not None:
        return f"argument {param.human_readable_name}"
    return "value"


class SpecType(click_types.ParamType):
    """A value of one spec kind (str, int, float, duration, append), read by
    ``parser.convert``. ``bound`` (a duration's range check, ``inputs.seconds``): a number
    in a form the kind refuses (``1e10``) that the range refuses too gets the range's word,
    not advice to write it otherwise ("write 10000000000")."""

    def __init__(self, kind: str, bound: Callable[[float, str], object] | None = None) -> None:
        self.kind, self.bound = kind, bound
        self.name = "str" if kind == "append" else kind  # shown as <str> in the help

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # a default, or already converted
            return value
        try:
            return parser.convert(_label(param), value, self.kind)
        except UsageError:
            number = strict_float(value)
            if self.bound is not None and number is not None and number_hint(value):
                if math.isfinite(number):  # (1e400 gets no advice: no form of it is a number)
                    self.bound(number, param.name if param is not None and param.name else "")
            raise


TEXT = SpecType("str")
PATH = SpecType("path")  # for a file argument of a Typer command (``config validate FILE``)
# seconds or 5m, 1h30m, at most 1e9 s: ``halt --ttl``, ``reserve --ttl``
TTL = SpecType("duration", bound=seconds)


class Group(TyperGroup):
    """The root group: every plain text parameter of every command gets ``TEXT``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_text_everywhere(self)


class _StrictNumber:
    """Mixed into Click's INT/FLOAT (and IntRange/FloatRange) types of a Typer command: the
    word is read by ``parser.convert`` (plain ASCII decimal) before Click's own checks."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        kind = "int" if isinstance(self, click_types.IntParamType) else "float"
        if isinstance(value, str):
            value = parser.convert(_label(param), value, kind)
        if isinstance(self, (click_types.IntRange, click_types.FloatRange)):
            # out of range in the words of the other options ("option --cpu: 200 is not a
            # percentage from 0 to 100"), not Click's "invalid value for ... 1<=x<=1000000"
            low, high = self.min, self.max
            if (low is not None and value < low) or (high is not None and value > high):
                expected = "an integer" if kind == "int" else "a number"
                bounds = (
                    f"from {low} to {high}"
                    if low is not None and high is not None
                    else f"at least {low}"
                    if low is not None
                    else f"at most {high}"
                )
                raise UsageError(f"{_label(param)}: {value} is not {expected} {bounds}")
        return super().convert(value, param, ctx)  # type: ignore[misc]


def _strict_number(param_type: Any) -> Any:
    """A copy of ``param_type`` (click.INT is shared) that reads words strictly."""
    if isinstance(param_type, _StrictNumber):
        return param_type
    cls = type(param_type)
    strict = copy.copy(param_type)
    strict.__class__ = type(f"Strict{cls.__name__}", (_StrictNumber, cls), {})
    return strict


def _check_text_everywhere(command: click.Command) -> None:
    for param in command.params:
        if type(param.type) is click_types.StringParamType:  # click.STRING, Typer's str
            param.type = TEXT
        elif isinstance(param.type, (click_types.IntParamType, click_types.FloatParamType)):
            param.type = _strict_number(param.type)
    _usage_errors_in_our_words(command)
    for sub in getattr(command, "commands", {}).values():
        _one_line_short_help(sub)
        _check_text_everywhere(sub)


def _one_line_short_help(command: click.Command) -> None:
    """A command's line in its group's list is its ``short_help``, else its docstring's first
    paragraph, which Typer's Rich help prints with the docstring's line breaks (ragged,
    mid-sentence): that paragraph joined into one line (its own ``--help`` is unchanged)."""
    if command.short_help is None and command.help:
        first = inspect.cleandoc(command.help).split("\n\n")[0]
        command.short_help = " ".join(first.split())


def _usage_errors_in_our_words(command: click.Command) -> None:
    """Click's usage errors of ``command`` with what ``usage_from_click`` needs to word them
    as the fast parser does: the context (Click's option parser leaves it out), the words
    after a command's last argument, the name of an unknown subcommand."""
    parse = command.parse_args
    leaf = not hasattr(command, "commands")

    def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
        strict = leaf and not ctx.allow_extra_args and not ctx.resilient_parsing
        ctx.allow_extra_args = ctx.allow_extra_args or strict
        try:
            rest = parse(ctx, args)
        except click_exceptions.UsageError as exc:
            exc.ctx = exc.ctx or ctx
            raise
        finally:
            ctx.allow_extra_args = ctx.allow_extra_args and not strict
        if strict and rest:
            raise parser.extra_arguments(rest, _where(ctx))
        return rest

    setattr(command, "parse_args", parse_args)  # noqa: B010 (this command only)
    resolve = getattr(command, "resolve_command", None)
    if resolve is None:
        return

    def resolve_command(ctx: click.Context, args: list[str]) -> Any:
        try:
            return resolve(ctx, args)
        except click_exceptions.UsageError as exc:
            if not exc.message.startswith("No such command") or not args:
                raise
            visible = [n for n, c in getattr(command, "commands", {}).items() if not c.hidden]
            hint = did_you_mean(args[0], visible)
            if ctx.parent is None:  # another tool's word for one of ours comes first
                hint = _OTHER_TOOLS_WORDS.get(args[0].lower(), hint)
            raise parser.usage_error(f"unknown command {args[0]!r}{hint}", _where(ctx)) from None

    setattr(command, "resolve_command", resolve_command)  # noqa: B010


# The words of Slurm (scontrol) and Kubernetes (kubectl) for what ``halt`` and ``unhalt`` do
_OTHER_TOOLS_WORDS = {
    word: f" (to {what} a node: ringrift-coord {ours} --node N)"
    for words, what, ours in (
        (("drain", "cordon"), "drain", "halt"),
        (("undrain", "resume", "uncordon"), "resume", "unhalt"),
    )
    for word in words
}


class RestCommand(TyperCommand):
    """A command that wraps another (``run``): Click reads only the words before it.
    ``spec_name``: its name in the spec (``bandwidth run`` for the group's ``run``)."""

    spec_name: str | None = None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        command = spec.hot_command(self.spec_name or self.name or "")
        assert command is not None and command.rest is not None
        head, rest = parser.split_rest(command, args)
        remaining = super().parse_args(ctx, head)
        ctx.params[command.rest.dest] = rest
        return remaining

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        """No option of ``run`` is offered among the job's own words."""
        command = spec.hot_command(self.spec_name or self.name or "")
        if command is not None and command.rest is not None and ctx.params.get(command.rest.dest):
            return []
        return super().shell_complete(ctx, incomplete)


# --------------------------------------------------------------------------- completion


def _completer(hint: str | tuple[str, ...] | None) -> Callable[[str], list[str]] | None:
    if hint is None:
        return None
    if hint == spec.TASK_TYPES:
        return complete_types
    if isinstance(hint, tuple):
        words = hint
        return lambda incomplete: [w for w in words if w.startswith(incomplete)]
    raise ValueError(f"unknown completion hint {hint!r}")


# --------------------------------------------------------------------------- parameters

_PY_TYPE: dict[str, Any] = {
    "str": str | None,
    "path": str | None,
    "int": int | None,
    "float": float | None,
    "duration": float | None,
    "flag": bool,
    "append": list[str] | None,
}


def _option(opt: spec.Option, **extra: Any) -> inspect.Parameter:
    info: dict[str, Any] = {"help": opt.help, **extra}
    if opt.kind != "flag":
        info["click_type"] = SpecType(opt.kind)
        info["metavar"] = opt.metavar
    completer = _completer(opt.complete)
    if completer is not None:
        info["autocompletion"] = completer
    return inspect.Parameter(
        opt.dest,
        inspect.Parameter.KEYWORD_ONLY,
        default=False if opt.kind == "flag" else None,
        annotation=Annotated[_PY_TYPE[opt.kind], typer.Option(*opt.names, **info)],
    )


def _argument(arg: spec.Argument) -> inspect.Parameter:
    info: dict[str, Any] = {"metavar": arg.metavar, "help": arg.help, "click_type": TEXT}
    completer = _completer(arg.complete)
    if completer is not None:
        info["autocompletion"] = completer
    return inspect.Parameter(
        arg.dest,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[str, typer.Argument(**info)],
    )


def _rest(arg: spec.Argument) -> inspect.Parameter:
    return inspect.Parameter(
        arg.dest,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=None,
        annotation=Annotated[list[str] | None, typer.Argument(metavar=arg.metavar, help=arg.help)],
    )


def _signed(func: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """``func`` with the signature Typer reads (``inspect.signature``, ``get_type_hints``)."""
    ctx = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    signature = inspect.Signature([ctx, *params])
    func.__signature__ = signature  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return func


def _print_version(value: bool) -> None:
    if value:
        from ringrift_coord import __version__

        typer.echo(f"{spec.PROG} {__version__}")
        raise typer.Exit(0)


def _global_callback() -> Callable[..., None]:
    def callback(ctx: typer.Context, **values: Any) -> None:
        given = {k: v for k, v in values.items() if k != "version"}
        ctx.obj = Globals(**given, command=ctx.invoked_subcommand)

    params = [
        _option(opt, is_eager=True, callback=_print_version) if opt.eager else _option(opt)
        for opt in spec.GLOBAL_OPTIONS
    ]
    return _signed(callback, params)


def _command_callback(command: spec.Command) -> Callable[..., None]:
    def callback(ctx: typer.Context, **params: Any) -> None:
        from ringrift_coord.cli import hot

        handler = getattr(hot, command.handler)
        raise typer.Exit(int(handler(globals_of(ctx), **params)))

    params = [_argument(arg) for arg in command.args]
    if command.rest is not None:
        params.append(_rest(command.rest))
    params.extend(_option(opt) for opt in command.options)
    callback.__name__ = command.handler
    return _signed(callback, params)


def _command_class(command: spec.Command) -> type[TyperCommand]:
    if command.rest is None:
        return TyperCommand
    if len(command.words) == 1:
        return RestCommand
    name = "".join(w.title() for w in command.words).replace("-", "") + "Command"
    return type(name, (RestCommand,), {"spec_name": command.name})


def install(app: typer.Typer) -> None:
    """Give ``app`` the global options and every hot command of one word (with its
    aliases); a group's (``bandwidth run``) come with ``install_group``."""
    app.callback()(_global_callback())
    for command in spec.HOT_COMMANDS:
        if len(command.words) > 1:
            continue
        cls = _command_class(command)
        app.command(command.name, help=command.help, cls=cls)(_command_callback(command))
        for alias in command.aliases:
            app.command(alias, help=f"Alias of {command.name}.", hidden=True, cls=cls)(
                _command_callback(command)
            )


def install_group(group: typer.Typer, name: str) -> None:
    """Give the group ``name`` (``bandwidth``) its hot commands (``bandwidth run``)."""
    for command in spec.HOT_COMMANDS:
        if len(command.words) > 1 and command.words[0] == name:
            cls = _command_class(command)
            group.command(command.words[-1], help=command.help, cls=cls)(_command_callback(command))


# --------------------------------------------------------------------------- usage errors


def option_takes_value(root: click.Command) -> Callable[[list[str], str], bool | None]:
    """For ``parser.globals_first``: does option ``name`` of the command that ``words``
    name (``["halt"]``, ``["tasks", "history"]``) take a value? None: no option of its own."""

    def takes_value(words: list[str], name: str) -> bool | None:
        command = root
        for word in words:
            commands = getattr(command, "commands", None)
            if not commands or word not in commands:
                break
            command = commands[word]
        if command is root:
            return None
        for param in command.params:
            if param.param_type_name == "option" and name in (*param.opts, *param.secondary_opts):
                return not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        return None

    return takes_value


def _where(ctx: click.Context | None) -> str:
    """The command as typed after the program's name (``tasks history``), "" for the root."""
    if ctx is None:
        return ""
    path = ctx.command_path
    return path[len(spec.PROG) :].strip() if path.startswith(spec.PROG) else path


def _option_choices(ctx: click.Context | None) -> list[str]:
    names = [*spec.GLOBAL_BY_NAME, *spec.HELP_OPTIONS]
    if ctx is not None:
        for param in ctx.command.get_params(ctx):
            if param.param_type_name == "option":
                names.extend([*param.opts, *param.secondary_opts])
    return names


def usage_from_click(exc: click_exceptions.UsageError) -> UsageError:
    """Click's usage error in the words and the one form the fast parser gives the same
    mistake (``parser.usage_error``)."""
    ctx, message = exc.ctx, exc.message
    where = _where(ctx)
    if isinstance(exc, click_exceptions.NoSuchOption):
        known = spec.GLOBAL_BY_NAME.get(exc.option_name)
        if known is not None and known.takes_value:  # the last word: left for the command
            return parser.missing_value(known.name, "")
        return parser.unknown_option(exc.option_name, _option_choices(ctx), where)
    if isinstance(exc, click_exceptions.BadOptionUsage) and exc.option_name:
        if "does not take a value" in message:
            return parser.no_value(exc.option_name, where)
        if "requires an argument" in message:
            return parser.missing_value(exc.option_name, where)
    if isinstance(exc, click_exceptions.MissingParameter) and exc.param is not None:
        param = exc.param
        if param.param_type_name == "argument":
            return parser.usage_error(f"missing argument {param.human_readable_name}", where)
        return parser.usage_error(f"missing option {param.opts[0]}", where)
    text = exc.format_message().rstrip(".")
    return parser.usage_error(text[:1].lower() + text[1:], where)
