"""Utilization targets: ``UtilizationTargets`` / ``get_resource_targets``, their precedence
(defaults < YAML < ``RINGRIFT_TARGET_UTIL_MIN``/``MAX``, ``RINGRIFT_PID_KP``/``KI``/``KD`` <
``RINGRIFT_COORD_SET`` < ``--set``) with each value's source, the checks across the targets
(``scale_up_below <= min <= target <= max <= scale_down_above``; the optimizer's rate), and
the deferral: a bad optimizer setting fails only the commands that use it (``targets``, exit
3 naming its source) while every other command warns once on stderr and goes on.

The settings cases load in-process (no store); the commands run the real program in a
subprocess; what touches the store (admission, readings) runs on both engines.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Coord

from ringrift_coord.config import DEFERRED_SECTIONS, apply_assignments, load_settings
from ringrift_coord.context import Context
from ringrift_coord.errors import ConfigError, ExitCode, UsageError
from ringrift_coord.resource_targets import (
    UtilizationTargets,
    get_resource_targets,
    threshold_notes,
)

ENGINES = ("sqlite", "postgres")
PREFIX = "ringrift-coord: error: "
WARNING = "ringrift-coord: warning: "
IGNORED = " (ignored: this command does not use it)"
DEFAULT_SETTINGS = load_settings(None, env={}, use_default_file=False)


@pytest.fixture
def local(tmp_path: Path) -> Coord:
    """The CLI on SQLite alone, for what never opens the store (``targets``, ``limits``)."""
    return Coord(tmp_path)


def load(tmp_path: Path, text: str | None = None, **env: str) -> tuple[Any, str | None]:
    path = None
    if text is not None:
        path = str(tmp_path / "coord.yaml")
        Path(path).write_text(text)
    return load_settings(path, env=env, use_default_file=False), path


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


def warning_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one warning on stderr (and nothing else there), without its prefix and suffix."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(WARNING) and lines[0].endswith(IGNORED), lines[0]
    return lines[0][len(WARNING) : -len(IGNORED)]


# --------------------------------------------------------------------------- the API


def test_defaults_of_the_reference(tmp_path: Path) -> None:
    settings, _ = load(tmp_path)
    targets = get_resource_targets(settings)
    assert targets == UtilizationTargets()  # the dataclass's defaults are the reference's
    assert (targets.scale_up_below, targets.scale_down_above) == (55, 85)
    assert targets.band("cpu") == (60, 70, 80) and targets.band("gpu") == (60, 70, 80)
    assert (targets.kp, targets.ki, targets.kd, targets.gain_scheduling) == (0.3, 0.05, 0.1, True)
    assert targets.in_range("gpu", 60) and targets.in_range("gpu", 80)
    assert not targets.in_range("gpu", 59.9) and not targets.in_range("cpu", 80.1)
    assert set(targets.sources.values()) == {"default"}
    assert set(targets.sources) == set(targets.to_dict()) - {"sources"}
    assert targets.to_dict()["gpu_target"] == 70
    with pytest.raises(UsageError, match="unknown resource 'disk'"):
        targets.band("disk")
    assert threshold_notes(settings) == []  # critical 80 == gpu_max 80: no note


def test_every_layer_and_its_source(tmp_path: Path) -> None:
    text = (
        "resource_targets:\n  cpu_min: 58\n  gpu_max: 78\n  scale_up_below: 50\n  pid: {kp: 0.4}\n"
    )
    settings, path = load(
        tmp_path,
        text,
        RINGRIFT_TARGET_UTIL_MIN="62",
        RINGRIFT_PID_KD="0.2",
        RINGRIFT_COORD_SET="resource_targets.pid.ki=0.07",
    )
    apply_assignments(settings, ["resource_targets.cpu_target=72"], "flag --set")
    targets = get_resource_targets(settings)
    assert targets.cpu_min == 62 and targets.sources["cpu_min"] == "env RINGRIFT_TARGET_UTIL_MIN"
    assert targets.gpu_min == 62 and targets.sources["gpu_min"] == "env RINGRIFT_TARGET_UTIL_MIN"
    assert targets.gpu_max == 78 and targets.sources["gpu_max"] == f"{path}:3"
    assert targets.scale_up_below == 50 and targets.sources["scale_up_below"] == f"{path}:4"
    assert targets.kp == 0.4 and targets.sources["kp"] == f"{path}:5"
    assert targets.kd == 0.2 and targets.sources["kd"] == "env RINGRIFT_PID_KD"
    assert targets.ki == 0.07
    assert targets.sources["ki"] == "env RINGRIFT_COORD_SET resource_targets.pid.ki"
    assert targets.cpu_target == 72
    assert targets.sources["cpu_target"] == "flag --set resource_targets.cpu_target"
    assert targets.sources["cpu_max"] == "default"


def test_the_environment_is_one_layer(tmp_path: Path) -> None:
    # RINGRIFT_TARGET_UTIL_MAX=90 alone is above scale_down_above 85; with the environment's
    # RINGRIFT_COORD_SET raising that too, the layer is consistent
    settings, _ = load(
        tmp_path,
        RINGRIFT_TARGET_UTIL_MAX="90",
        RINGRIFT_COORD_SET="resource_targets.scale_down_above=95",
    )
    assert settings.problems == {}
    assert get_resource_targets(settings).band("gpu") == (60, 70, 90)
    settings, _ = load(tmp_path, RINGRIFT_TARGET_UTIL_MAX="90")
    assert "gpu_max" not in str(settings.problems["resource_targets"])  # cpu is checked first
    assert "cpu_max (90) is above scale_down_above (85)" in str(
        settings.problems["resource_targets"]
    )


def test_the_api_resolves_the_settings_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("RINGRIFT_COORD_SET", "RINGRIFT_COORD_CONFIG", "RINGRIFT_COORD_DB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RINGRIFT_COORDINATOR_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RINGRIFT_TARGET_UTIL_MAX", "75")
    targets = get_resource_targets()  # no settings: this process's environment
    assert targets.cpu_max == 75 and targets.sources["cpu_max"] == "env RINGRIFT_TARGET_UTIL_MAX"
    with Context.open() as ctx:  # a Context does too
        assert get_resource_targets(ctx).gpu_max == 75
    monkeypatch.setenv("RINGRIFT_TARGET_UTIL_MAX", "65")  # below the optimal 70
    with pytest.raises(ConfigError, match=r"\[env RINGRIFT_TARGET_UTIL_MAX\]"):
        get_resource_targets()


# --------------------------------------------------------------------------- cross-checks

# (settings, the key blamed, a fragment of the message)
CROSS = {
    "scale-up-above-min": (
        {"resource_targets.scale_up_below": 61},
        "resource_targets.scale_up_below",
        "scale_up_below (61) is above cpu_min (60)",
    ),
    "min-above-target": (
        {"resource_targets.gpu_min": 71},
        "resource_targets.gpu_min",
        "gpu_min (71) is above gpu_target (70)",
    ),
    "target-above-max": (
        {"resource_targets.cpu_target": 81},
        "resource_targets.cpu_target",
        "cpu_target (81) is above cpu_max (80)",
    ),
    "max-above-scale-down": (
        {"resource_targets.gpu_max": 86},
        "resource_targets.gpu_max",
        "gpu_max (86) is above scale_down_above (85)",
    ),
    "scale-down-below-max": (
        {"resource_targets.scale_down_above": 79},
        "resource_targets.scale_down_above",
        "cpu_max (80) is above scale_down_above (79)",
    ),
    "rate-min-zero": (
        {"optimizer.rate.min": 0},
        "optimizer.rate.min",
        "the least self-play rate must be above 0",
    ),
    "rate-initial-below-min": (
        {"optimizer.rate.initial": 50},
        "optimizer.rate.initial",
        "min (100) is above initial (50)",
    ),
    "rate-max-below-initial": (
        {"optimizer.rate.max": 900},
        "optimizer.rate.max",
        "initial (1000) is above max (900)",
    ),
}


@pytest.mark.parametrize("name", list(CROSS))
@pytest.mark.parametrize("layer", ["file", "RINGRIFT_COORD_SET", "--set"])
def test_cross_checks_name_the_real_source(tmp_path: Path, name: str, layer: str) -> None:
    changes, blamed, fragment = CROSS[name]
    section = blamed.partition(".")[0]
    pairs = [f"{key}={value}" for key, value in changes.items()]
    text = None
    if layer == "file":
        text = "store: {lease_ttl: 60}\n"
        for key, value in changes.items():  # every key here is section.leaf or section.a.b
            parts = key.split(".")
            text += f"{parts[0]}:\n" + (
                f"  {parts[1]}: {value}\n"
                if len(parts) == 2
                else f"  {parts[1]}:\n    {parts[2]}: {value}\n"
            )
    env = {"RINGRIFT_COORD_SET": ";".join(pairs)} if layer == "RINGRIFT_COORD_SET" else {}
    settings, path = load(tmp_path, text, **env)
    if layer == "--set":
        apply_assignments(settings, pairs, "flag --set")
    # loading went on: the rest is in force, the section holds its defaults ...
    assert set(settings.problems) == {section}
    assert settings.get(blamed) == DEFAULT_SETTINGS.get(blamed)
    assert settings.source(blamed) == "default"
    if layer == "file":
        assert settings.get("store.lease_ttl") == 60
    # ... and the commands that use the section meet the error
    with pytest.raises(ConfigError) as info:
        settings.require(section)
    message = str(info.value)
    assert fragment in message and info.value.key == blamed, message
    if layer == "file":
        assert message.startswith(f"{path}:"), message
        assert info.value.exit_code == ExitCode.CONFIG
    elif layer == "--set":
        assert f"[flag --set {blamed}]" in message
        assert info.value.exit_code == ExitCode.USAGE  # a bad flag is bad usage (exit 2)
    else:
        assert f"[env RINGRIFT_COORD_SET {blamed}]" in message
        assert info.value.exit_code == ExitCode.CONFIG
    for other in DEFERRED_SECTIONS:
        if other != section:
            settings.require(other)  # the other sections are fine


def test_a_bad_layer_leaves_the_layer_below_in_force(tmp_path: Path) -> None:
    text = "resource_targets:\n  cpu_min: 58\n  pid: {kp: 0.4}\n"
    settings, path = load(tmp_path, text, RINGRIFT_TARGET_UTIL_MIN="75", RINGRIFT_PID_KI="0.01")
    # the environment's layer was bad for the section: all of it is dropped, the file's holds
    assert settings.get("resource_targets.cpu_min") == 58
    assert settings.source("resource_targets.cpu_min") == f"{path}:2"
    assert settings.get("resource_targets.pid.ki") == 0.05  # not half of a bad layer
    assert settings.get("resource_targets.pid.kp") == 0.4
    problem = settings.problems["resource_targets"]
    assert "[env RINGRIFT_TARGET_UTIL_MIN]" in str(problem)
    # a good layer above still applies
    apply_assignments(settings, ["resource_targets.cpu_min=65"], "flag --set")
    assert settings.get("resource_targets.cpu_min") == 65
    assert settings.problems["resource_targets"] is problem  # the first error is the one kept


@pytest.mark.parametrize(
    ("text", "section", "line", "fragment"),
    [
        ("resource_targets:\n  pid:\n    kd: -0.5\n", "resource_targets", 3, "negative"),
        ("resource_targets:\n  cpu_mni: 50\n", "resource_targets", 2, "did you mean 'cpu_min'"),
        ("resource_targets: 5\n", "resource_targets", 1, "must be a mapping"),
        ("optimizer:\n  max_step: 2\n", "optimizer", 2, "0 to 1"),
        ("hardware:\n  gpu_jobs: {H100: -1}\n", "hardware", 2, "negative"),
        ("selfplay_configs:\n  square8_2p: many\n", "selfplay_configs", 2, "'many'"),
    ],
)
def test_a_bad_optimizer_section_in_the_file_is_kept_for_later(
    tmp_path: Path, text: str, section: str, line: int, fragment: str
) -> None:
    settings, path = load(tmp_path, "task_limits: {selfplay: {per_node: 4}}\n" + text)
    assert settings.task_limit("selfplay", "per_node") == 4  # the rest of the file is in force
    assert list(settings.problems) == [section]
    assert settings.values[section] == DEFAULT_SETTINGS.values[section]  # defaults
    with pytest.raises(ConfigError) as info:
        settings.require(section)
    assert (info.value.file, info.value.line) == (path, line + 1)
    assert fragment in str(info.value), str(info.value)


def test_errors_elsewhere_still_raise_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="negative"):
        load(tmp_path, "resource_targets: {cpu_min: -1}\nstore: {lease_ttl: -1}\n")
    with pytest.raises(ConfigError, match="warning"):
        load(tmp_path, RINGRIFT_COORD_SET="thresholds.cpu.warning=95")
    settings, _ = load(tmp_path)
    with pytest.raises(ConfigError):
        apply_assignments(settings, ["store.lease_ttl=abc"], "flag --set")
    apply_assignments(settings, ["optimizer.nope=1"], "flag --set")  # an unknown key too
    assert "unknown key" in str(settings.problems["optimizer"])


def test_the_note_on_a_critical_threshold_below_the_band(tmp_path: Path) -> None:
    settings, _ = load(tmp_path, RINGRIFT_COORD_SET="thresholds.gpu.critical=75")
    (note,) = threshold_notes(settings)
    assert note.startswith("thresholds.gpu.critical (75) is below resource_targets.gpu_max (80)")
    settings, _ = load(
        tmp_path,
        RINGRIFT_COORD_SET="thresholds.cpu.warning=50;thresholds.cpu.critical=60;"
        "thresholds.gpu.critical=75",
    )
    assert [n.split(" ")[0] for n in threshold_notes(settings)] == [
        "thresholds.cpu.critical",
        "thresholds.gpu.critical",
    ]


# --------------------------------------------------------------------------- the commands


@pytest.mark.parametrize(
    ("var", "raw", "fragment"),
    [
        ("RINGRIFT_TARGET_UTIL_MIN", "75", "cpu_min (75) is above cpu_target (70)"),
        ("RINGRIFT_TARGET_UTIL_MAX", "65", "cpu_target (70) is above cpu_max (65)"),
        ("RINGRIFT_PID_KP", "abc", "expected a number"),
    ],
)
def test_a_bad_target_no_longer_breaks_admission(
    coord: Coord, var: str, raw: str, fragment: str
) -> None:
    env = {var: raw}
    allowed = coord("can-spawn", "selfplay", "--node", "n1", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("allowed")
    message = warning_line(allowed)
    assert f"env {var}" in message and fragment in message, message
    as_json = coord("--json", "can-spawn", "selfplay", "--node", "n1", env=env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["allowed"] is True
    assert warning_line(as_json) == message  # stderr, also with --json
    quiet = coord("can-spawn", "selfplay", "--node", "n1", "--quiet", env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    # the command that uses the targets fails, naming the source
    failed = coord("targets", env=env)
    assert failed.returncode == 3 and failed.stdout == ""
    assert error_line(failed) == message


def test_every_other_command_warns_once_and_goes_on(coord: Coord) -> None:
    env = {"RINGRIFT_PID_KD": "-1"}
    registered = coord("register", "selfplay", "--node", "n1", "--pid", "1", env=env)
    assert registered.returncode == 0, registered.stderr
    message = warning_line(registered)
    assert "[env RINGRIFT_PID_KD]" in message and "negative" in message
    task_id = registered.stdout.strip()
    for argv in (
        ("status",),
        ("limits",),
        ("tasks",),
        ("--json", "status"),
        ("unregister", task_id),
        ("run", "selfplay", "--node", "n1", "--", "sh", "-c", "echo job"),
        ("--json", "run", "selfplay", "--node", "n1", "--", "true"),
    ):
        result = coord(*argv, env=env)
        assert result.returncode == 0, (argv, result.stderr)
        lines = result.stderr.splitlines()
        warnings = [line for line in lines if line.startswith(WARNING)]
        assert warnings == [WARNING + message + IGNORED], (argv, lines)
    refused = coord("--set", "task_limits.selfplay.per_node=0", "can-spawn", "selfplay", env=env)
    assert refused.returncode == 1  # a refusal is still a refusal, with the warning besides
    assert refused.stderr.count(WARNING) == 1


def test_a_bad_target_in_the_file(coord: Coord) -> None:
    path = coord.write_config(
        "store:\n  lease_ttl: 90\nresource_targets:\n  cpu_min: 50\n  gpu_max: 95\n"
    )
    allowed = coord("can-spawn", "selfplay", "--node", "n1")
    assert allowed.returncode == 0, allowed.stderr
    message = warning_line(allowed)
    assert message.startswith(f"{path}:4: resource_targets.cpu_min: scale_up_below (55)")
    for argv in (("targets",), ("config", "validate"), ("--json", "targets")):
        failed = coord(*argv)
        assert failed.returncode == 3, (argv, failed.stderr)
        assert error_line(failed) == message  # a validator says so
    shown = coord("--json", "limits")  # the rest of the file is in force
    assert shown.returncode == 0 and warning_line(shown) == message
    rows = {row["key"]: row for row in json.loads(shown.stdout)["values"]}
    assert rows["store.lease_ttl"]["value"] == 90
    coord.write_config("resource_targets:\n  cpu_min: 56\n")  # fixed: quiet everywhere
    assert coord("can-spawn", "selfplay", "--node", "n1").stderr == ""
    assert coord("config", "validate").returncode == 0


def test_targets_fails_on_its_sections_and_warns_of_the_others(local: Coord) -> None:
    flagged = local("--set", "optimizer.rate.min=0", "targets")
    assert flagged.returncode == 2  # a bad --set is bad usage
    assert "[flag --set optimizer.rate.min]" in error_line(flagged)
    other = local("--json", "--set", "hardware.jobs_per_cpu=-1", "targets")
    assert other.returncode == 0, other.stderr  # `targets` does not read the hardware table
    assert "[flag --set hardware.jobs_per_cpu]" in warning_line(other)
    assert json.loads(other.stdout)["notes"] == []


def test_targets_shows_the_optimizer_with_sources_and_the_threshold_note(local: Coord) -> None:
    result = local(
        "--json",
        "--set",
        "thresholds.gpu.critical=75",
        "--set",
        "optimizer.rate.max=4000",
        "targets",
        env={"RINGRIFT_TARGET_UTIL_MIN": "65"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    doc = json.loads(result.stdout)
    rows = {row["key"]: (row["value"], row["source"]) for row in doc["values"]}
    assert rows["resource_targets.gpu_min"] == (65, "env RINGRIFT_TARGET_UTIL_MIN")
    assert rows["optimizer.rate.max"] == (4000, "flag --set optimizer.rate.max")
    assert rows["optimizer.interval"] == (300, "default")
    assert {"durations.selfplay", "peak_hours.start"} <= set(rows)
    (note,) = doc["notes"]
    assert "thresholds.gpu.critical (75) is below resource_targets.gpu_max (80)" in note
    text = local("--set", "thresholds.gpu.critical=75", "targets")
    assert text.returncode == 0 and f"note: {note}" in text.stdout
    assert "note:" not in local("targets").stdout  # the defaults: critical 80 == gpu_max 80


def test_warning_text_is_printable(local: Coord) -> None:
    result = local("limits", env={"RINGRIFT_PID_KP": "\x1b[31mred"})
    assert result.returncode == 0
    assert "\x1b" not in result.stderr and "RINGRIFT_PID_KP" in warning_line(result)


# --------------------------------------------------------------------------- GPU critical


def _cluster_gpu(coord: Coord) -> float:
    """The cluster's GPU utilization from the fresh readings, weighted by GPU count."""
    nodes = json.loads(coord("--json", "resources").stdout)["nodes"]
    fresh = [n for n in nodes if not n["stale"] and n["gpu"] is not None]
    weight = sum(n["gpu_count"] or 1 for n in fresh)
    return sum(n["gpu"] * (n["gpu_count"] or 1) for n in fresh) / weight


def test_a_critical_node_is_refused_while_the_cluster_is_below_target(coord: Coord) -> None:
    for node, gpu in (("n1", "82"), ("n2", "34"), ("n3", "34")):
        done = coord("report", "--node", node, "--gpu", gpu, "--cpus", "8", "--gpu-count", "1")
        assert done.returncode == 0, done.stderr
    average = _cluster_gpu(coord)
    assert average == pytest.approx(50)
    targets = get_resource_targets(load_settings(str(coord.config), env={}))
    low, _, _ = targets.band("gpu")
    assert average < low and average < targets.scale_up_below  # the optimizer would scale up
    refused = coord("--json", "can-spawn", "selfplay", "--node", "n1")
    assert refused.returncode == 1, refused.stderr
    (reason,) = json.loads(refused.stdout)["reasons"]
    assert (reason["rule"], reason["used"], reason["limit"]) == ("threshold", 82.0, 80)
    assert coord("can-spawn", "selfplay", "--node", "n2").returncode == 0
    shown = coord("--json", "targets")  # critical 80 == gpu_max: nothing to note
    assert shown.returncode == 0 and json.loads(shown.stdout)["notes"] == []


def test_a_high_average_does_not_refuse_a_node_below_critical(coord: Coord) -> None:
    raised = {"RINGRIFT_COORD_SET": "resources.live_host=false;thresholds.gpu.critical=95"}
    for node in ("n1", "n2"):
        coord("report", "--node", node, "--gpu", "88", "--cpus", "8", "--gpu-count", "1")
    targets = get_resource_targets(load_settings(str(coord.config), env=raised))
    assert _cluster_gpu(coord) > targets.scale_down_above  # the optimizer would scale down
    admitted = coord("can-spawn", "selfplay", "--node", "n1", env=raised)
    assert admitted.returncode == 0, admitted.stderr  # admission has no opinion on averages
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 1  # at 80: critical


@pytest.mark.parametrize(
    ("setting", "argv"),
    [
        ("hardware.jobs_per_cpu=-1", ("capacity", "--cpus", "8")),
        ("selfplay_configs.square8_2p=-1", ("distribution", "--rate", "100")),
        ("optimizer.max_step=2", ("distribution", "--rate", "100")),
        ("optimizer.max_step=2", ("rate", "show")),
        (
            "resource_targets.gpu_max=90",
            ("rate", "negotiate", "900", "--reason", "r", "--requestor", "q"),
        ),
    ],
)
def test_each_optimizer_command_fails_on_the_sections_it_uses(
    coord: Coord, setting: str, argv: tuple[str, ...]
) -> None:
    env = {"RINGRIFT_COORD_SET": setting}
    key = setting.partition("=")[0]
    made = coord("register", "selfplay", "--node", "n1", "--pid", "1", env=env)  # a store
    assert made.returncode == 0, made.stderr
    if key.split(".")[0] in ("hardware", "optimizer"):  # admission reads their switches
        (line,) = made.stderr.splitlines()
        assert line.endswith(" (ignored: this command goes on with the values below it)"), line
        assert f"[env RINGRIFT_COORD_SET {key}]" in line
    else:
        assert f"[env RINGRIFT_COORD_SET {key}]" in warning_line(made)
    failed = coord(*argv, env=env)
    assert failed.returncode == 3, (argv, failed.stderr)
    assert f"[env RINGRIFT_COORD_SET {key}]" in error_line(failed)
    assert coord(*argv).returncode == 0  # the same command without the bad setting


@pytest.mark.parametrize(
    ("assignment", "section", "words"),
    [
        ("optimizer.interval=0", "optimizer", "interval must be above 0"),
        ("optimizer.min_interval=400", "optimizer", "min_interval (400) is above interval (300)"),
        ("optimizer.max_gap=200", "optimizer", "max_gap (200) is below interval (300)"),
        ("optimizer.state_ttl=100", "optimizer", "state_ttl (100) is below interval (300)"),
        ("optimizer.trend.min_samples=2", "optimizer", "trend.min_samples must be at least 3"),
        ("hardware.jobs_per_cpu=0", "hardware", "jobs_per_cpu must be above 0"),
        ("selfplay_configs.square8_2p=0", None, None),  # one weight 0: fine
    ],
)
def test_the_optimizers_periods_and_bounds_are_checked_together(
    tmp_path: Path, assignment: str, section: str | None, words: str | None
) -> None:
    settings, _ = load(tmp_path, RINGRIFT_COORD_SET=assignment)
    if section is None:
        assert settings.problems == {}
        return
    assert list(settings.problems) == [section]
    message = settings.problems[section].message
    assert (
        words in message and f"[env RINGRIFT_COORD_SET {assignment.partition('=')[0]}]" in message
    )


def test_all_zero_weights_are_a_problem_of_the_file(tmp_path: Path) -> None:
    text = "selfplay_configs:\n  a: 0\n  b: 0\n"
    settings, path = load(tmp_path, text)
    error = settings.problems["selfplay_configs"]
    assert error.file == path and error.line == 2  # a weight of the file: its line
    assert "every weight is 0" in error.message
    with pytest.raises(ConfigError):
        settings.require("selfplay_configs")
