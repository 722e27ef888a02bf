"""The event log: dedupe by digest, the tool's own events, hooks (detached, bounded, logged),
pruning by age, and ``events publish / list / tail --follow`` for real, on both engines."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Coord, alive, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord import events, halts
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import UsageError
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")


def _publish(ctx, kind: str, payload: dict, **kw) -> events.Event:  # noqa: ANN001, ANN003
    with ctx.store.write() as tx:
        return events.publish(tx, ctx.settings, kind, payload, **kw)


def _all(ctx, kind: str | None = None) -> list[events.Event]:  # noqa: ANN001
    with ctx.store.read() as tx:
        return events.list_events(tx, type=kind)


# --------------------------------------------------------------------------- dedupe


def test_the_same_event_twice_is_one_row_seen_twice(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    first = _publish(ctx, "TRAINING_COMPLETED", {"model": "sq8", "epoch": 3, "loss": 0.25})
    clock.advance(5)
    again = _publish(ctx, "TRAINING_COMPLETED", {"loss": 0.25, "epoch": 3, "model": "sq8"})
    assert first.new and not again.new
    assert again.id == first.id and again.seen == 2 and again.digest == first.digest
    assert again.at == first.at and again.last_at == first.at + 5
    other = _publish(ctx, "TRAINING_COMPLETED", {"model": "sq8", "epoch": 4, "loss": 0.25})
    same_content_other_type = _publish(ctx, "MODEL_PROMOTED", {"model": "sq8"})
    (stored, second) = _all(ctx, "TRAINING_COMPLETED")
    assert (stored.id, stored.seen) == (first.id, 2) and second.id == other.id
    assert stored.payload == {"epoch": 3, "loss": 0.25, "model": "sq8"}
    assert same_content_other_type.new and len(_all(ctx)) == 3


def test_key_order_and_spacing_do_not_change_the_digest() -> None:
    a = events.digest("X", events.parse_payload('{"b": 1, "a": {"y": [1, 2], "x": "é"}}'))
    b = events.digest("X", events.parse_payload('{"a":{"x":"é","y":[1,2]},"b":1}'))
    assert a == b
    assert events.canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert a != events.digest("Y", {"a": {"x": "é", "y": [1, 2]}, "b": 1})
    import hashlib

    text = '["X","user",null,{"a":{"x":"é","y":[1,2]},"b":1}]'
    assert a == hashlib.sha256(text.encode()).hexdigest()


def test_the_digest_covers_the_source_and_the_node() -> None:
    payload = {"a": 1}
    user = events.digest("HALT", payload)
    assert user != events.digest("HALT", payload, "tool")  # a user never pre-empts the tool
    assert user != events.digest("HALT", payload, "user", "n2")
    assert events.digest("HALT", payload, "user", "n1") != events.digest(
        "HALT", payload, "user", "n2"
    )


def test_the_same_number_and_the_same_text_are_the_same_content() -> None:
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    one = events.parse_payload(f'{{"n": 1, "z": 0, "{nfc}": "{nfc}", "l": [2]}}')
    two = events.parse_payload(f'{{"n": 1.0, "z": -0.0, "{nfd}": "{nfd}", "l": [2.0]}}')
    assert one == two and events.digest("X", one) == events.digest("X", two)
    assert events.canonical(two) == '{"café":"café","l":[2],"n":1,"z":0}'
    assert events.digest("X", {"n": 1.5}) != events.digest("X", {"n": 1})
    assert events.digest("X", {"a": "1"}) != events.digest("X", {"a": 1})


def test_a_lone_surrogate_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not valid Unicode text"):
        events.parse_payload('{"a": "\\ud800"}')
    with pytest.raises(UsageError, match="not valid Unicode text"):
        events.parse_payload('{"\\udc80": 1}')


def test_same_content_about_another_node_or_from_the_tool_is_another_event(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    first = _publish(ctx, "MODEL_PROMOTED", {"a": 1})
    other_node = _publish(ctx, "MODEL_PROMOTED", {"a": 1}, node="n2")
    from_tool = _publish(ctx, "MODEL_PROMOTED", {"a": 1}, source="tool")
    assert first.new and other_node.new and from_tool.new
    assert [(e.node, e.source) for e in _all(ctx)] == [
        (None, "user"),
        ("n2", "user"),
        (None, "tool"),
    ]
    again = _publish(ctx, "MODEL_PROMOTED", {"a": 1.0}, node="n2")  # 1.0 is 1
    assert not again.new and again.id == other_node.id and again.seen == 2
    stored = _publish(ctx, "X", {"n": 2.0, "t": "cafe\u0301"})
    assert stored.payload == {"n": 2, "t": "caf\u00e9"}  # stored normalised
    (read,) = _all(ctx, "X")
    assert read.payload == {"n": 2, "t": "caf\u00e9"}


def test_a_clock_stepped_back_never_moves_last_at_backwards(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock(1_800_000_000.0)
    ctx = engine_db.context(clock=clock)
    first = _publish(ctx, "X", {"a": 1})
    clock.advance(100)
    assert _publish(ctx, "X", {"a": 1}).last_at == first.at + 100
    clock.advance(-50)  # the clock steps back
    again = _publish(ctx, "X", {"a": 1})
    assert again.seen == 3 and again.last_at == first.at + 100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("{nope", "not valid JSON"),
        ('{"a": NaN}', "NaN"),
        (json.dumps({"blob": "x" * (64 * 1024)}), "more than the 65536 allowed"),
    ],
)
def test_a_bad_payload_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        events.parse_payload(text)


def test_a_number_too_long_to_write_is_named_as_such() -> None:
    """(it was refused as "NaN and Infinity are not JSON numbers")"""
    with pytest.raises(UsageError, match="a number of more than 3,900 digits"):
        events.check_payload({"n": 10**5000})
    with pytest.raises(UsageError, match="a number of more than 3,900 digits"):
        events.parse_payload('{"n": ' + "9" * 4000 + "}")
    assert events.check_payload({"n": 10**3000})["n"] == 10**3000


def test_event_types_are_checked_and_near_misses_named() -> None:
    for bad in ("lower", "1ABC", "A-B", "", "A" * 65, "ÄB"):
        with pytest.raises(UsageError, match="is not an event type"):
            events.check_type(bad)
    assert events.check_type("CUSTOM_THING_2") == "CUSTOM_THING_2"
    assert events.near_miss("TRAINING_COMPLETE") == "TRAINING_COMPLETED"
    assert events.near_miss("SOMETHING_ELSE") is None
    assert events.near_miss("HALT") is None
    assert len(set(events.KNOWN_TYPES)) == len(events.KNOWN_TYPES) == 18


@settings(max_examples=500, deadline=None)
@given(
    name=st.one_of(
        st.text(alphabet="AZ09_a-\nÄ\u0130", max_size=70),
        st.from_regex(r"[A-Z][A-Z0-9_]{0,63}", fullmatch=True),
        st.text(max_size=5),
    )
)
def test_an_event_type_is_exactly_what_its_pattern_says(name: str) -> None:
    """The check without ``re`` accepts what ``[A-Z][A-Z0-9_]{0,63}\\Z`` matches, no more."""
    assert events.is_type_name(name) == bool(re.match(r"[A-Z][A-Z0-9_]{0,63}\Z", name))


# --------------------------------------------------------------------------- the tool's own


def test_halt_and_unhalt_are_events_and_two_halts_two_events(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    halts.activate(ctx, "disk full", task_type=None, ttl=600, who="op@a", host="a")
    clock.advance(1)
    halts.activate(ctx, "disk full", task_type=None, ttl=600, who="op@a", host="a")
    halts.activate(ctx, "gpu swap", task_type="training", ttl=None, who="op@a", host="a", node="n3")
    halts.deactivate(ctx, task_type=None, who="op@b", host="b")
    found = [(e.type, e.payload) for e in _all(ctx)]
    assert [kind for kind, _ in found] == ["HALT", "HALT", "HALT", "UNHALT", "UNHALT"]
    first, second, typed = (p for _, p in found[:3])
    assert first["reason"] == "disk full" and first["scope"] == "cluster"
    assert first["type"] == "all" and first["node"] == "all" and first["who"] == "op@a"
    assert first["expires_at"] == first["at"] + 600 and second["at"] == first["at"] + 1
    assert typed == {
        "scope": "node",
        "type": "training",
        "node": "n3",
        "reason": "gpu swap",
        "who": "op@a",
        "at": typed["at"],
        "expires_at": None,
    }
    unhalted = sorted((p["type"], p["node"]) for _, p in found[3:])
    assert unhalted == [("all", "all"), ("training", "n3")]
    assert all(e.source == "tool" for e in _all(ctx))
    clock.advance(60)
    halts.deactivate(ctx, task_type=None, who="op@b", host="b")  # nothing to lift: no event
    halts.deactivate(ctx, task_type="training", who="op@b", host="b", node="n3")
    assert len(_all(ctx, "UNHALT")) == 2


def test_breaker_transitions_are_events(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context(
        "circuit_breaker: {failure_threshold: 2, recovery_timeout: 60, success_threshold: 1}\n",
        clock,
    )
    coord = TaskCoordinator(ctx)
    from ringrift_coord import safeguards

    safeguards.record_failure(ctx, "selfplay", "n1", "exit code 1")
    assert _all(ctx) == []  # one failure: still closed, nothing changed state
    safeguards.record_failure(ctx, "selfplay", "n1", "exit code 1")
    (opened,) = _all(ctx)
    assert opened.type == "BREAKER_OPENED" and opened.node == "n1"
    assert opened.payload["from"] == "closed" and opened.payload["to"] == "open"
    assert opened.payload["type"] == "selfplay" and opened.payload["reason"] == "exit code 1"
    clock.advance(61)  # past the recovery timeout: the next spawn is a half-open trial
    task = coord.register_task(None, "selfplay", "n1")
    coord.unregister_task(task, exit_code=0)
    kinds = [e.type for e in _all(ctx) if e.type.startswith("BREAKER")]
    assert kinds == ["BREAKER_OPENED", "BREAKER_HALF_OPEN", "BREAKER_CLOSED"]
    safeguards.record_failure(ctx, "selfplay", "n2", "x")
    safeguards.reset(ctx, node="n2")  # still closed (one failure): nothing to reset, no event
    assert _all(ctx, "BREAKER_RESET") == []
    safeguards.record_failure(ctx, "selfplay", "n2", "x")
    safeguards.record_failure(ctx, "selfplay", "n2", "x")
    safeguards.reset(ctx, node="n2")
    (reset,) = _all(ctx, "BREAKER_RESET")
    assert reset.payload["node"] == "n2" and reset.payload["from"] == "open"
    assert reset.payload["to"] == "closed"


def test_oom_rate_change_and_denial_are_events(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context(
        "oom: {lower_after: 1}\ncircuit_breaker: {failure_threshold: 50}\n"
        "task_limits: {training: {per_node: 4}}\n",
        clock,
    )
    coord = TaskCoordinator(ctx)
    task = coord.register_task(None, "training", "n1", pid=os.getpid())
    coord.unregister_task(task, status="oom", reason="killed by the kernel OOM killer")
    (oom,) = _all(ctx, "OOM")
    assert oom.payload["task_id"] == task and oom.payload["pid"] == os.getpid()
    assert oom.payload["node"] == "n1" and oom.payload["type"] == "training"
    (lowered,) = _all(ctx, "CAP_LOWERED")
    assert lowered.payload["cap"] >= 1 and lowered.payload["ooms"] == 1
    for _ in range(3):  # down to 1, then more OOMs: the cap stays 1, no more CAP_LOWERED
        clock.advance(60)  # past the spawn rate limit
        task = coord.register_task(None, "training", "n1")
        coord.unregister_task(task, status="oom", reason="oom")
    caps = [e.payload["cap"] for e in _all(ctx, "CAP_LOWERED")]
    assert caps == sorted(set(caps), reverse=True) and caps[-1] == 1
    assert len(caps) < 4 and len(_all(ctx, "OOM")) == 4
    from ringrift_coord import safeguards

    safeguards.record_failure(ctx, "selfplay", "n2", "OOM")  # a recorded OOM counts too
    assert [e.payload["node"] for e in _all(ctx, "OOM")] == ["n1"] * 4 + ["n2"]
    recorded = _all(ctx, "OOM")[-1].payload  # named by its history row, as tasks history shows
    assert recorded["task_id"].startswith("recorded-") and recorded["pid"] is None
    with ctx.store.read() as tx:
        row = tx.one("SELECT status FROM task_history WHERE task_id = ?", (recorded["task_id"],))
    assert row == {"status": "oom"}

    from ringrift_coord.optimizer import negotiate

    negotiate.negotiate_in(ctx, 1200, "more games", "unified_loop")
    (rate,) = _all(ctx, "SELFPLAY_RATE_CHANGED")
    assert rate.payload["old_rate"] == 1000 and rate.payload["new_rate"] == 1200
    assert rate.payload["reason"] == "more games" and rate.payload["requestor"] == "unified_loop"
    (action,) = _all(ctx, "OPTIMIZER_ACTION")
    assert action.payload["new_action"] == "scale_up" and action.payload["old_action"] == "none"
    negotiate.negotiate_in(ctx, 1200, "same again", "unified_loop")  # no change: no event
    assert len(_all(ctx, "SELFPLAY_RATE_CHANGED")) == 1
    assert [e.payload["new_action"] for e in _all(ctx, "OPTIMIZER_ACTION")] == [
        "scale_up",
        "none",
    ]

    halts.activate(ctx, "stop", task_type="selfplay", ttl=None, who="op", host="h")
    for _ in range(5):  # a storm of identical refusals within one minute: one event
        assert not coord.check("selfplay", "n3").allowed
        clock.advance(1)
    (denied,) = _all(ctx, "TASK_DENIED")
    assert denied.seen == 5 and denied.node == "n3"
    assert denied.payload["rules"] == ["halt"] and denied.payload["type"] == "selfplay"
    assert denied.payload["minute"] % 60 == 0
    clock.advance(60)
    assert not coord.check("selfplay", "n3").allowed
    assert [e.seen for e in _all(ctx, "TASK_DENIED")] == [5, 1]


# --------------------------------------------------------------------------- pruning


def test_old_events_are_pruned_by_age(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context("events: {retention_days: 2}\n", clock)
    _publish(ctx, "PLATEAU_DETECTED", {"config": "a"})
    _publish(ctx, "PLATEAU_DETECTED", {"config": "b"})
    clock.advance(86400)
    _publish(ctx, "PLATEAU_DETECTED", {"config": "b"})  # seen again: its last_at moves on
    clock.advance(86400 + 1)
    with ctx.store.write() as tx:
        gone = events.prune(tx, tx.now(), float(ctx.settings.get("events.retention_days")))
    assert gone == 1
    assert [e.payload["config"] for e in _all(ctx)] == ["b"]


# --------------------------------------------------------------------------- hooks


def _hook_config(tmp: Path, hooks: dict) -> str:
    return "events:\n  hooks:\n" + textwrap.indent(json.dumps(hooks, indent=2), "    ") + "\n"


def _log(state: Path) -> str:
    path = state / "hooks.log"
    return path.read_text() if path.exists() else ""


def test_a_hook_gets_the_event_on_stdin_and_repeats_do_not_run_it(engine_db, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "got"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\ncat >> "{out}"\n')
    script.chmod(0o755)
    ctx = engine_db.context(
        _hook_config(tmp_path, {"record": {"on": ["MODEL_*"], "command": [str(script)]}})
    )
    first = _publish(ctx, "MODEL_PROMOTED", {"model": "m1", "elo": 1500})
    _publish(ctx, "MODEL_PROMOTED", {"elo": 1500, "model": "m1"})  # a repeat: no hook
    _publish(ctx, "TRAINING_COMPLETED", {"model": "m1"})  # not matched
    got = wait_for(lambda: out.exists() and out.read_text(), 20, "the hook's output")
    time.sleep(0.5)  # a second run (the bug this guards against) would have landed by now
    (line,) = str(got).splitlines()
    doc = json.loads(line)
    assert doc["event_id"] == first.id and doc["type"] == "MODEL_PROMOTED"
    assert doc["payload"] == {"elo": 1500, "model": "m1"} and doc["seen"] == 1
    assert _log(Path(engine_db.state_dir)) == ""


def test_failing_missing_and_slow_hooks_are_logged_and_killed(engine_db, tmp_path) -> None:  # noqa: ANN001
    pidfile = tmp_path / "slow.pid"
    hooks = {
        "fails": {"on": ["HALT"], "command": ["sh", "-c", "echo boom >&2; exit 3"]},
        "missing": {"on": ["HALT"], "command": [str(tmp_path / "no-such-program")]},
        "slow": {
            "on": ["HALT"],
            "command": ["sh", "-c", f'echo $$ > "{pidfile}"; sleep 60 & wait'],
            "timeout": 1,
        },
    }
    ctx = engine_db.context(_hook_config(tmp_path, hooks))
    started = time.monotonic()
    halts.activate(ctx, "hooks", task_type=None, ttl=None, who="op", host="h")
    assert time.monotonic() - started < 2  # the halt never waited for its hooks
    state = Path(engine_db.state_dir)
    log = str(wait_for(lambda: _log(state).count("\n") >= 3 and _log(state), 30, "3 log lines"))
    lines = sorted(log.splitlines(), key=lambda x: x.split(" hook ")[1])
    (halt,) = _all(ctx, "HALT")
    assert all(f"event HALT #{halt.id}: " in line for line in lines), lines
    assert "hook fails event HALT" in lines[0] and "exit status 3: boom" in lines[0]
    assert "hook missing event HALT" in lines[1] and "cannot start" in lines[1]
    assert "hook slow event HALT" in lines[2] and "timed out after 1 s: killed" in lines[2]
    pid = int(pidfile.read_text())
    wait_for(lambda: not alive(pid), 10, "the slow hook's shell to be killed")


def test_a_blocked_hook_never_delays_a_refused_can_spawn(coord: Coord, tmp_path: Path) -> None:
    """The hook blocks on a FIFO no one reads: can-spawn has answered (exit 1) long before the
    test opens the FIFO and reads the event the hook was given."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    coord.write_config(
        _hook_config(
            tmp_path,
            {
                "block": {
                    "on": ["TASK_DENIED"],
                    "command": ["sh", "-c", f'cat > "{fifo}"'],
                    "timeout": 60,
                }
            },
        )
    )
    assert coord("halt", "--reason", "x").returncode == 0
    done = coord("can-spawn", "selfplay", "--node", "n1", timeout=30)
    assert done.returncode == 1, done.stderr
    with open(fifo) as reader:  # the hook is still there, blocked on opening the FIFO
        doc = json.loads(reader.read())
    assert doc["type"] == "TASK_DENIED" and doc["payload"]["rules"] == ["halt"]


def test_a_hook_never_holds_up_a_refused_can_spawn(engine_db, tmp_path) -> None:  # noqa: ANN001
    """Median of N refusals, each a NEW event (a new minute), with and without a hook that
    runs for 5 s: the refusal starts the hook and goes on (the medians are printed: the
    README's in-process cost; a bound on them would be a timed test)."""
    n = 15

    def median(config: str, start: float) -> float:
        clock = ManualClock(start)  # its own minutes: every refusal is a new event
        ctx = engine_db.context(config, clock)
        coord = TaskCoordinator(ctx)
        halts.activate(ctx, "x", task_type=None, ttl=None, who="op", host="h")
        took = []
        for _ in range(n):
            clock.advance(60)
            started = time.perf_counter()
            assert not coord.check("selfplay", "n1").allowed
            took.append(time.perf_counter() - started)
        return statistics.median(took)

    without = median("{}\n", 1_800_000_000.0)
    config = _hook_config(tmp_path, {"h": {"on": ["TASK_DENIED"], "command": ["sleep", "5"]}})
    # a few minutes on, not 10^8 s: a prune (random, one publish in 64) keeps the first batch
    hooked = median(config, 1_800_000_000.0 + 60 * (n + 2))
    with engine_db.open().read() as tx:  # each refusal was new: each started the hook
        assert [e.seen for e in events.list_events(tx, "TASK_DENIED")] == [1] * (2 * n)
    print(f"refused can-spawn: median {without * 1e3:.1f} ms, with a hook {hooked * 1e3:.1f} ms")
    assert hooked < 2.5, (without, hooked)  # waiting for the hook would take 5 s each


def test_a_bad_hook_is_left_out_and_the_good_ones_still_run(coord: Coord, tmp_path: Path) -> None:
    out = tmp_path / "got"
    path = coord.write_config(
        f"""
        events:
          hooks:
            pager:
              command: [/bin/true]
            record:
              on: [HALT]
              command: [sh, -c, 'cat > "{out}"']
            zero:
              on: [HALT]
              command: [/bin/true]
              timeout: 0
        """
    )
    done = coord("events", "list")  # the event log's own commands: an error, exit 3
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert f"{path}:5" in done.stderr and "hook pager has no on" in done.stderr
    assert "left out too: zero" in done.stderr and "Traceback" not in done.stderr
    validated = coord("config", "validate")
    assert validated.returncode == 3 and "hook pager has no on" in validated.stderr
    halted = coord("halt", "--reason", "x")  # a command that publishes warns and goes on
    assert halted.returncode == 0, halted.stderr
    (warning,) = [line for line in halted.stderr.splitlines() if "warning:" in line]
    assert f"{path}:5" in warning and "hook pager has no on" in warning
    assert "the hook is left out, the others run" in warning and "does not use it" not in warning
    got = wait_for(lambda: out.exists() and out.read_text(), 20, "the good hook's output")
    assert json.loads(str(got))["type"] == "HALT"  # the good hook ran all the same
    assert not (Path(coord.state_dir) / "hooks.log").exists()  # the bad ones never ran


@pytest.mark.parametrize(
    "bad", ["comand: [/bin/true]", "command: [/bin/true]\n              timeout: soon"]
)
def test_a_hook_with_a_bad_key_or_value_costs_only_itself(
    coord: Coord, tmp_path: Path, bad: str
) -> None:
    """A typo'd key or a bad value in one hook (caught while reading the file, before the
    cross-checks) leaves that hook out, not the whole section: the good hook runs, with its
    signals as a direct exec would have them (sh's background & ignores SIGINT/SIGQUIT)."""
    out = tmp_path / "got"
    coord.write_config(
        f"""
        events:
          hooks:
            record:
              on: [HALT]
              command: [sh, -c, 'grep SigIgn /proc/self/status > "{out}"']
            typo:
              on: [HALT]
              {bad}
        """
    )
    halted = coord("halt", "--reason", "x")
    assert halted.returncode == 0, halted.stderr
    assert "events.hooks.typo" in halted.stderr and "the others run" in halted.stderr
    got = wait_for(lambda: out.exists() and out.read_text(), 20, "the good hook's output")
    assert str(got).split() == ["SigIgn:", "0000000000000000"]
    assert coord("config", "validate").returncode == 3


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ('""', "the command is empty"),
        ("[]", "the command is empty"),
        ("[true]", "word 1 of the command is not text (YAML read it as true): put it in"),
        ("[echo, 1]", "word 2 of the command is not text (YAML read it as the number 1)"),
        ("[echo, 12:30]", "word 2 of the command is not text (YAML read it as the number 750)"),
        ("[echo, 2026-01-01]", "word 2 of the command is not text (YAML read it as the date"),
        ("[echo, ~]", "word 2 of the command is not text (YAML read it as null)"),
        ("[echo, [a]]", "word 2 of the command is not text (YAML read it as a list)"),
        ("{a: 1}", "expected a command: a list of words or one string, got a mapping"),
        ("'\"open'", "cannot split the command into words"),
        ('["", x]', "the command's first word (the program) is empty"),
    ],
)
def test_a_bad_hook_command_is_named_for_what_is_wrong(
    coord: Coord, command: str, said: str
) -> None:
    coord.write_config(f"events:\n  hooks:\n    w:\n      on: HALT\n      command: {command}\n")
    done = coord("config", "validate")
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert f":5: events.hooks.w.command: {said}" in done.stderr, done.stderr


# --------------------------------------------------------------------------- the CLI


def test_publish_list_and_tail_from_the_command_line(coord: Coord) -> None:
    first = coord("events", "publish", "NEW_GAMES_AVAILABLE", "--payload", '{"n": 500, "c": "sq8"}')
    assert first.returncode == 0 and first.stdout.strip().isdigit(), first.stderr
    again = coord("events", "publish", "NEW_GAMES_AVAILABLE", "--payload", '{"c":"sq8","n":500}')
    assert again.stdout.strip() == f"{first.stdout.strip()} (already stored: seen 2 times)"
    odd = coord("events", "publish", "NEW_GAME_AVAILABLE", "--node", "n1")
    assert odd.returncode == 0 and "did you mean NEW_GAMES_AVAILABLE" in odd.stderr
    marked = coord("events", "publish", "X", "--payload", '{"note": "[red]\\u001b[2Jhi"}')
    assert marked.returncode == 0
    for bad in (("lower",), ("X", "--payload", "[1]"), ("X", "--payload", "{")):
        done = coord("events", "publish", *bad)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    listed = coord("events", "list", "--format", "tsv", "--no-header")
    rows = [row.split("\t") for row in listed.stdout.splitlines()]
    assert [r[2] for r in rows] == ["NEW_GAMES_AVAILABLE", "NEW_GAME_AVAILABLE", "X"]
    assert rows[0][4] == "2" and "\x1b" not in listed.stdout and "[red]\\u001b[2Jhi" in rows[2][7]
    assert coord("events", "list", "--type", "X", "--since", "1h").stdout.count("\n") == 3
    assert "no events" in coord("events", "list", "--since", "2100-01-01T00:00").stdout
    assert coord("events", "list", "--since", "yesterday").returncode == 2
    doc = json.loads(coord("--json", "events", "tail", "-n", "2").stdout)
    assert [e["type"] for e in doc["events"]] == ["NEW_GAME_AVAILABLE", "X"]
    assert doc["events"][0]["node"] == "n1"
    published = json.loads(coord("--json", "events", "publish", "X", "--payload", "{}").stdout)
    assert published["new"] is True and published["known"] is False


def test_tail_follow_sees_a_new_event_and_exits_0_on_sigint(coord: Coord) -> None:
    assert (
        coord("events", "publish", "SELFPLAY_COMPLETE", "--payload", '{"games": 1}').returncode == 0
    )
    follower = coord.popen("--json", "events", "tail", "--follow", "-n", "1")
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["type"] == "SELFPLAY_COMPLETE" and first["schema_version"] == 1
        assert coord("halt", "--reason", "watch this").returncode == 0
        second = json.loads(follower.stdout.readline())  # arrives within a poll or two
        assert second["type"] == "HALT" and second["payload"]["reason"] == "watch this"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_tail_follow_exits_0_on_sigterm(coord: Coord) -> None:
    assert coord("events", "publish", "X").returncode == 0
    follower = coord.popen("events", "tail", "-f")
    try:
        assert follower.stdout is not None
        assert " X {}" in follower.stdout.readline()
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_the_hook_runner_refuses_a_bad_job_quietly() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "ringrift_coord.hookrun"], input=b"not json", capture_output=True
    )
    assert done.returncode == 2 and done.stderr == b""


def test_tail_follow_ends_when_its_reader_is_gone(coord: Coord) -> None:
    """``events tail -f | head -1``: it sees the pipe closed at its next poll, without a new
    event to write, and exits 0 (as ``tail -f`` does)."""
    import subprocess

    assert coord("events", "publish", "X").returncode == 0
    pipeline = subprocess.Popen(
        [
            "bash",
            "-c",
            'set -o pipefail; "$0" -m ringrift_coord events tail -f -n 1 | head -1; echo "rc=$?"',
            sys.executable,
        ],
        env=coord.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pipeline.stdout is not None
        assert " X {}" in pipeline.stdout.readline()  # head's one line; head has exited
        out, _ = pipeline.communicate(timeout=15)  # no new event needed to notice
        assert pipeline.returncode == 0 and out == "rc=0\n"
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()


def test_record_spawn_under_a_halt_is_neither_a_denial_nor_an_event(engine_db) -> None:  # noqa: ANN001
    """record_spawn notes a spawn that already happened: it is logged with the rules that
    would have refused it, but it refused nothing: no TASK_DENIED, no ringrift_denials_total."""
    from ringrift_coord import counters
    from ringrift_coord.safeguards import Safeguards

    ctx = engine_db.context(clock=ManualClock())
    halts.activate(ctx, "maintenance", task_type="selfplay", ttl=None, who="op@a", host="a")
    noted = Safeguards(ctx).record_spawn("selfplay", "node-1")
    assert not noted.allowed  # the decision as it stood: the halt
    assert _all(ctx, "TASK_DENIED") == []
    with ctx.store.read() as tx:
        assert counters.read(tx, "denials") == []
    refused = TaskCoordinator(ctx).check("selfplay", "node-1")  # a real question is refused
    assert not refused.allowed
    assert [e.payload["rules"] for e in _all(ctx, "TASK_DENIED")] == [["halt"]]


# --------------------------------------------------------------------------- after the review


def test_hooks_get_the_publishers_pythonpath_as_it_was(
    engine_db,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "env"
    hook = {"on": ["X"], "command": ["sh", "-c", f'echo "${{PYTHONPATH-unset}}" >> "{out}"']}
    ctx = engine_db.context(_hook_config(tmp_path, {"env": hook}))
    monkeypatch.setenv("PYTHONPATH", "/efix-marker")
    _publish(ctx, "X", {"n": 1})
    wait_for(lambda: out.exists() and out.read_text(), 20, "the first hook's output")
    monkeypatch.delenv("PYTHONPATH")
    _publish(ctx, "X", {"n": 2})
    got = wait_for(lambda: out.read_text().count("\n") == 2 and out.read_text(), 20, "2 lines")
    assert str(got).splitlines() == ["/efix-marker", "unset"]


def test_hooks_log_never_follows_a_link_and_has_the_state_dirs_mode(tmp_path: Path) -> None:
    from ringrift_coord import hookrun

    event = {"type": "X", "event_id": 7}
    target = tmp_path / "target"
    target.write_text("keep\n")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    log = private / "hooks.log"
    old = os.umask(0o022)
    try:
        log.symlink_to(target)  # a planted link: nothing is written through it
        hookrun.log_failure(str(log), "h", event, "exit status 1")
        assert target.read_text() == "keep\n" and log.is_symlink()
        log.unlink()
        hookrun.log_failure(str(log), "h", event, "exit status 1")
        assert "hook h event X #7: exit status 1" in log.read_text()
        assert log.stat().st_mode & 0o777 == 0o600
        # rotation: the old log becomes .1 by a rename, a link planted as .1 is replaced
        (private / "hooks.log.1").symlink_to(target)
        with open(log, "a") as handle:
            handle.write("x" * (hookrun.MAX_LOG + 1))
        hookrun.log_failure(str(log), "h", event, "again")
        assert target.read_text() == "keep\n"
        assert not (private / "hooks.log.1").is_symlink()
        assert log.read_text().count("\n") == 1 and "again" in log.read_text()
        shared = tmp_path / "shared"  # a state directory shared by a group (2770)
        shared.mkdir()
        shared.chmod(0o2770)
        hookrun.log_failure(str(shared / "hooks.log"), "h", event, "x")
        assert (shared / "hooks.log").stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)


def test_a_hook_whose_child_holds_stdin_never_blocks_the_runner(engine_db, tmp_path) -> None:  # noqa: ANN001
    """The hook leaves a child holding its stdin and exits 0 without reading a 64 KiB event:
    with the event in a file (not a pipe the runner writes) the hook is done at once; the
    runner logs nothing (a pipe would have blocked it until the timeout killed the hook)."""
    pidfile = tmp_path / "child.pid"
    hook = {
        "on": ["X"],
        "command": ["sh", "-c", f'exec 3<&0; sleep 30 <&3 3<&- & echo $! > "{pidfile}"; exit 0'],
        "timeout": 2,
    }
    ctx = engine_db.context(_hook_config(tmp_path, {"holder": hook}))
    _publish(ctx, "X", {"big": "a" * 65400})  # with the rest, more than a pipe holds
    pid = int(str(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, "pid")))
    try:
        time.sleep(3)  # past the hook's timeout: a blocked runner would have killed and logged
        assert _log(Path(engine_db.state_dir)) == ""
        assert alive(pid)  # not killed: the hook ended, nothing timed out
    finally:
        os.kill(pid, signal.SIGKILL)


def _children_of(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of each process whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0], cmdline))
    return found


def test_the_runner_is_no_child_of_a_long_lived_publisher(engine_db, tmp_path) -> None:  # noqa: ANN001
    """In one Python process publishing on and on (serve, the Python API): the runner is not
    this process's child (no zombie once it ends) and no ResourceWarning is emitted."""
    import gc
    import warnings

    out = tmp_path / "ran"
    hook = {"on": ["X"], "command": ["sh", "-c", f'echo ran >> "{out}"']}
    ctx = engine_db.context(_hook_config(tmp_path, {"h": hook}))
    # Only this test's garbage: what earlier tests in this worker left unclosed is collected
    # first, and no automatic collection runs inside the block (it once caught another
    # test's unclosed object here).
    gc.collect()
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _publish(ctx, "X", {"n": 1})
            runners = [c for c in _children_of(os.getpid()) if "ringrift_coord.hookrun" in c[2]]
            assert runners == [] and not [c for c in _children_of(os.getpid()) if c[1] == "Z"]
            wait_for(lambda: out.exists() and out.read_text(), 20, "the hook to run")
            gc.collect()
    finally:
        gc.enable()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_publish_list_options_and_bad_text_from_the_command_line(coord: Coord) -> None:
    nowhere = coord("events", "list", "--since", "nonsense")  # no store yet: options first
    assert nowhere.returncode == 2 and "option --since" in nowhere.stderr
    assert not coord.db.exists()
    first = coord("events", "publish", "MODEL_PROMOTED", "--payload", '{"a":1}')
    other = coord("events", "publish", "MODEL_PROMOTED", "--payload", '{"a":1}', "--node", "n2")
    assert first.returncode == 0 and other.returncode == 0, other.stderr
    assert "already stored" not in other.stdout and other.stdout.strip() != first.stdout.strip()
    surrogate = coord("events", "publish", "X", "--payload", '{"a": "\\ud800"}')
    assert surrogate.returncode == 2 and surrogate.stderr.count("\n") == 1, surrogate.stderr
    assert "not valid Unicode text" in surrogate.stderr


def test_tail_follow_rides_out_postgres_stopped_and_exits_0(tmp_path: Path) -> None:
    """A dedicated PostgreSQL server, stopped under ``events tail -f``: one line on stderr,
    the follower keeps polling, and sees the next event once the server is back."""
    from pgserver import PgServer, find_pg_bin

    bindir = find_pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed")
    pg = PgServer(bindir)
    follower = None
    try:
        pg.start()
        coord = Coord(tmp_path)
        coord.env["RINGRIFT_COORD_DB"] = pg.create_database("tail_down")
        assert coord("events", "publish", "X", "--payload", '{"n": 1}').returncode == 0
        follower = coord.popen("--json", "events", "tail", "-f", "-n", "1")
        assert follower.stdout is not None and follower.stderr is not None
        assert json.loads(follower.stdout.readline())["payload"] == {"n": 1}
        pg.stop()
        line = follower.stderr.readline()
        assert "events tail: " in line and "retrying every second" in line
        assert follower.poll() is None  # still following
        pg.start()
        assert coord("events", "publish", "X", "--payload", '{"n": 2}').returncode == 0
        assert json.loads(follower.stdout.readline())["payload"] == {"n": 2}
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=10) == 0
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        pg.destroy()


def test_tail_follow_rides_out_its_sqlite_file_deleted_and_restored(tmp_path: Path) -> None:
    """The SQLite file moved away under ``events tail -f`` (deleted, or being restored from a
    backup) ended the follower with exit 3 at once; it is away as a stopped PostgreSQL is:
    one line on stderr, polling on, and the next event once the file is back."""
    coord = Coord(tmp_path)
    assert coord("events", "publish", "X", "--payload", '{"n": 1}').returncode == 0
    follower = coord.popen("--json", "events", "tail", "-f", "-n", "1")
    aside = tmp_path / "aside.db"
    try:
        assert follower.stdout is not None and follower.stderr is not None
        assert json.loads(follower.stdout.readline())["payload"] == {"n": 1}
        coord.db.rename(aside)
        line = follower.stderr.readline()
        # (worded as the moment found it: deleted while open, or while being opened)
        assert "events tail: " in line and str(coord.db) in line, line
        assert line.rstrip().endswith("retrying every second"), line
        time.sleep(1.5)  # a few more polls with the file away: still following, silent
        assert follower.poll() is None
        aside.rename(coord.db)
        assert "the store is back" in follower.stderr.readline()
        assert coord("events", "publish", "X", "--payload", '{"n": 2}').returncode == 0
        assert json.loads(follower.stdout.readline())["payload"] == {"n": 2}
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=10) == 0
        assert follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_tail_follow_exits_0_on_a_signal_during_its_first_read(
    coord: Coord, sig: signal.Signals
) -> None:
    """The store is a socket that accepts and never answers: the follower is stuck in its
    first read when the signal comes, and still exits 0 (the handlers came first)."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(30)
        port = server.getsockname()[1]
        follower = coord.popen(
            "events", "tail", "-f", env={"RINGRIFT_COORD_DB": f"postgresql://u@127.0.0.1:{port}/d"}
        )
        try:
            held, _ = server.accept()  # it is connecting: inside its first read
            with held:
                follower.send_signal(sig)
                assert follower.wait(timeout=10) == 0, follower.stderr.read()  # type: ignore[union-attr]
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()


def test_unhalt_of_a_halt_that_had_expired_is_no_event(engine_db) -> None:  # noqa: ANN001
    """A halt that lapsed by its ttl was no longer in force: lifting it later publishes no
    UNHALT (expiry itself publishes none either); a halt still in force does."""
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    halts.activate(ctx, "short", task_type="training", ttl=60, who="op@a", host="a")
    halts.activate(ctx, "long", task_type="cmaes", ttl=None, who="op@a", host="a")
    clock.advance(61)
    halts.deactivate(ctx, task_type="training", who="op@b", host="b")
    assert _all(ctx, "UNHALT") == []
    halts.deactivate(ctx, task_type="cmaes", who="op@b", host="b")
    assert [e.payload["type"] for e in _all(ctx, "UNHALT")] == ["cmaes"]
