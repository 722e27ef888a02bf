"""Config validation is complete: numbers are written as numbers (in the file, on the
command line, in the environment and in ``--set``), ``--set`` gets the cross-checks, a time
zone is checked against the tz database, intervals have floors, cross-check errors name the
file and line, and settings nothing reads yet are marked "(not used yet)".

The file cases load real files in-process (fast) and a sample of each goes through the real
CLI in a subprocess, for the exit code and the one line on stderr.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ringrift_coord import config
from ringrift_coord.config import DEFAULTS, NOT_USED_YET, is_used, load_settings
from ringrift_coord.errors import ConfigError
from ringrift_coord.inputs import number_hint, strict_float, strict_int

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "ringrift_coord" / "data" / "config" / "unified_loop.yaml"
PREFIX = "ringrift-coord: error: "
LIVE_OFF = "resources.live_host=false"  # what the coord fixture's environment sets


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


def load_text(tmp_path: Path, text: str) -> tuple[Any, Path]:
    path = tmp_path / "coord.yaml"
    path.write_text(text)
    return load_settings(str(path), env={}), path


# --------------------------------------------------------------------------- the file

# (value as written, what the message must tell to write)
YAML_NUMBER_FORMS = {
    "octal": ("010", "write 10 or 8, not 010"),
    "octal-negative": ("-017", "write -17 or -15, not -017"),
    "hex": ("0x10", "write 16, not 0x10"),
    "binary": ("0b101", "write 5, not 0b101"),
    "sexagesimal": ("1:30", "write 90, not 1:30"),
    "sexagesimal-float": ("1:30.5", "write 90.5, not 1:30.5"),
    "underscores": ("1_000", "write 1000, not 1_000"),
    "plus": ("+5", "write 5, not +5"),
    "plus-float": ("+0.5", "write 0.5, not +0.5"),
}


@pytest.mark.parametrize("name", list(YAML_NUMBER_FORMS))
def test_yaml_number_forms_are_refused_with_what_to_write(tmp_path: Path, name: str) -> None:
    written, advice = YAML_NUMBER_FORMS[name]
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"store:\n  busy_timeout: 5\n  lease_ttl: {written}\n")
    error = info.value
    assert (error.line, error.key) == (3, "store.lease_ttl")
    message = str(error)
    assert message.startswith(f"{error.file}:3: store.lease_ttl: YAML 1.1 reads {written} as ")
    assert advice in message and "\n" not in message, message


@pytest.mark.parametrize(
    ("written", "advice"),
    [
        ("0o10", "write 8, not 0o10"),  # YAML 1.1 reads it as text: the hint still says 8
        ("1e1", "write 10, not 1e1"),  # text in YAML 1.1 (no dot)
        ("09", "write 9, not 09"),  # text in YAML 1.1 (not octal)
        ("'٣'", "write 3, not '٣'"),  # another script's digit
        ('"7"', "write it without quotes"),
    ],
)
def test_numbers_read_as_text_get_the_same_advice(
    tmp_path: Path, written: str, advice: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"thresholds:\n  cpu:\n    warning: {written}\n")
    assert (info.value.line, info.value.key) == (3, "thresholds.cpu.warning")
    assert "got the string" in str(info.value) and advice in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("key", "written", "expected"),
    [
        ("store.lease_ttl", "10", 10),
        ("store.lease_ttl", "0600.5", 600.5),  # a decimal fraction is never octal
        ("store.busy_timeout", "0", 0),
        ("store.busy_timeout", "0.25", 0.25),
        ("store.busy_timeout", "1.5e+2", 150.0),
        ("task_limits.selfplay.per_node", "0", 0),
        ("oom.factor", "0.5", 0.5),
    ],
)
def test_plain_decimal_numbers_are_read(
    tmp_path: Path, key: str, written: str, expected: float
) -> None:
    settings, path = load_text(tmp_path, nested(key, written))
    assert settings.get(key) == expected
    assert settings.source(key) == f"{path}:{len(key.split('.'))}"


def nested(key: str, written: str) -> str:
    """The YAML text that sets dotted ``key`` to ``written``, one section a line."""
    parts = key.split(".")
    text = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(parts[:-1]))
    return text + f"{'  ' * (len(parts) - 1)}{parts[-1]}: {written}\n"


# (key, value as written, what the message says): a number YAML 1.1 reads as text that no
# form of it would pass gets the range's word, not advice to write it otherwise
OUT_OF_RANGE_TEXT = {
    "huge-percent": ("thresholds.disk.critical", "1e400", "got 1e400, which is out of range"),
    "huge-seconds": ("store.lease_ttl", "1e400", "got 1e400, which is out of range"),
    "huge-count": ("task_limits.selfplay.per_node", "1e400", "got 1e400, which is out of"),
    "huge-quoted": ("thresholds.disk.critical", '"-1e400"', "got -1e400, which is out of"),
    "inf-quoted": ("thresholds.disk.critical", '"inf"', "got inf, which is not a finite number"),
    "past-percent": ("thresholds.cpu.warning", "1e3", "a percentage from 0 to 100, got 1000"),
    "past-1e9": ("store.lease_ttl", "1e10", "must be at most 1e9, got 1e+10"),
    "past-1e9-count": ("task_limits.selfplay.per_node", "2e9", "must be at most 1e9, got 2e+09"),
}


@pytest.mark.parametrize("name", list(OUT_OF_RANGE_TEXT))
def test_numbers_read_as_text_that_no_form_would_pass_say_why(tmp_path: Path, name: str) -> None:
    """'1e400' unquoted was told "write it without quotes" (it has none, and no form of it
    is a number); '1e10' was told "write 10000000000", which is refused in turn."""
    key, written, says = OUT_OF_RANGE_TEXT[name]
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, nested(key, written))
    message = str(info.value)
    assert info.value.key == key and says in message, message
    assert "quotes" not in message and "write" not in message, message


def test_unquoted_times_of_day_stay_times(tmp_path: Path) -> None:
    # an unquoted 14:00 is base 60 to YAML 1.1; for a time of day that is what it means
    settings, _ = load_text(tmp_path, "peak_hours:\n  start: 14:00\n  end: 22:30\n")
    assert settings.get("peak_hours.start") == "14:00"
    assert settings.get("peak_hours.end") == "22:30"
    with pytest.raises(ConfigError) as info:  # but no other number form is one
        load_text(tmp_path, "peak_hours:\n  start: 0x10\n")
    assert info.value.line == 2 and "write 16, not 0x10" in str(info.value)


@pytest.mark.parametrize("written", ["9", "900", "1:00:00", "24:00"])
def test_a_time_of_day_is_what_its_text_says(tmp_path: Path, written: str) -> None:
    """``start: 9`` (meant as 09:00) was taken as the base-60 integer 9, i.e. 00:09, and
    ``900`` as 15:00, silently; ``1:00:00`` was refused as '60:00', a text nobody wrote."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"peak_hours:\n  start: {written}\n")
    message = str(info.value)
    assert info.value.line == 2 and 'expected a time "HH:MM"' in message, message
    assert f"got {written}" in message or f"got '{written}'" in message, message
    settings, _ = load_text(tmp_path, "peak_hours:\n  start: 9:5\n  end: 00:30\n")
    assert (settings.get("peak_hours.start"), settings.get("peak_hours.end")) == ("09:05", "00:30")


@pytest.mark.parametrize(
    ("written", "hint"),
    [('"24:00"', " (midnight is 00:00)"), ('"\uff11\uff14:\uff10\uff10"', ""), ('"14:6O"', "")],
)
def test_a_time_of_day_is_ascii_digits_and_midnight_is_00_00(
    tmp_path: Path, written: str, hint: str
) -> None:
    """Full-width digits (which ``str.isdigit`` takes) are refused, as for every number of the
    config; ``24:00`` is refused with the form to write instead."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"peak_hours:\n  end: {written}\n")
    message = str(info.value)
    assert 'expected a time "HH:MM"' in message and message.endswith(hint), message


def test_set_time_of_day_is_not_a_number(coord) -> None:
    result = coord("--set", "peak_hours.start=9", "schedule", "can-start", "training")
    assert result.returncode == 2, result.stderr
    message = one_error_line(result)
    assert 'peak_hours.start: expected a time "HH:MM", got 9' in message, message
    good = coord("--json", "--set", "peak_hours.start=9:30", "config", "show")
    assert good.returncode == 0, good.stderr
    rows = {row["key"]: row for row in json.loads(good.stdout)["values"]}
    assert rows["peak_hours.start"]["value"] == "09:30"


@pytest.mark.parametrize("written", ["010", "0x10", "1:30", "+5", "1_000"])
def test_yaml_number_forms_through_the_cli(coord, written: str) -> None:
    path = coord.write_config(f"task_limits:\n  selfplay:\n    per_node: {written}\n")
    command = ("config", "validate") if written in ("010", "1:30", "1_000") else ("limits",)
    result = coord(*command)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    message = one_error_line(result)
    assert message.startswith(f"{path}:3: task_limits.selfplay.per_node: "), message
    assert "write " in message and f"not {written}" in message, message
    # the hot path reads the same file the same way
    hot = coord("can-spawn", "selfplay", "--node", "n1")
    assert hot.returncode == 3 and one_error_line(hot) == message


def test_not_finite_numbers_are_still_refused_by_name(tmp_path: Path) -> None:
    for written in (".inf", "-.inf", ".nan"):
        with pytest.raises(ConfigError) as info:
            load_text(tmp_path, f"run:\n  kill_grace: {written}\n")
        assert info.value.line == 2 and "finite" in str(info.value)


# --------------------------------------------------------------------------- the command line

# (word, what the message must tell to write)
CLI_WORDS = {
    "arabic-indic-digit": ("٣", "write 3, not '٣'"),
    "spaces": (" 7 ", "write 7, not ' 7 '"),
    "plus": ("+5", "write 5, not +5"),
    "underscores": ("1_000", "write 1000, not 1_000"),
    "fullwidth": ("１２", "write 12, not '１２'"),
}


@pytest.mark.parametrize("name", list(CLI_WORDS))
def test_hot_command_integers_are_plain_ascii(coord, name: str) -> None:
    word, advice = CLI_WORDS[name]
    result = coord("register", "selfplay", "--node", "n1", "--pid", word)
    assert result.returncode == 2, result.stderr
    message = one_error_line(result)
    assert message.startswith("option --pid: ") and "is not an integer" in message, message
    assert advice in message, message
    assert not coord.db.exists()  # refused before anything was opened


@pytest.mark.parametrize("name", ["plus", "underscores", "arabic-indic-digit"])
def test_hot_command_numbers_are_plain_ascii(coord, name: str) -> None:
    word, advice = CLI_WORDS[name]
    result = coord("run", "selfplay", "--node", "n1", "--wait", "--timeout", word, "--", "true")
    assert result.returncode == 2, result.stderr
    message = one_error_line(result)
    assert message.startswith("option --timeout: ") and "is not a number" in message, message
    assert advice in message, message


@pytest.mark.parametrize(
    "argv",
    [
        ("decisions", "--limit", "+5"),  # an IntRange option of a Typer command
        ("tasks", "history", "--limit", "1_000"),
        ("report", "--node", "n1", "--cpu", "٣"),  # a float option
        ("report", "--node", "n1", "--cpus", " 7 "),  # an int option
        ("reserve", "selfplay", "--node", "n1", "--slots", "+1", "--ttl", "60"),
    ],
)
def test_typer_command_numbers_are_plain_ascii(coord, argv: tuple[str, ...]) -> None:
    result = coord(*argv)
    assert result.returncode == 2, result.stderr
    message = one_error_line(result)
    assert "is not an integer" in message or "is not a number" in message, message
    assert "write " in message, message


def test_plain_numbers_still_work_on_the_command_line(coord) -> None:
    result = coord("--json", "report", "--node", "n1", "--cpu", "12.5", "--cpus", "8")
    assert result.returncode == 0, result.stderr
    assert coord("decisions", "--limit", "5").returncode == 0  # the store exists now
    limited = coord("decisions", "--limit", "0")  # the range still applies, in our words
    assert limited.returncode == 2
    assert one_error_line(limited) == "option --limit: 0 is not an integer from 1 to 1000000"


def test_number_text_rules() -> None:
    for word in ("0", "-3", "010", "123456789012345678901"):
        assert strict_int(word) == int(word)
    for word in ("٣", " 7", "7 ", "+5", "1_000", "", "-", "0x10", "1.0", "1e3", "--1"):
        assert strict_int(word) is None, word
    for word in ("0", "-3.5", ".5", "5.", "1e3", "1.5E-3", "-1e+2"):
        assert strict_float(word) == float(word)
    for word in ("٣.٥", " 1.5", "+1.5", "1_0.5", "1.5.", "e3", "1e", "0x1p3", "."):
        assert strict_float(word) is None, word
    assert number_hint("abc") is None and number_hint("12") is None
    assert number_hint("010") == "write 10, not 010"  # only YAML reads a leading 0 as octal
    assert number_hint("010", yaml=True) == "write 10 or 8, not 010"
    assert number_hint("1:30") is None and number_hint("1:30", yaml=True) == "write 90, not 1:30"


# --------------------------------------------------------------------------- environment, --set


@pytest.mark.parametrize(
    ("raw", "advice"), [("+0.5", "write 0.5, not +0.5"), ("٣", "write 3, not '٣'")]
)
def test_environment_numbers_are_plain(coord, raw: str, advice: str) -> None:
    result = coord("targets", env={"RINGRIFT_PID_KP": raw})
    assert result.returncode == 3, result.stderr
    message = one_error_line(result)
    assert "RINGRIFT_PID_KP" in message and advice in message, message


def test_set_values_are_plain_numbers(coord) -> None:
    result = coord("--set", "store.lease_ttl=1_000", "limits")
    assert result.returncode == 2, result.stderr
    message = one_error_line(result)
    assert "--set" in message and "store.lease_ttl" in message, message
    assert "write 1000, not 1_000" in message, message
    from_env = coord("limits", env={"RINGRIFT_COORD_SET": f"{LIVE_OFF};store.lease_ttl=+60"})
    assert from_env.returncode == 3, from_env.stderr
    message = one_error_line(from_env)
    assert "RINGRIFT_COORD_SET" in message and "write 60, not +60" in message, message
    good = coord("--json", "--set", "store.lease_ttl=60", "limits")
    assert good.returncode == 0, good.stderr
    rows = {row["key"]: row for row in json.loads(good.stdout)["values"]}
    assert rows["store.lease_ttl"]["value"] == 60


# --------------------------------------------------------------------------- cross-checks


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("thresholds.cpu.warning=95", "warning (95) is above critical (80)"),
        ("rate_limits.selfplay.burst=0.5", "burst must be at least 1"),
    ],
)
def test_set_gets_the_cross_checks(coord, assignment: str, fragment: str) -> None:
    key = assignment.partition("=")[0]
    for command in (("limits",), ("can-spawn", "selfplay", "--node", "n1")):
        result = coord("--set", assignment, *command)
        assert result.returncode == 2, (command, result.stderr)
        message = one_error_line(result)
        assert fragment in message and f"[flag --set {key}]" in message, message
    assert not coord.db.exists()  # nothing was decided on the conflicting settings
    from_env = coord("limits", env={"RINGRIFT_COORD_SET": f"{LIVE_OFF};{assignment}"})
    assert from_env.returncode == 3
    assert f"[env RINGRIFT_COORD_SET {key}]" in one_error_line(from_env)


def test_set_passes_the_cross_checks_when_consistent(coord) -> None:
    result = coord(
        "--json",
        "--set",
        "thresholds.cpu.critical=99",
        "--set",
        "thresholds.cpu.warning=95",
        "limits",
    )
    assert result.returncode == 0, result.stderr
    rows = {row["key"]: row["value"] for row in json.loads(result.stdout)["values"]}
    assert (rows["thresholds.cpu.warning"], rows["thresholds.cpu.critical"]) == (95, 99)


def test_set_conflicting_with_the_file_names_the_flag(coord) -> None:
    coord.write_config("thresholds:\n  cpu:\n    warning: 60\n    critical: 70\n")
    result = coord("--set", "thresholds.cpu.warning=75", "limits")
    assert result.returncode == 2
    assert "[flag --set thresholds.cpu.warning]" in one_error_line(result)


def test_burst_errors_name_file_and_line(coord) -> None:
    path = coord.write_config("rate_limits:\n  selfplay:\n    per_minute: 10\n    burst: 0.5\n")
    for command in (("config", "validate"), ("can-spawn", "selfplay", "--node", "n1")):
        result = coord(*command)
        assert result.returncode == 3, result.stderr
        message = one_error_line(result)
        assert message.startswith(f"{path}:4: rate_limits.selfplay.burst: "), message
        assert "at least 1" in message


def test_cross_check_names_the_line_of_the_value_from_the_file(tmp_path: Path) -> None:
    # the file gives only critical: the error points at it (warning is a default)
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "store: {}\nthresholds:\n  memory:\n    critical: 50\n")
    assert (info.value.line, info.value.key) == (4, "thresholds.memory.critical")
    assert "warning (70) is above critical (50)" in str(info.value)


# --------------------------------------------------------------------------- time zone


@pytest.mark.parametrize(
    ("written", "fragment"),
    [
        ("Europe/Berln", "did you mean 'Europe/Berlin'?"),
        ("utc", "did you mean 'UTC'?"),
        ("Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("../../etc/passwd", "unknown time zone"),
        ("/etc/localtime", "unknown time zone"),
        ("Europe", "unknown time zone"),  # a directory of the database, not a zone
        ("5", "got 5"),
    ],
)
def test_timezone_is_checked_against_the_tz_database(
    tmp_path: Path, written: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"peak_hours:\n  timezone: {written}\n")
    assert (info.value.line, info.value.key) == (2, "peak_hours.timezone")
    assert fragment in str(info.value), str(info.value)


def test_known_timezones_are_accepted(coord, tmp_path: Path) -> None:
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        settings, _ = load_text(tmp_path, f"peak_hours:\n  timezone: {zone}\n")
        assert settings.get("peak_hours.timezone") == zone
    result = coord("--set", "peak_hours.timezone=Europe/Berln", "config", "show")
    assert result.returncode == 2
    assert "did you mean 'Europe/Berlin'?" in one_error_line(result)


# --------------------------------------------------------------------------- floors


@pytest.mark.parametrize(
    ("key", "value", "floor"),
    [
        ("run.poll_interval", "0.01", "at least 0.05 seconds"),
        ("run.poll_interval", "0", "at least 0.05 seconds"),
        ("oom.decay_interval", "0.5", "at least 1 second"),
        ("store.lease_ttl", "0.5", "at least 1 second"),
    ],
)
def test_intervals_have_floors(tmp_path: Path, key: str, value: str, floor: str) -> None:
    section, leaf = key.split(".")
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"{section}:\n  {leaf}: {value}\n")
    assert (info.value.line, info.value.key) == (2, key)
    assert floor in str(info.value), str(info.value)


def test_poll_interval_floor_through_the_cli(coord) -> None:
    path = coord.write_config("run:\n  poll_interval: 0.001\n")
    result = coord("run", "selfplay", "--node", "n1", "--", "true")
    assert result.returncode == 3, result.stderr
    message = one_error_line(result)
    assert message.startswith(f"{path}:2: run.poll_interval: must be at least 0.05 seconds")
    coord.write_config("run:\n  poll_interval: 0.05\n")
    flagged = coord("--set", "run.poll_interval=0.01", "limits")
    assert flagged.returncode == 2 and "at least 0.05" in one_error_line(flagged)
    assert coord("--set", "run.poll_interval=0.05", "limits").returncode == 0


# --------------------------------------------------------------------------- not used yet


def _leaves(prefix: str, node: Any) -> list[str]:
    if isinstance(node, dict) and node:
        out: list[str] = []
        for key, value in node.items():
            out += _leaves(f"{prefix}.{key}" if prefix else key, value)
        return out
    return [prefix]


def test_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    assert NOT_USED_YET <= set(DEFAULTS)
    for key in ("bandwidth.default_mbps", "peak_hours.timezone", "selfplay_configs.square8_2p"):
        assert is_used(key)  # every section of this version is read by something
    monkeypatch.setattr(config, "NOT_USED_YET", frozenset({"bandwidth"}))
    assert not is_used("bandwidth") and not is_used("bandwidth.default_mbps")
    assert is_used("peak_hours") and is_used("peak_hours.timezone")
    assert is_used("resource_targets.pid.kp") and is_used("hardware.gpu_jobs.H100")
    assert is_used("store.lease_ttl") and is_used("durations.selfplay")
    assert is_used("band") and is_used("bandwidthx")  # prefixes of names are not sections


def test_config_show_marks_the_settings_nothing_uses_yet(coord) -> None:
    text = coord("config", "show")  # a pipe: plain aligned columns, one setting a line
    assert text.returncode == 0, text.stderr
    expected = {key for key in _leaves("", DEFAULTS) if not is_used(key)}
    lines = [line for line in text.stdout.splitlines() if "(not used yet)" in line]
    # keys may hold spaces ("RTX 4090"): the longest key that starts the line is its key
    marked = {max((k for k in expected if line.startswith(k + " ")), key=len) for line in lines}
    assert len(lines) == len(marked)
    assert marked == expected, marked ^ expected
    shown = coord("--json", "config", "show")
    rows = json.loads(shown.stdout)["values"]
    assert {row["key"] for row in rows if row["used"] is False} == expected
    assert all(row["used"] is True for row in rows if row["key"] not in expected)
    targets = coord("targets")  # the same marking wherever the settings are shown
    unused_shown = [key for key in expected if f"\n{key} " in targets.stdout]
    assert ("(not used yet)" in targets.stdout) == bool(unused_shown), targets.stdout
    assert "peak_hours.start" in targets.stdout  # shown, and read (by rule peak_hours)
    assert "(not used yet)" not in coord("limits").stdout  # every limit is enforced


def test_shipped_file_marks_the_sections_nothing_uses_yet() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    root = yaml.compose(SHIPPED.read_text(encoding="utf-8"))
    marked = set()
    for key_node, _ in root.value:
        row = key_node.start_mark.line
        comments = []
        while row > 0 and lines[row - 1].startswith("#"):  # the comment block above it
            row -= 1
            comments.append(lines[row])
        assert comments, key_node.value
        if any("(not used yet)" in line for line in comments):
            marked.add(key_node.value)
    assert marked == set(NOT_USED_YET)


def test_not_used_yet_sections_are_read_by_no_module() -> None:
    """Whatever starts reading a section removes it from ``NOT_USED_YET``."""
    package = ROOT / "ringrift_coord"
    for path in package.rglob("*.py"):
        if path.name == "config.py":
            continue
        text = path.read_text(encoding="utf-8")
        for section in NOT_USED_YET:
            reads = re.findall(rf"""(?:\.get\(|values\[)\s*["']{section}\b""", text)
            assert not reads, f"{path.relative_to(ROOT)} reads {section}: drop it from NOT_USED_YET"
