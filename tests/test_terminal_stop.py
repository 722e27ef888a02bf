"""Ctrl-C on an interactive ``run`` is the operator's stop, not a failure of the job.

A real pseudo-terminal: the ``run`` wrapper is the session leader and foreground process group
of a new session whose controlling terminal is the pty; it hands the terminal to the job's
group; the test types Ctrl-C (or Ctrl-\\) on the master side, and the terminal's line
discipline sends the signal. The job must be recorded ``stopped``, and neither the breaker
nor the node's backpressure may hear of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import Coord, wait_for

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits: {selfplay: {per_node: 4, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
circuit_breaker: {failure_threshold: 1}
"""


def _controlling_tty() -> None:  # in the child, after setsid: the pty on fd 0 becomes its tty
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _run_on_pty(coord: Coord, job: list[str], ready: Path, key: bytes) -> tuple[int, str]:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            coord.argv("run", "selfplay", "--node", "n1", "--", *job),
            env=coord.env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_controlling_tty,
        )
        os.close(slave)
        slave = -1
        output = bytearray()

        def drain() -> None:
            while True:
                try:
                    import select

                    if not select.select([master], [], [], 0)[0]:
                        return
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every slave side closed
                    return
                if not chunk:
                    return
                output.extend(chunk)

        def is_ready() -> bool:
            drain()
            return ready.exists() or proc.poll() is not None

        wait_for(is_ready, 30, "the job to start")
        assert proc.poll() is None, output.decode(errors="replace")
        time.sleep(0.1)  # the job is in its sleep; the key reaches the foreground group
        os.write(master, key)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            drain()
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            raise AssertionError("run did not end after the key: " + output.decode("replace"))
        drain()
        return proc.returncode, output.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def _history(coord: Coord) -> list[dict]:
    result = coord("tasks", "history", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tasks"]


def _nothing_learned(coord: Coord) -> None:
    breakers = json.loads(coord("breakers", "list", "--json").stdout)["breakers"]
    assert [b for b in breakers if b.get("failures")] == [], breakers
    limits = json.loads(coord("limits", "--json").stdout)
    assert limits["backpressure"] == []
    # the breaker (threshold 1) did not open: the next run is admitted
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0


@pytest.mark.parametrize(
    ("key", "signame", "code"),
    [(b"\x03", "SIGINT", 130), (b"\x1c", "SIGQUIT", 131)],
    ids=["ctrl-c", "ctrl-backslash"],
)
def test_a_key_on_the_jobs_terminal_is_recorded_stopped(
    coord: Coord, key: bytes, signame: str, code: int
) -> None:
    coord.write_config(CONFIG)
    ready = coord.tmp / "ready"
    job = [
        sys.executable,
        "-c",
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(60)\n",
    ]
    returncode, output = _run_on_pty(coord, job, ready, key)
    assert returncode == code, output
    assert "Traceback" not in output
    (row,) = _history(coord)
    assert (row["status"], row["exit_code"]) == ("stopped", code), row
    assert signame in row["reason"] and "terminal" in row["reason"]
    _nothing_learned(coord)


def test_a_job_that_catches_ctrl_c_and_exits_130_is_stopped(coord: Coord) -> None:
    coord.write_config(CONFIG)
    ready = coord.tmp / "ready"
    job = [
        sys.executable,
        "-c",
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n",
    ]
    returncode, output = _run_on_pty(coord, job, ready, b"\x03")
    assert returncode == 130, output
    (row,) = _history(coord)
    assert (row["status"], row["exit_code"]) == ("stopped", 130), row
    assert "SIGINT" in row["reason"] and "terminal" in row["reason"]
    _nothing_learned(coord)


def test_the_same_death_without_a_terminal_is_still_killed(coord: Coord) -> None:
    """No terminal, no operator's key: a job that kills itself with SIGINT failed."""
    coord.write_config(CONFIG)
    result = coord("run", "selfplay", "--node", "n1", "--", "sh", "-c", "kill -INT $$")
    assert result.returncode == 130
    (row,) = _history(coord)
    assert row["status"] == "killed"
    breakers = json.loads(coord("breakers", "list", "--json").stdout)["breakers"]
    assert breakers[0]["failures"] == 1
