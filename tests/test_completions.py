"""Shell completions: the shipped scripts are current, ``ringrift-coord completion SHELL``
prints them, and they really complete in bash, zsh and fish.

The scripts call the installed ``ringrift-coord`` back with ``_RINGRIFT_COORD_COMPLETE`` set;
the entry point hands that to the Typer app. These tests use the ``ringrift-coord`` next to
the interpreter running them (the venv's ``bin``), first on ``PATH``. zsh is driven for real
through ``zsh/zpty``: an interactive zsh gets the line and a TAB, and its completion system's
candidates are captured at ``compadd``. Each shell's test skips when that shell is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXE = BIN / "ringrift-coord"
SHIPPED = ROOT / "ringrift_coord" / "data" / "completions"
BASH_SCRIPT = SHIPPED / "ringrift-coord.bash"
ZSH_SCRIPT = SHIPPED / "_ringrift-coord"
FISH_SCRIPT = SHIPPED / "ringrift-coord.fish"

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


def test_shipped_completions_are_current() -> None:
    rendered = _generator().render()
    assert set(rendered) == {p.name for p in SHIPPED.iterdir()}
    for name, text in rendered.items():
        path = SHIPPED / name
        assert path.read_text() == text, f"{name} is stale: run scripts/gen-completions.py"


@pytest.mark.parametrize(
    "shell,name",
    [("bash", "ringrift-coord.bash"), ("zsh", "_ringrift-coord"), ("fish", "ringrift-coord.fish")],
)
def test_completion_command_prints_the_shipped_script(coord, shell: str, name: str) -> None:
    result = coord("completion", shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (SHIPPED / name).read_text()
    assert result.stderr == ""


def test_completion_json_is_one_document(coord) -> None:
    result = coord("--json", "completion", "zsh")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "schema_version": 1,
        "shell": "zsh",
        "script": ZSH_SCRIPT.read_text(),
    }
    bad = coord("--json", "completion", "tcsh")
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["exit_code"] == 2


def test_completion_of_an_unknown_shell_is_a_usage_error(coord) -> None:
    result = coord("completion", "bsh")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "ringrift-coord: error: no completion for shell 'bsh' "
        "(did you mean bash? choose from bash, zsh, fish)"
    ]
    assert coord("completion").returncode == 2


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


BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


@needs_exe
@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="bash-completion is not installed")
def test_bash_completion_loads_it_from_the_user_directory(coord, tmp_path: Path) -> None:
    """The README's install line: bash-completion finds the script on first use in
    ``$XDG_DATA_HOME/bash-completion/completions/`` and it completes."""
    target = tmp_path / "data" / "bash-completion" / "completions" / "ringrift-coord"
    target.parent.mkdir(parents=True)
    target.write_text(coord("completion", "bash").stdout)
    script = r"""
        source "$1"; shift
        if declare -F _comp_load >/dev/null; then _comp_load ringrift-coord
        else __load_completion ringrift-coord; fi
        spec=$(complete -p ringrift-coord) || exit 97
        fn=${spec#*-F }; fn=${fn%% *}
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
        "$fn" ringrift-coord "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    """
    done = subprocess.run(
        [
            "bash",
            "-c",
            script,
            "bash",
            str(BASH_COMPLETION),
            "ringrift-coord",
            "can-spawn",
            "--nod",
        ],
        env={**_env(coord), "XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--node"]


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


needs_fish = pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")


def fish_complete(coord, tmp_path: Path, line: str) -> list[str]:
    """``complete -C LINE`` in a fish that loads the script from where the README installs it:
    ``$XDG_CONFIG_HOME/fish/completions/ringrift-coord.fish`` (autoloaded on first use)."""
    config = tmp_path / "fish-config"
    (config / "fish" / "completions").mkdir(parents=True, exist_ok=True)
    shutil.copy(FISH_SCRIPT, config / "fish" / "completions" / "ringrift-coord.fish")
    env = {
        **_env(coord),
        "XDG_CONFIG_HOME": str(config),
        "XDG_DATA_HOME": str(tmp_path / "fish-data"),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [
            "fish",
            "--no-config",
            "-c",
            f"set fish_complete_path {config}/fish/completions "
            "$fish_complete_path; complete -C $argv[1]",
            line,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    return [out.split("\t")[0] for out in done.stdout.splitlines() if out]


@needs_exe
@needs_fish
def test_fish_completes(coord, tmp_path: Path) -> None:
    assert "can-spawn" in fish_complete(coord, tmp_path, "ringrift-coord ca")
    assert fish_complete(coord, tmp_path, "ringrift-coord run sel") == ["selfplay"]
    assert fish_complete(coord, tmp_path, "ringrift-coord can-spawn --nod") == ["--node"]
    assert {"--node", "--quiet"} <= set(
        fish_complete(coord, tmp_path, "ringrift-coord can-spawn --")
    )
    assert {"list", "reap"} <= set(fish_complete(coord, tmp_path, "ringrift-coord tasks "))
    assert fish_complete(coord, tmp_path, "ringrift-coord completion z") == ["zsh"]


# An interactive zsh under zsh/zpty gets the line and a TAB; this file, loaded into it, makes
# TAB run the completion system and prints each candidate compadd receives, between two
# marker lines, instead of inserting it (then exits).
ZSH_CAPTURE = r"""
PROMPT='' RPROMPT=''
bindkey '^I' complete-word
mark() { echo -E - "@@capture@@" }
compprefuncs=( mark )
comppostfuncs=( mark exit )
zstyle ':completion:*' insert-tab false
compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
    builtin compadd "$@"; return $?
  fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  local hit
  for hit in $__hits; do echo -E - "candidate:$hit"; done
}
"""

# zsh -f DRIVE MODE SCRIPT CAPTURE LINE: MODE "fpath" installs SCRIPT as _ringrift-coord in a
# directory of $fpath (compinit autoloads it); "source" sources it after compinit.
ZSH_DRIVE = r"""
zmodload zsh/zpty
mode=$1 script=$2 capture=$3 line=$4
zpty z zsh -f -i
zpty -w z "exec 2>/dev/null"
if [[ $mode == fpath ]]; then
  zpty -w z "fpath=(${(q)script:h} \$fpath); autoload -Uz compinit; compinit -u -D"
else
  zpty -w z "autoload -Uz compinit; compinit -u -D; source ${(q)script}"
fi
zpty -w z "source ${(q)capture}"
zpty -n -w z "$line"$'\t'
zpty -r z output '*@@capture@@*@@capture@@*'
print -r -- "$output"
"""


def zsh_complete(coord, tmp_path: Path, line: str, mode: str) -> list[str]:
    home = tmp_path / "zsh"
    (home / "functions").mkdir(parents=True, exist_ok=True)
    script = home / "functions" / "_ringrift-coord"
    shutil.copy(ZSH_SCRIPT, script)
    (home / "capture.zsh").write_text(ZSH_CAPTURE)
    (home / "drive.zsh").write_text(ZSH_DRIVE)
    env = {**_env(coord), "HOME": str(home), "ZDOTDIR": str(home)}
    done = subprocess.run(
        ["zsh", "-f", str(home / "drive.zsh"), mode, str(script), str(home / "capture.zsh"), line],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [
        out.strip().removeprefix("candidate:")
        for out in done.stdout.splitlines()
        if out.strip().startswith("candidate:")
    ]


@needs_exe
@needs_zsh
@pytest.mark.parametrize("mode", ["fpath", "source"])
def test_zsh_completes(coord, tmp_path: Path, mode: str) -> None:
    """The first TAB already completes, whether the script was autoloaded or sourced."""
    assert "can-spawn" in zsh_complete(coord, tmp_path, "ringrift-coord ca", mode)
    assert zsh_complete(coord, tmp_path, "ringrift-coord run sel", mode) == ["selfplay"]
    assert zsh_complete(coord, tmp_path, "ringrift-coord can-spawn --nod", mode) == ["--node"]
    assert {"--node", "--quiet"} <= set(
        zsh_complete(coord, tmp_path, "ringrift-coord can-spawn --", mode)
    )
    assert zsh_complete(coord, tmp_path, "ringrift-coord completion f", mode) == ["fish"]


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
