"""The ``ringrift-coord`` entry point and the one error boundary.

Every launch script starts a fresh interpreter for ``can-spawn``, ``register``,
``unregister`` and ``run``, so those four are parsed here by a small argv parser and never
import Typer or Rich (a Typer app costs ~100 ms before it does anything). Everything else —
and any ``--help``, and shell completion — goes to the Typer app in ``cli/app.py``. Both
parsers call the same functions in ``cli/hot.py``; ``tests/test_cli_parity.py`` keeps their
options identical.

Errors of the core (``CoordError``) become one line on stderr and the contract's exit code
here, and nowhere else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from ringrift_coord.errors import CoordError, ExitCode

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any

PROG = "ringrift-coord"
COMPLETE_VAR = "_RINGRIFT_COORD_COMPLETE"

# option name -> (destination, kind); kind: "str", "int", "float", "flag", "append"
GLOBAL_OPTIONS: dict[str, tuple[str, str]] = {
    "--db": ("db", "str"),
    "--state-dir": ("state_dir", "str"),
    "--config": ("config", "str"),
    "--set": ("overrides", "append"),
    "--json": ("json", "flag"),
}

HOT_COMMANDS: dict[str, dict[str, Any]] = {
    "can-spawn": {
        "args": ["task_type"],
        "options": {"--node": ("node", "str")},
    },
    "register": {
        "args": ["task_type"],
        "options": {
            "--node": ("node", "str"),
            "--pid": ("pid", "int"),
            "--task-id": ("task_id", "str"),
            "--config-name": ("config_name", "str"),
        },
    },
    "unregister": {
        "args": ["task_id"],
        "options": {
            "--exit-code": ("exit_code", "int"),
            "--status": ("status", "str"),
            "--token": ("token", "int"),
            "--reason": ("reason", "str"),
        },
    },
    "run": {
        "args": ["task_type"],
        "options": {
            "--node": ("node", "str"),
            "--config-name": ("config_name", "str"),
            "--wait": ("wait", "flag"),
            "--timeout": ("timeout", "float"),
        },
        "rest": "command",
    },
}
ALIASES = {"spawn-check": "can-spawn"}


class _Usage(CoordError):
    exit_code = ExitCode.USAGE


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_cli(list(sys.argv[1:] if argv is None else argv)))


def run_cli(argv: list[str]) -> int:
    json_mode = "--json" in _options_part(argv)
    try:
        hot = None if os.environ.get(COMPLETE_VAR) else _parse_hot(argv)
        if hot is not None:
            return _dispatch_hot(*hot)
        from ringrift_coord.cli.app import run_app

        return run_app(_globals_first(argv))
    except CoordError as exc:
        return _fail(exc.message, int(exc.exit_code), json_mode)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, json_mode)
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except MemoryError:
        return _fail("out of memory", int(ExitCode.CONFIG), json_mode)
    except Exception as exc:  # a bug: still one line, never a traceback
        if os.environ.get("RINGRIFT_COORD_DEBUG"):
            raise
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set RINGRIFT_COORD_DEBUG=1 for a "
            "traceback)",
            int(ExitCode.CONFIG),
            json_mode,
        )


def _fail(message: str, code: int, json_mode: bool) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "error"
    if json_mode:
        import json

        try:
            sys.stdout.write(json.dumps({"error": first_line, "exit_code": code}) + "\n")
            sys.stdout.flush()
        except OSError:
            pass
    try:
        sys.stderr.write(f"{PROG}: error: {first_line}\n")
        sys.stderr.flush()
    except OSError:
        pass
    return code


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _options_part(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")] if "--" in argv else argv


# --------------------------------------------------------------------------- fast parser


def _parse_hot(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """Parse a hot command; None means "let the Typer app handle it" (help, others)."""
    if any(a in ("--help", "-h") for a in _options_part(argv)):
        return None
    values: dict[str, Any] = {"json": False}
    i, command = 0, None
    while i < len(argv):  # global options before the command
        arg = argv[i]
        name, _, inline = arg.partition("=")
        if name in GLOBAL_OPTIONS:
            i = _take(argv, i, name, inline if "=" in arg else None, GLOBAL_OPTIONS[name], values)
            continue
        if arg.startswith("-"):
            return None  # an unknown global option: the Typer app says what is wrong
        command = ALIASES.get(arg, arg)
        i += 1
        break
    if command not in HOT_COMMANDS:
        return None
    spec = HOT_COMMANDS[command]
    options: dict[str, tuple[str, str]] = {**GLOBAL_OPTIONS, **spec["options"]}
    params: dict[str, Any] = {
        dest: (False if kind == "flag" else None) for dest, kind in spec["options"].values()
    }
    positional: list[str] = []
    rest_key = spec.get("rest")
    rest: list[str] = []
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            if rest_key is None:
                positional.extend(argv[i + 1 :])
            else:
                rest = argv[i + 1 :]
            break
        if arg.startswith("--"):
            name, _, inline = arg.partition("=")
            if name not in options:
                raise _Usage(f"{command}: no such option {name} (see {PROG} {command} --help)")
            target = values if name in GLOBAL_OPTIONS else params
            i = _take(argv, i, name, inline if "=" in arg else None, options[name], target)
            continue
        if arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            raise _Usage(f"{command}: no such option {arg} (see {PROG} {command} --help)")
        if rest_key is not None and len(positional) == len(spec["args"]):
            rest = argv[i:]  # run TYPE CMD ...: the command starts at the first extra word
            break
        positional.append(arg)
        i += 1
    if len(positional) < len(spec["args"]):
        missing = spec["args"][len(positional)].upper()
        raise _Usage(f"{command}: missing argument {missing} (see {PROG} {command} --help)")
    if len(positional) > len(spec["args"]):
        raise _Usage(f"{command}: unexpected extra argument {positional[len(spec['args'])]!r}")
    params.update(zip(spec["args"], positional, strict=True))
    if rest_key is not None:
        params[rest_key] = rest
    return command, values, params


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _take(
    argv: list[str],
    i: int,
    name: str,
    inline: str | None,
    spec: tuple[str, str],
    into: dict[str, Any],
) -> int:
    dest, kind = spec
    if kind == "flag":
        if inline is not None:
            raise _Usage(f"option {name} takes no value")
        into[dest] = True
        return i + 1
    if inline is None:
        if i + 1 >= len(argv) or argv[i + 1] == "--":
            raise _Usage(f"option {name} requires a value")
        raw, nxt = argv[i + 1], i + 2
    else:
        raw, nxt = inline, i + 1
    if kind == "append":
        into.setdefault(dest, []).append(raw)
    else:
        into[dest] = _convert(name, raw, kind)
    return nxt


def _convert(name: str, raw: str, kind: str) -> Any:
    if kind == "str":
        if any(ch < " " or ch == "\x7f" for ch in raw):  # a newline would break one-line messages
            raise _Usage(f"option {name}: {raw!r} contains control characters")
        return raw
    try:
        value = int(raw) if kind == "int" else float(raw)
    except ValueError:
        expected = "an integer" if kind == "int" else "a number"
        raise _Usage(f"option {name}: {raw!r} is not {expected}") from None
    if kind == "float" and value != value:  # NaN
        raise _Usage(f"option {name}: {raw!r} is not a number")
    if kind == "int" and not -(2**63) <= value < 2**63:  # the store keeps 64-bit integers
        raise _Usage(f"option {name}: {raw!r} is out of range")
    return value


def _dispatch_hot(command: str, values: dict[str, Any], params: dict[str, Any]) -> int:
    from ringrift_coord.cli import hot

    g = hot.Globals(**values)
    handlers: dict[str, Callable[..., int]] = {
        "can-spawn": hot.can_spawn,
        "register": hot.register,
        "unregister": hot.unregister,
        "run": hot.run,
    }
    return handlers[command](g, **params)


def _globals_first(argv: list[str]) -> list[str]:
    """Move global options given after the command to the front, where Typer expects them.

    Stops at ``--`` (and, for ``run``/``bandwidth run``, at the command it wraps).
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name, eq, _ = arg.partition("=")
        if name in GLOBAL_OPTIONS:
            if GLOBAL_OPTIONS[name][1] == "flag" or eq:
                front.append(arg)
                i += 1
            else:
                front.extend(argv[i : i + 2])
                i += 2
            continue
        rest.append(arg)
        i += 1
    return front + rest
