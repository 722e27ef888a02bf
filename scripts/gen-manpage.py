#!/usr/bin/env python3
"""Regenerate the man page shipped in ``ringrift_coord/data/man/ringrift-coord.1`` from the
Typer app's command tree (a development tool: nothing external, no help2man).

    python scripts/gen-manpage.py           # write ringrift_coord/data/man/ringrift-coord.1
    python scripts/gen-manpage.py --check   # exit 1 if the shipped page is stale

Every command, argument and option with its help text, the global options, the exit codes
(``ringrift_coord.errors.ExitCode``), the environment and the files. No date in it, so the
same tree always gives the same page. ``tests/test_manpage.py`` fails when the shipped page
differs from what this writes.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "ringrift_coord" / "data" / "man" / "ringrift-coord.1"

EXIT_STATUS = [
    ("0", "done, or allowed"),
    (
        "1",
        "denied by a rule: limit, rate, breaker, threshold, halt, reservation, the "
        "optimizer's self-play target, hardware cap, config share; doctor: something needs "
        "an operator",
    ),
    ("2", "usage error: unknown command, type, option or task id, or a bad value"),
    (
        "3",
        "configuration or state error: bad config file, unreadable or foreign store, "
        "unsafe state directory; config init: the file exists (use --force)",
    ),
    ("70", "internal error: a bug (RINGRIFT_COORD_DEBUG=1 shows the traceback)"),
    (
        "75",
        "nothing was done, try again: run got no slot (or its --wait timed out), or the "
        "store stayed locked past store.busy_timeout",
    ),
    ("126", "run: the command was found but could not be executed"),
    ("127", "run: the command was not found"),
    ("128+N", "run: the command died of signal N"),
    ("130", "interrupted (Ctrl-C) before a command ran"),
    ("129, 143", "run --wait: a waiter ended by SIGHUP or SIGTERM before its command started"),
]

ENVIRONMENT = [
    ("RINGRIFT_COORD_DB", "the store, as --db"),
    ("RINGRIFT_COORDINATOR_DIR", "the state directory, as --state-dir"),
    ("RINGRIFT_COORD_CONFIG", "the YAML config file, as --config"),
    ("RINGRIFT_COORD_SET", '"key=value;key=value": settings, above the config file'),
    ("RINGRIFT_NODE_ID", "the default --node (else the host name)"),
    ("RINGRIFT_TARGET_UTIL_MIN", "resource_targets.cpu_min and gpu_min (60), above the file"),
    ("RINGRIFT_TARGET_UTIL_MAX", "resource_targets.cpu_max and gpu_max (80), above the file"),
    ("RINGRIFT_PID_KP", "the PID's proportional gain (0.3), above the file"),
    ("RINGRIFT_PID_KI", "the PID's integral gain (0.05), above the file"),
    ("RINGRIFT_PID_KD", "the PID's derivative gain (0.1), above the file"),
    ("NO_COLOR", "no colour in tables"),
]

FILES = [
    (
        "$XDG_CONFIG_HOME/ringrift-coord/unified_loop.yaml",
        "the user's config file (~/.config/...); config init writes the reference there",
    ),
    ("$XDG_STATE_HOME/ringrift-coord/tasks.db", "the default SQLite store (~/.local/state/...)"),
    (
        "tasks.db.id",
        "beside the store: which store was created there; a store deleted or replaced under it "
        "is refused (exit 3), never silently re-created",
    ),
    ("tasks.db-wake/", "beside the store: one FIFO per run --wait waiter, rung when a slot frees"),
    (
        "tasks.db-gate",
        "beside the store: every write transaction queues on an flock of it before SQLite's "
        "write lock (a fair queue); doctor names a holder",
    ),
    ("EMERGENCY_HALT", "in the state directory: the mirror of a halt that halt writes"),
]


# Non-ASCII characters as roff's named glyphs: the page stays ASCII, which every troff reads
# (groff without preconv, -Tutf8, takes a raw UTF-8 byte for a Latin-1 one and warns)
GLYPHS = {
    "\u00d7": "\\(mu",  # multiplication sign
    "\u2013": "\\(en",  # en dash
    "\u2014": "\\(em",  # em dash
    "\u2026": "...",  # ellipsis: no glyph of its own in classic troff
    "\u2192": "\\(->",  # rightwards arrow
    "\u2190": "\\(<-",
    "\u2264": "\\(<=",
    "\u2265": "\\(>=",
    "\u2260": "\\(!=",
    "\u2248": "\\(~~",
    "\u00b1": "\\(+-",
    "\u00b5": "\\(mc",  # micro sign
    "\u03bc": "\\(*m",  # Greek mu
    "\u221e": "\\(if",  # infinity
    "\u00b7": "\\(pc",  # middle dot
    "\u00b0": "\\(de",
    "\u2018": "\\(oq",
    "\u2019": "\\(cq",
    "\u201c": "\\(lq",
    "\u201d": "\\(rq",
    "\u00a0": "\\ ",  # no-break space
}


def glyph(char: str) -> str:
    """One character as ASCII roff: itself, its named glyph, else groff's ``\\[uXXXX]``."""
    if char.isascii():
        return char
    return GLYPHS.get(char) or f"\\[u{ord(char):04X}]"


def esc(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped, non-ASCII characters as glyphs, no line
    starting with a control char."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if not text.isascii():
        text = "".join(glyph(c) for c in text)
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def paragraphs(help_text: str) -> list[str]:
    """A docstring's paragraphs, each on one line."""
    text = inspect.cleandoc(help_text or "")
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    import typer  # noqa: TID251

    from ringrift_coord import __version__
    from ringrift_coord.cli.app import app
    from ringrift_coord.cli.spec import HELP_OPTIONS, PROG

    root = typer.main.get_command(app)
    out: list[str] = []
    add = out.append

    def metavar(p) -> str:
        """The declared metavar, else the parameter's own name: --node NODE, not <str>."""
        if p.metavar:
            return p.metavar
        if p.param_type_name == "option":
            return max(p.opts, key=len).lstrip("-").upper()
        return p.name.upper()

    def options(cmd) -> None:
        for p in cmd.params:
            if p.param_type_name != "option" or set(p.opts) <= set(HELP_OPTIONS):
                continue
            names = ", ".join(bold(o) for o in [*p.opts, *p.secondary_opts])
            meta = "" if p.is_flag else " " + italic(metavar(p))
            add(".TP")
            add(names + meta)
            add(esc(" ".join((p.help or "").split())))

    def arguments(cmd) -> str:
        return " ".join(italic(metavar(p)) for p in cmd.params if p.param_type_name == "argument")

    def command(path: list[str], cmd) -> None:
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    command([*path, name], sub)
            return
        args = arguments(cmd)
        add(f'.SS "{esc(" ".join(path))}"')
        add(f"{bold(' '.join([PROG, *path]))} [\\fIOPTIONS\\fR]" + (f" {args}" if args else ""))
        for para in paragraphs(cmd.help or ""):
            add(".PP")
            add(esc(para))
        for p in cmd.params:
            if p.param_type_name == "argument" and getattr(p, "help", None):
                add(".TP")
                add(italic(metavar(p)))
                add(esc(" ".join(p.help.split())))
        options(cmd)

    add('.\\" Generated by scripts/gen-manpage.py from the Typer app; do not edit.')
    add(f'.TH RINGRIFT\\-COORD 1 "" "{PROG} {__version__}" "User Commands"')
    add(".SH NAME")
    add(f"{esc(PROG)} \\- {esc(paragraphs(root.help or '')[0])}")
    add(".SH SYNOPSIS")
    add(f"{bold(PROG)} [\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]")
    add(".br")
    add(f"{bold(PROG)} {bold('--version')}")
    add(".SH DESCRIPTION")
    add(
        esc(
            f"{PROG} admits jobs on a training cluster: launch scripts ask it for a slot before "
            "they start a job, hold the slot exactly as long as the job runs and release it "
            "however the job ends; operators halt the cluster and read what is running and "
            "why a launch was refused. Every admission decision composes every rule (halt, "
            "reservations, per-node and cluster limits, the spawn-rate bucket) in one "
            "transaction. The store is one SQLite file or a PostgreSQL database. "
            f"`{PROG} COMMAND --help` shows a command's help."
        )
    )
    add(".SH GLOBAL OPTIONS")
    add(esc("Accepted before or after the command name (for run, before the wrapped command)."))
    options(root)
    add(".SH COMMANDS")
    command([], root)
    add(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        add(".TP")
        add(bold(code))
        add(esc(meaning))
    add(".TP")
    add(bold("other"))
    add(esc("run exits with its command's own exit code"))
    add(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT:
        add(".TP")
        add(bold(name))
        add(esc(meaning))
    add(".SH FILES")
    for name, meaning in FILES:
        add(".TP")
        add(italic(name))
        add(esc(meaning))
    add(".SH SEE ALSO")
    add(esc(f"{PROG} completion SHELL (bash, zsh, fish); {PROG} config init; the README."))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUT.read_text() if OUT.exists() else None
    if current == text:
        return 0
    if args.check:
        print("stale: ringrift-coord.1; run scripts/gen-manpage.py", file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
