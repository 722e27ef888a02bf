"""What the package carries: the reference config, the completions, the launch scripts and the
man page are package data (one copy in the tree, shipped in the wheel, found through
``importlib.resources`` in a real non-editable install); ``config init`` writes the reference
config safely; the license is declared and shipped."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from ringrift_coord import packaged

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "ringrift_coord" / "data"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# every shipped file, by its path under data/
SHIPPED = [
    packaged.REFERENCE_CONFIG,
    packaged.MAN_PAGE,
    *(f"completions/{name}" for name in packaged.COMPLETIONS.values()),
    *(f"scripts/{name}" for name in packaged.LAUNCH_SCRIPTS),
]


def test_data_files_are_the_only_copies() -> None:
    """One source of truth: nothing under data/ has a second copy at the repository's top."""
    on_disk = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file())
    assert on_disk == sorted(SHIPPED)
    assert not (ROOT / "config").exists() and not (ROOT / "completions").exists()
    assert not list((ROOT / "scripts").glob("*.sh")), "launch scripts live in data/scripts/"


def test_every_data_file_is_declared_package_data() -> None:
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["ringrift_coord"]
    for name in SHIPPED:
        assert any(fnmatch(f"data/{name}", g) for g in globs), f"{name} is not package data"


def test_packaged_reads_the_shipped_files() -> None:
    assert packaged.reference_config() == (DATA / packaged.REFERENCE_CONFIG).read_text()
    for shell, name in packaged.COMPLETIONS.items():
        assert packaged.completion_script(shell) == (DATA / "completions" / name).read_text()
    for name in SHIPPED:
        assert packaged.data_file(name).is_file(), name
    for name in packaged.LAUNCH_SCRIPTS:
        assert os.access(DATA / "scripts" / name, os.X_OK), f"{name} is not executable"


def test_license_is_declared_and_present() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


# --------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as ``pip install`` from an index makes it: an sdist of this tree, unpacked
    elsewhere, built into a wheel (nothing is built inside the source tree)."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("wheel")
    sdist = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
        ]
        + [str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sdist.returncode == 0, sdist.stderr
    with tarfile.open(out / sdist.stdout.split()[-1]) as archive:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.11.4+
        archive.extractall(out / "src", **safe)
    (source,) = (out / "src").iterdir()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--disable-pip-version-check", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("ringrift_coord-*.whl")
    return built


def test_wheel_ships_the_data_the_man_page_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        assert f"ringrift_coord/data/{name}" in names, name
    assert any(n.endswith(".data/data/share/man/man1/ringrift-coord.1") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    info = zipfile.ZipFile(wheel)
    for name in packaged.LAUNCH_SCRIPTS:
        mode = info.getinfo(f"ringrift_coord/data/scripts/{name}").external_attr >> 16
        assert mode & stat.S_IXUSR, f"{name} loses its executable bit in the wheel"


def test_installed_wheel_finds_its_data(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv with the wheel installed (not editable), its dependencies borrowed from
    this venv behind it on sys.path: the program reads its data from the install."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["-q", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (site,) = venv.glob("lib/python3*/site-packages")
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz-deps.pth").write_text("\n".join(deps) + "\n")  # after the wheel's own files
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGRIFT_", "PYTHON"))} | {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path),
    }
    probe = (
        "import json, ringrift_coord\n"
        "from ringrift_coord import packaged\n"
        f"names = {SHIPPED!r}\n"
        "print(json.dumps({'module': ringrift_coord.__file__,\n"
        "  'files': {n: packaged.data_file(n).read_text() for n in names}}))\n"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,  # not the source tree
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["module"].startswith(str(site)), found["module"]
    for name in SHIPPED:
        assert found["files"][name] == (DATA / name).read_text(), name
    assert (venv / "share" / "man" / "man1" / "ringrift-coord.1").read_text() == (
        DATA / packaged.MAN_PAGE
    ).read_text()
    exe = str(venv / "bin" / "ringrift-coord")
    fish = subprocess.run([exe, "completion", "fish"], env=env, capture_output=True, text=True)
    assert fish.returncode == 0, fish.stderr
    assert fish.stdout == (DATA / "completions" / "ringrift-coord.fish").read_text()
    init = subprocess.run(
        [exe, "--json", "config", "init"], env=env, capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    written = Path(json.loads(init.stdout)["path"])
    assert written == tmp_path / "xdg" / "ringrift-coord" / "unified_loop.yaml"
    assert written.read_text() == (DATA / packaged.REFERENCE_CONFIG).read_text()


# --------------------------------------------------------------------------- config init


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _under_umask(mask: int, coord, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    old = os.umask(mask)
    try:
        return coord(*args, **kw)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o077, 0o022])
def test_config_init_writes_the_reference_to_the_user_config(coord, tmp_path, mask) -> None:
    no_config = {"RINGRIFT_COORD_CONFIG": ""}  # the fixture's own; unset, the user's is read
    result = _under_umask(mask, coord, "config", "init", env=no_config)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "xdg-config" / "ringrift-coord" / "unified_loop.yaml"
    assert result.stdout == f"wrote {target}\n"
    assert result.stderr == ""
    assert target.read_text() == packaged.reference_config()
    assert _mode(target) == 0o644
    assert _mode(target.parent) == 0o755 and _mode(target.parent.parent) == 0o755
    # it is the file a call without --config now reads, and it is valid
    shown = coord("--json", "config", "validate", env=no_config)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["config_file"] == str(target)


def test_config_init_help_and_man_page_give_the_mode_it_writes(coord) -> None:
    """``config init --help`` (and the man page made from it) said mode 0600 while the
    file is written 0644, as the README says."""
    shown = coord("config", "init", "--help", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "mode 0644" in shown.stdout and "0600" not in shown.stdout, shown.stdout
    page = (ROOT / "ringrift_coord" / "data" / "man" / "ringrift-coord.1").read_text()
    assert "default), mode 0644; an" in page and "default), mode 0600" not in page


def test_config_init_says_when_another_file_is_read_instead(coord, tmp_path: Path) -> None:
    target = tmp_path / "xdg-config" / "ringrift-coord" / "unified_loop.yaml"
    result = coord("config", "init")  # the fixture sets RINGRIFT_COORD_CONFIG
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {target}\n"
    assert result.stderr == (
        f"ringrift-coord: note: RINGRIFT_COORD_CONFIG names {coord.config}, "
        "which is read instead of this file\n"
    )
    other = tmp_path / "other.yaml"
    result = coord("--config", str(coord.config), "config", "init", str(other))
    assert result.returncode == 0 and result.stderr == "", result.stderr  # PATH given: no note


def test_config_init_leaves_existing_parents_alone(coord, tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o755)
    result = coord("config", "init", str(parent / "new" / "coord.yaml"))
    assert result.returncode == 0, result.stderr
    assert _mode(parent) == 0o755
    assert _mode(parent / "new") == 0o755
    assert _mode(parent / "new" / "coord.yaml") == 0o644


def test_config_init_refuses_to_overwrite_without_force(coord, tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("task_limits: {training: {per_node: 2}}\n")
    os.chmod(target, 0o644)
    for args in (("config", "init", str(target)), ("--json", "config", "init", str(target))):
        result = coord(*args)
        assert result.returncode == 3
        assert result.stdout == "" or json.loads(result.stdout)["exit_code"] == 3
        assert len(result.stderr.strip().splitlines()) <= 1
        assert "Traceback" not in result.stderr
    assert coord("config", "init", str(target)).stderr == (
        f"ringrift-coord: error: {target} already exists (pass --force to overwrite it)\n"
    )
    assert target.read_text() == "task_limits: {training: {per_node: 2}}\n"
    forced = coord("--json", "config", "init", "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout) == {"schema_version": 1, "path": str(target)}
    assert target.read_text() == packaged.reference_config()
    assert _mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")] == []


def test_config_init_force_replaces_a_symlink_instead_of_following_it(coord, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(victim)
    refused = coord("config", "init", str(link))
    assert refused.returncode == 3, refused.stderr
    forced = coord("config", "init", "--force", str(link))
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "keep me\n"
    assert not link.is_symlink() and link.read_text() == packaged.reference_config()


def test_config_init_onto_a_directory_or_under_a_file_is_one_line(coord, tmp_path) -> None:
    (tmp_path / "afile").write_text("x")
    for path, why in (
        (tmp_path, "is a directory"),
        (tmp_path / "afile" / "coord.yaml", "is not a directory"),
    ):
        result = coord("config", "init", "--force", str(path))
        assert result.returncode == 3, result.stderr
        assert why in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
