"""``status --watch``: the status screen redrawn every few seconds, like ``watch(1)``.

On a terminal: a Rich ``Live`` screen on the alternate screen (as ``watch`` and ``htop``
use: on exit the shell's screen comes back as it was), the ``status`` view itself
(``views.status_screen``, drawn at the terminal's width) under a header line with the time
and "Ctrl-C to quit". Ctrl-C, SIGTERM and SIGHUP end it with exit 0 and the terminal
restored, the first read included. A store error after the first read is shown on the
screen (the last good read stays below it) and retried at the next tick; the first read
fails as ``status`` does.

With ``--json``: one ``status`` document per interval, one line each (JSON lines), flushed;
an error is a line ``{"schema_version": 1, "error": ..., "exit_code": ...}`` and the next
tick retries; a reader that goes away (``| head -1``) ends it with exit 0. Without
``--json`` a stdout that is not a terminal is refused (exit 2): a pipe wants ``--json`` or a
plain ``status`` from a loop.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any

from ringrift_coord.errors import CoordError, UsageError

MIN_INTERVAL = 0.5
MAX_INTERVAL = 86400.0  # a day: past it time.sleep overflows, and nobody watches that slowly
DEFAULT_INTERVAL = 2.0


class _Stop(BaseException):
    """SIGTERM or SIGHUP: leave the loop as Ctrl-C does."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stop


def check_interval(interval: float | None) -> float:
    if interval is None:
        return DEFAULT_INTERVAL
    if not math.isfinite(interval) or interval < MIN_INTERVAL:
        raise UsageError(
            f"must be at least {MIN_INTERVAL:g} seconds, got {interval:g}", field="interval"
        )
    if interval > MAX_INTERVAL:
        raise UsageError(
            f"must be at most {MAX_INTERVAL:g} seconds (a day), got {interval:g}",
            field="interval",
        )
    return float(interval)


def _read(g: Any, brief: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from ringrift_coord import reports

    with g.context(create=False) as c:
        doc = reports.status(c)
        readings = None if brief or g.json else reports.resources(c)
    return doc, readings


def _problem(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, CoordError):
        return exc.message, int(exc.exit_code)
    return f"{type(exc).__name__}: {exc}", 70


def watch(g: Any, *, interval: float, brief: bool) -> int:
    """Run the watch until Ctrl-C (or SIGTERM/SIGHUP); returns the exit code (0)."""
    if not g.json and not sys.stdout.isatty():
        raise UsageError(
            "status --watch needs a terminal on stdout; in a pipe use 'status --watch --json' "
            "(one JSON document per interval) or 'status'"
        )
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        first = _read(g, brief)  # the first read fails as status does (no store: exit 3)
        if g.json:
            _json_lines(g, interval, first)
        else:
            _live(g, interval, brief, first)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _json_lines(g: Any, interval: float, first: tuple[dict[str, Any], Any]) -> None:
    from ringrift_coord.cli.hot import json_text

    doc: dict[str, Any] | None = first[0]
    error, code = "", 0
    while True:
        if doc is not None:
            text = json_text(doc)
        else:
            text = json_text({"error": error, "exit_code": code})
        sys.stdout.write(text)
        sys.stdout.flush()
        if getattr(sys.stdout, "lost", False):  # the reader has gone (`| head -1`): done
            return
        time.sleep(interval)
        try:
            doc = _read(g, True)[0]
        except Exception as exc:  # shown and retried, never a traceback
            doc = None
            error, code = _problem(exc)


def _live(g: Any, interval: float, brief: bool, first: tuple[dict[str, Any], Any]) -> None:
    from rich.console import Group
    from rich.live import Live

    from ringrift_coord.cli import views

    out = views.console()
    data, error, last_ok = first, None, time.time()

    def frame() -> Group:
        doc, readings = data

        def draw() -> None:
            if brief:
                views.status_brief(doc)
            else:
                views.status_screen(doc, readings)

        header = views.watch_header(time.time(), interval, error, last_ok)
        return Group(header, views.captured(draw, out.width))

    with Live(
        frame(),
        console=out,
        screen=True,  # the alternate screen, as watch(1) and htop: the shell comes back
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        while True:
            time.sleep(interval)
            try:
                data, error, last_ok = _read(g, brief), None, time.time()
            except Exception as exc:  # shown on the screen and retried at the next tick
                error = _problem(exc)[0]
            live.update(frame(), refresh=True)
