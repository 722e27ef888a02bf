"""Domain exceptions and the exit codes of the command-line contract (see the README's
"Exit codes").

The core raises these; exactly one place (``ringrift_coord.cli.main``) turns them into an
exit code and one line on stderr.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any


class ExitCode:
    """Every code the tool returns (the README's table). ``run`` also passes on its
    command's own exit code.

    Plain ``int`` constants, not an ``IntEnum``: every command imports this module, and
    importing ``enum`` costs a command ~2 ms of start-up that a ``can-spawn`` has no use for."""

    OK = 0
    DENIED = 1  # limit, rate, breaker, threshold, halt, reservation, peak hours
    USAGE = 2  # unknown command, type, option, bad value
    CONFIG = 3  # bad config, unreadable/corrupt DB, unsafe state dir
    SOFTWARE = 70  # internal error: a bug (sysexits' EX_SOFTWARE)
    TEMPFAIL = 75  # nothing was done, try again: no slot for run, store busy, --wait timed out
    CANNOT_EXECUTE = 126  # run: the command was found but could not be executed
    NOT_FOUND = 127  # run: the command was not found
    SIGNAL_BASE = 128  # run: 128+N, the command died of signal N (for_signal)
    INTERRUPTED = 130  # 128 + SIGINT: interrupted (Ctrl-C)

    @staticmethod
    def for_signal(signum: int) -> int:
        """The exit code of a command that died of signal ``signum``: 128 + N."""
        return ExitCode.SIGNAL_BASE + int(signum)

    @staticmethod
    def by_name() -> dict[str, int]:
        """Every code by its name, in the table's order."""
        return {k: v for k, v in vars(ExitCode).items() if k.isupper() and isinstance(v, int)}


class CoordError(Exception):
    """Base of every error the CLI maps to an exit code."""

    exit_code: int = ExitCode.CONFIG

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SignalError(CoordError):
    """Raised by a signal's handler (SIGTERM while ``run --wait`` waits): code that swallows
    its own failures (a committed change's after-commit work) still lets this one through."""


class UsageError(CoordError, ValueError):
    """Bad input. ``field`` names the input in the core's own terms (``ttl``, ``task_id``).

    ``message`` (and ``str(exc)``) is the core's sentence, ``ttl: 0 is not a positive
    number of seconds``; ``detail`` is the sentence without the field. The command line
    names the field as its option instead (``option --ttl: ...``, in ``cli/main.py``).
    """

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message if field is None else f"{field}: {message}")
        self.field, self.detail = field, message


class ConfigError(CoordError, ValueError):
    """A bad configuration value; names the file, line and key when known."""

    exit_code = ExitCode.CONFIG

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
        self.file, self.line, self.key = file, line, key


class StateError(CoordError, OSError):
    """Unsafe state directory, unreadable/corrupt/foreign database, network filesystem."""

    exit_code = ExitCode.CONFIG


class StoreBusy(CoordError, TimeoutError):
    """The store stayed locked past the busy timeout: try again later, decide nothing."""

    exit_code = ExitCode.TEMPFAIL


class NotFound(CoordError, LookupError):
    exit_code = ExitCode.USAGE


class SpawnDenied(CoordError):
    """Admission refused; carries the decision with every blocking rule."""

    exit_code = ExitCode.DENIED

    def __init__(self, decision: Any) -> None:
        super().__init__(decision.summary())
        self.decision = decision


class WaitTimeout(CoordError, TimeoutError):
    exit_code = ExitCode.TEMPFAIL

    def __init__(self, message: str, decision: Any = None) -> None:
        super().__init__(message)
        self.decision = decision
