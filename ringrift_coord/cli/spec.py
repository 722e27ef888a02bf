"""The one declaration of the global options and the hot commands, as plain data.

``can-spawn``, ``register``, ``unregister`` and ``run`` start a fresh interpreter for every
job a launch script starts, so they are parsed by a small argv parser (``cli/parser.py``)
that never imports Typer or Rich. The Typer app (``cli/app.py``, through ``cli/build.py``)
builds the same commands and the global options from this module for ``--help``, shell
completion and its own parsing. Nothing here is declared twice; ``tests/test_cli_parity.py``
checks that both sides agree.

This module imports nothing (not even ``typing``): it is read on every launch.

Option kinds: ``str``, ``path`` (a file or directory: any bytes the file system allows,
but no control characters), ``int`` (64-bit, what the store keeps), ``float`` (not NaN),
``duration`` (seconds, or with units: ``90``, ``5m``, ``1h30m``; ``durations.parse``),
``flag`` (no value) and ``append`` (a ``str`` that may repeat; the values in order). Every
text value must be valid UTF-8 made of printable characters (``parser.check_text``), on both
paths.

A flag may also have a ``short`` name, a dash and one letter (``-q``). Short flags may be
given together in one word (``-qx``), as Click and getopt read them; only flags have short
names, so a short word never takes a value (``-N5`` and ``-q=x`` are refused by both parsers).

A command's name may be two words, a group and a command (``bandwidth run``): the two words
together select it; every other command of that group (and the group's own ``--help``) is
the Typer app's.

A command's ``rest`` is the command it wraps (``run TYPE [OPTIONS] [--] CMD ...``): it starts
after ``--``, or at the first word that is neither an option nor an option's value once every
argument is given. Every word from there on is the job's, whatever it looks like; the
command's options, the global options and ``--help`` are only recognised before it.
"""

from __future__ import annotations

PROG = "ringrift-coord"
COMPLETE_VAR = "_RINGRIFT_COORD_COMPLETE"  # set by the shipped completion scripts
HELP_OPTIONS = ("--help", "-h")
KINDS = ("str", "path", "int", "float", "duration", "flag", "append")

# Completion sources by name (the Typer side maps them to functions); a tuple is the words.
TASK_TYPES = "task_types"
RELEASE_STATUSES = ("ok", "failed", "oom", "killed", "stopped")


class Option:
    """``--name VALUE`` (or ``--name=VALUE``), stored under ``dest``."""

    __slots__ = ("name", "dest", "kind", "help", "metavar", "complete", "eager", "short")

    def __init__(
        self,
        name: str,
        dest: str,
        kind: str,
        help: str,
        *,
        metavar: str | None = None,
        complete: str | tuple[str, ...] | None = None,
        eager: bool = False,
        short: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"{name}: unknown kind {kind!r}")
        if short is not None and (
            kind != "flag" or len(short) != 2 or short[0] != "-" or not short[1].isalpha()
        ):
            raise ValueError(f"{name}: a short name is a dash and a letter, for a flag only")
        self.short = short
        self.name, self.dest, self.kind, self.help = name, dest, kind, help
        self.metavar, self.complete = metavar, complete
        self.eager = eager  # acted on before arguments are checked (--version)

    @property
    def takes_value(self) -> bool:
        return self.kind != "flag"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the option answers to: ``--name``, then its short name if any."""
        return (self.name,) if self.short is None else (self.name, self.short)

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.dest!r}, {self.kind!r})"


class Argument:
    """A positional word (always one ``str``), stored under ``dest``."""

    __slots__ = ("dest", "metavar", "help", "complete")

    def __init__(
        self, dest: str, metavar: str, help: str, *, complete: str | tuple[str, ...] | None = None
    ) -> None:
        self.dest, self.metavar, self.help, self.complete = dest, metavar, help, complete

    def __repr__(self) -> str:
        return f"Argument({self.dest!r}, {self.metavar!r})"


class Command:
    """A hot command: its arguments, options, aliases and (``run``) the command it wraps.

    ``handler`` names the function of ``cli/hot.py`` both parsers call with the global
    options and ``dest=value`` for every argument and option (and ``rest``). ``words``: the
    name's words (two for a command of a group: ``bandwidth run``).
    """

    __slots__ = ("name", "help", "args", "options", "aliases", "rest", "handler", "words")

    def __init__(
        self,
        name: str,
        help: str,
        args: tuple[Argument, ...],
        options: tuple[Option, ...],
        *,
        aliases: tuple[str, ...] = (),
        rest: Argument | None = None,
    ) -> None:
        self.name, self.help, self.args, self.options = name, help, args, options
        self.aliases, self.rest = aliases, rest
        self.words = tuple(name.split(" "))
        self.handler = "_".join(self.words).replace("-", "_")

    def option(self, name: str) -> Option | None:
        """This command's option ``name`` (long or short), or a global option; None if
        neither."""
        for opt in self.options:
            if name == opt.name or name == opt.short:
                return opt
        return GLOBAL_BY_NAME.get(name)

    def __repr__(self) -> str:
        return f"Command({self.name!r})"


GLOBAL_OPTIONS: tuple[Option, ...] = (
    Option(
        "--db",
        "db",
        "path",
        "Store: a path or sqlite:///path, or postgresql://host/db "
        "(env RINGRIFT_COORD_DB; default: tasks.db in the state directory).",
        metavar="URL|PATH",
    ),
    Option(
        "--state-dir",
        "state_dir",
        "path",
        "State directory (env RINGRIFT_COORDINATOR_DIR; default: $XDG_STATE_HOME/ringrift-coord).",
        metavar="DIR",
    ),
    Option(
        "--config",
        "config",
        "path",
        "YAML config file (env RINGRIFT_COORD_CONFIG).",
        metavar="FILE",
    ),
    Option(
        "--set",
        "overrides",
        "append",
        "Override one setting, e.g. --set task_limits.selfplay.per_node=8 "
        "(repeatable; above env and config file).",
        metavar="KEY=VALUE",
    ),
    Option("--json", "json", "flag", "Machine output: one JSON document on stdout."),
    Option("--version", "version", "flag", "Print the version and exit.", eager=True),
)
GLOBAL_BY_NAME = {opt.name: opt for opt in GLOBAL_OPTIONS}

_TYPE = Argument("task_type", "TYPE", "Task type, e.g. selfplay or training.", complete=TASK_TYPES)
_NODE = Option(
    "--node", "node", "str", "Node id (default: $RINGRIFT_NODE_ID, else host name).", metavar="N"
)
_CONFIG_NAME = Option(
    "--config-name", "config_name", "str", "Board config, e.g. square8_2p.", metavar="C"
)
_WAIT = Option("--wait", "wait", "flag", "Wait in a fair queue for a slot.")
_TIMEOUT = Option(
    "--timeout",
    "timeout",
    "duration",
    "With --wait: give up after this long (exit 75): seconds, or 5m, 1h30m "
    "(default: $RINGRIFT_WAIT_TIMEOUT, else wait as long as it takes).",
    metavar="DURATION",
)
_NO_SLOT_EXIT_CODE = Option(
    "--no-slot-exit-code",
    "no_slot_exit_code",
    "int",
    "Exit N (0-255) instead of 75 when the command was not started for want of a "
    "slot (denied, --wait timed out, store busy), so a job's own 75 stays its own.",
    metavar="N",
)
PRIORITIES = ("critical", "high", "normal", "background")
_QUIET = Option(
    "--quiet",
    "quiet",
    "flag",
    "Say nothing on success (for cron); a refusal or failure still says why on stderr.",
    short="-q",
)

HOT_COMMANDS: tuple[Command, ...] = (
    Command(
        "can-spawn",
        "The whole admission decision, without taking a slot: exit 0 allowed, 1 denied.",
        (_TYPE,),
        (
            _NODE,
            _CONFIG_NAME,
            _QUIET,
            Option(
                "--now",
                "now",
                "str",
                "What if: the decision at this ISO 8601 time (UTC unless it names a zone), "
                "read-only: nothing is reaped, logged or written; halts, reservations, "
                "breakers, readings' age and peak hours are judged at that time, the running "
                "tasks count as they stand now.",
                metavar="ISO8601",
            ),
        ),
        aliases=("spawn-check",),
    ),
    Command(
        "register",
        "Check and register in one atomic step; prints the task id.",
        (_TYPE,),
        (
            _NODE,
            Option(
                "--pid",
                "pid",
                "int",
                "Holder process (default: the calling shell, $PPID).",
                metavar="P",
            ),
            Option("--task-id", "task_id", "str", "Task id to use.", metavar="ID"),
            _CONFIG_NAME,
            _QUIET,
        ),
    ),
    Command(
        "unregister",
        "Release a slot; records the duration and the exit status.",
        (Argument("task_id", "ID", "Task id from register."),),
        (
            Option("--exit-code", "exit_code", "int", "The job's exit code.", metavar="N"),
            Option(
                "--status",
                "status",
                "str",
                "ok, failed, oom, killed or stopped (default from --exit-code).",
                metavar="S",
                complete=RELEASE_STATUSES,
            ),
            Option(
                "--token",
                "token",
                "int",
                "Fencing token (default $RINGRIFT_LEASE_TOKEN for this task).",
                metavar="T",
            ),
            Option("--reason", "reason", "str", "Why it ended.", metavar="R"),
        ),
    ),
    Command(
        "run",
        "Run CMD holding a slot: register, heartbeat, forward signals, release on any exit.\n\n"
        "Exits with CMD's exit code (128+N if it died of signal N, 126/127 if it could not "
        "run), or 75 (or --no-slot-exit-code N) when no slot was granted. Every word from CMD "
        "on is the job's: options of run (and --help) are only read before it. The slot is "
        "held while CMD's process group lives: a process that leaves it (setsid, a daemon) "
        "is not tracked, outlives the slot and is not stopped with it.",
        (_TYPE,),
        (
            _NODE,
            _CONFIG_NAME,
            _WAIT,
            _TIMEOUT,
            _QUIET,
            _NO_SLOT_EXIT_CODE,
        ),
        rest=Argument("command", "[--] CMD...", "The command to run while the slot is held."),
    ),
    Command(
        "bandwidth run",
        "Run a transfer command (rsync, scp, ...) holding a transfer to HOST: admitted by "
        "the host's link and the priority, released on any exit.\n\n"
        "Every word {bwlimit} of CMD becomes the granted rate in KiB/s (rsync --bwlimit "
        "units), also in $RINGRIFT_BWLIMIT_KBPS; the bytes moved are read from rsync's "
        "--stats output (or --bytes-from FILE) and recorded with the observed rate. Exits "
        "like run: CMD's exit code, or 75 (or --no-slot-exit-code N) when not admitted.",
        (Argument("host", "HOST", "The other end of the transfer (its host name)."),),
        (
            Option(
                "--priority",
                "priority",
                "str",
                "critical, high, normal or background (default normal): the share of the "
                "host's link asked for.",
                metavar="P",
                complete=PRIORITIES,
            ),
            Option(
                "--kind",
                "kind",
                "str",
                "What is moved, e.g. models or games (default: the command's name).",
                metavar="K",
            ),
            _WAIT,
            _TIMEOUT,
            Option(
                "--bytes-from",
                "bytes_from",
                "path",
                "After CMD, read the bytes it moved from FILE (one integer), when its output "
                "has no rsync --stats.",
                metavar="FILE",
            ),
            _NODE,
            _QUIET,
            _NO_SLOT_EXIT_CODE,
        ),
        rest=Argument("command", "[--] CMD...", "The transfer command, run while it is admitted."),
    ),
)
HOT_BY_NAME = {cmd.name: cmd for cmd in HOT_COMMANDS}
ALIASES = {alias: cmd.name for cmd in HOT_COMMANDS for alias in cmd.aliases}
# the groups a hot command belongs to (``bandwidth``): their other commands are the Typer app's
GROUPS = frozenset(cmd.words[0] for cmd in HOT_COMMANDS if len(cmd.words) > 1)


def hot_command(name: str) -> Command | None:
    """The hot command ``name`` names (an alias included; ``bandwidth run`` as one string),
    or None."""
    return HOT_BY_NAME.get(ALIASES.get(name, name))


def hot_command_at(argv: list[str], i: int) -> tuple[Command | None, int]:
    """The hot command named at ``argv[i]`` (one word, or a group and its command) and the
    index after its name; (None, i + 1) when none is."""
    word = argv[i]
    if word in GROUPS:
        if i + 1 < len(argv):
            command = HOT_BY_NAME.get(f"{word} {argv[i + 1]}")
            if command is not None:
                return command, i + 2
        return None, i + 1
    command = hot_command(word)
    if command is not None and len(command.words) > 1:
        command = None  # one word of argv that holds a space: no command's name
    return command, i + 1
