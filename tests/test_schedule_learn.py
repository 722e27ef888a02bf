"""Learned durations, stale tasks and slot prediction (``schedule.expected``,
``schedule.forecast``, ``schedule expected/record/stale/next-slot``, ``DurationScheduler``).

The statistic is the median inside a log-space MAD fence: its properties are checked with
Hypothesis; everything that touches the store runs on both engines, by the store's injected
clock (in-process) or ``--now`` (the command line)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord.clock import ManualClock
from ringrift_coord.duration_scheduler import DurationScheduler
from ringrift_coord.schedule import expected, forecast
from ringrift_coord.schedule.expected import robust
from ringrift_coord.task_coordinator import TaskCoordinator

ENGINES = ("sqlite", "postgres")
PREFIX = "ringrift-coord: error: "
HOUR = 3600.0


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0][len(PREFIX) :]


def js(coord, *argv: str) -> dict:  # noqa: ANN001
    """The ``--json`` document of a command that succeeded."""
    done = coord("--json", *argv)
    assert done.returncode == 0, (argv, done.stderr)
    return json.loads(done.stdout)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


# --------------------------------------------------------------------------- the statistic

DURATION = st.floats(min_value=1.0, max_value=1e7, allow_nan=False, allow_infinity=False)
SAMPLES = st.lists(DURATION, min_size=1, max_size=25)


def test_the_examples() -> None:
    assert robust([100, 200, 300]) == (200.0, 3)
    assert robust([100, 200, 300, 100_000]) == (200.0, 3)  # the outlier is dropped
    assert robust([100, 200, 300, 250]) == (225.0, 4)  # a plausible sample is kept
    assert robust([7.0]) == (7.0, 1)
    assert robust([60, 60, 60, 70]) == (60.0, 4)  # MAD 0: the ln 4 floor keeps 70
    with pytest.raises(ValueError):
        robust([])


@settings(max_examples=300, deadline=None)
@given(SAMPLES)
def test_the_estimate_lies_within_the_samples(samples: list[float]) -> None:
    value, used = robust(samples)
    assert min(samples) <= value <= max(samples)
    assert 1 <= used <= len(samples)
    assert used > len(samples) / 2  # the fence never drops the majority


@settings(max_examples=300, deadline=None)
@given(SAMPLES, st.randoms(use_true_random=False))
def test_the_order_of_the_samples_does_not_matter(samples: list[float], rnd) -> None:
    shuffled = list(samples)
    rnd.shuffle(shuffled)
    assert robust(shuffled) == robust(samples)


@st.composite
def consistent(draw: st.DrawFn) -> list[float]:
    """At least 3 durations within a factor of 4 of each other: a history that agrees."""
    low = draw(st.floats(min_value=1.0, max_value=1e6))
    n = draw(st.integers(min_value=3, max_value=20))
    return [low * draw(st.floats(min_value=1.0, max_value=4.0)) for _ in range(n)]


@settings(max_examples=500, deadline=None)
@given(consistent(), st.floats(min_value=1e-3, max_value=1e12))
def test_one_more_sample_moves_it_at_most_to_the_next_order_statistic(
    samples: list[float], extra: float
) -> None:
    """Whatever one more sample is (a run that crashed at once with exit code 0, one that
    hung for weeks), the estimate stays between the order statistics next to the median."""
    ordered = sorted(samples)
    n = len(ordered)
    low, high = ordered[(n - 1) // 2 - 1], ordered[min(n - 1, n // 2 + 1)]
    value, _ = robust([*samples, extra])
    assert low * (1 - 1e-12) <= value <= high * (1 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(consistent(), st.floats(min_value=500.0, max_value=1e9))
def test_a_far_outlier_is_dropped_entirely(samples: list[float], factor: float) -> None:
    """Past 3 x 1.4826 x ln 4 (~ a factor 480) from the median, a sample counts for nothing."""
    assert robust([*samples, max(samples) * factor]) == robust(samples)
    assert robust([*samples, min(samples) / factor]) == robust(samples)


def test_a_split_history_is_not_a_cluster() -> None:
    """Where the samples form no cluster (half of them ~100x the others), one more sample
    can move the estimate across the gap: the property above needs a history that agrees.
    This pins the behaviour: the fence then keeps everything and the median is the plain
    median."""
    split = [1.0, 1.0, 446.0, 446.0, 24172.0, 60299.0, 79813.0, 233752.0, 233753.0]
    assert robust(split)[0] == 60299.0
    assert robust([*split, 1.0]) == (12309.0, 10)


# --------------------------------------------------------------------------- learning


def test_recorded_durations_are_learned_per_config(engine_db) -> None:
    """100, 200, 300 s for one config: its expected duration lies in that range; other
    configs (and the type alone) keep the default; one 100,000 s outlier moves it by 0 s."""
    ctx = engine_db.context()
    sched = DurationScheduler(ctx)
    assert sched.get_expected_duration("training", "sq8") == 4 * HOUR  # the default
    for seconds in (100, 200):
        sched.record_duration("training", "sq8", seconds)
        assert sched.get_expected_duration("training", "sq8") == 4 * HOUR  # 2 < min_samples
    sched.record_duration("training", "sq8", 300)
    learned = sched.get_expected_duration("training", "sq8")
    assert learned is not None and 100 <= learned <= 300
    assert learned == 200.0
    assert sched.get_expected_duration("training", "hex8") == 4 * HOUR
    assert sched.get_expected_duration("training") == 4 * HOUR
    assert sched.get_expected_duration("cmaes", "sq8") == 8 * HOUR
    sched.record_duration("training", "sq8", 100_000)
    after = sched.expected("training", "sq8")
    assert after.seconds == learned  # moved by 0 s: the outlier is outside the fence
    assert (after.source, after.samples, after.used) == ("learned", 4, 3)
    assert sched.get_expected_duration("sync") is None  # no default, nothing learned
    assert sched.expected("sync").source == "none"


def test_only_the_newest_samples_are_kept(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context("schedule: {samples: 5, min_samples: 2}\n", clock)
    sched = DurationScheduler(ctx)
    for seconds in (10, 20, 30, 40, 50, 600, 700, 800, 900, 1000):
        sched.record_duration("selfplay", "sq8", seconds)
        clock.advance(1)
    with ctx.store.read() as tx:
        kept = [r["seconds"] for r in expected.samples(tx, "selfplay", "sq8")]
    assert kept == [1000, 900, 800, 700, 600]
    assert sched.get_expected_duration("selfplay", "sq8") == 800
    with pytest.raises(ValueError):
        sched.record_duration("selfplay", "sq8", 0)
    with pytest.raises(ValueError):
        sched.record_duration("selfplay", "sq8", float("nan"))
    with pytest.raises(ValueError):
        sched.record_duration("selfplay", "sq8", 2e9)


def test_lookup_many_reads_every_key_in_one_query(engine_db) -> None:
    ctx = engine_db.context()
    sched = DurationScheduler(ctx)
    for seconds in (100, 110, 120):
        sched.record_duration("selfplay", "a", seconds)
        sched.record_duration("selfplay", "b", seconds * 10)
    store = ctx.store
    with store.read() as tx:
        queries: list[str] = []
        original = tx.query

        def counted(sql, args=()):  # noqa: ANN001, ANN202
            queries.append(sql)
            return original(sql, args)

        tx.query = counted  # type: ignore[method-assign]
        found = expected.lookup_many(
            tx, ctx.settings, [("selfplay", "a"), ("selfplay", "b"), ("selfplay", None)]
        )
    assert len(queries) == 1
    assert found[("selfplay", "a")].seconds == 110
    assert found[("selfplay", "b")].seconds == 1100
    assert found[("selfplay", "")].source == "default"


STATUSES = ("ok", "failed", "oom", "killed", "stopped", "spawn_failed")


@pytest.mark.parametrize("status", STATUSES)
def test_only_a_successful_end_teaches(engine_db, status: str) -> None:
    """unregister with each status: only ``ok`` records the task's duration, in the
    transaction that frees its slot; a reaped task teaches nothing either."""
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    coord = TaskCoordinator(ctx)
    task = coord.register_task(None, "training", "n1", config_name="sq8")
    clock.advance(1234.5)
    coord.unregister_task(task, status=status)
    with ctx.store.read() as tx:
        found = expected.samples(tx, "training", "sq8")
    if status == "ok":
        assert [(r["seconds"], r["source"], r["task_id"]) for r in found] == [
            (1234.5, "register", task)
        ]
    else:
        assert found == []


def test_a_reaped_task_teaches_nothing(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    coord = TaskCoordinator(ctx)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with ctx.store.write() as tx:
        now = tx.now()
        tx.execute(
            "INSERT INTO tasks (task_id, task_type, node, host, pid, config_name, source, "
            "started_at, lease_expires, lease_token) VALUES ('gone','training','n1','elsewhere',"
            "?,'sq8','run',?,?,7)",
            (dead.pid, now, now + 60),
        )
    clock.advance(61)
    assert [r["task_id"] for r in coord.reap()] == ["gone"]
    with ctx.store.read() as tx:
        assert expected.samples(tx, "training", "sq8") == []


def test_run_and_unregister_record_success_and_not_failure(coord) -> None:
    """`run` and `unregister` release through the same path: exit 0 teaches (sources run
    and register), a failed run or an unregister with an exit code does not."""
    short = ("--set", "schedule.min_seconds=0")  # an instant run teaches too
    done = coord(*short, "run", "selfplay", "--node", "n1", "--config-name", "x", "--", "true")
    assert done.returncode == 0
    failed = coord(*short, "run", "selfplay", "--node", "n1", "--config-name", "x", "--", "false")
    assert failed.returncode == 1
    doc = js(coord, "schedule", "expected", "selfplay", "--config-name", "x")
    assert (doc["samples"], doc["source"], doc["expected_seconds"]) == (1, "default", 3600.0)
    assert doc["needed"] == 3 and doc["default_seconds"] == 3600
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for code in ("0", "3"):
            task = coord(
                "register",
                "selfplay",
                "--node",
                "n1",
                "--pid",
                str(holder.pid),
                "--config-name",
                "x",
            ).stdout.strip()
            assert coord(*short, "unregister", task, "--exit-code", code).returncode == 0
    finally:
        holder.kill()
        holder.wait()
    assert js(coord, "schedule", "expected", "selfplay", "--config-name", "x")["samples"] == 2


# --------------------------------------------------------------------------- the commands


def test_expected_and_record_commands(coord) -> None:
    for seconds in ("100", "200", "5m"):
        done = coord("schedule", "record", "training", "--config-name", "sq8", "--seconds", seconds)
        assert done.returncode == 0, done.stderr
    doc = json.loads(
        coord("--json", "schedule", "expected", "training", "--config-name", "sq8").stdout
    )
    assert doc["expected_seconds"] == 200.0 and doc["source"] == "learned"
    assert 100 <= doc["expected_seconds"] <= 300
    recorded = coord(
        "--json", "schedule", "record", "training", "--config-name", "sq8", "--seconds", "100000"
    )
    new = json.loads(recorded.stdout)
    assert new["recorded_seconds"] == 100000 and new["expected_seconds"] == 200.0
    assert (new["samples"], new["used"], new["expected_source"]) == (4, 3, "learned")
    other = json.loads(
        coord("--json", "schedule", "expected", "training", "--config-name", "hex").stdout
    )
    assert (other["expected_seconds"], other["source"]) == (14400.0, "default")
    text = coord("schedule", "expected", "training", "--config-name", "sq8").stdout
    assert (
        text.startswith("training (sq8): expected ~3 min, learned from 4") and "1 dropped" in text
    )
    none = js(coord, "schedule", "expected", "sync")
    assert none["expected_seconds"] is None and none["source"] == "none"
    # no config name is a key of its own; '' is none
    assert coord("schedule", "record", "training", "--seconds", "4h").returncode == 0
    alone = json.loads(
        coord("--json", "schedule", "expected", "training", "--config-name", "").stdout
    )
    assert alone["config_name"] is None and alone["samples"] == 1


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("record", "training", "--seconds", "0"), "option --seconds: 0 is not a duration"),
        (("record", "training", "--seconds", "2000000000"), "more than 1e9 seconds"),
        (("record", "training", "--seconds", "soon"), "option --seconds: 'soon' is not"),
        (("record", "training", "--seconds", "-5"), "-5 is not a duration: it must be more than 0"),
        (("record", "warp", "--seconds", "5"), "unknown task type 'warp'"),
        (("expected", "training", "--config-name", " "), "--config-name must not be empty"),
        (("stale", "--now", "tomorrow"), "option --now: 'tomorrow' is not an ISO 8601 time"),
        (("next-slot", "training", "--node", "n1", "--now", "x"), "option --now"),
        (("next-slot", "training", "--node", ""), "--node must not be empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(coord, argv: tuple[str, ...], words: str) -> None:
    assert coord("schedule", "record", "selfplay", "--seconds", "1").returncode == 0  # a store
    assert words in one_error_line(coord("schedule", *argv), 2)


def test_stale_lists_a_registered_training_task_a_day_ahead(coord) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        task = coord(
            "register", "training", "--node", "n1", "--pid", str(holder.pid), "--config-name", "x"
        ).stdout.strip()
        coord("register", "sync", "--node", "n1", "--pid", str(holder.pid))  # never stale
        now = js(coord, "schedule", "stale")
        assert now["tasks"] == [] and now["checked"] == 2
        ahead = iso(now["at"] + 86400)
        doc = js(coord, "schedule", "stale", "--now", ahead)
        (row,) = doc["tasks"]
        assert row["task_id"] == task and row["task_type"] == "training"
        assert row["expected_seconds"] == 14400 and row["stale_after"] == 28800
        assert row["age"] == pytest.approx(86400, abs=60) and row["config_name"] == "x"
        assert doc["stale_factor"] == 2.0
        text = coord("schedule", "stale", "--now", ahead, "--format", "plain").stdout
        assert task in text and "training" in text
        assert task in coord("schedule", "stale", "--type", "training", "--now", ahead).stdout
        none = coord("--json", "schedule", "stale", "--type", "selfplay", "--now", ahead)
        assert json.loads(none.stdout)["tasks"] == []
        other = coord("--json", "schedule", "stale", "--node", "n2", "--now", ahead)
        assert json.loads(other.stdout)["tasks"] == []
        # the stale factor is the config's
        fast = coord(
            "--json", "--set", "schedule.stale_factor=10", "schedule", "stale", "--now", ahead
        )
        assert json.loads(fast.stdout)["tasks"] == []
    finally:
        holder.kill()
        holder.wait()


def test_next_slot_names_the_earlier_expected_end(engine_db) -> None:
    """Two trainings running on a node of per-node limit 2: the slot frees at the earlier
    one's expected end; admission's retry-after says the same."""
    clock = ManualClock()
    ctx = engine_db.context("task_limits: {training: {per_node: 2, cluster: 10}}\n", clock)
    coord = TaskCoordinator(ctx)
    t0 = clock.time()
    first = coord.register_task(None, "training", "n1")
    clock.advance(HOUR)
    coord.register_task(None, "training", "n1")
    clock.advance(HOUR)
    now = clock.time()
    with ctx.store.read() as tx:
        doc = forecast.next_slot(tx, ctx.settings, "training", "n1", now)
        other = forecast.next_slot(tx, ctx.settings, "training", "n2", now)
    assert doc["free_now"] is False
    assert doc["free_at"] == t0 + 4 * HOUR and doc["in_seconds"] == 2 * HOUR
    assert doc["basis"][0]["task_id"] == first
    assert [(x["kind"], x["binds"]) for x in doc["limits"]] == [
        ("per_node", True),
        ("cluster", False),
    ]
    assert other["free_now"] is True and other["in_seconds"] == 0
    denied = coord.check("training", "n1")
    assert [r.rule for r in denied.reasons] == ["node_limit"]
    assert denied.retry_after == 2 * HOUR
    # learned durations move it: the first task's config is unknown, its type alone learns
    sched = DurationScheduler(ctx)
    for seconds in (3 * HOUR, 3 * HOUR, 3 * HOUR):
        sched.record_duration("training", None, seconds)
    assert coord.check("training", "n1").retry_after == HOUR
    # past its expected end the first task is overdue: a slot is expected now
    clock.advance(2 * HOUR)
    with ctx.store.read() as tx:
        late = forecast.next_slot(tx, ctx.settings, "training", "n1", clock.time())
    assert late["basis"][0]["overdue"] is True and late["in_seconds"] == 0
    assert coord.check("training", "n1").retry_after == 5.0  # the floor


def test_next_slot_command_and_waiters(coord) -> None:
    coord.write_config("task_limits: {training: {per_node: 2, cluster: 3}}\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for node in ("n1", "n1", "n2"):
            assert (
                coord("register", "training", "--node", node, "--pid", str(holder.pid)).returncode
                == 0
            )
        doc = json.loads(
            coord("--json", "schedule", "next-slot", "training", "--node", "n3").stdout
        )
        # n3 has room, the cluster is full: the earliest of the three expected ends
        earliest = min(r["expected_end_at"] for r in doc["basis"])
        assert doc["free_now"] is False and doc["free_at"] == pytest.approx(earliest)
        assert {x["kind"]: x["binds"] for x in doc["limits"]} == {
            "per_node": False,
            "cluster": True,
        }
        text = coord("schedule", "next-slot", "training", "--node", "n3").stdout
        assert "expected to free at" in text and "cluster limit 3: 3 running (full)" in text
        later = iso(doc["at"] + 5 * HOUR)
        overdue = json.loads(
            coord(
                "--json", "schedule", "next-slot", "training", "--node", "n3", "--now", later
            ).stdout
        )
        assert overdue["in_seconds"] == 0 and all(r["overdue"] for r in overdue["basis"])
    finally:
        holder.kill()
        holder.wait()


def test_free_at_simulates_the_queue() -> None:
    now = 1000.0
    assert forecast.free_at([1100.0, 1200.0], 2, 0, 50.0, now) == 1100.0
    assert forecast.free_at([1100.0, 1200.0], 3, 0, 50.0, now) == now  # room
    # one waiter ahead takes the first freed slot (until 1150), this request the next
    assert forecast.free_at([1100.0, 1200.0], 2, 1, 50.0, now) == 1150.0
    assert forecast.free_at([1100.0, 1200.0, 1300.0], 2, 0, 50.0, now) == 1200.0  # over limit
    assert forecast.free_at([900.0, 1200.0], 2, 0, 50.0, now) == now  # overdue: ends now
    assert forecast.free_at([None, 1200.0], 1, 0, 50.0, now) is None  # unknown end
    assert forecast.free_at([1100.0], 1, 1, None, now) is None  # a waiter of unknown length
    assert forecast.free_at([], 0, 0, 50.0, now) is None  # no slot at all


def test_an_admitted_request_does_not_load_the_forecast(coord) -> None:
    """The retry-after is worked out only when a limit refuses: an admitted can-spawn never
    imports the forecast (nor the learned durations)."""
    coord("schedule", "record", "selfplay", "--seconds", "1")  # a store
    probe = (
        "import sys\n"
        "from ringrift_coord.cli.main import main\n"
        "try:\n"
        "    main(['can-spawn', 'training', '--node', 'n1'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print(sorted(m for m in sys.modules if m.startswith('ringrift_coord.schedule')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=coord.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_next_slot_counts_reservations_like_admission(engine_db) -> None:
    """Training slots reserved on another node count against the cluster limit, in the
    forecast as in admission: the slot frees when the one running training ends."""
    from ringrift_coord import reservations

    clock = ManualClock()
    ctx = engine_db.context("task_limits: {training: {per_node: 5, cluster: 3}}\n", clock)
    coord = TaskCoordinator(ctx)
    t0 = clock.time()
    coord.register_task(None, "training", "n1")
    with ctx.store.write() as tx:
        reservations.create(tx, "training", "n2", 2, None, "tester")
    clock.advance(HOUR)
    with ctx.store.read() as tx:
        doc = forecast.next_slot(tx, ctx.settings, "training", "n1", clock.time())
    cluster = next(x for x in doc["limits"] if x["kind"] == "cluster")
    assert (cluster["limit"], cluster["reserved"], cluster["running"]) == (3, 2, 1)
    assert cluster["binds"] is True and doc["free_at"] == t0 + 4 * HOUR
    denied = coord.check("training", "n1")
    assert [r.rule for r in denied.reasons] == ["cluster_limit"]
    assert denied.retry_after == 3 * HOUR


def test_a_sample_exactly_at_the_fence_is_kept_whatever_the_rounding() -> None:
    """24 is exactly 4x 6 (the ln 4 floor with a MAD of 0): it is inside, so one far outlier
    more or less never changes what is kept (Hypothesis found ln 24 - ln 6 > ln 4 in floats)."""
    assert robust([6.0, 6.0, 24.0]) == (6.0, 3) == robust([6.0, 6.0, 24.0, 12000.0])
    assert robust([6.0, 18.0, 24.0, 24.0, 24.0]) == (24.0, 5)
    assert robust([6.0, 18.0, 24.0, 24.0, 24.0, 6.0 / 500]) == (24.0, 5)
