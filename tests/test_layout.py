"""The package's layout: no import cycle between its modules, lazy imports included, and the
hot path (``can-spawn``, ``register``, ``unregister``, ``run``) free of the CLI framework and
of the read models.

Every ``import`` / ``from ... import`` anywhere in a module (at the top, inside functions,
under ``TYPE_CHECKING``) is an edge; a cycle is a strongly connected set of modules.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import Coord

PACKAGE = Path(__file__).resolve().parent.parent / "ringrift_coord"


def import_graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_lazy_imports_included() -> None:
    graph = import_graph()
    assert "ringrift_coord.admission" in graph and graph["ringrift_coord.admission"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_hot_path_imports_no_cli_framework_and_no_read_model() -> None:
    code = (
        "import sys, ringrift_coord.cli.main, ringrift_coord.cli.parser, ringrift_coord.cli.hot, "
        "ringrift_coord.task_coordinator, ringrift_coord.launcher\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'click', 'rich', 'typing', 'dataclasses') or m in "
        "('ringrift_coord.reports', 'ringrift_coord.safeguards', 'ringrift_coord.cli.app'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


# What a SQLite ``can-spawn`` once cost every call and no longer imports (start-up is what a
# launch script pays per job): ``datetime`` (the ``sqlite3`` package's default adapters; the
# store uses the C module ``_sqlite3``), ``copy`` and ``weakref`` (the settings' deep copy),
# ``contextlib`` (the store's transactions), and on an allowed call ``json`` (the config cache
# is read by its C scanner; a refusal writes its rules, events and the halt file as JSON,
# and ``json`` imports ``re``), ``re`` (the OOM words of a failure's reason).
# ``typing`` and the CLI framework never.
NOT_ON_THE_SQLITE_HOT_PATH = {
    "json",
    "re",
    "sqlite3",
    "datetime",
    "copy",
    "weakref",
    "contextlib",
    "typing",
    "dataclasses",
    "typer",
    "rich",
    "click",
    "urllib",  # (with ``ipaddress``: ~5 ms, for a URI the store can build by hand)
    "ipaddress",
    "pathlib",
}


def test_a_sqlite_can_spawn_stays_within_its_import_budget(tmp_path: Path) -> None:
    """A whole ``can-spawn`` (allowed: the decision logged; then refused under a halt:
    counters and the TASK_DENIED event), its config file read from the state directory's
    cache as on a node's every call after the first, imports none of the modules above."""
    coord = Coord(tmp_path)
    coord.write_config("rate_limits:\n  selfplay: {per_minute: null}\n")
    code = (
        "import sys\n"
        "before = set(sys.modules)  # (an editable install's import hook loads some at start)\n"
        "from ringrift_coord.cli.main import run_cli\n"
        "code = run_cli(sys.argv[1:])\n"
        "print(' '.join(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        f"{sorted(NOT_ON_THE_SQLITE_HOT_PATH)!r})))\n"
        "sys.exit(code)\n"
    )
    # -S: no site hooks, as in a regular install (an editable install's finder imports
    # pathlib and urllib before the command starts, which would hide them from the check);
    # the package from this tree, its dependencies from this venv
    paths = sysconfig.get_paths()
    coord.env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE.parent), paths["purelib"], paths["platlib"]]
    )
    argv = [sys.executable, "-S", "-c", code, "can-spawn", "selfplay", "--node", "n1"]
    first = subprocess.run(argv, env=coord.env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr  # made the store and the config cache
    allowed = subprocess.run(argv, env=coord.env, capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.splitlines()[-1] == ""
    assert coord("halt", "--reason", "budget").returncode == 0
    refused = subprocess.run(argv, env=coord.env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1, refused.stderr
    refused_loaded = {m.partition(".")[0] for m in refused.stdout.splitlines()[-1].split()}
    assert "json" in refused_loaded and refused_loaded <= {"json", "re"}, refused_loaded


def test_the_core_never_imports_the_command_line_face() -> None:
    """Only ``cli/`` (and ``__main__``, which starts it) may import ``ringrift_coord.cli``."""
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package
    offenders = {
        module: sorted(t for t in targets if t.startswith("ringrift_coord.cli"))
        for module, targets in graph.items()
        if not module.startswith("ringrift_coord.cli") and module != "ringrift_coord.__main__"
    }
    assert {module: found for module, found in offenders.items() if found} == {}
