"""The man page: the shipped ``ringrift-coord.1`` is what ``scripts/gen-manpage.py`` makes of
the current command tree, it names every command and option, and ``man`` renders it cleanly."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from ringrift_coord.cli.app import app
from ringrift_coord.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "ringrift_coord" / "data" / "man" / "ringrift-coord.1"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_manpage", ROOT / "scripts" / "gen-manpage.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_man_page_is_current() -> None:
    assert PAGE.read_text() == _generator().render(), (
        "ringrift-coord.1 is stale: run scripts/gen-manpage.py"
    )


def _walk(cmd, path=()):
    for name, sub in getattr(cmd, "commands", {}).items():
        if sub.hidden:
            continue
        if getattr(sub, "commands", None):
            yield from _walk(sub, (*path, name))
        else:
            yield (*path, name), sub


@pytest.fixture(scope="module")
def rendered() -> str:
    """The page as ``man -l`` renders it (plain text, no hyphenation or justification)."""
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db groff-base)")
    done = subprocess.run(
        ["man", "--warnings", "-l", str(PAGE)],
        env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "MANPAGER": "cat"}
        | {"MANOPT": "", "PAGER": "cat", "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"groff warnings: {done.stderr}"
    return done.stdout


def test_man_renders_every_command_option_and_exit_code(rendered: str) -> None:
    text = " ".join(rendered.replace("\u2010", "-").split())
    assert "RINGRIFT-COORD(1)" in text
    root = typer.main.get_command(app)
    for path, cmd in _walk(root):
        assert f"ringrift-coord {' '.join(path)} [OPTIONS]" in text, path
        for param in cmd.params:
            if param.param_type_name == "option" and "--help" not in param.opts:
                assert param.opts[0] in text, (path, param.opts[0])
    for param in root.params:
        if param.param_type_name == "option" and "--help" not in param.opts:
            assert param.opts[0] in text, param.opts[0]
    for code in ExitCode.by_name().values():
        label = "128+N" if code == ExitCode.SIGNAL_BASE else str(code)
        assert f" {label} " in text, label


def _groff(page: str) -> subprocess.CompletedProcess[str]:
    """``page`` through ``groff -man -Tutf8 -ww`` as it is (no preconv): every warning on."""
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    return subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww"],
        input=page,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        timeout=60,
    )


def test_the_page_is_ascii_and_groff_reads_it_without_a_warning() -> None:
    page = _generator().render()
    odd = sorted({c for c in page if not c.isascii()})
    assert not odd, f"non-ASCII characters in the page: {odd}"
    done = _groff(page)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_non_ascii_help_text_becomes_roff_glyphs() -> None:
    """What help text may hold comes out as the same characters, from an ASCII page."""
    gen = _generator()
    text = "a × b – c — d … e → f ≤ g ≥ h µ i ∞ j · k ٣"
    line = gen.esc(text)
    assert line.isascii() and "\\(mu" in line and "\\(if" in line, line
    done = _groff(f".TH T 1\n.SH NAME\nt \\- t\n.SH X\n{line}\n")
    assert done.stderr == "", done.stderr
    shown = " ".join(done.stdout.replace("\u2010", "-").split())
    assert "a × b – c — d ... e → f ≤ g ≥ h µ i ∞ j · k ٣" in shown, shown
