"""Durations with units everywhere (``--ttl 5m``, ``--timeout 1h30m``, ``decisions --since
3w``, ``RINGRIFT_WAIT_TIMEOUT=3m``, the config's seconds), read by one function
(``durations.parse``), and shown in messages by one (``durations.human``): "retry in ~4 h",
never "retry in 14357 s"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringrift_coord import durations
from ringrift_coord.config import load_settings
from ringrift_coord.errors import ConfigError

ENGINES = ("sqlite", "postgres")
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ringrift-coord: error: "


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0][len(PREFIX) :]


# --------------------------------------------------------------------------- the parser

PARSED = {
    "0": 0.0,
    "90": 90.0,
    "2.5": 2.5,
    ".5": 0.5,
    "45s": 45.0,
    "5m": 300.0,
    "1h": 3600.0,
    "1.5h": 5400.0,
    "1h30m": 5400.0,
    "2d": 172800.0,
    "3w": 1814400.0,
    "1w2d3h4m5s": 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5.0,
    "30m1h": 5400.0,  # any order, each unit once
    "0.3s": 0.3,
}


@pytest.mark.parametrize(("text", "seconds"), PARSED.items())
def test_parse(text: str, seconds: float) -> None:
    assert durations.parse(text) == pytest.approx(seconds)


REFUSED = {
    "": "not a number of seconds",
    "soon": "not a number of seconds",
    "5x": "not a number of seconds",
    "5 m": "not a number of seconds",
    " 5m": "not a number of seconds",
    "5M": "not a number of seconds",
    "m": "not a number of seconds",
    "5mm": "not a number of seconds",
    "1h1h": "not a number of seconds",
    "1h30": "not a number of seconds",  # 30 what?
    "1.2.3s": "not a number of seconds",
    ".": "not a number of seconds",
    "+5": "not a number of seconds",
    "1e3": "not a number of seconds",
    "nan": "not a number of seconds",
    "inf": "not a number of seconds",
    "1_000": "not a number of seconds",
    "\u0663": "not a number of seconds",  # an Arabic-Indic three: ASCII digits only
    "5ms": "not a number of seconds",
    "-5": "negative",
    "-5m": "negative",
    "9" * 400: "too long",
}


@pytest.mark.parametrize(("text", "why"), REFUSED.items(), ids=repr)
def test_parse_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        durations.parse(text)


HUMAN = {
    0: "0 s",
    0.3: "0.3 s",
    2.2: "2.2 s",
    10: "10 s",
    45: "45 s",
    59.4: "59 s",
    60: "1 min",
    720: "12 min",
    3599: "1 h",
    3600: "1 h",
    5400: "1 h 30 min",
    7200: "2 h",
    14357: "~4 h",
    14400: "4 h",
    86400: "24 h",
    172800: "2 d",
    190000: "~2 d",
    1814400: "21 d",
    -5: "0 s",
}


@pytest.mark.parametrize(("seconds", "text"), HUMAN.items())
def test_human(seconds: float, text: str) -> None:
    assert durations.human(seconds) == text


def test_human_reads_back_close() -> None:
    """What ``human`` shows, read back, is within a few percent of the value."""
    for seconds in (1, 7, 59, 61, 599, 3601, 9000, 14357, 100000, 10**6):
        shown = durations.human(seconds).lstrip("~").replace(" min", "m").replace(" ", "")
        assert durations.parse(shown) == pytest.approx(seconds, rel=0.05, abs=1)


# --------------------------------------------------------------------------- the config

SECONDS_KEYS = [
    "circuit_breaker.window",
    "circuit_breaker.recovery_timeout",
    "durations.training",
    "store.busy_timeout",
    "store.connect_timeout",
    "store.lease_ttl",
    "run.kill_grace",
    "run.poll_interval",
    "resources.max_sample_age",
    "oom.window",
    "oom.decay_interval",
]


def _yaml(key: str, value: str) -> str:
    parts = key.split(".")
    return "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1])) + (
        f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n"
    )


@pytest.mark.parametrize("key", SECONDS_KEYS)
def test_config_seconds_take_units(tmp_path: Path, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(_yaml(key, "2m"))
    settings = load_settings(str(path), env={})
    assert settings.get(key) == 120 and settings.source(key) == f"{path}:{len(key.split('.'))}"
    path.write_text(_yaml(key, "90"))  # a plain number stays seconds
    assert load_settings(str(path), env={}).get(key) == 90
    path.write_text(_yaml(key, "1h30m"))
    assert load_settings(str(path), env={}).get(key) == 5400


def test_config_bad_duration_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("store:\n  busy_timeout: 5\noom:\n  window: 5q\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(str(path), env={})
    message = raised.value.message
    assert message.startswith(f"{path}:4: oom.window: "), message
    assert "'5q'" in message and "5m" in message
    path.write_text("store:\n  lease_ttl: -2m\n")
    with pytest.raises(ConfigError, match=r":2: store.lease_ttl: .*'-2m'"):
        load_settings(str(path), env={})


def test_set_and_environment_take_units(coord) -> None:
    coord.write_config("store:\n  lease_ttl: 3m\n")
    done = coord("--json", "--set", "run.kill_grace=1m30s", "limits")
    assert done.returncode == 0, done.stderr
    values = {v["key"]: v["value"] for v in json.loads(done.stdout)["values"]}
    assert (values["store.lease_ttl"], values["run.kill_grace"]) == (180, 90)
    env = {"RINGRIFT_COORD_SET": "resources.live_host=false;store.busy_timeout=2m"}
    done = coord("--json", "limits", env=env)
    values = {v["key"]: v["value"] for v in json.loads(done.stdout)["values"]}
    assert values["store.busy_timeout"] == 120
    bad = coord("--set", "store.lease_ttl=2x", "limits")
    message = one_error_line(bad, 2)  # a bad --set is a usage error
    assert "store.lease_ttl" in message and "'2x'" in message


# --------------------------------------------------------------------------- options


def test_halt_ttl_takes_units(coord) -> None:
    before = time.time()
    done = coord("--json", "halt", "--reason", "maintenance", "--ttl", "1h30m")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["expires_at"] - before == pytest.approx(5400, abs=60)


def test_reserve_ttl_takes_units(coord) -> None:
    before = time.time()
    done = coord("--json", "reserve", "training", "--node", "n1", "--slots", "1", "--ttl", "2d")
    assert done.returncode == 0, done.stderr
    listed = json.loads(coord("--json", "reserve", "list").stdout)
    rows = listed["reservations"]
    assert rows[0]["expires_at"] - before == pytest.approx(2 * 86400, abs=60)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (("halt", "--ttl", "5x"), ("option --ttl", "'5x'", "1h30m")),
        (("halt", "--ttl", "-5m"), ("option --ttl", "negative")),
        (("halt", "--ttl", "0s"), ("option --ttl", "positive")),
        (("reserve", "selfplay", "--node", "n", "--slots", "1", "--ttl", "soon"), ("--ttl",)),
        (("run", "selfplay", "--wait", "--timeout", "1h30", "--", "true"), ("--timeout", "1h30")),
        (("run", "selfplay", "--wait", "--timeout", "-3m", "--", "true"), ("--timeout", "neg")),
        (("decisions", "--since", "-3w"), ("option --since", "negative")),
        (("decisions", "--since", "3 weeks"), ("option --since", "'3 weeks'", "3w")),
    ],
    ids=" ".join,
)
def test_bad_durations_one_line_naming_the_option(coord, argv, fragments) -> None:
    message = one_error_line(coord(*argv), 2)
    for fragment in fragments:
        assert fragment in message, message


def test_decisions_since_weeks(coord) -> None:
    assert coord("can-spawn", "selfplay", "--node", "n1").returncode == 0
    for since in ("3w", "1h30m", "90", "2d"):
        done = coord("--json", "decisions", "--since", since)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        rows = doc["decisions"]
        assert len(rows) == 1, (since, doc)


def test_wait_timeout_with_units(coord) -> None:
    """``run --wait --timeout 0.3s`` (and the scripts' ``RINGRIFT_WAIT_TIMEOUT``) gives up."""
    assert coord("halt", "--reason", "test").returncode == 0
    started = time.monotonic()
    done = coord("run", "selfplay", "--wait", "--timeout", "0.3s", "--", "true")
    assert done.returncode == 75, done.stderr
    assert time.monotonic() - started < 30
    program = Path(sys.executable).parent / "ringrift-coord"
    if not program.exists():
        pytest.skip(f"{program} not installed (pip install -e . in this venv)")
    env = {
        **coord.env,
        "RINGRIFT_WAIT_TIMEOUT": "0.3s",
        "RINGRIFT_NODE_ID": "n1",
        "RINGRIFT_COORD": str(program),
    }
    script = ROOT / "ringrift_coord" / "data" / "scripts" / "selfplay.sh"
    done = subprocess.run(
        ["bash", str(script), "true"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 75, done.stderr
    # it says how long it waited: about 0.3 s (up to a few seconds on a loaded machine),
    # never the 18 s of "0.3 min" or the 1,080 s of "0.3 h"
    waited = re.search(r"gave up waiting .* after (\d+(?:\.\d)?) s; ", done.stderr)
    assert waited is not None, done.stderr
    assert 0.3 <= float(waited.group(1)) < 10, done.stderr


# --------------------------------------------------------------------------- messages


def test_denial_says_retry_in_hours(coord) -> None:
    """A training slot held for a 4 h job: "retry in ~4 h", not "retry in 14399 s"."""
    coord.write_config("durations:\n  training: 4h\ntask_limits:\n  training: {per_node: 1}\n")
    held = coord("register", "training", "--node", "n1", "--pid", str(os.getpid()))
    assert held.returncode == 0, held.stderr
    denied = coord("can-spawn", "training", "--node", "n1")
    assert denied.returncode == 1, denied.stderr
    assert "retry in ~4 h" in denied.stderr or "retry in 4 h" in denied.stderr, denied.stderr
    assert " s)" not in denied.stderr, denied.stderr
    doc = json.loads(coord("--json", "can-spawn", "training", "--node", "n1").stdout)
    assert doc["retry_after"] == pytest.approx(14400, abs=120)  # JSON keeps the seconds


def test_no_raw_seconds_in_messages() -> None:
    """Every message of the core and the face shows a duration through ``durations.human``:
    no ``{...:.0f} s`` / ``{...:g} s`` formatting is left in the sources."""
    pattern = re.compile(r"\{[^{}]*:[.0-9]*[fg]\} s\b")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "ringrift_coord").rglob("*.py"))
        if path.name != "durations.py"  # the one place that formats them
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
