"""The ``run --wait`` spinner: its time waited ticks between the waiter's attempts (a halted
waiter asks again only every 20 s), and the names in it are data, never Rich markup."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from types import SimpleNamespace

from conftest import Coord, wait_for

from ringrift_coord.cli.hot import _Spinner

NODE = "[red]n1[/red]"  # a node name that Rich would read as markup


class SteppedClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _decision(**kw: object) -> SimpleNamespace:
    reason = SimpleNamespace(rule="halt")
    return SimpleNamespace(
        **{"task_type": "selfplay", "node": NODE, "queued": 0, "reasons": [reason], **kw}
    )


def test_the_time_waited_ticks_with_the_clock_not_with_the_attempts() -> None:
    clock = SteppedClock()
    spinner = _Spinner(clock=clock)
    try:
        spinner.update(_decision(), 3.0)
        assert spinner.text() == f"waiting for a selfplay slot on {NODE}: blocked by halt (3 s)"
        clock.now += 14.6  # no attempt in between: only the clock moved
        assert spinner.text().endswith("(17 s)")
        clock.now += 60
        assert spinner.text().endswith("(1 min)")
        spinner.update(_decision(queued=2), 80.0)  # the next attempt says how long it waited
        assert spinner.text().endswith(": 2 ahead, blocked by halt (1 min)")
    finally:
        spinner.stop()


def test_names_in_the_spinner_are_shown_as_they_are() -> None:
    from rich.console import Console

    spinner = _Spinner(clock=SteppedClock())
    try:
        spinner.update(_decision(), 0.0)
        console = Console(record=True, width=200, color_system=None)
        console.print(spinner.render())
        assert NODE in console.export_text()
    finally:
        spinner.stop()


def test_a_halted_waiter_on_a_terminal_shows_its_time_waited_going_up(coord: Coord) -> None:
    """A real pty: the spinner's line, redrawn by Rich, counts up while the waiter sleeps
    until its next attempt (20 s away while halted)."""
    assert coord("halt", "--reason", "maintenance").returncode == 0
    master, slave = os.openpty()
    proc = subprocess.Popen(
        coord.argv("run", "selfplay", "--node", NODE, "--wait", "--", "true"),
        env={**coord.env, "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = bytearray()

    def seen() -> str:
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output.extend(chunk)
        return output.decode(errors="replace")

    try:
        wait_for(lambda: "(2 s)" in seen(), 30, "the spinner to count 2 s")
        text = seen()
        assert f"slot on {NODE}: blocked by halt (1 s)" in text, text[-400:]
        counted = [int(n) for n in re.findall(r"blocked by halt \((\d+) s\)", text)]
        assert counted == sorted(counted), counted  # never back, from one attempt
        assert coord("unhalt").returncode == 0
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            seen()
            time.sleep(0.05)
        assert proc.returncode == 0, seen()[-400:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
