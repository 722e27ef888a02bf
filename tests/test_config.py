"""Configuration: the shipped ``ringrift_coord/data/config/unified_loop.yaml``, validation
through the CLI, and the precedence defaults < YAML < environment (< --set), with each value's
source.

Every bad file must give exit 3 and exactly one line on stderr naming the file, the line and
the key, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringrift_coord.config import DEFAULTS, DEFERRED_SECTIONS, SCHEMA, Leaf, MapOf, load_settings
from ringrift_coord.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "ringrift_coord" / "data" / "config" / "unified_loop.yaml"
PREFIX = "ringrift-coord: error: "


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the CLI printed on stderr, checked: no traceback, the error prefix."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


def values_by_key(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[Any, str]]:
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    return {row["key"]: (row["value"], row["source"]) for row in document["values"]}


# --------------------------------------------------------------------------- the shipped file


def _leaves(prefix: str, node: Any) -> list[str]:
    if isinstance(node, dict) and node:
        out: list[str] = []
        for key, value in node.items():
            out += _leaves(f"{prefix}.{key}" if prefix else key, value)
        return out
    return [prefix]


def test_shipped_file_loads_to_exactly_the_defaults() -> None:
    settings = load_settings(str(SHIPPED), env={})
    assert settings.values == DEFAULTS
    assert settings.file == str(SHIPPED)
    # every leaf (every key of DEFAULTS) was given by the file, with its line
    for key in _leaves("", DEFAULTS):
        source = settings.source(key)
        assert re.fullmatch(re.escape(str(SHIPPED)) + r":\d+", source), (key, source)
    assert all(source != "default" for _, _, source in settings.flat())


def test_shipped_file_has_every_section_and_key_in_the_order_of_defaults() -> None:
    with open(SHIPPED, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert list(document) == list(DEFAULTS)

    def same_order(file_node: Any, default_node: Any, where: str) -> None:
        if isinstance(default_node, dict):
            assert isinstance(file_node, dict), where
            assert list(file_node) == list(default_node), where
            for key in default_node:
                same_order(file_node[key], default_node[key], f"{where}.{key}")
        else:
            assert file_node == default_node, where
            assert type(file_node) is type(default_node), where  # 1.0 stays a float, 32 an int

    same_order(document, DEFAULTS, "")


def test_shipped_file_comments_every_value() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    root = yaml.compose(SHIPPED.read_text(encoding="utf-8"))

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                walk(value_node, f"{path}.{key_node.value}" if path else key_node.value)
        else:  # a value: its line carries a short comment
            line = lines[node.start_mark.line]
            assert "#" in line, f"{path}: no comment on its line: {line!r}"

    walk(root, "")
    # the units are stated for durations, timeouts and percentages
    text = SHIPPED.read_text(encoding="utf-8")
    assert "seconds" in text and "percent" in text


def test_shipped_file_validates_through_the_cli(coord) -> None:
    result = coord("--json", "config", "validate", str(SHIPPED))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "schema_version": 1,
        "valid": True,
        "config_file": str(SHIPPED),
    }
    shown = coord(
        "--json", "--config", str(SHIPPED), "config", "show", env={"RINGRIFT_COORD_SET": ""}
    )  # nothing above the file
    rows = values_by_key(shown)
    assert {key for key in rows} == set(_leaves("", DEFAULTS))
    for key, (_, source) in rows.items():
        assert source.startswith(f"{SHIPPED}:"), (key, source)


def test_schema_and_defaults_have_the_same_keys() -> None:
    """Every section the schema knows is in DEFAULTS (so the shipped file can show it)."""
    assert list(SCHEMA) == list(DEFAULTS)
    for section, schema in SCHEMA.items():
        if isinstance(schema, dict):
            assert set(schema) == set(DEFAULTS[section]), section
        else:
            assert isinstance(schema, MapOf | Leaf), section


# --------------------------------------------------------------------------- validation

# (YAML text, line, key or None, a fragment the message must contain)
BAD_FILES = {
    "unknown-key": (
        "task_limit:\n  selfplay: {per_node: 1}\n",
        1,
        "task_limit",
        "did you mean 'task_limits'",
    ),
    "unknown-nested-key": (
        "circuit_breaker:\n  failure_treshold: 2\n",
        2,
        "circuit_breaker.failure_treshold",
        "did you mean 'failure_threshold'",
    ),
    "unknown-task-type": (
        "task_limits:\n  selfplya:\n    per_node: 1\n",
        2,
        "task_limits.selfplya",
        "did you mean 'selfplay'",
    ),
    "unknown-task-type-far": (
        "task_limits:\n  quantum_annealing: {cluster: 1}\n",
        2,
        "task_limits.quantum_annealing",
        "unknown key",
    ),
    "not-a-config-file": (  # (an /etc/shadow line: a key that is no name is never echoed)
        "root:$6$s4lt$h4sh:20228:0:99999:7:::\n",
        1,
        None,
        "a key that is not a name (35 characters, not shown): is this a ringrift-coord config",
    ),
    "unknown-limit-scope": (
        "task_limits:\n  training:\n    per_nodes: 1\n",
        3,
        "task_limits.training.per_nodes",
        "did you mean 'per_node'",
    ),
    "string-for-number": (
        "store:\n  busy_timeout: five\n",
        2,
        "store.busy_timeout",
        "the string 'five'",
    ),
    "quoted-number": (
        'task_limits:\n  selfplay:\n    per_node: "5"\n',
        3,
        "task_limits.selfplay.per_node",
        "the string '5'",
    ),
    "bool-for-number": ("store:\n  lease_ttl: true\n", 2, "store.lease_ttl", "got True"),
    "list-for-mapping": ("thresholds:\n  disk: [65, 70]\n", 2, "thresholds.disk", "not a list"),
    "scalar-for-section": ("store: 5\n", 1, "store", "must be a mapping"),
    "mapping-for-number": (
        "store:\n  busy_timeout: {seconds: 5}\n",
        2,
        "store.busy_timeout",
        "a mapping",
    ),
    "negative-count": (
        "circuit_breaker:\n  failure_threshold: -1\n",
        2,
        "circuit_breaker.failure_threshold",
        "must not be negative",
    ),
    "negative-float": (
        "resource_targets:\n  pid:\n    kd: -0.5\n",
        3,
        "resource_targets.pid.kd",
        "must not be negative",
    ),
    "fractional-count": (
        "task_limits:\n  selfplay: {per_node: 2.5}\n",
        2,
        "task_limits.selfplay.per_node",
        "whole number",
    ),
    "percent-over-100": (
        "thresholds:\n  cpu:\n    critical: 101\n",
        3,
        "thresholds.cpu.critical",
        "0 to 100",
    ),
    "inf": ("store:\n  lease_ttl: .inf\n", 2, "store.lease_ttl", "finite"),
    "minus-inf": ("store:\n  busy_timeout: -.inf\n", 2, "store.busy_timeout", "finite"),
    "nan": ("resource_targets:\n  pid:\n    kp: .nan\n", 3, "resource_targets.pid.kp", "finite"),
    "null-for-required": ("store:\n  busy_timeout: null\n", 2, "store.busy_timeout", "null"),
    "too-large-count": (
        "task_limits:\n  selfplay: {per_node: 100000000000000000000}\n",
        2,
        "task_limits.selfplay.per_node",
        "at most 1e9",
    ),
    "too-large-seconds": ("store:\n  lease_ttl: 1.0e+300\n", 2, "store.lease_ttl", "at most 1e9"),
    "bad-time": ('peak_hours:\n  start: "25:00"\n', 2, "peak_hours.start", "HH:MM"),
    "duplicate-key": (
        "store:\n  busy_timeout: 1\n  lease_ttl: 60\n  busy_timeout: 2\n",
        4,
        "store.busy_timeout",
        "duplicate key (first given on line 2)",
    ),
    "duplicate-section": (
        "store: {busy_timeout: 1}\nrun: {kill_grace: 5}\nstore: {lease_ttl: 60}\n",
        3,
        "store",
        "duplicate key",
    ),
    "document-is-a-list": ("- task_limits\n- store\n", 1, None, "not a list"),
    "document-is-a-scalar": (  # (an /etc/passwd, a .pgpass: the file is never echoed)
        "db.internal:5432:ringrift:ringrift:S3cret\n",
        1,
        None,
        "not text (41 characters, not shown): is this a ringrift-coord config file?",
    ),
    "section-is-a-scalar": (
        "task_limits: 5\n",
        1,
        "task_limits",
        "not the scalar '5'",
    ),
    "document-is-a-number": ("42\n", 1, None, "must be a mapping"),
    "invalid-yaml-flow": ("store: {busy_timeout: 1\nrun: {}\n", 2, None, "invalid YAML"),
    "invalid-yaml-tab": ("store:\n\tbusy_timeout: 1\n", 2, None, "invalid YAML"),
    "invalid-yaml-indent": ("store:\n  busy_timeout: 1\n lease_ttl: 2\n", 3, None, "invalid YAML"),
    "cross-check": (  # a cross-check names the file and line of a value it compares
        "thresholds:\n  disk: {warning: 90, critical: 70}\n",
        2,
        "thresholds.disk.warning",
        "warning (90) is above critical (70)",
    ),
    "wake-poll-above-heartbeat": (  # a waiter's polls are its heartbeat for other hosts
        "store: {lease_ttl: 60}\nrun:\n  wake_poll: 20\n",
        3,
        "run.wake_poll",
        "run.wake_poll (20) is above store.lease_ttl / 4 (15)",
    ),
}


def _expect(message: str, path: Path, line: int | None, key: str | None, fragment: str) -> None:
    where = f"{path}:{line}: " if line is not None else f"{path}"
    if line is None and key is not None:
        where = ""  # cross-checks name the key and the source, not one line
    assert message.startswith(where), message
    assert str(path) in message, message
    if key is not None:
        assert re.search(rf"(^|: ){re.escape(key)}: ", message), message
    assert fragment in message, message


# each case through one of the two commands (alternately), to keep the suite fast
COMMANDS = [("config", "validate"), ("limits",)]


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_exit_3_with_one_line(coord, name: str) -> None:
    text, line, key, fragment = BAD_FILES[name]
    command = COMMANDS[list(BAD_FILES).index(name) % 2]
    if key and key.partition(".")[0] in DEFERRED_SECTIONS and command == ("limits",):
        command = ("targets",)  # only the commands that use the section fail on it
    path = coord.write_config(text)
    result = coord(*command)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert result.stdout == ""
    _expect(one_error_line(result), path, line, key, fragment)


def test_a_file_that_is_no_config_is_not_echoed(coord) -> None:
    coord.write_config("root:$6$s4lt$h4sh:20228:0:99999:7:::\nbin:*:20228:0:99999:7:::\n")
    result = coord("can-spawn", "selfplay", "--node", "n1")
    assert result.returncode == 3 and "h4sh" not in result.stderr, result.stderr
    assert "s4lt" not in result.stderr and "20228" not in result.stderr, result.stderr


def test_bad_file_with_json_prints_one_error_document(coord) -> None:
    coord.write_config("task_limit: {}\n")
    result = coord("--json", "limits")
    assert result.returncode == 3
    message = one_error_line(result)
    assert json.loads(result.stdout) == {"schema_version": 1, "error": message, "exit_code": 3}


def test_bad_file_named_as_argument_of_validate(coord, tmp_path: Path) -> None:
    bad = tmp_path / "other.yaml"
    bad.write_text("rate_limits:\n  selfplay:\n    per_minute: many\n")
    result = coord("config", "validate", str(bad))
    assert result.returncode == 3
    _expect(one_error_line(result), bad, 3, "rate_limits.selfplay.per_minute", "the string 'many'")


def test_bad_file_refused_by_hot_commands_too(coord) -> None:
    path = coord.write_config("task_limits:\n  selfplay: {per_node: -3}\n")
    for argv in (("can-spawn", "selfplay"), ("register", "selfplay", "--pid", str(os.getpid()))):
        result = coord(*argv)
        assert result.returncode == 3, result.stderr
        _expect(one_error_line(result), path, 2, "task_limits.selfplay.per_node", "negative")
    assert not coord.db.exists()  # nothing was decided on a bad configuration


PYTHON_TAGS = {
    "section": ('store: !!python/object/apply:os.system ["echo pwned > {marker}"]\n', 1, "store"),
    "leaf": (
        'store:\n  busy_timeout: !!python/object/apply:os.system ["echo pwned > {marker}"]\n',
        2,
        "store.busy_timeout",
    ),
    "document": ('!!python/object/apply:os.system ["echo pwned > {marker}"]\n', 1, None),
    "mapping-section": ("store: !!python/object/new:os.system {{busy_timeout: 1}}\n", 1, "store"),
    "name": ("run:\n  kill_grace: !!python/name:os.system\n", 2, "run.kill_grace"),
    "local-tag": ("store: !custom {{busy_timeout: 1}}\n", 1, "store"),
}


@pytest.mark.parametrize("name", list(PYTHON_TAGS))
def test_python_tags_are_refused_and_never_run(coord, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    text, line, key = PYTHON_TAGS[name]
    path = coord.write_config(text.format(marker=marker))
    for command in [COMMANDS[list(PYTHON_TAGS).index(name) % 2]]:  # alternately
        result = coord(*command)
        assert result.returncode == 3, (command, result.stderr)
        message = one_error_line(result)
        assert message.startswith(f"{path}:{line}: "), message
        if key is not None:
            assert f" {key}: " in f" {message.split(': ', 1)[1]}", message
        assert "not allowed" in message or "mapping" in message, message
        assert "pwned" not in result.stdout
        assert not marker.exists(), "the tag's code ran"


def test_missing_config_file_given_with_config(coord, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "coord.yaml"
    for command in (("config", "validate"), ("limits",), ("can-spawn", "selfplay")):
        result = coord("--config", str(missing), *command)
        assert result.returncode == 3, (command, result.stderr)
        message = one_error_line(result)
        assert str(missing) in message and "does not exist" in message


def test_missing_config_file_given_by_environment(coord, tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    result = coord("limits", env={"RINGRIFT_COORD_CONFIG": str(missing)})
    assert result.returncode == 3
    assert str(missing) in one_error_line(result)


def test_directory_as_config_file(coord, tmp_path: Path) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    for argv in (
        ("--config", str(directory), "limits"),
        ("config", "validate", str(directory)),
        ("--config", str(directory), "can-spawn", "selfplay"),
    ):
        result = coord(*argv)
        assert result.returncode == 3, (argv, result.stderr)
        message = one_error_line(result)
        assert str(directory) in message and "not a regular file" in message


def test_nested_aliases_are_refused_quickly(coord) -> None:
    """A "billion laughs" document (nested aliases) must not hang every command."""
    text = '&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):  # 9 ** 9 strings once expanded
        text = f"&{name} [{text}" + f", *{prev}" * 8 + "]"
    path = coord.write_config(f"store:\n  busy_timeout: 1\nresources:\n  data_paths: {text}\n")
    result = coord("can-spawn", "selfplay", timeout=20)
    assert result.returncode == 3, result.stderr
    message = one_error_line(result)
    assert message.startswith(f"{path}:4: resources.data_paths: "), message


def test_unreadable_bytes_in_config(coord) -> None:
    coord.config.write_bytes(b"store:\n  busy_timeout: \xff\xfe\n")
    result = coord("config", "validate")
    assert result.returncode == 3
    assert str(coord.config) in one_error_line(result)


def test_empty_file_and_empty_sections_keep_the_defaults(coord) -> None:
    coord.write_config("# nothing set yet\n")
    rows = values_by_key(coord("--json", "limits"))
    assert rows["store.busy_timeout"] == (5, "default")
    coord.write_config("store:\ntask_limits:\n")
    rows = values_by_key(coord("--json", "limits"))
    assert rows["task_limits.selfplay.per_node"] == (32, "default")


def test_changed_file_is_read_again_not_served_from_the_cache(coord) -> None:
    """The validated file is cached in the state dir; any change must be seen (and checked)."""
    coord.write_config("store:\n  busy_timeout: 2\n")
    assert coord("can-spawn", "selfplay").returncode == 0  # caches the validated file
    assert values_by_key(coord("--json", "limits"))["store.busy_timeout"] == (
        2,
        f"{coord.config}:2",
    )
    coord.write_config("store:\n  busy_timeout: 3\n")  # same size, same second
    assert values_by_key(coord("--json", "limits"))["store.busy_timeout"] == (
        3,
        f"{coord.config}:2",
    )
    coord.write_config("store:\n  busy_timeuot: 3\n")
    for argv in (("can-spawn", "selfplay"), ("limits",)):
        result = coord(*argv)
        assert result.returncode == 3, result.stderr
        assert "did you mean 'busy_timeout'" in one_error_line(result)


# --------------------------------------------------------------------------- precedence


def test_defaults_everywhere_with_an_empty_file(coord) -> None:
    rows = values_by_key(coord("--json", "targets"))
    assert rows["resource_targets.cpu_min"] == (60, "default")
    assert rows["resource_targets.cpu_max"] == (80, "default")
    assert rows["resource_targets.pid.kp"] == (0.3, "default")
    assert rows["resource_targets.pid.ki"] == (0.05, "default")
    assert rows["resource_targets.pid.kd"] == (0.1, "default")
    assert all(source == "default" for _, source in rows.values())
    limits = values_by_key(coord("--json", "limits"))
    assert limits["task_limits.selfplay.per_node"] == (32, "default")
    assert limits["task_limits.cmaes.per_node"] == (None, "default")
    assert limits["store.busy_timeout"] == (5, "default")


TARGETS_YAML = """\
resource_targets:
  cpu_min: 50
  cpu_max: 85
  gpu_min: 45
  pid:
    kp: 0.5
    ki: 0.02
  scale_up_below: 40
  scale_down_above: 95
task_limits:
  selfplay:
    per_node: 8
store:
  lease_ttl: 60
"""


def test_yaml_over_defaults(coord) -> None:
    path = coord.write_config(TARGETS_YAML)
    rows = values_by_key(coord("--json", "targets"))
    assert rows["resource_targets.cpu_min"] == (50, f"{path}:2")
    assert rows["resource_targets.cpu_max"] == (85, f"{path}:3")
    assert rows["resource_targets.gpu_min"] == (45, f"{path}:4")
    assert rows["resource_targets.gpu_max"] == (80, "default")
    assert rows["resource_targets.pid.kp"] == (0.5, f"{path}:6")
    assert rows["resource_targets.pid.ki"] == (0.02, f"{path}:7")
    assert rows["resource_targets.pid.kd"] == (0.1, "default")
    limits = values_by_key(coord("--json", "limits"))
    assert limits["task_limits.selfplay.per_node"] == (8, f"{path}:12")
    assert limits["task_limits.selfplay.cluster"] == (500, "default")  # merged, not replaced
    assert limits["store.lease_ttl"] == (60, f"{path}:14")
    assert json.loads(coord("--json", "limits").stdout)["config_file"] == str(path)


def test_environment_over_yaml(coord) -> None:
    path = coord.write_config(TARGETS_YAML)
    env = {
        "RINGRIFT_TARGET_UTIL_MIN": "55",
        "RINGRIFT_TARGET_UTIL_MAX": "90",
        "RINGRIFT_PID_KP": "0.7",
        "RINGRIFT_PID_KI": "0.01",
        "RINGRIFT_PID_KD": "0.2",
    }
    rows = values_by_key(coord("--json", "targets", env=env))
    for kind in ("cpu", "gpu"):  # one variable sets both
        assert rows[f"resource_targets.{kind}_min"] == (55, "env RINGRIFT_TARGET_UTIL_MIN")
        assert rows[f"resource_targets.{kind}_max"] == (90, "env RINGRIFT_TARGET_UTIL_MAX")
        assert rows[f"resource_targets.{kind}_target"] == (70, "default")
    assert rows["resource_targets.pid.kp"] == (0.7, "env RINGRIFT_PID_KP")
    assert rows["resource_targets.pid.ki"] == (0.01, "env RINGRIFT_PID_KI")
    assert rows["resource_targets.pid.kd"] == (0.2, "env RINGRIFT_PID_KD")
    assert rows["resource_targets.pid.gain_scheduling"] == (True, "default")
    # the environment does not touch what it does not name
    limits = values_by_key(coord("--json", "limits", env=env))
    assert limits["task_limits.selfplay.per_node"] == (8, f"{path}:12")


def test_empty_environment_variable_is_not_set(coord) -> None:
    path = coord.write_config(TARGETS_YAML)
    rows = values_by_key(coord("--json", "targets", env={"RINGRIFT_PID_KP": ""}))
    assert rows["resource_targets.pid.kp"] == (0.5, f"{path}:6")


def test_set_flag_over_environment(coord) -> None:
    coord.write_config(TARGETS_YAML)
    rows = values_by_key(
        coord(
            "--set",
            "resource_targets.pid.kp=0.9",
            "--json",
            "targets",
            env={"RINGRIFT_PID_KP": "0.7"},
        )
    )
    value, source = rows["resource_targets.pid.kp"]
    assert value == 0.9 and "--set" in source


@pytest.mark.parametrize(
    ("var", "raw", "fragment"),
    [
        ("RINGRIFT_PID_KP", "abc", "expected a number"),
        ("RINGRIFT_PID_KI", "-0.1", "must not be negative"),
        ("RINGRIFT_PID_KD", "nan", "finite"),
        ("RINGRIFT_PID_KD", "inf", "finite"),
        ("RINGRIFT_TARGET_UTIL_MAX", "150", "0 to 100"),
        ("RINGRIFT_TARGET_UTIL_MIN", "sixty", "expected a number"),
        ("RINGRIFT_TARGET_UTIL_MIN", "75", "cpu_min (75) is above cpu_target (70)"),
    ],
)
def test_bad_environment_value_names_the_variable(coord, var: str, raw: str, fragment: str) -> None:
    # only the optimizer reads these: `targets` fails on one, admission warns and goes on
    result = coord("--json", "targets", env={var: raw})
    assert result.returncode == 3, result.stderr
    message = one_error_line(result)
    assert var in message and fragment in message, message
    assert json.loads(result.stdout) == {"schema_version": 1, "error": message, "exit_code": 3}
    admitted = coord("--json", "can-spawn", "selfplay", env={var: raw})
    assert admitted.returncode == 0, admitted.stderr
    assert json.loads(admitted.stdout)["allowed"] is True
    assert admitted.stderr == f"ringrift-coord: warning: {message} " + IGNORED + "\n"


IGNORED = "(ignored: this command does not use it)"


# --------------------------------------------------------------------------- properties

_HYPO = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _load_text(text: str) -> tuple[Any, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return load_settings(path, env={}, use_default_file=False), path


@_HYPO
@given(
    n=st.integers(min_value=0, max_value=10**9),
    task=st.sampled_from(sorted(DEFAULTS["task_limits"])),
    scope=st.sampled_from(["per_node", "cluster"]),
)
def test_any_non_negative_count_round_trips_from_the_file(n: int, task: str, scope: str) -> None:
    settings_, path = _load_text(f"task_limits:\n  {task}:\n    {scope}: {n}\n")
    assert settings_.task_limit(task, scope) == n
    assert settings_.source(f"task_limits.{task}.{scope}") == f"{path}:3"
    other = "cluster" if scope == "per_node" else "per_node"
    assert settings_.task_limit(task, other) == DEFAULTS["task_limits"][task][other]
    assert settings_.source(f"task_limits.{task}.{other}") == "default"


@_HYPO
@given(
    n=st.integers(max_value=-1),
    key=st.sampled_from(
        [
            "task_limits.selfplay.per_node",
            "circuit_breaker.window",
            "store.busy_timeout",
            "bandwidth.default_mbps",
            "hardware.gpu_jobs.H100",
        ]
    ),
)
def test_any_negative_number_is_refused_with_file_line_and_key(n: int, key: str) -> None:
    parts = key.split(".")
    text = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(parts[:-1]))
    text += f"{'  ' * (len(parts) - 1)}{parts[-1]}: {n}\n"
    with pytest.raises(ConfigError) as info:
        loaded, _ = _load_text(text)  # an optimizer section's error waits for require
        assert parts[0] in DEFERRED_SECTIONS
        default: Any = DEFAULTS
        for part in parts:
            default = default[part]
        assert loaded.get(key) == default  # the default kept
        loaded.require(parts[0])
    assert info.value.line == len(parts) and info.value.key == key
    assert "negative" in str(info.value) and "\n" not in str(info.value)


@_HYPO
@given(x=st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_any_non_negative_float_round_trips(x: float) -> None:
    text = (
        f"store:\n  busy_timeout: {x!r}\n"
        if "e" not in repr(x)
        else (f"store:\n  busy_timeout: {x:.6f}\n")
    )
    settings_, path = _load_text(text)
    expected = float(repr(x)) if "e" not in repr(x) else float(f"{x:.6f}")
    assert settings_.get("store.busy_timeout") == expected
    assert settings_.source("store.busy_timeout") == f"{path}:2"


@_HYPO
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20))
def test_any_unknown_top_level_key_is_refused(key: str) -> None:
    if key in DEFAULTS:
        return
    with pytest.raises(ConfigError) as info:
        _load_text(f"{key}: 1\n")
    assert info.value.key == key and info.value.line == 1
    assert "unknown key" in str(info.value)


def test_a_config_file_of_megabytes_is_refused_before_it_is_parsed(coord) -> None:
    """2.4 MB of YAML (parsing 10 MB took 9.5 s and 670 MB of memory): one line, exit 3, and
    none of it parsed; ``config validate`` says the same."""
    coord.config.write_text("selfplay_configs:\n" + "".join(f"  c{i}: 1\n" for i in range(200_000)))
    for argv in (("status",), ("config", "validate")):
        result = coord(*argv)
        assert result.returncode == 3, result.stderr
        assert result.stderr.count("\n") == 1 and "larger than 1024 KiB" in result.stderr
        assert str(coord.config) in result.stderr
