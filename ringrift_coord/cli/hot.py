"""The hot commands (``can-spawn``, ``register``, ``unregister``, ``run``, ``bandwidth
run``), parser-agnostic.

Both the fast argv parser (``cli/main.py``) and the Typer app (``cli/build.py``) call these,
with the values ``cli/spec.py`` declares, so every launch script gets the same behaviour
whichever parser read its arguments. Nothing here imports Typer or Rich (the wait spinner
imports Rich only when a terminal watches).
"""

from __future__ import annotations

import os
import sys

from ringrift_coord import tasktypes
from ringrift_coord.context import Context
from ringrift_coord.errors import ConfigError, CoordError, ExitCode, UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from typing import Any


# The commands that read the optimizer's settings (``config.DEFERRED_SECTIONS``) and the
# sections each reads: an error kept in one of them fails the command (``Settings.require``).
# Every other command, and these for the sections they do not read, warns once and goes on.
SECTION_USERS: dict[str, tuple[str, ...]] = {
    "targets": ("resource_targets", "optimizer"),
    "adjust": ("resource_targets", "optimizer", "hardware"),
    "utilization": ("resource_targets", "optimizer"),
    "rate": ("resource_targets", "optimizer"),
    "distribution": ("optimizer", "selfplay_configs"),
    "capacity": ("hardware",),
    "bandwidth": ("bandwidth",),
    "schedule": ("schedule",),
    "events": ("events",),
    "serve": ("serve", "resource_targets", "optimizer", "bandwidth", "hardware"),
    # they go on without a bad one (its families left out, ringrift_config_problem 1) and
    # say so themselves: metrics_cmd.warn_config
    "metrics": ("resource_targets", "optimizer", "bandwidth", "hardware"),
}
_warned: set[str] = set()  # the settings problems this process has warned of


class Globals:
    """The global options: --db, --state-dir, --config, --set, --json; ``command``: the
    command's name (the first word), ``quiet``: its ``--quiet``."""

    def __init__(
        self,
        db: str | None = None,
        state_dir: str | None = None,
        config: str | None = None,
        json: bool = False,
        overrides: list[str] | None = None,
        command: str | None = None,
    ) -> None:
        self.db, self.state_dir, self.config, self.json = db, state_dir, config, json
        self.overrides = list(overrides or [])  # --set KEY=VALUE, highest precedence
        self.command, self.quiet = command, False

    def context(self, *, create: bool = True, emergency: bool = False) -> Context:
        """The invocation's context; ``create=False`` for a command that only reads the
        store: a missing SQLite store is "no store at PATH" (exit 3), never created.

        An error in a deferred section (``Settings.problems``) is one ``warning:`` line on
        stderr, once per process, for a command that does not require it (not with
        ``--quiet``); one that does calls ``Settings.require`` and fails.

        ``emergency`` (``halt``, ``unhalt``, ``halt --check``): a config file that does not
        load is a warning, and the command goes on without it (the built-in settings, the
        environment and ``--set``; the store is found the same way): stopping the cluster
        must not wait for a config fix."""

        def opened(config_file: bool, overrides: list[str]) -> Context:
            return Context.open(
                db=self.db,
                state_dir=self.state_dir,
                config=self.config,
                overrides=overrides,
                create_store=create,
                config_file=config_file,
            )

        try:
            ctx = opened(True, self.overrides)
        except ConfigError as exc:
            if not emergency:
                raise
            from ringrift_coord.config import salvage_shared_group
            from ringrift_coord.inputs import printable

            # (the retry's own error, if any, is said alone: a bad environment fails it too)
            group = salvage_shared_group(exc.file)
            shared = [f"store.shared_group={group}"] if group else []
            ctx = opened(False, [*shared, *self.overrides])
            kept = f"; its store.shared_group {group} is kept" if group else ""
            say(
                f"warning: {printable(exc.message.strip().splitlines()[0])} (ignored: this "
                "command goes on without the config file: built-in settings, the environment "
                f"and --set{kept}; its event hooks do not run)"
            )
        used = SECTION_USERS.get(self.command or "", ())
        settings = ctx.settings
        for section, problem in settings.problems.items():
            if section in used or self.quiet or problem.message in _warned:
                continue
            _warned.add(problem.message)
            admits = self.command in ADMISSION_COMMANDS
            switch = READ_WHEN_ON.get(section) if admits else None
            read = (
                section in READ_BY_ADMISSION
                or (admits and section in SWITCHES_OF_ADMISSION)
                or bool(switch and settings.get(switch))
            )
            warn_setting(problem.message, section, read)
        return ctx


# Deferred sections that commands other than their own still read in part: a bad value there
# is not "unused", the command goes on with the section's values from the layers below.
READ_BY_ADMISSION = frozenset({"schedule"})
# ... and those admission's rules read while a switch (as the layers below the bad value set
# it) is on: ``config_share`` the self-play configs' weights, ``hardware_cap`` the hardware
ADMISSION_COMMANDS = frozenset({"can-spawn", "register", "run"})
# the sections that hold those switches (and the optimizer rule's own settings): read by every
# admission, so a bad value elsewhere in one turns its switch to the value below it
SWITCHES_OF_ADMISSION = frozenset({"optimizer", "hardware"})
READ_WHEN_ON = {
    "selfplay_configs": "optimizer.enforce_config_shares",
    "hardware": "hardware.cap_selfplay",
}


def warn_setting(message: str, section: str | None = None, read: bool = False) -> None:
    """The warning for a bad setting of a section this command does not require; ``read``:
    the command reads the section all the same (with its values from the layers below)."""
    text = message.strip().split("\n")[0]
    if not text.isprintable():
        from ringrift_coord.inputs import printable

        text = printable(text)
    if section == "events":  # a bad hook is left out (the message says so), the others run
        say(f"warning: {text}")
    elif read:
        say(f"warning: {text} (ignored: this command goes on with the values below it)")
    else:
        say(f"warning: {text} (ignored: this command does not use it)")


def json_text(document: dict[str, Any]) -> str:
    """``document`` as the one JSON document a command prints: ``schema_version`` first, in
    the vocabulary of ``ringrift_coord/schema.py``."""
    import json

    from ringrift_coord.schema import envelope

    return json.dumps(envelope(document), default=str, allow_nan=False) + "\n"


def emit_json(document: dict[str, Any]) -> None:
    """Print a command's ``--json`` document (a list command passes ``{"items": [...]}``)."""
    sys.stdout.write(json_text(document))
    sys.stdout.flush()


def deliver(text: str) -> bool:
    """Write ``text`` to stdout and flush; False when it did not arrive (stdout closed, or a
    pipe whose reader has gone: see ``cli/main.py``)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        return False
    return not getattr(sys.stdout, "lost", False)


class NotDelivered(CoordError):
    """``register`` could not hand over the id of the slot it took (and released it)."""

    exit_code = ExitCode.TEMPFAIL


def say(message: str) -> None:
    sys.stderr.write(f"ringrift-coord: {message}\n")
    sys.stderr.flush()


def say_if_cut(reason: str | None, kept: int | None = None) -> None:
    """A ``--reason`` longer than what is kept (``kept``, else ``inputs.MAX_REASON``): said,
    as the core cuts it (a halt or a release never fails over its reason)."""
    from ringrift_coord.inputs import MAX_REASON

    limit = MAX_REASON if kept is None else kept
    if reason is not None and len(reason) > limit and reason.strip():  # (blank: none at all)
        say(f"warning: --reason has {len(reason):,} characters; its first {limit:,} are kept")


def warn_readings(decision: Any) -> None:
    """The readings past their warning level that admission saw, one ``warning:`` line each
    on stderr (text mode, not ``--quiet``: ``--json`` has them under ``warnings``)."""
    for message in decision.warnings:
        say(f"warning: {message}: not enforced; at the critical level new spawns are refused")


def not_blank(option: str, value: str | None) -> str | None:
    """A text option that names something (a node, a GPU model) as given: never blank
    (None: not given). Every text value is already printable UTF-8 (``parser.check_text``)."""
    if value is not None and not value.strip():
        raise UsageError(f"option {option} must not be empty")
    return value


def _node(node: str | None) -> str:
    from ringrift_coord.task_coordinator import default_node

    return not_blank("--node", node) or default_node()


def can_spawn(
    g: Globals,
    task_type: str,
    node: str | None,
    quiet: bool = False,
    config_name: str | None = None,
    now: str | None = None,
) -> int:
    from ringrift_coord.task_coordinator import TaskCoordinator

    ttype = tasktypes.parse(task_type)
    at = None
    if now is not None:
        from ringrift_coord.inputs import instant

        at = instant(now, "now")
    g.command, g.quiet = "can-spawn", quiet  # (the fast parser leaves the name out)
    with g.context() as ctx:
        decision = TaskCoordinator(ctx).check(ttype, _node(node), config_name=config_name, now=at)
    if g.json:
        document = decision.to_dict()
        if at is not None:
            from ringrift_coord.schedule.peak import iso

            document.update(what_if=True, now=iso(at))
        emit_json(document)
        return ExitCode.OK if decision.allowed else ExitCode.DENIED
    summary = decision.summary()
    if at is not None:
        from ringrift_coord.schedule.peak import iso

        summary = f"what if at {iso(at)}: {summary}"
    if decision.allowed:
        if not quiet:
            sys.stdout.write(summary + "\n")
            warn_readings(decision)
    else:
        say(summary)  # a refusal says why, --quiet or not
        if not quiet:
            warn_readings(decision)
    return ExitCode.OK if decision.allowed else ExitCode.DENIED


def register(
    g: Globals,
    task_type: str,
    node: str | None,
    pid: int | None,
    task_id: str | None,
    config_name: str | None,
    quiet: bool = False,
) -> int:
    """Prints the task id on success, also with ``--quiet``: it is the output (``id=$(...)``),
    not chatter; --quiet only promises that nothing else is said on success."""
    from ringrift_coord import procs
    from ringrift_coord.task_coordinator import Holder, TaskCoordinator

    ttype = tasktypes.parse(task_type)
    holder_pid = os.getppid() if pid is None else pid
    if holder_pid <= 0 or procs.start_time(holder_pid) is None:
        raise UsageError(f"--pid {holder_pid}: no running process with that pid on this host")
    g.command, g.quiet = "register", quiet
    with g.context() as ctx:
        coord = TaskCoordinator(ctx)
        decision = coord.acquire(
            ttype,
            _node(node),
            holder=Holder(pid=holder_pid),
            source="register",
            task_id=task_id,
            config_name=config_name,
        )
        if g.json:
            document = decision.to_dict()
            document["lease_token"] = decision.lease_token
            delivered = deliver(json_text(document))
        elif decision.allowed:
            delivered = deliver(f"{decision.task_id}\n")
        else:
            delivered = True  # nothing is held: the refusal goes to stderr
        if decision.allowed and not delivered:
            # Nobody can ever release a slot whose id never arrived: give it back now.
            assert decision.task_id is not None
            try:
                coord.unregister_task(
                    decision.task_id,
                    status="stopped",
                    token=decision.lease_token,
                    reason="id could not be delivered",
                )
            except CoordError as exc:  # the store went busy or away in between
                raise NotDelivered(
                    f"register: the task id could not be written to stdout, and releasing "
                    f"its slot failed ({exc.message}): release it with `ringrift-coord "
                    f"unregister {decision.task_id}` (or it is reaped once this shell exits)"
                ) from None
            raise NotDelivered(
                "register: the task id could not be written to stdout; its slot was released "
                "(nothing is held: try again)"
            )
    if not decision.allowed:
        if not g.json:
            say(decision.summary())
            if not quiet:
                warn_readings(decision)
        return ExitCode.DENIED
    if not g.json and not quiet:
        warn_readings(decision)
    return ExitCode.OK


def unregister(
    g: Globals,
    task_id: str,
    exit_code: int | None,
    status: str | None,
    token: int | None,
    reason: str | None,
) -> int:
    from ringrift_coord.task_coordinator import TaskCoordinator

    if token is None and os.environ.get("RINGRIFT_TASK_ID") == task_id:
        raw = os.environ.get("RINGRIFT_LEASE_TOKEN", "")
        token = int(raw) if raw.isascii() and raw.isdigit() else None  # not '٣': written by run
    say_if_cut(reason)
    with g.context() as ctx:
        row = TaskCoordinator(ctx).unregister_task(
            task_id, exit_code=exit_code, status=status, token=token, reason=reason
        )
    if g.json:
        emit_json(
            {
                "task_id": task_id,
                "released": row is not None,
                "duration": None if row is None else round(row["duration"], 3),
            }
        )
    elif row is None:
        say(f"{task_id} was already released")
    else:
        from ringrift_coord.durations import human

        sys.stdout.write(f"released {task_id} after {human(row['duration'])}\n")
    return ExitCode.OK


def _silent(message: str) -> None:
    """A note ``--quiet`` does not say."""


class _Spinner:
    """A Rich spinner on stderr while ``run --wait`` stands in line (terminals only). Its
    time waited ticks at every frame, not only when the waiter asks again (every 20 s while
    halted); names in it are data, never markup."""

    def __init__(self, clock: Any = None) -> None:
        self.live: Any = None
        self._spin: Any = None
        if clock is None:
            import time

            clock = time.monotonic
        self._clock = clock
        self._line = ("", 0.0, 0.0)  # (what it waits for and why, seconds waited, when)

    def update(self, decision: Any, waited: float) -> None:
        position = f"{decision.queued} ahead, " if decision.queued else ""
        rules = ", ".join(r.rule for r in decision.reasons) or "queue"
        self._line = (
            f"waiting for a {decision.task_type} slot on {decision.node}: {position}"
            f"blocked by {rules}",
            waited,
            self._clock(),
        )
        if self.live is None:
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner

            self._spin = Spinner("dots")
            self.live = Live(
                console=Console(stderr=True),
                transient=True,
                refresh_per_second=8,
                get_renderable=self.render,  # (called by Rich's refresh thread, each frame)
            )
            self.live.start()

    def text(self) -> str:
        from ringrift_coord.durations import human

        what, waited, at = self._line
        return f"{what} ({human(int(waited + self._clock() - at))})"

    def render(self) -> Any:
        from rich.text import Text

        self._spin.update(text=Text(self.text()))  # (a str would be read as markup)
        return self._spin

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()  # joins Rich's refresh thread before run forks the job
            self.live = None


WAIT_TIMEOUT_ENV = "RINGRIFT_WAIT_TIMEOUT"  # --timeout's default (the launch scripts set it)


def _check_wrapper_options(
    no_slot_exit_code: int | None, wait: bool, timeout: float | None
) -> float | None:
    """The options ``run`` and ``bandwidth run`` share, checked; the wait's timeout (with
    ``--wait`` and no ``--timeout``: ``$RINGRIFT_WAIT_TIMEOUT``, else none)."""
    if no_slot_exit_code is not None and not 0 <= no_slot_exit_code <= 255:
        raise UsageError(
            f"{no_slot_exit_code} is not an exit code (0-255)", field="no_slot_exit_code"
        )
    if timeout is not None and not wait:
        raise UsageError("--timeout only applies with --wait")
    if timeout is None and wait and os.environ.get(WAIT_TIMEOUT_ENV):  # (empty: as unset)
        from ringrift_coord.cli.parser import convert

        timeout = convert(WAIT_TIMEOUT_ENV, os.environ[WAIT_TIMEOUT_ENV], "duration")
    return timeout


def _wrapped(
    g: Globals,
    wait: bool,
    quiet: bool,
    no_slot_exit_code: int | None,
    call: Any,
) -> Any:
    """Run ``call(ctx, runner_options)`` (``run`` or ``bandwidth run``) with the wait spinner,
    the notes ``--quiet`` silences and ``--no-slot-exit-code``; its result."""
    spinner = _Spinner() if (wait and not quiet and not g.json and sys.stderr.isatty()) else None
    g.quiet = quiet
    result = None
    try:
        with g.context() as ctx:
            try:
                result = call(
                    ctx,
                    {
                        "on_wait": spinner.update if spinner else None,
                        "on_admitted": spinner.stop if spinner else None,
                        "warn": say,
                        "note": _silent if quiet else say,
                        "stdout_to_stderr": g.json,  # stdout carries our own document alone
                    },
                )
            finally:
                if spinner:
                    spinner.stop()
    except CoordError as exc:
        # Every 75 of the runner's own means the command was not started (it returns the
        # job's code once it ran, and releases what it held itself).
        if result is None and no_slot_exit_code is not None and exc.exit_code == ExitCode.TEMPFAIL:
            exc.exit_code = no_slot_exit_code
        raise
    return result


def run(
    g: Globals,
    task_type: str,
    node: str | None,
    config_name: str | None,
    wait: bool,
    timeout: float | None,
    command: list[str],
    quiet: bool = False,
    no_slot_exit_code: int | None = None,
) -> int:
    """Run ``command`` holding a slot; its exit code.

    ``quiet``: no wait spinner and none of run's own notes about things it handled (a lease
    renewal retried, SIGKILL after the grace period, a release left to the reaper); what
    explains the outcome still goes to stderr (no slot, the command could not be run, the
    lease was lost), and the job's own output is the job's. ``no_slot_exit_code``: the exit
    code instead of 75 wherever run itself would exit 75, i.e. the command was not started
    (no slot: denied, ``--wait`` timed out, or the store stayed busy), as flock's ``-E``.
    """
    from ringrift_coord.launcher import run_command
    from ringrift_coord.task_coordinator import TaskCoordinator

    timeout = _check_wrapper_options(no_slot_exit_code, wait, timeout)
    ttype = tasktypes.parse(task_type)
    if not command:
        raise UsageError("run needs a command: ringrift-coord run TYPE [OPTIONS] -- CMD ...")
    g.command = "run"

    def call(ctx: Context, options: dict[str, Any]) -> Any:
        return run_command(
            TaskCoordinator(ctx),
            ttype,
            _node(node),
            command,
            config_name=config_name,
            wait=wait,
            timeout=timeout,
            **options,
        )

    result = _wrapped(g, wait, quiet, no_slot_exit_code, call)
    if g.json:
        emit_json(
            {
                "task_id": result.task_id,
                "task_type": ttype,
                "node": result.decision.node,
                "exit_code": result.exit_code,
                "status": result.status,
                "reason": result.reason,
                "duration": round(result.duration, 3),
            }
        )
    return int(result.exit_code)


def bandwidth_run(
    g: Globals,
    host: str,
    priority: str | None,
    kind: str | None,
    wait: bool,
    timeout: float | None,
    bytes_from: str | None,
    node: str | None,
    command: list[str],
    quiet: bool = False,
    no_slot_exit_code: int | None = None,
) -> int:
    """Run ``command`` holding a transfer to ``host``; its exit code (as ``run``'s).

    The granted KiB/s replace every ``{bwlimit}`` of the command's words and are in
    ``$RINGRIFT_BWLIMIT_KBPS``; the bytes it moved (rsync ``--stats`` in its output, else
    ``--bytes-from``) are recorded with the observed rate when it ends."""
    from ringrift_coord.transfer_run import run_transfer

    timeout = _check_wrapper_options(no_slot_exit_code, wait, timeout)
    if not host.strip():
        raise UsageError("argument HOST must not be empty")
    not_blank("--priority", priority)
    not_blank("--kind", kind)
    if bytes_from is not None and not bytes_from.strip():
        raise UsageError("option --bytes-from must not be empty")
    if not command:
        raise UsageError(
            "bandwidth run needs a command: ringrift-coord bandwidth run HOST [OPTIONS] -- CMD ..."
        )
    g.command = "bandwidth"

    def call(ctx: Context, options: dict[str, Any]) -> Any:
        return run_transfer(
            ctx,
            host,
            command,
            priority=priority,
            kind=kind,
            node=not_blank("--node", node),
            bytes_from=bytes_from,
            wait=wait,
            timeout=timeout,
            **options,
        )

    result = _wrapped(g, wait, quiet, no_slot_exit_code, call)
    run = result.run
    if g.json:
        emit_json(
            {
                "task_id": run.task_id,
                "task_type": "transfer",
                "node": result.node,
                "exit_code": run.exit_code,
                "status": run.status,
                "reason": run.reason,
                "duration": round(run.duration, 3),
                "transfer_id": result.transfer_id,
                "remote": result.remote,
                "host_type": result.host_type,
                "priority": result.priority,
                "kbps": result.kbps,
                "limit_kbps": round(result.limit_kbps, 1),
                "bytes": result.bytes,
                "observed_kbps": (
                    None if result.observed_kbps is None else round(result.observed_kbps, 1)
                ),
            }
        )
    return int(run.exit_code)
