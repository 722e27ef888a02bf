"""The systemd units in packaging/systemd/: ``systemd-analyze verify`` passes on each.

``verify`` needs every ``ExecStart`` binary to exist, and the units name the installed
path ``/usr/local/bin/ringrift-coord``: the test copies them to a temporary directory with
that path rewritten to this environment's own ``ringrift-coord`` (the console script next
to the running Python), and checks the originals name nothing else. Skipped where
``systemd-analyze`` is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"
INSTALLED = "/usr/local/bin/ringrift-coord"

ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _program() -> Path:
    program = Path(sys.executable).parent / "ringrift-coord"
    if not program.exists():
        found = shutil.which("ringrift-coord")
        if found is None:
            pytest.skip("no ringrift-coord console script installed")
        program = Path(found)
    return program


def _units() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))


def _copied(tmp_path: Path) -> list[Path]:
    program = str(_program())
    out = []
    for unit in _units():
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace(INSTALLED, program))
        out.append(target)
    return out


def _settings(unit: Path) -> dict[str, list[str]]:
    """``key -> values`` of a unit file (comments and section headers left out)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_units_are_there_and_run_the_installed_program() -> None:
    names = {p.name for p in _units()}
    assert names == {
        "ringrift-coord-serve.service",
        "ringrift-coord-report.service",
        "ringrift-coord-report.timer",
        "ringrift-coord-adjust.service",
        "ringrift-coord-adjust.timer",
        "ringrift-coord-reap.service",
        "ringrift-coord-reap.timer",
    }
    for unit in _units():
        if unit.suffix != ".service":
            continue
        s = _settings(unit)
        (start,) = s["ExecStart"]
        assert start.startswith(INSTALLED + " "), unit.name
        assert s["User"] == ["ringrift-coord"]
        # the host's shared store, never a StateDirectory= (systemd would chown it to the
        # service user at each start, breaking the group's store)
        assert "StateDirectory" not in s, unit.name
        assert s["Environment"][0] == "RINGRIFT_COORDINATOR_DIR=/var/lib/ringrift-coord"
        assert s["ReadWritePaths"] == ["/var/lib/ringrift-coord"]
        assert s["SupplementaryGroups"] == ["ringrift"]
        assert s["UMask"] == ["0007"]  # the store's files are shared with the group
        # a venv under /home or /root (the README's quick start) must stay readable
        assert s["ProtectHome"] == ["read-only"], unit.name
        assert "Documentation" not in s  # verify fails where the man page is not installed
        for key, value in (
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("SystemCallFilter", "@system-service"),
        ):
            assert value in s[key], (unit.name, key)
    serve = _settings(UNITS / "ringrift-coord-serve.service")
    assert serve["ExecStart"] == [f"{INSTALLED} serve"]
    assert serve["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert serve["Restart"] == ["on-failure"]
    assert serve["RestartPreventExitStatus"] == ["2 3"]  # bad config, port in use: no loop
    assert serve["KillSignal"] == ["SIGTERM"] and serve["TimeoutStopSec"] == ["10"]
    for name, command in (("report", "report"), ("adjust", "adjust")):
        service = _settings(UNITS / f"ringrift-coord-{name}.service")
        assert service["Type"] == ["oneshot"]
        assert service["ExecStart"][0].split()[1] == command
        timer = _settings(UNITS / f"ringrift-coord-{name}.timer")
        assert timer["OnUnitActiveSec"] == ["5min"]
        assert timer["WantedBy"] == ["timers.target"]
    # the liveness check: at least every lease_ttl / 3 (120 s by default)
    reap = _settings(UNITS / "ringrift-coord-reap.service")
    assert reap["Type"] == ["oneshot"] and reap["ExecStart"] == [f"{INSTALLED} tasks reap"]
    assert _settings(UNITS / "ringrift-coord-reap.timer")["OnUnitActiveSec"] == ["30s"]


def test_sysusers_makes_the_user_and_the_shared_group() -> None:
    lines = [
        line.split()
        for line in (UNITS / "ringrift-coord.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["g", "ringrift", "-"] in lines
    assert ["m", "ringrift-coord", "ringrift"] in lines
    assert any(line[:2] == ["u", "ringrift-coord"] for line in lines)


@needs_systemd
def test_systemd_analyze_verify_passes_on_each_unit(tmp_path: Path) -> None:
    """As the README tells operators to run it: plain ``systemd-analyze verify UNIT`` (no
    ``--man=no``: a unit naming a man page that is not installed would fail)."""
    units = _copied(tmp_path)
    for unit in units:
        done = subprocess.run(
            [str(ANALYZE), "verify", unit.name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (unit.name, done.stdout, done.stderr)
        assert done.stderr.strip() == "", (unit.name, done.stderr)


@needs_systemd
def test_verify_fails_when_the_program_is_not_there(tmp_path: Path) -> None:
    """The check above means something: a missing ExecStart binary fails verify."""
    unit = tmp_path / "ringrift-coord-serve.service"
    text = (UNITS / unit.name).read_text().replace(INSTALLED, str(tmp_path / "missing"))
    unit.write_text(text)
    done = subprocess.run(
        [str(ANALYZE), "verify", "--man=no", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "missing" in done.stderr


@needs_systemd
def test_systemd_analyze_security_rates_the_services_ok(tmp_path: Path) -> None:
    _copied(tmp_path)
    for name in ("serve", "report", "adjust"):
        done = subprocess.run(
            [
                str(ANALYZE),
                "security",
                "--offline=yes",
                "--threshold=30",  # "OK" is below 4.0 on systemd's 0-10 scale
                f"ringrift-coord-{name}.service",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0 and "offline" in done.stderr:
            pytest.skip("this systemd-analyze cannot judge units offline")
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr)
        assert "Overall exposure level" in done.stdout and " OK" in done.stdout, name
