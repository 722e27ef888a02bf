"""Shell completions: the committed scripts are current, and they really complete.

The scripts call the installed ``ringrift-coord`` back with ``_RINGRIFT_COORD_COMPLETE`` set;
the entry point hands that to the Typer app. These tests use the ``ringrift-coord`` next to
the interpreter running them (the venv's ``bin``), first on ``PATH``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXE = BIN / "ringrift-coord"
BASH_SCRIPT = ROOT / "completions" / "ringrift-coord.bash"
FISH_SCRIPT = ROOT / "completions" / "ringrift-coord.fish"

needs_exe = pytest.mark.skipif(
    not EXE.exists(), reason=f"{EXE} not installed (pip install -e . in this venv)"
)


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_completions", ROOT / "scripts" / "gen-completions.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(coord) -> dict[str, str]:
    env = dict(coord.env)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def test_committed_completions_are_current() -> None:
    for name, text in _generator().render().items():
        path = ROOT / "completions" / name
        assert path.exists(), f"completions/{name} is missing: run scripts/gen-completions.py"
        assert path.read_text() == text, (
            f"completions/{name} is stale: run scripts/gen-completions.py"
        )


def bash_complete(coord, *words: str) -> list[str]:
    """Source the bash script, set COMP_WORDS/COMP_CWORD, call its function, read COMPREPLY."""
    script = r"""
        set -u
        source "$1"; shift
        spec=$(complete -p ringrift-coord) || exit 97
        fn=${spec#*-F }; fn=${fn%% *}
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
        "$fn" ringrift-coord "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    """
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(BASH_SCRIPT), "ringrift-coord", *words],
        env=_env(coord),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr, done.stderr
    return [line for line in done.stdout.splitlines() if line]


@needs_exe
def test_bash_completes_commands(coord) -> None:
    assert "can-spawn" in bash_complete(coord, "ca")


@needs_exe
def test_bash_completes_task_types_of_run(coord) -> None:
    assert bash_complete(coord, "run", "sel") == ["selfplay"]


@needs_exe
def test_bash_completes_subcommands_and_options(coord) -> None:
    assert {"list", "reap"} <= set(bash_complete(coord, "tasks", ""))
    assert "--json" in bash_complete(coord, "--js")
    assert "--config-name" in bash_complete(coord, "register", "training", "--con")


@needs_exe
def test_bash_completes_hot_commands_from_the_spec(coord) -> None:
    assert bash_complete(coord, "unregister", "x-1", "--status", "o") == ["ok", "oom"]
    assert bash_complete(coord, "run", "selfplay", "--no") == ["--node", "--no-slot-exit-code"]
    assert bash_complete(coord, "can-spawn", "selfplay", "--qu") == ["--quiet"]
    assert bash_complete(coord, "spawn-check", "tr") == ["training"]


@needs_exe
@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes(coord) -> None:
    done = subprocess.run(
        [
            "fish",
            "--no-config",
            "-c",
            f"source {FISH_SCRIPT}; "
            "complete -C 'ringrift-coord ca'; complete -C 'ringrift-coord run sel'",
        ],
        env=_env(coord),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    words = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert "can-spawn" in words and "selfplay" in words


@needs_exe
def test_zsh_protocol(coord) -> None:
    """What the zsh script evals: an _arguments spec listing the candidates."""
    env = {
        **_env(coord),
        "_TYPER_COMPLETE_ARGS": "ringrift-coord ca",
        "_RINGRIFT_COORD_COMPLETE": "complete_zsh",
    }
    done = subprocess.run([str(EXE)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"can-spawn"' in done.stdout
