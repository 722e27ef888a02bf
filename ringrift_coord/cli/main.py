"""The ``ringrift-coord`` entry point and the one error boundary.

A lazy dispatcher: the hot commands (``can-spawn``, ``register``, ``unregister``, ``run``;
every launch script starts a fresh interpreter for them) are read by the fast parser
(``cli/parser.py``) and run by ``cli/hot.py`` without importing Typer or Rich. Everything
else, the hot commands' ``--help`` and shell completion go to the Typer app (``cli/app.py``).
Both are built from one declaration, ``cli/spec.py``. ``--version`` is answered here.

Errors of the core (``CoordError``) become one line on stderr (and, with ``--json``, one
JSON document on stdout) and the contract's exit code here, and nowhere else. A bug is
``internal error: ...``, exit 70. A stdout that is closed, or a pipe whose reader has gone
(``ringrift-coord status | head -1``), is quiet: what could not be written is dropped and
the command exits with the code it would have returned (``register`` alone cares: an id it
cannot deliver is not kept, see ``cli/hot.py``).
"""

from __future__ import annotations

import os
import sys

from ringrift_coord.cli import parser
from ringrift_coord.cli.spec import COMPLETE_VAR, PROG
from ringrift_coord.errors import CoordError, ExitCode, UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from typer._click import Command


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command line and ``sys.exit`` with its code (for a caller in-process)."""
    sys.exit(_main(argv))


def console_main() -> None:
    """The ``ringrift-coord`` program (and ``python -m ringrift_coord``): the process is
    ours, so it may leave without the interpreter's teardown (``_exit``)."""
    _exit(_main(None))


def _main(argv: Sequence[str] | None) -> int:
    lost = _open_std_fds()
    sys.stdout = _Stdout(sys.stdout, lost)
    sys.stderr = _Stdout(sys.stderr, fd=2)  # a gone reader of stderr changes no exit code
    code = run_cli(list(sys.argv[1:] if argv is None else argv))
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    return code


def _exit(code: int) -> None:
    """Exit with ``code``, skipping the interpreter's teardown when nothing needs it.

    Tearing down ~100 modules costs a launch ~6 ms, more than a whole admission. When
    the work is done (the store closed, stdout flushed), no ``atexit`` callback is waiting
    (coverage tools) and no other thread runs, there is nothing left to finish: flush stderr
    and leave with ``os._exit``. Otherwise a normal ``sys.exit``. Logging's own callback
    (registered when anything imports ``logging``, as psycopg does; teardown then costs a
    PostgreSQL command line ~140 ms) is run here and dropped: it only flushes handlers.
    """
    import atexit

    counted = getattr(atexit, "_ncallbacks", None)  # CPython's; elsewhere: the normal exit
    waiting = counted() if counted is not None else -1
    logging = sys.modules.get("logging")
    if waiting > 0 and logging is not None:
        logging.shutdown()
        atexit.unregister(logging.shutdown)
        waiting -= 1  # counted before: some versions keep an unregistered callback's slot
    threading = sys.modules.get("threading")
    quiet = waiting == 0 and (threading is None or threading.active_count() == 1)
    if quiet:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        os._exit(code)
    sys.exit(code)


def run_cli(argv: list[str]) -> int:
    """Run one command line; the exit code. Never raises (but SystemExit)."""
    json_mode = "--json" in parser.options_part(argv)
    try:
        if os.environ.get(COMPLETE_VAR):
            return run_typer(argv)  # Tab completion (see ringrift_coord/data/completions/)
        parsed = parser.parse(argv)
        if parsed is not None:  # what the parser read, not a word that looks like --json
            json_mode = bool(parsed.globals.get("json"))
        if parsed is None:
            return run_typer(argv, hoist=True)
        if parsed.version:
            from ringrift_coord import __version__

            if json_mode:
                from ringrift_coord.cli.hot import emit_json

                emit_json({"version": __version__})
            else:
                sys.stdout.write(f"{PROG} {__version__}\n")
            return ExitCode.OK
        assert parsed.command is not None
        from ringrift_coord.cli import hot

        handler = getattr(hot, parsed.command.handler)
        return int(handler(hot.Globals(**parsed.globals), **parsed.params))
    except CoordError as exc:
        return _fail(_noted(_shown(exc), exc), int(exc.exit_code), json_mode)
    except KeyboardInterrupt as exc:
        return _fail(_noted("interrupted", exc), ExitCode.INTERRUPTED, json_mode)
    except MemoryError:
        return _fail("out of memory", ExitCode.SOFTWARE, json_mode)
    except Exception as exc:  # a bug: still one line, never a traceback
        if os.environ.get("RINGRIFT_COORD_DEBUG"):
            raise
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set RINGRIFT_COORD_DEBUG=1 for a "
            "traceback)",
            ExitCode.SOFTWARE,
            json_mode,
        )


def _shown(exc: CoordError) -> str:
    """The error as the command line says it: a bad field of the core is named as the option
    that gives it (options are ``--`` + the field with ``-`` for ``_``)."""
    if isinstance(exc, UsageError) and exc.field is not None:
        return f"option --{exc.field.replace('_', '-')}: {exc.detail}"
    return exc.message


def _noted(message: str, exc: BaseException) -> str:
    """``message`` with what the core added on the way out (``add_note``: an interrupt
    during a PostgreSQL commit says that its outcome is unknown), on the same line."""
    notes = getattr(exc, "__notes__", None)
    return "; ".join([message, *notes]) if notes else message


def _fail(message: str, code: int, json_mode: bool) -> int:
    # the first line only (a line break in the message itself; a U+2028 in a value is no
    # line break here, it is escaped below), with anything unprintable shown as an escape:
    # an escape sequence from argv or the environment must stay inert
    first_line = message.strip().split("\n")[0] if message.strip() else "error"
    if not first_line.isprintable():
        from ringrift_coord.inputs import printable

        first_line = printable(first_line)
    if json_mode:
        import json

        try:
            from ringrift_coord.schema import SCHEMA_VERSION

            document = {
                "schema_version": SCHEMA_VERSION,
                "error": first_line,
                "exit_code": int(code),
            }
            sys.stdout.write(json.dumps(document) + "\n")
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        sys.stderr.write(f"{PROG}: error: {first_line}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    return int(code)


# --------------------------------------------------------------------------- stdout


def _open_std_fds() -> bool:
    """Put /dev/null on any of fds 0-2 that is closed; True if stdout (fd 1) was.

    Otherwise the next file opened (the SQLite store) would get that number, and a stray
    write to stdout or stderr would land in it.
    """
    stdout_closed = False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 1:
            stdout_closed = True
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (lives as long as we do)
        elif fd == 2:
            sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
    return stdout_closed


class _Stdout:
    """``sys.stdout`` (or ``sys.stderr``, ``fd`` 2) that drops what a closed descriptor or a
    gone reader cannot take.

    After the first failed write or flush, ``lost`` is True, the descriptor is /dev/null (so
    nothing fails again, not even the interpreter's last flush) and everything is dropped. A
    broken pipe or a closed descriptor is quiet; any other error of stdout (a full disk) says
    so once on stderr. Either way the exit code stays the command's: `cmd 2>&1 | head -1`
    exits as `cmd` does.
    """

    def __init__(self, stream: Any, lost: bool = False, fd: int = 1) -> None:
        self._stream = stream
        self.lost = lost
        self.fd = fd

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return int(self._stream.write(text))
            except UnicodeEncodeError:  # an encoding without "∞" or "·" (PYTHONIOENCODING)
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                escaped = text.encode(encoding, "backslashreplace").decode(encoding, "replace")
                try:
                    return int(self._stream.write(escaped))
                except (OSError, ValueError) as exc:  # (once: never a loop)
                    self._lose(exc)
            except (OSError, ValueError) as exc:
                self._lose(exc)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._lose(exc)

    def _lose(self, exc: Exception) -> None:
        import errno

        self.lost = True
        quiet = (errno.EPIPE, errno.EBADF)
        if self.fd == 1 and isinstance(exc, OSError) and exc.errno not in quiet:
            try:
                sys.stderr.write(f"{PROG}: stdout: {exc.strerror or exc}; output dropped\n")
            except (OSError, ValueError, AttributeError):
                pass
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.fd)
            os.close(null)
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# --------------------------------------------------------------------------- Typer


def click_command() -> Command:
    """The Click command tree Typer builds from the app, once per process: building it reads
    every command's signature and type hints (~100 ms, most of a ``status``)."""
    if not _COMMAND:
        import typer

        from ringrift_coord.cli.app import app

        _COMMAND.append(typer.main.get_command(app))
    return _COMMAND[0]


_COMMAND: list[Command] = []


def run_typer(argv: list[str], *, hoist: bool = False) -> int:
    """Run the Typer app without Click's own error printing; the boundary prints one line,
    worded as the fast parser words the same mistake (``build.usage_from_click``).

    With ``hoist``, the global options given after the command move to the front first
    (``parser.globals_first``)."""
    import typer
    from typer import _click as click

    from ringrift_coord.cli.build import option_takes_value, usage_from_click

    command = click_command()
    if hoist:
        argv = parser.globals_first(argv, option_takes_value(command))
    if os.environ.get(COMPLETE_VAR):
        from typer.completion import completion_init

        completion_init()  # registers Typer's bash/zsh/fish classes (add_completion=False)
    try:
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # the help is already on stdout
        path = exc.ctx.command_path if exc.ctx is not None else PROG
        raise parser.usage_error("missing command", path[len(PROG) :].strip()) from None
    except click.exceptions.UsageError as exc:
        raise usage_from_click(exc) from None
    except click.exceptions.ClickException as exc:
        raise UsageError(exc.format_message()) from None
    except typer.Abort:
        raise KeyboardInterrupt from None
    return int(result) if isinstance(result, int) else 0
