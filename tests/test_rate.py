"""Rate negotiation (``rate negotiate``, ``negotiate_selfplay_rate``) and ``rate show``: the
approved rate stays within the configured bounds, moves by at most ``optimizer.max_change``
per negotiation, is not raised while the cluster is over target, sets the per-node self-play
targets, and every negotiation is logged with its reason and requestor; on both engines."""

from __future__ import annotations

import json
import math

import pytest
from conftest import Coord

from ringrift_coord import readings
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import UsageError
from ringrift_coord.optimizer import negotiate, state

ENGINES = ("sqlite", "postgres")


def _negotiate(ctx, rate, reason="test", requestor="tester", **kw):  # noqa: ANN001, ANN202
    with ctx.store.write() as tx:
        return negotiate.negotiate(
            tx,
            ctx.settings,
            tx.now(),
            requested_rate=rate,
            reason=reason,
            requestor=requestor,
            who="tester@here",
            host="here",
            **kw,
        )


def _report(ctx, node: str, **figures: float) -> None:  # noqa: ANN001
    with ctx.store.write() as tx:
        readings.store_reading(tx, node, {"source": "manual", **figures}, tx.now())


def test_bounds_and_max_change(engine_db) -> None:  # noqa: ANN001
    ctx = engine_db.context(clock=ManualClock())
    first = _negotiate(ctx, 2000)  # from the initial 1000: at most +25 %
    assert first["previous_rate"] == 1000 and first["approved_rate"] == 1250
    assert first["limited_by"] == ["max_change"] and first["action"] == "scale_up"
    assert first["over_target"] is None  # no reading says
    down = _negotiate(ctx, 1200)  # within 25 % of 1250: as asked
    assert (
        down["approved_rate"] == 1200
        and down["limited_by"] == []
        and down["action"] == ("scale_down")
    )
    same = _negotiate(ctx, 1200)
    assert same["action"] == "none" and same["limited_by"] == []
    huge = _negotiate(ctx, 1e12)  # above the maximum and far above the current rate
    assert huge["limited_by"] == ["max", "max_change"] and huge["approved_rate"] == 1500
    tiny = _negotiate(ctx, 1)  # below the minimum
    assert tiny["limited_by"] == ["min", "max_change"] and tiny["approved_rate"] == 1125


def test_the_bounds_bind_near_them(engine_db) -> None:  # noqa: ANN001
    ctx = engine_db.context(
        "optimizer: {rate: {initial: 4900, min: 100, max: 5000}, max_change: 0.5}\n"
    )
    top = _negotiate(ctx, 9000)
    assert top["approved_rate"] == 5000 and top["limited_by"] == ["max"]
    ctx2 = engine_db.context(
        "optimizer: {rate: {initial: 4900, min: 4000, max: 5000}, max_change: 1.0}\n"
    )
    bottom = _negotiate(ctx2, 50)
    assert bottom["approved_rate"] == 4000 and bottom["limited_by"] == ["min"]
    frozen = engine_db.context("optimizer: {max_change: 0}\n")
    held = _negotiate(frozen, 3000)
    assert held["approved_rate"] == held["previous_rate"] == 4000  # the stored rate
    assert held["limited_by"] == ["max_change"] and held["action"] == "none"


def test_over_target_the_rate_is_not_raised(engine_db) -> None:  # noqa: ANN001
    clock = ManualClock()
    ctx = engine_db.context(clock=clock)
    _report(ctx, "busy", cpu=95.0, cpus=32)  # one big busy node
    _report(ctx, "idle", cpu=10.0, cpus=4)  # and a small idle one: 85.6 % weighted by CPUs
    with ctx.store.read() as tx:
        assert negotiate.cluster_over_target(tx, ctx.settings, tx.now()) is True
    up = _negotiate(ctx, 1200)
    assert up["over_target"] is True and up["limited_by"] == ["over_target"]
    assert up["approved_rate"] == 1000 and up["action"] == "none"
    down = _negotiate(ctx, 900)  # lowering is always fine
    assert down["approved_rate"] == 900 and down["limited_by"] == []
    # the GPU is the bottleneck: its average is furthest above its optimum
    _report(ctx, "busy", cpu=50.0, gpu=90.0, gpu_count=4, cpus=32)
    _report(ctx, "idle", cpu=10.0, cpus=4)
    with ctx.store.read() as tx:
        assert negotiate.cluster_over_target(tx, ctx.settings, tx.now()) is True
    _report(ctx, "busy", cpu=50.0, gpu=75.0, gpu_count=4, cpus=32)  # inside the band
    with ctx.store.read() as tx:
        assert negotiate.cluster_over_target(tx, ctx.settings, tx.now()) is False
    assert _negotiate(ctx, 1000)["approved_rate"] == 1000
    # stale readings say nothing
    clock.advance(float(ctx.settings.get("resources.max_sample_age")) + 1)
    with ctx.store.read() as tx:
        assert negotiate.cluster_over_target(tx, ctx.settings, tx.now()) is None
    # the caller may say it instead
    told = _negotiate(ctx, 1100, over_target=True)
    assert told["approved_rate"] == 1000 and told["limited_by"] == ["over_target"]


def test_targets_history_and_the_controller_state_kept(engine_db) -> None:  # noqa: ANN001
    ctx = engine_db.context(clock=ManualClock())
    _report(ctx, "h100", cpu=40.0, gpu=40.0, gpu_name="NVIDIA H100", gpu_count=1, cpus=32)
    with ctx.store.write() as tx:  # the feedback loop's controller state, stored by adjust
        state.save(
            tx,
            rate=1000,
            action="none",
            confidence=0.8,
            reason="dead band",
            now=tx.now(),
            who="cron",
            pid={"integral": 1.5},
            detail={"controlling": "gpu"},
        )
    doc = _negotiate(ctx, 2000, reason="momentum_accelerating", requestor="unified_loop")
    # cap 24 (H100, bounded by 32 cores); target ceil(24 × 1250 / 5000) = 6
    assert doc["node_targets"] == [{"node": "h100", "target": 6, "cap": 24}]
    with ctx.store.read() as tx:
        stored = state.load(tx, ctx.settings)
        (row,) = state.history(tx)
        (target,) = state.targets(tx)
    assert stored["rate"] == 1250 and stored["action"] == "scale_up"
    assert stored["pid"] == {"integral": 1.5} and stored["detail"] == {"controlling": "gpu"}
    assert stored["updated_by"] == "tester@here"
    assert (row["source"], row["reason"], row["requestor"]) == (
        "negotiate",
        "momentum_accelerating",
        "unified_loop",
    )
    assert (row["requested_rate"], row["previous_rate"], row["rate"]) == (2000, 1000, 1250)
    assert (row["who"], row["host"]) == ("tester@here", "here")
    assert (target["node"], target["target"], target["cap"]) == ("h100", 6, 24)


@pytest.mark.parametrize(
    ("rate", "reason", "requestor", "field"),
    [
        (0, "r", "q", "requested_rate"),
        (-5, "r", "q", "requested_rate"),
        (math.nan, "r", "q", "requested_rate"),
        (math.inf, "r", "q", "requested_rate"),
        (True, "r", "q", "requested_rate"),
        ("2000", "r", "q", "requested_rate"),
        (100, "", "q", "reason"),
        (100, "  \t", "q", "reason"),
        (100, None, "q", "reason"),
        (100, "r", " ", "requestor"),
    ],
)
def test_bad_requests_are_usage_errors(engine_db, rate, reason, requestor, field) -> None:  # noqa: ANN001
    ctx = engine_db.context()
    with pytest.raises(UsageError) as caught:
        negotiate.negotiate_selfplay_rate(rate, reason, requestor, ctx=ctx)
    assert caught.value.field == field and "\n" not in str(caught.value)
    with ctx.store.read() as tx:
        assert state.history(tx) == []  # nothing stored


def test_reason_and_requestor_are_data(engine_db) -> None:  # noqa: ANN001
    ctx = engine_db.context()
    approved = negotiate.negotiate_selfplay_rate(
        1100, "[bold]x[/bold]\x1b[31m; DROP TABLE tasks;\n" + "y" * 500, "q\tr", ctx=ctx
    )
    assert approved == 1100.0
    with ctx.store.read() as tx:
        (row,) = state.history(tx)
    assert row["reason"].startswith("[bold]x[/bold]\\x1b[31m; DROP TABLE tasks; yyy")
    assert len(row["reason"]) == negotiate.MAX_TEXT and row["reason"].endswith("…")
    assert row["requestor"] == "q r"


def test_the_api_from_the_environment(coord: Coord, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in coord.env.items():
        if key.startswith(("RINGRIFT_", "XDG_")):
            monkeypatch.setenv(key, value)
    assert negotiate.negotiate_selfplay_rate(800, "slow down", "unified_loop") == 800.0
    shown = coord("--json", "rate", "show")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["rate"] == 800 and doc["history"][0]["requestor"] == "unified_loop"


# --------------------------------------------------------------------------- CLI


def test_cli_negotiate_and_show(coord: Coord) -> None:
    assert coord("report", "--node", "n1", "--cpu", "30", "--cpus", "8").returncode == 0
    shown = coord("--json", "rate", "show")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["rate"], doc["stored"], doc["history"]) == (1000, False, [])
    text = coord("rate")  # alone: rate show
    assert text.returncode == 0 and "initial rate" in text.stdout
    assert "no rate change recorded yet" in text.stdout

    done = coord("rate", "negotiate", "3000", "--reason", "momentum", "--requestor", "loop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "approved self-play rate 1250 games/h (requested 3000, was 1000; scale_up)"
    )
    assert "at most 25% of the current 1000" in done.stdout
    assert "n1 2/8" in done.stdout  # ceil(8 × 1250 / 5000)

    done = coord(
        "--json", "rate", "negotiate", "1e3", "--reason", "[red]cool[/red]", "--requestor", "ops"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["approved_rate"], doc["requested_rate"], doc["previous_rate"]) == (
        1000,
        1000,
        1250,
    )
    assert doc["limited_by"] == [] and doc["action"] == "scale_down"
    assert doc["node_targets"] == [{"node": "n1", "target": 2, "cap": 8}]

    text = coord("rate", "show", "--limit", "1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("self-play rate 1000 games/h (last action scale_down;")
    assert "[red]cool[/red]" in text.stdout and "momentum" not in text.stdout  # newest only
    full = json.loads(coord("--json", "rate").stdout)
    assert [(h["rate"], h["reason"], h["source"]) for h in full["history"]] == [
        (1000, "[red]cool[/red]", "negotiate"),
        (1250, "momentum", "negotiate"),
    ]
    tsv = coord("rate", "--format", "tsv")  # rows only: for cut and awk
    assert len(tsv.stdout.splitlines()) == 3
    assert tsv.stdout.splitlines()[0].split("\t")[:6] == [
        "at",
        "rate",
        "previous",
        "requested",
        "source",
        "action",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("rate", "negotiate", "abc", "--reason", "r", "--requestor", "q"), "argument RATE"),
        (("rate", "negotiate", "0", "--reason", "r", "--requestor", "q"), "argument RATE"),
        (("rate", "negotiate", "inf", "--reason", "r", "--requestor", "q"), "argument RATE"),
        (("rate", "negotiate", "nan", "--reason", "r", "--requestor", "q"), "argument RATE"),
        (("rate", "negotiate", "2e9", "--reason", "r", "--requestor", "q"), "more than 1e+09"),
        (("distribution", "--rate", "1e308"), "option --rate: 1e308 is more than"),
        (("rate", "negotiate", "-5", "--reason", "r", "--requestor", "q"), "below 0"),
        (("rate", "negotiate", "100", "--reason", "", "--requestor", "q"), "option --reason"),
        (("rate", "negotiate", "100", "--reason", "r", "--requestor", " "), "option --requestor"),
        (("rate", "negotiate", "100", "--requestor", "q"), "--reason"),
        (("rate", "show", "--limit", "0"), "option --limit"),
        (("rate", "--limit", "3", "negotiate", "5", "--reason", "r", "--requestor", "q"), "after"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(coord: Coord, argv: tuple[str, ...], message) -> None:  # noqa: ANN001
    done = coord(*argv)
    assert done.returncode == 2, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    assert line.startswith("ringrift-coord: error: ") and message in line, line
    assert "Traceback" not in done.stderr
