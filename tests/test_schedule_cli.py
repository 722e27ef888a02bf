"""The duration scheduler's command line as a new operator meets it: smoke runs do not teach
(``schedule.min_seconds``), ``schedule forget``, ``schedule`` alone, one type per moment,
a fresh host with no store, ``next-slot``'s table, a bad ``schedule`` section, the texts.

Real processes on a real store, both engines where the store is involved; the time comes
from ``--now`` or an injected clock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ringrift_coord.clock import ManualClock
from ringrift_coord.schedule import expected
from ringrift_coord.schedule.peak import PeakHours, verdict
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")
PREFIX = "ringrift-coord: error: "


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0][len(PREFIX) :]


def js(coord, *argv: str, env: dict[str, str] | None = None) -> dict:  # noqa: ANN001
    done = coord("--json", *argv, env=env)
    assert done.returncode == 0, (argv, done.stderr)
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- 1. min_seconds


def test_smoke_runs_do_not_teach(coord) -> None:  # noqa: ANN001
    """Three instant successful runs leave the key at its default; with min_seconds 0 they
    teach; an explicit record of 1 s is the operator's word and is kept."""
    for node in ("n1", "n2", "n3"):  # (one node would meet its spawn rate limit)
        done = coord("run", "training", "--node", node, "--config-name", "smoke", "--", "true")
        assert done.returncode == 0, done.stderr
    doc = js(coord, "schedule", "expected", "training", "--config-name", "smoke")
    assert (doc["samples"], doc["source"], doc["expected_seconds"]) == (0, "default", 14400.0)
    taught = coord(
        "--set",
        "schedule.min_seconds=0",
        "run",
        "training",
        "--node",
        "n4",
        "--config-name",
        "smoke",
        "--",
        "true",
    )
    assert taught.returncode == 0, taught.stderr
    assert js(coord, "schedule", "expected", "training", "--config-name", "smoke")["samples"] == 1
    doc = js(coord, "schedule", "record", "training", "--config-name", "smoke", "--seconds", "1")
    assert doc["recorded_seconds"] == 1 and doc["samples"] == 2


def test_min_seconds_is_the_threshold(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context("schedule: {min_seconds: 2m}\n", clock)
    tasks = TaskCoordinator(ctx)
    short = tasks.register_task(None, "training", "n1", config_name="sq8")
    clock.advance(119.5)
    tasks.unregister_task(short, status="ok")
    long = tasks.register_task(None, "training", "n1", config_name="sq8")
    clock.advance(120)
    tasks.unregister_task(long, status="ok")
    with ctx.store.read() as tx:
        assert [r["seconds"] for r in expected.samples(tx, "training", "sq8")] == [120]


# --------------------------------------------------------------------------- 1. forget


def test_forget_deletes_a_keys_samples(coord) -> None:  # noqa: ANN001
    for config, seconds in (("sq8", "100"), ("sq8", "200"), ("sq8", "300"), ("hex", "400")):
        assert (
            coord(
                "schedule", "record", "training", "--config-name", config, "--seconds", seconds
            ).returncode
            == 0
        )
    assert coord("schedule", "record", "training", "--seconds", "500").returncode == 0
    assert coord("schedule", "record", "cmaes", "--seconds", "500").returncode == 0
    assert js(coord, "schedule", "expected", "training", "--config-name", "sq8")["source"] == (
        "learned"
    )
    doc = js(coord, "schedule", "forget", "training", "--config-name", "sq8")
    assert doc == {
        "schema_version": 1,
        "task_type": "training",
        "config_name": "sq8",
        "all_configs": False,
        "forgotten": 3,
    }
    after = js(coord, "schedule", "expected", "training", "--config-name", "sq8")
    assert (after["samples"], after["source"]) == (0, "default")
    assert js(coord, "schedule", "expected", "training", "--config-name", "hex")["samples"] == 1
    text = coord("schedule", "forget", "training", "--all-configs")
    assert text.returncode == 0
    assert text.stdout.startswith("forgot 2 recorded duration(s) of training (every config)")
    assert js(coord, "schedule", "expected", "training")["samples"] == 0
    assert js(coord, "schedule", "expected", "cmaes")["samples"] == 1  # another type: kept
    assert js(coord, "schedule", "forget", "training")["forgotten"] == 0
    both = coord("schedule", "forget", "training", "--config-name", "x", "--all-configs")
    assert "--all-configs" in one_error_line(both, 2)


# --------------------------------------------------------------------------- 2. no command


def _groups_that_need_a_command() -> list[str]:
    import typer.main

    from ringrift_coord.cli.app import app

    groups = typer.main.get_command(app).commands.items()  # type: ignore[attr-defined]
    return sorted(n for n, c in groups if hasattr(c, "commands") and not c.invoke_without_command)


def test_the_groups_that_need_a_command_are_known() -> None:
    assert {"schedule", "config", "bandwidth", "events"} <= set(_groups_that_need_a_command())


@pytest.mark.parametrize("group", _groups_that_need_a_command())
def test_a_group_alone_is_one_error_line(coord, group: str) -> None:  # noqa: ANN001
    plain = coord(group)
    assert plain.stdout == ""
    assert one_error_line(plain, 2) == f"missing command; see 'ringrift-coord {group} --help'"
    as_json = coord("--json", group)
    assert as_json.returncode == 2
    doc = json.loads(as_json.stdout)  # the whole stdout is the one document
    assert doc["exit_code"] == 2 and doc["error"].startswith("missing command")


# --------------------------------------------------------------------------- 3. JSON types


def test_peak_moments_are_epoch_seconds_in_can_start_and_can_spawn(coord) -> None:  # noqa: ANN001
    when = "2026-12-01T12:00"
    start = coord("--json", "schedule", "can-start", "training", "--now", when)
    assert start.returncode == 1
    verdict_doc = json.loads(start.stdout)
    spawn = coord(
        "--json", "--set", "peak_hours.enforce=true", "can-spawn", "training", "--node", "n1",
        "--now", when,
    )  # fmt: skip
    assert spawn.returncode == 1
    details = json.loads(spawn.stdout)["reasons"][0]["details"]
    for name in ("expected_finish", "peak_start", "peak_end"):
        assert isinstance(verdict_doc[name], float), (name, verdict_doc[name])
        assert verdict_doc[name] == details[name]
    assert verdict_doc["peak_start"] == 1796133600.0  # 2026-12-01T14:00:00Z
    assert verdict_doc["now"] == "2026-12-01T12:00:00Z"  # as can-spawn --now shows it
    assert json.loads(spawn.stdout)["now"] == verdict_doc["now"]


# --------------------------------------------------------------------------- 4. no store yet


def test_a_fresh_host_answers_from_the_defaults(coord) -> None:  # noqa: ANN001
    if coord.engine != "sqlite":
        pytest.skip("only SQLite has no store until a command writes")
    doc = js(coord, "schedule", "expected", "training")
    assert (doc["expected_seconds"], doc["source"]) == (14400.0, "default")
    stale = js(coord, "schedule", "stale")
    assert stale["tasks"] == [] and stale["checked"] == 0
    text = coord("schedule", "stale")
    assert text.returncode == 0 and "no stale task" in text.stdout
    slot = js(coord, "schedule", "next-slot", "training", "--node", "n1")
    assert slot["free_now"] is True and slot["basis"] == []
    assert js(coord, "schedule", "forget", "training")["forgotten"] == 0
    assert not coord.db.exists()  # none of them created the store


def test_can_start_on_a_fresh_host_creates_nothing(coord) -> None:  # noqa: ANN001
    """can-start created tasks.db and tasks.db.id to answer; like the other questions it
    answers from the defaults and leaves a fresh state directory empty."""
    if coord.engine != "sqlite":
        pytest.skip("only SQLite has no store until a command writes")
    for made in (False, True):  # no state directory yet; one made, empty
        if made:
            coord.state_dir.mkdir(mode=0o700)
        yes = coord("schedule", "can-start", "training", "--now", "2026-12-01T09:00")
        assert yes.returncode == 0 and yes.stdout.startswith("yes: training may"), yes.stderr
        no = coord("--json", "schedule", "can-start", "training", "--now", "2026-12-01T13:00")
        assert no.returncode == 1, no.stderr
        assert json.loads(no.stdout)["expected_seconds"] == 14400.0  # the type's default
        if not made:
            assert not coord.state_dir.exists()
    # (only the settings cache, README "State directory", which every command writes there)
    assert {p.name for p in coord.state_dir.iterdir()} <= {"config-cache.json"}


# --------------------------------------------------------------------------- 5. next-slot


def test_next_slot_table_alone_with_format_and_its_node_default(coord) -> None:  # noqa: ANN001
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        task = coord(
            "register", "training", "--node", "n1", "--pid", str(holder.pid)
        ).stdout.strip()
        assert task
        later = "2099-01-01T00:00"  # the task is long overdue by then
        done = coord(
            "schedule", "next-slot", "training", "--now", later, "--format", "tsv", "--no-header",
            env={"RINGRIFT_NODE_ID": "n1"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        rows = [row.split("\t") for row in done.stdout.splitlines()]
        assert len(rows) == 1, done.stdout  # the table alone: no answer line
        assert rows[0][0] == task and rows[0][1] == "n1"
        assert rows[0][3].endswith("Z") and rows[0][4] == "yes"  # overdue: a column of its own
        header = coord(
            "schedule", "next-slot", "training", "--now", later, "--format", "tsv",
            env={"RINGRIFT_NODE_ID": "n1"},
        ).stdout.splitlines()  # fmt: skip
        names = ["task_id", "node", "started", "expected_end", "overdue"]
        assert header[0].split("\t")[:5] == names
        doc = js(coord, "schedule", "next-slot", "training", env={"RINGRIFT_NODE_ID": "n1"})
        assert doc["node"] == "n1"
        prose = coord("schedule", "next-slot", "training", "--node", "n1", "--now", later)
        assert prose.stdout.startswith("a slot for training on n1")
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- 6. settings


def test_a_bad_schedule_section_stops_only_the_schedule_commands(coord) -> None:  # noqa: ANN001
    path = coord.write_config("schedule:\n  stale_factor: 0\n")
    spawn = coord("can-spawn", "training", "--node", "n1")
    assert spawn.returncode == 0, spawn.stderr
    warnings = spawn.stderr.splitlines()
    assert len(warnings) == 1 and "stale_factor must be above 0" in warnings[0], warnings
    # admission reads the section (learned durations): not "does not use it"
    assert warnings[0].endswith("(ignored: this command goes on with the values below it)")
    ran = coord("run", "selfplay", "--node", "n1", "--", "true")
    assert ran.returncode == 0, ran.stderr
    message = one_error_line(coord("schedule", "expected", "training"), 3)
    assert f"{path}:2" in message and "stale_factor must be above 0" in message
    assert coord("schedule", "stale").returncode == 3
    coord.write_config("{}\n")
    flag = coord("--set", "schedule.min_samples=0", "schedule", "expected", "training")
    assert "min_samples" in one_error_line(flag, 2)


def test_peak_hours_settings_from_set(coord) -> None:  # noqa: ANN001
    same = coord("--set", "peak_hours.start=22:00", "schedule", "can-start", "training")
    message = one_error_line(same, 2)
    assert "two different times" in message and "enforce: false" not in message
    listed = js(coord, "--set", "peak_hours.task_types=training,cmaes", "config", "show")
    values = {v["key"]: v["value"] for v in listed["values"]}
    assert values["peak_hours.task_types"] == ["training", "cmaes"]
    bad = coord("--set", "peak_hours.task_types=training,warp", "config", "show")
    assert "unknown task type 'warp'" in one_error_line(bad, 2)


# --------------------------------------------------------------------------- 7. texts


def test_can_start_texts() -> None:
    from ringrift_coord.inputs import instant

    peak = PeakHours("14:00", "22:00", "UTC")
    yes = verdict(peak, instant("2026-12-01T09:00", "now"), 4 * 3600.0, "training")
    assert yes.reason == (
        "training may start: expected to finish at 13:00 UTC, before the peak window at 14:00 UTC"
    )
    odd = verdict(peak, instant("2026-12-01T10:00:01", "now"), 4 * 3600.0, "training")
    assert "until 14:00:01 UTC" in odd.reason and "(from 14:00 UTC)" in odd.reason


def test_can_start_and_record_lines(coord) -> None:  # noqa: ANN001
    no = coord("schedule", "can-start", "training", "--now", "2026-12-01T12:00")
    assert no.returncode == 1
    assert no.stderr.rstrip().endswith("retry at 22:00 UTC (in 10 h)"), no.stderr
    done = coord("schedule", "record", "training", "--seconds", "100")
    assert done.stdout.startswith("recorded 100 s for training;"), done.stdout
    done = coord("schedule", "record", "training", "--seconds", "1h30m")
    assert done.stdout.startswith("recorded 5400 s (1 h 30 min) for training;"), done.stdout
    for given in ("-5", "0"):
        words = one_error_line(coord("schedule", "record", "training", "--seconds", given), 2)
        assert words.endswith("must be more than 0"), words
    for given in ("2e9", "2000000000"):
        words = one_error_line(coord("schedule", "record", "training", "--seconds", given), 2)
        assert "is more than 1e9 seconds" in words, words
    helped = coord("schedule", "record", "--help")
    assert helped.returncode == 0 and "``" not in helped.stdout
