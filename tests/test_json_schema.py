"""Every command's ``--json`` output: exactly one JSON document on stdout, read whole by
``jq`` and by ``json.loads``, in the one vocabulary of ``ringrift_coord/schema.py``
(``schema_version`` first, each command's top-level keys as declared in ``COMMANDS``, the
shared names of ``FIELDS`` with their types, moments and durations rounded to the
millisecond, no retired name anywhere), on both engines; the README's "JSON output" section
shows the same schema.

A new command is one line in ``CASES`` (and its keys one line in ``schema.COMMANDS``):
``test_every_command_has_a_case`` fails until it has both.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Coord

from ringrift_coord import schema

ENGINES = ("sqlite", "postgres")
JQ = shutil.which("jq")
pytestmark = pytest.mark.skipif(JQ is None, reason="jq is not installed")

FAILED = "(any command that fails)"

# (schema.COMMANDS name, argv with {placeholders} from the populated store, exit code).
# In order: the halt cases run between `halt` and `unhalt`.
CASES: list[tuple[str, tuple[str, ...], int]] = [
    ("can-spawn", ("can-spawn", "selfplay", "--node", "n1"), 0),
    ("can-spawn", ("spawn-check", "selfplay", "--node", "n1"), 0),
    ("can-spawn --now", ("can-spawn", "training", "--node", "n9", "--now", "2026-12-01T12:00"), 0),
    ("schedule can-start", ("schedule", "can-start", "training", "--now", "2026-12-01T12:00"), 1),
    ("register", ("register", "selfplay", "--node", "n1", "--pid", "{pid}"), 0),
    ("unregister", ("unregister", "{spare_task}", "--exit-code", "3"), 0),
    ("unregister", ("unregister", "{spare_task}"), 0),  # already released
    ("run", ("run", "selfplay", "--node", "n1", "--", "sh", "-c", "echo hello; echo oops >&2"), 0),
    ("run", ("run", "selfplay", "--node", "n1", "--", "sh", "-c", "exit 7"), 7),
    (
        "bandwidth run",
        ("bandwidth", "run", "h1", "--", "sh", "-c", "echo 'Total bytes sent: 1,024'"),
        0,
    ),
    ("tasks list", ("tasks",), 0),
    ("tasks list", ("tasks", "list", "--node", "n1"), 0),
    ("tasks history", ("tasks", "history"), 0),
    ("tasks reap", ("tasks", "reap"), 0),
    (
        "tasks history",
        ("tasks", "history", "--type", "selfplay", "--node", "n1", "--status", "ok"),
        0,
    ),
    ("tasks history", ("tasks", "history", "--since", "1h"), 0),
    ("tasks show", ("tasks", "show", "{spare_task}"), 0),  # ended: its history row
    ("tasks show", ("tasks", "show", "{running_task}"), 0),  # running: its holder and lease
    ("tasks cancel", ("tasks", "cancel", "{spare_task}"), 0),  # already ended
    ("reserve", ("reserve", "gauntlet", "--node", "n2", "--slots", "1", "--ttl", "600"), 0),
    ("reserve list", ("reserve", "list"), 0),
    ("reserve release", ("reserve", "release", "{spare_reservation}"), 0),
    ("halt", ("halt", "--type", "training", "--reason", "bad model", "--ttl", "600"), 0),
    ("halt --check", ("halt", "--check"), 1),
    ("can-spawn", ("can-spawn", "training", "--node", "n1"), 1),  # denied: reasons
    ("unhalt", ("unhalt", "--type", "training"), 0),
    ("halt", ("halt", "--node", "n4", "--reason", "drain"), 0),
    ("halt --check", ("halt", "--check", "--node", "n4"), 1),
    ("unhalt", ("unhalt", "--node", "n4"), 0),
    ("halt --check", ("halt", "--check"), 0),
    ("decisions", ("decisions",), 0),
    ("decisions", ("decisions", "--denied", "--since", "1h"), 0),
    ("limits", ("limits",), 0),
    ("targets", ("targets",), 0),
    ("status", ("status",), 0),
    ("doctor", ("doctor",), 0),
    ("config show", ("config", "show"), 0),
    ("config validate", ("config", "validate"), 0),
    ("metrics", ("metrics",), 0),
    ("metrics --textfile", ("metrics", "--textfile", "{textfile}"), 0),
    ("breakers list", ("breakers",), 0),
    ("breakers list", ("breakers", "list", "--node", "n3"), 0),
    ("breakers record-failure", ("breakers", "record-failure", "--type", "sync"), 0),
    ("breakers record-success", ("breakers", "record-success", "--type", "sync"), 0),
    ("breakers reset", ("breakers", "reset", "--node", "n3"), 0),
    ("report", ("report", "--node", "n1", "--cpu", "12.345", "--load", "0.123456"), 0),
    ("report", ("report", "--node", "n5"), 0),  # sampled here
    ("resources", ("resources",), 0),
    ("forget-node", ("forget-node", "n5"), 0),  # sampled here just above
    ("capacity", ("capacity", "--gpu-name", "H100", "--gpu-count", "1", "--cpus", "32"), 0),
    ("capacity", ("capacity", "--node", "n2"), 0),  # the stored reading's hardware
    ("capacity", ("capacity", "--detect"), 0),
    ("rate show", ("rate",), 0),
    ("rate negotiate", ("rate", "negotiate", "1500", "--reason", "r", "--requestor", "q"), 0),
    ("rate show", ("rate", "show", "--limit", "5"), 0),
    ("distribution", ("distribution",), 0),
    ("distribution", ("distribution", "--rate", "700"), 0),
    ("distribution", ("distribution", "--node", "n2"), 0),
    ("adjust", ("adjust", "--dry-run"), 0),
    ("adjust", ("adjust",), 0),
    ("adjust", ("adjust",), 0),  # already adjusted: acts not
    ("events publish", ("events", "publish", "MODEL_PROMOTED", "--payload", '{{"at": "x"}}'), 0),
    ("events publish", ("events", "publish", "MODEL_PROMOTED", "--payload", '{{"at": "x"}}'), 0),
    ("events list", ("events", "list", "--since", "1h"), 0),
    ("events tail", ("events", "tail", "-n", "3"), 0),
    ("utilization", ("utilization",), 0),
    ("bandwidth allocate", ("bandwidth", "allocate", "runpod-1", "--priority", "high"), 0),
    ("bandwidth start", ("bandwidth", "start", "runpod-1", "--kind", "data", "--pid", "{pid}"), 0),
    (
        "bandwidth start",
        (
            *("--set", "bandwidth.max_concurrent_transfers=1", "bandwidth", "start"),
            *("runpod-1", "--kind", "data", "--pid", "{pid}"),
        ),
        1,
    ),
    (
        "bandwidth allocate",
        ("--set", "bandwidth.max_concurrent_transfers=1", "bandwidth", "allocate", "runpod-1"),
        1,
    ),
    ("bandwidth end", ("bandwidth", "end", "{transfer}", "--bytes", "1048576"), 0),
    ("bandwidth end", ("bandwidth", "end", "{transfer}"), 0),  # already ended
    ("bandwidth status", ("bandwidth", "status"), 0),
    ("schedule expected", ("schedule", "expected", "training"), 0),
    (
        "schedule record",
        ("schedule", "record", "selfplay", "--config-name", "sq8", "--seconds", "90m"),
        0,
    ),
    ("schedule expected", ("schedule", "expected", "selfplay", "--config-name", "sq8"), 0),
    ("schedule stale", ("schedule", "stale"), 0),
    ("schedule forget", ("schedule", "forget", "cmaes", "--config-name", "none"), 0),
    ("schedule stale", ("schedule", "stale", "--now", "2099-01-01T00:00"), 0),  # all stale
    ("schedule next-slot", ("schedule", "next-slot", "selfplay", "--node", "n1"), 0),
    (
        "schedule next-slot",
        ("schedule", "next-slot", "sync", "--node", "n2", "--now", "2099-01-01"),
        0,
    ),
    ("--version", ("--version",), 0),
    ("config init", ("config", "init", "{config_path}"), 0),
    ("completion", ("completion", "fish"), 0),
    (FAILED, ("unregister", "no-such-task"), 2),
    (FAILED, ("--set", "task_limits.sync.cluster=0", "run", "sync", "true"), 75),
]

# Typer commands that print no JSON document of their own (none so far).
NOT_JSON: set[str] = {"serve"}  # a server: its documents are its HTTP answers


def populate(coord: Coord, holder: int) -> dict[str, str]:
    """A store with something in every listing: running tasks, a finished one, a dead
    holder to reap, reservations, a node reading, breakers with failures and backpressure."""

    def ok(*argv: str) -> str:
        done = coord(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        return done.stdout.strip()

    running = ok(
        "register", "selfplay", "--node", "n1", "--pid", str(holder), "--config-name", "sq8"
    )
    spare = ok("register", "sync", "--node", "n2", "--pid", str(holder))
    ok("reserve", "gauntlet", "--node", "n1", "--slots", "1")
    reservation = ok("reserve", "gauntlet", "--node", "n1", "--slots", "1", "--ttl", "60")
    ok("run", "selfplay", "--node", "n1", "--", "true")
    for _ in range(2):
        ok("breakers", "record-failure", "--type", "selfplay", "--node", "n3", "--reason", "x")
    ok("report", "--node", "n2", "--cpu", "50", "--mem", "60.25", "--cpus", "8", "--load", "2")
    transfer = ok("bandwidth", "start", "aws-1", "--kind", "data", "--pid", str(holder))
    ok("bandwidth", "end", ok("bandwidth", "start", "aws-1", "--kind", "x"), "--bytes", "4096")
    # last: a holder that is gone, for `tasks reap` (the next admission would reap it)
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ok("register", "evaluation", "--node", "n2", "--pid", str(dead.pid))
    dead.kill()
    dead.wait()
    return {
        "pid": str(holder),
        "spare_task": spare,
        "spare_reservation": reservation,
        "running_task": running,
        "transfer": transfer,
    }


def one_document(stdout: str) -> dict[str, Any]:
    """``stdout`` as exactly one JSON document, read by jq and by Python."""
    assert JQ is not None
    count = subprocess.run([JQ, "-s", "length"], input=stdout, capture_output=True, text=True)
    assert count.returncode == 0, f"jq cannot read it: {count.stderr.strip()}: {stdout!r}"
    assert count.stdout.strip() == "1", f"{count.stdout.strip()} documents: {stdout!r}"
    document = json.loads(stdout)
    assert isinstance(document, dict), document
    return document


def problems(name: str, document: dict[str, Any]) -> list[str]:
    """What in ``document`` breaks the schema (empty: nothing)."""
    found = []
    keys = list(document)
    if keys[:1] != ["schema_version"] or document["schema_version"] is not schema.SCHEMA_VERSION:
        found.append(f"schema_version is not the first key, {schema.SCHEMA_VERSION}: {keys}")
    declared = set(schema.COMMANDS[name])
    extra, missing = set(keys) - declared - {"schema_version"}, declared - set(keys)
    if extra or missing:
        found.append(f"top-level keys: undeclared {sorted(extra)}, missing {sorted(missing)}")
    elif keys[1:] != list(schema.COMMANDS[name]):
        found.append(f"top-level keys in another order than declared: {keys[1:]}")
    found.extend(walk(document, "$"))
    return found


_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def has_type(value: Any, spec: str) -> bool:
    if value is None:
        return spec.endswith("?")
    kinds = _TYPES[spec.rstrip("?")]
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def walk(value: Any, path: str, key: str | None = None) -> list[str]:
    found = []
    if isinstance(value, dict):
        for name, item in value.items():
            where = f"{path}.{name}"
            if key in schema.MAPS:  # keyed by data: check the values only
                found.extend(walk(item, where))
                continue
            if name in schema.RETIRED:
                found.append(f"{where}: retired name {name!r}")
            spec = schema.FIELDS.get(name)
            if spec is None and schema.is_moment(name):
                spec = ("number?", "a moment")
            if spec is not None and not has_type(item, spec[0]):
                found.append(f"{where}: {item!r} is not {spec[0]}")
            if name in schema.BOOLEANS and not isinstance(item, bool):
                found.append(f"{where}: {item!r} is not a boolean")
            digits = schema._digits(name)
            if isinstance(item, float) and digits is not None and round(item, digits) != item:
                found.append(f"{where}: {item!r} is not rounded to {digits} decimals")
            if name not in schema.VERBATIM:
                found.extend(walk(item, where, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(walk(item, f"{path}[{index}]"))
    return found


def test_every_command_prints_one_document_in_the_schema(coord: Coord, tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        values = populate(coord, holder.pid)
        values["config_path"] = str(tmp_path / "written" / "coord.yaml")  # config init's file
        values["textfile"] = str(tmp_path / "ringrift.prom")  # metrics --textfile's
        failures, seen = [], set()
        for name, argv, code in CASES:
            args = [a.format(**values) for a in argv]
            done = coord("--json", *args)
            label = " ".join(args)
            if done.returncode != code:
                failures.append(f"{label}: exit {done.returncode}, not {code}: {done.stderr}")
                continue
            try:
                document = one_document(done.stdout)
            except AssertionError as exc:
                failures.append(f"{label}: {exc}")
                continue
            failures.extend(f"{label}: {p}" for p in problems(name, document))
            seen.add(name)
            if name == "run" and code == 0:  # the job's stdout went to run's stderr
                assert "hello" in done.stderr and "oops" in done.stderr, done.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not failures, "\n".join(failures)
    assert seen == set(schema.COMMANDS)


def test_listings_are_not_empty_in_the_populated_store(coord: Coord) -> None:
    """The case table checks item shapes only where there are items: make sure there are."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        populate(coord, holder.pid)
        documents = {
            "tasks": one_document(coord("--json", "tasks").stdout),
            "history": one_document(coord("--json", "tasks", "history").stdout),
            "reap": one_document(coord("--json", "tasks", "reap").stdout),
            "reservations": one_document(coord("--json", "reserve", "list").stdout),
            "breakers": one_document(coord("--json", "breakers").stdout),
            "resources": one_document(coord("--json", "resources").stdout),
        }
    finally:
        holder.kill()
        holder.wait()
    assert len(documents["tasks"]["tasks"]) == 3  # the gone holder is listed until reaped
    assert documents["history"]["tasks"][0]["status"] == "ok"
    (reaped,) = documents["reap"]["reaped"]
    assert reaped["trial"] is False and isinstance(reaped["lease_expires_at"], float)
    assert len(documents["reservations"]["reservations"]) == 2
    (breaker,) = documents["breakers"]["breakers"]
    assert breaker["failures"] == 2
    (reading,) = documents["resources"]["nodes"]
    assert reading["memory"] == 60.2 or reading["memory"] == 60.3  # one decimal
    assert reading["caps"]["backpressure_factor"] == 1.0


def test_run_json_pipes_into_jq(coord: Coord) -> None:
    """`ringrift-coord --json run ... | jq`: the job's own stdout does not reach the pipe."""
    assert JQ is not None
    script = (
        '"$0" -m ringrift_coord --json run selfplay --node n1 -- sh -c "echo hello" '
        '| "$1" -e \'.status == "ok" and .exit_code == 0 and .schema_version == 1\''
    )
    done = subprocess.run(
        ["sh", "-c", script, sys.executable, JQ],
        env=coord.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.strip() == "true"
    assert done.stderr.splitlines() == ["hello"]


def test_every_command_has_a_case() -> None:
    """Every command of the app (and every declared schema) is run by ``CASES``."""
    import typer

    from ringrift_coord.cli.app import app
    from ringrift_coord.cli.spec import ALIASES

    def names(command: Any, prefix: str = "") -> list[str]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            return [prefix.strip()]
        return [n for sub, c in subcommands.items() for n in names(c, f"{prefix} {sub}")]

    commands = {n for n in names(typer.main.get_command(app)) if n not in ALIASES}
    covered = {name.split(" --")[0] for name, _, _ in CASES}
    assert commands - NOT_JSON <= covered, sorted(commands - NOT_JSON - covered)
    assert {name for name, _, _ in CASES} == set(schema.COMMANDS)


# --------------------------------------------------------------------------- README


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## JSON output\n")
    assert text.index("\n## Exit codes\n") > start, "JSON output goes just before Exit codes"
    return text[start : text.index("\n## ", start + 1)]


def tables(section: str) -> dict[str, dict[str, list[str]]]:
    """Each table by its first header cell: the first column of each row (backquoted) ->
    the backquoted words of the rest."""
    found: dict[str, dict[str, list[str]]] = {}
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| `"):
            rows = found.setdefault(cells[0], {})  # a header row starts a table
        elif line.startswith("| `") and len(cells) >= 2:
            rows[cells[0].strip("`")] = re.findall(r"`([^`]+)`", " | ".join(cells[1:]))
    return found


def test_readme_shows_the_schema() -> None:
    section = readme_section()
    found = tables(section)
    commands, fields = found["command"], found["field"]
    assert list(commands) == list(schema.COMMANDS)
    for name, keys in schema.COMMANDS.items():
        assert commands[name] == list(keys), (name, commands[name], keys)
    assert list(fields) == list(schema.FIELDS)
    for field, (kind, _meaning) in schema.FIELDS.items():
        assert fields[field][:1] == [kind], (field, fields[field])
    assert f"`schema_version`: {schema.SCHEMA_VERSION}" in section


def readme_tables() -> str:
    """The two tables of the README section, as this module's data has them (for editing)."""
    lines = ["| field | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f}` | `{k}` | {m} |" for f, (k, m) in schema.FIELDS.items()]
    lines += ["", "| command | top-level keys (besides `schema_version`) |", "|---|---|"]
    lines += [f"| `{c}` | {', '.join(f'`{k}`' for k in ks)} |" for c, ks in schema.COMMANDS.items()]
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_json_schema.py: print the README's tables
    print(readme_tables())


def test_the_vocabulary_rules_in_one_place() -> None:
    """``schema.envelope`` on a document in the core's own names: renamed, rounded, typed."""
    core = {
        "res_id": "res-1",
        "rules": [{"rule": "halt", "details": {"at": "yesterday", "expires_at": 1.23456}}],
        "lease_expires": 1700000000.123456,
        "trial": 0,
        "allowed": 1,
        "duration": float("nan"),
        "cpu": 45.678,
        "load_avg": 2.34567,
        "caps": {"backpressure": 0.22500000000000003, "per_node": {"selfplay": 3}},
        "backpressure": [{"node": "n1", "factor": 0.5}],
        "by_type": {"sync": {"nodes": {"n1": 2}, "running": 2}},
        "values": [{"key": "pid.kp", "value": 0.000123456, "source": "default"}],
        "history": [{"id": 7, "task_id": "t"}],
        "decisions": [{"id": 9, "action": "run"}],
    }
    doc = schema.envelope(core)
    assert list(doc)[0] == "schema_version" and doc["schema_version"] == 1
    assert doc["reservation_id"] == "res-1" and doc["lease_expires_at"] == 1700000000.123
    assert doc["reasons"][0]["details"] == {"at": None, "expires_at": 1.235}
    assert doc["trial"] is False and doc["allowed"] is True and doc["duration"] is None
    assert (doc["cpu"], doc["load_avg"]) == (45.7, 2.35)
    assert doc["caps"] == {"backpressure_factor": 0.225, "per_node": {"selfplay": 3}}
    assert doc["backpressure"] == [{"node": "n1", "factor": 0.5}]
    assert doc["by_type"] == {"sync": {"running_by_node": {"n1": 2}, "running": 2}}
    assert doc["values"][0]["value"] == 0.000123456  # as configured
    assert doc["history"] == [{"task_id": "t"}] and doc["decisions"] == [
        {"decision_id": 9, "action": "run"}
    ]
    assert not walk(doc, "$")
    json.dumps(doc, allow_nan=False)
