"""The launch wrappers (shipped in ``ringrift_coord/data/scripts/``) pass the job's exit code
through, and 75 when no slot."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT_DIR = ROOT / "ringrift_coord" / "data" / "scripts"
SCRIPTS = ["selfplay.sh", "training.sh"]

pytestmark = pytest.mark.skipif(
    not (BIN / "ringrift-coord").exists(),
    reason=f"{BIN / 'ringrift-coord'} not installed (pip install -e . in this venv)",
)


def launch(coord, script: str, *cmd: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **coord.env,
        "PATH": f"{BIN}:{coord.env.get('PATH', '/usr/bin:/bin')}",
        "RINGRIFT_NODE_ID": "node-a",
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT_DIR / script), *cmd],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_success_passes_through(coord, script: str) -> None:
    done = launch(coord, script, "true")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_exit_code_passes_through(coord, script: str) -> None:
    done = launch(coord, script, "sh", "-c", "exit 4")
    assert done.returncode == 4, done.stderr


def test_job_sees_its_slot(coord) -> None:
    done = launch(
        coord,
        "selfplay.sh",
        "sh",
        "-c",
        'echo "$RINGRIFT_NODE_ID $RINGRIFT_TASK_TYPE ${RINGRIFT_TASK_ID:+has-id}"',
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["node-a", "selfplay", "has-id"]


def test_signal_death_is_128_plus_n(coord) -> None:
    done = launch(coord, "selfplay.sh", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + 15, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_slot_is_75_and_nothing_runs(coord, script: str, tmp_path: Path) -> None:
    halted = coord("halt", "--reason", "test")
    assert halted.returncode == 0, halted.stderr
    marker = tmp_path / "ran"
    done = launch(coord, script, "touch", str(marker), RINGRIFT_WAIT_TIMEOUT="0.3")
    assert done.returncode == 75, done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_wait_timeout_is_named_as_the_variable(coord, script: str, tmp_path: Path) -> None:
    """The scripts pass RINGRIFT_WAIT_TIMEOUT on for run to read: a bad one is refused (exit
    2, nothing ran) in words that name it, not an option the operator never typed."""
    marker = tmp_path / "ran"
    done = launch(coord, script, "touch", str(marker), RINGRIFT_WAIT_TIMEOUT="4 min")
    assert done.returncode == 2 and not marker.exists(), done.stderr
    assert done.stderr.startswith("ringrift-coord: error: RINGRIFT_WAIT_TIMEOUT: '4 min' is")
    assert "--timeout" not in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_no_command_is_usage_error(coord) -> None:
    assert launch(coord, "selfplay.sh").returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean() -> None:
    files = [SCRIPT_DIR / s for s in SCRIPTS] + [
        ROOT / ".ci" / "run",
        ROOT / "bench" / "contention.sh",
    ]
    done = subprocess.run(["shellcheck", *map(str, files)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
