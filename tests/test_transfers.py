"""The bandwidth manager's core (``transfers``) on both engines: allocations per host type and
priority, the concurrent cap, never over a link's limit, end with its EMA, reaping."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ringrift_coord import identity, procs, queue, transfers
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import NotFound, UsageError
from ringrift_coord.slots import StaleLease
from ringrift_coord.transfers import TransferRequest

ENGINES = ("sqlite", "postgres")

ME = {"pid": os.getpid(), "pid_start": procs.start_time(os.getpid())}


def _req(remote: str, priority: str = "normal", **kw: object) -> TransferRequest:
    fields = {**ME, **kw}
    return TransferRequest(remote, "data", priority, **fields)  # type: ignore[arg-type]


def _start(ctx, remote: str, priority: str = "normal", **kw: object):
    with ctx.store.write() as tx:
        return transfers.start(tx, ctx.settings, _req(remote, priority, **kw), tx.now())


def _end(ctx, transfer_id: str, **kw: object):
    with ctx.store.write() as tx:
        return transfers.end(tx, ctx.settings, transfer_id, tx.now(), **kw)


def test_host_types_limits_and_rounding(engine_db) -> None:
    ctx = engine_db.context()
    s = ctx.settings
    assert transfers.host_type(s, "node-RunPod-7") == ("runpod", 1000.0)
    assert transfers.host_type(s, "lambda-gh200-1") == ("gh200", 2500.0)
    assert transfers.host_type(s, "aws-east") == ("aws", 500.0)
    assert transfers.host_type(s, "vast-3") == ("default", 100.0)
    assert transfers.kib_per_s(1000) == pytest.approx(122070.3125)
    expected = {  # whole KiB/s, rounded down
        "runpod-a": (122070, 61035, 30517, 12207),
        "x-gh200-y": (305175, 152587, 76293, 30517),
        "my-aws-1": (61035, 30517, 15258, 6103),
        "other": (12207, 6103, 3051, 1220),
    }
    with ctx.store.read() as tx:
        for remote, numbers in expected.items():
            got = tuple(
                transfers.evaluate(tx, s, remote, p, tx.now()).kbps for p in transfers.PRIORITIES
            )
            assert got == numbers, remote
    with pytest.raises(UsageError, match="valid priorities"):
        transfers.check_priority("urgent")
    assert transfers.check_priority("HIGH") == "high"


def test_first_matching_type_in_file_order(engine_db) -> None:
    ctx = engine_db.context(
        """
        bandwidth:
          host_types:
            fast: {match: ["*-gpu-*"], mbps: 800}
            lab: {match: ["lab-*", "*.lab"], mbps: 10000}
            aws: {mbps: 400}
        """
    )
    # the file's types merge into the defaults (runpod, gh200, aws first), then in file order
    s = ctx.settings
    assert transfers.host_type(s, "lab-gpu-1") == ("fast", 800.0)
    assert transfers.host_type(s, "box.LAB") == ("lab", 10000.0)
    assert transfers.host_type(s, "aws-gpu-1") == ("aws", 400.0)
    assert transfers.host_type(s, "runpod-1") == ("runpod", 1000.0)
    assert transfers.host_type(s, "vast-1") == ("default", 100.0)


def test_cap_refuses_and_end_frees(engine_db) -> None:
    ctx = engine_db.context("bandwidth: {max_concurrent_transfers: 2}\n", ManualClock())
    a = _start(ctx, "runpod-1", "background")
    b = _start(ctx, "runpod-1", "background")
    assert a.allowed and b.allowed and a.task_id != b.task_id
    assert a.task_id.startswith("xfer-") and a.lease_token and a.lease_token > 0
    c = _start(ctx, "runpod-1", "background")
    assert not c.allowed and c.task_id is None
    (cap,) = c.reasons
    assert (cap.rule, cap.requested, cap.used, cap.limit) == ("transfer_cap", 1, 2, 2)
    assert c.retry_after == transfers.UNKNOWN_RETRY
    # another remote is not affected
    assert _start(ctx, "runpod-2", "background").allowed
    row = _end(ctx, a.task_id, bytes=1024)
    assert row["status"] == "ok" and row["remote"] == "runpod-1"
    assert _start(ctx, "runpod-1", "background").allowed


def test_never_over_the_limit_with_mixed_priorities(engine_db) -> None:
    ctx = engine_db.context("bandwidth: {max_concurrent_transfers: 10}\n")
    limit = transfers.kib_per_s(100)  # "other": the default 100 Mbps = 12207.03 KiB/s
    got = [_start(ctx, "other", p) for p in ("high", "critical", "normal", "high", "background")]
    assert [d.kbps for d in got[:2]] == [6103, 6104]  # critical gets what high left
    assert not got[2].allowed and got[2].reasons[0].rule == "bandwidth"
    assert "6103" in got[2].reasons[0].message and "high" in got[2].reasons[0].message
    assert sum(d.kbps for d in got if d.allowed) <= limit
    with ctx.store.read() as tx:
        assert sum(r["kbps"] for r in transfers.active(tx, tx.now())) <= limit
    _end(ctx, got[0].task_id)
    d = _start(ctx, "other", "normal")
    assert d.allowed and d.kbps == 3051


def test_both_reasons_when_both_hold(engine_db) -> None:
    ctx = engine_db.context("bandwidth: {max_concurrent_transfers: 1}\n")
    assert _start(ctx, "other", "critical").allowed
    denied = _start(ctx, "other", "background")
    assert [r.rule for r in denied.reasons] == ["transfer_cap", "bandwidth"]
    assert denied.to_dict()["allowed"] is False


def test_end_records_rate_and_ema(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context("", clock)
    first = _start(ctx, "aws-1", "critical")
    clock.advance(10)
    row = _end(ctx, first.task_id, bytes=10 * 1024 * 1000)  # 1000 KiB/s
    assert row["seconds"] == pytest.approx(10)
    assert row["observed_kbps"] == pytest.approx(1000)
    assert row["ema_kbps"] == pytest.approx(1000)  # the first one: the observed rate
    second = _start(ctx, "aws-1", "critical")
    clock.advance(4)
    row = _end(ctx, second.task_id, bytes=4 * 1024 * 2000)  # 2000 KiB/s
    assert row["observed_kbps"] == pytest.approx(2000)
    assert row["ema_kbps"] == pytest.approx(0.3 * 2000 + 0.7 * 1000)
    # without bytes: no rate, and the EMA carries on from the last one that had one
    third = _start(ctx, "aws-1")
    clock.advance(1)
    row = _end(ctx, third.task_id, status="failed", reason="exit code 23")
    assert row["observed_kbps"] is None and row["ema_kbps"] is None
    fourth = _start(ctx, "aws-1")
    clock.advance(1)
    row = _end(ctx, fourth.task_id, bytes=1024 * 1300)
    assert row["ema_kbps"] == pytest.approx(0.3 * 1300 + 0.7 * 1300)
    with ctx.store.read() as tx:
        st = transfers.status(tx, ctx.settings, tx.now())
    (host,) = st["hosts"]
    assert host["transfers"] == 4 and host["bytes"] == 1024 * (10000 + 8000 + 1300)
    assert host["ema_kbps"] == pytest.approx(1300, abs=0.1)
    assert host["ema_pct"] == pytest.approx(100 * 1300 / transfers.kib_per_s(500), abs=0.1)
    # ended once: a second end is None, an unknown id is NotFound, a bad status a usage error
    assert _end(ctx, first.task_id) is None
    with pytest.raises(NotFound, match="no active transfer"):
        _end(ctx, "xfer-nope")
    with pytest.raises(UsageError, match="must be one of"):
        _end(ctx, "xfer-nope", status="great")
    with pytest.raises(UsageError, match="bytes"):
        _end(ctx, "xfer-nope", bytes=-1)


def test_token_guards_end_renew_and_holder(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context("", clock)
    d = _start(ctx, "runpod-9", transfer_id="copy-1", source="run")
    assert d.task_id == "copy-1"
    with pytest.raises(UsageError, match="already active"):
        _start(ctx, "runpod-9", transfer_id="copy-1")
    with ctx.store.write() as tx:
        assert transfers.renew(tx, "copy-1", d.lease_token, 120, tx.now() + 50)
        assert not transfers.renew(tx, "copy-1", d.lease_token + 1, 120, tx.now())
        fields = {"pid": os.getpid(), "pid_start": ME["pid_start"], "pgid": os.getpgrp()}
        assert transfers.set_holder(tx, "copy-1", d.lease_token, fields)
        assert not transfers.set_holder(tx, "copy-1", d.lease_token + 1, fields)
        (row,) = transfers.active(tx, tx.now())
        assert row["pgid"] == os.getpgrp() and row["lease_left"] == pytest.approx(170)
    with pytest.raises(StaleLease):
        _end(ctx, "copy-1", token=d.lease_token + 1)
    assert _end(ctx, "copy-1", token=d.lease_token)["status"] == "ok"


def test_dead_holder_is_reaped_and_frees_its_share(engine_db) -> None:
    ctx = engine_db.context("bandwidth: {max_concurrent_transfers: 1}\n")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_start = procs.start_time(child.pid)
    dead = _start(ctx, "runpod-1", "critical", pid=child.pid, pid_start=child_start)
    assert dead.allowed
    child.wait()
    # allocate (read-only) no longer counts it, and start reaps it
    with ctx.store.read() as tx:
        assert transfers.evaluate(tx, ctx.settings, "runpod-1", "critical", tx.now()).allowed
        assert len(transfers.active(tx, tx.now())) == 1
    again = _start(ctx, "runpod-1", "critical")
    assert again.allowed and again.kbps == 122070
    with ctx.store.read() as tx:
        (hist,) = transfers.history(tx)
    assert (hist["transfer_id"], hist["status"]) == (dead.task_id, "reaped")
    assert hist["reason"] == "holder process gone"


def test_other_hosts_judge_by_lease(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context("", clock)
    far = _start(ctx, "gh200-a", host="elsewhere", source="run")
    shell = _start(ctx, "gh200-a", host="elsewhere", source="start")
    clock.advance(121)  # past the run's lease (store.lease_ttl), not the shell's
    with ctx.store.write() as tx:
        reaped = transfers.reap(tx, ctx.settings, tx.now())
    assert [r["transfer_id"] for r in reaped] == [far.task_id]
    assert "lease expired" in reaped[0]["reason"]
    clock.advance(transfers.SHELL_LEASE)
    with ctx.store.write() as tx:
        assert [r["transfer_id"] for r in transfers.reap(tx, ctx.settings, tx.now())] == [
            shell.task_id
        ]


def test_waiters_ahead_count_against_the_cap(engine_db) -> None:
    ctx = engine_db.context("bandwidth: {max_concurrent_transfers: 2}\n")
    assert _start(ctx, "aws-2").allowed
    with ctx.store.write() as tx:
        first = queue.enqueue(tx, transfers.TASK_TYPE, "aws-2", "h", os.getpid())
        queue.enqueue(tx, transfers.TASK_TYPE, "aws-3", "h", os.getpid())  # another remote
    # a newcomer (no place in line) counts every waiter for the remote: refused
    denied = _start(ctx, "aws-2")
    assert not denied.allowed and denied.reasons[0].used == 2 and denied.queued == 1
    # the first in line is admitted and leaves the queue
    with ctx.store.write() as tx:
        d = transfers.start(tx, ctx.settings, _req("aws-2"), tx.now(), waiter_seq=first)
        assert d.allowed
        assert queue.ahead(tx, transfers.TASK_TYPE, None) == ["aws-3"]


def test_history_is_pruned_per_remote(engine_db, monkeypatch) -> None:
    monkeypatch.setattr(transfers, "HISTORY_ROWS", 3)
    clock = ManualClock()
    ctx = engine_db.context("", clock)
    for _ in range(5):
        _end(ctx, _start(ctx, "runpod-1").task_id, bytes=1)
        clock.advance(1)
    _end(ctx, _start(ctx, "aws-1").task_id, bytes=1)
    with ctx.store.read() as tx:
        assert len(transfers.history(tx, 100, "runpod-1")) == 3
        assert len(transfers.history(tx, 100, "aws-1")) == 1
    clock.advance(transfers.HISTORY_DAYS * 86400 + 10)
    _end(ctx, _start(ctx, "runpod-1").task_id, bytes=1)
    with ctx.store.read() as tx:
        assert len(transfers.history(tx, 100, "runpod-1")) == 1


# --------------------------------------------------------------------------- operator pass


def test_tokens_stay_exact_as_doubles(engine_db) -> None:
    """jq and other JSON readers hold numbers as doubles: a token above 2^53 would come back
    rounded and ``end --token`` would then refuse it."""
    for _ in range(2000):
        token = transfers.new_token()
        assert 0 < token <= 2**53 - 1
        assert int(float(token)) == token
        assert json.loads(json.dumps(token), parse_int=float) == token
    ctx = engine_db.context()
    d = _start(ctx, "aws-1")
    seen = json.loads(json.dumps({"lease_token": d.lease_token}), parse_int=float)
    assert seen["lease_token"] == d.lease_token
    assert _end(ctx, d.task_id, token=int(seen["lease_token"]))["status"] == "ok"


def test_under_a_second_records_bytes_but_no_rate(engine_db) -> None:
    """A transfer shorter than 1 s is no measurement: its bytes are kept, but no observed
    rate, and the host's EMA is left as it was; status's observed rate is over the timed
    transfers only (``timed_seconds``)."""
    clock = ManualClock()
    ctx = engine_db.context("", clock)
    first = _start(ctx, "aws-1")
    clock.advance(10)
    assert _end(ctx, first.task_id, bytes=10 * 1024 * 100)["ema_kbps"] == pytest.approx(100)
    quick = _start(ctx, "aws-1")
    clock.advance(0.25)
    row = _end(ctx, quick.task_id, bytes=50 * 1024 * 1024)  # would "observe" 204800 KiB/s
    assert row["bytes"] == 50 * 1024 * 1024 and row["seconds"] == pytest.approx(0.25)
    assert row["observed_kbps"] is None and row["ema_kbps"] is None
    at_once = _start(ctx, "aws-1")
    row = _end(ctx, at_once.task_id, bytes=1000)  # start and end at once: 0 s
    assert row["observed_kbps"] is None and row["ema_kbps"] is None
    unknown = _start(ctx, "aws-1")
    clock.advance(5)
    assert _end(ctx, unknown.task_id)["bytes"] is None  # 5 s, bytes unknown: not timed
    with ctx.store.read() as tx:
        (host,) = transfers.status(tx, ctx.settings, tx.now())["hosts"]
    assert host["transfers"] == 4
    assert host["bytes"] == 10 * 1024 * 100 + 50 * 1024 * 1024 + 1000
    assert host["seconds"] == pytest.approx(15.25)
    assert host["timed_seconds"] == pytest.approx(10)  # only the first one was timed
    assert host["observed_kbps"] == pytest.approx(100)
    assert host["ema_kbps"] == pytest.approx(100)  # untouched by the quick ones


def test_status_bytes_unknown_is_none(engine_db) -> None:
    clock = ManualClock()
    ctx = engine_db.context("", clock)
    d = _start(ctx, "aws-1")
    clock.advance(3)
    _end(ctx, d.task_id, status="failed")
    with ctx.store.read() as tx:
        (host,) = transfers.status(tx, ctx.settings, tx.now())["hosts"]
    assert (host["transfers"], host["bytes"], host["seconds"]) == (1, None, 3.0)
    assert (host["timed_seconds"], host["observed_kbps"]) == (0.0, None)


def test_status_lists_dead_holders_apart_from_the_active(engine_db) -> None:
    """As ``allocate`` ignores a transfer whose holder is gone, ``status`` neither counts it
    active nor allocated: it is listed under ``dead`` with why, until reaped."""
    ctx = engine_db.context()
    live = _start(ctx, "runpod-1", "normal")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    gone = _start(ctx, "runpod-1", "high", pid=child.pid, pid_start=procs.start_time(child.pid))
    child.wait()  # gone, not yet reaped (the next start to runpod-1 would)
    with ctx.store.read() as tx:
        st = transfers.status(tx, ctx.settings, tx.now())
        free = transfers.evaluate(tx, ctx.settings, "runpod-1", "critical", tx.now()).free_kbps
    assert [r["transfer_id"] for r in st["active"]] == [live.task_id]
    assert st["active"][0]["dead"] is None
    (dead,) = st["dead"]
    assert (dead["transfer_id"], dead["dead"]) == (gone.task_id, "holder process gone")
    (host,) = st["hosts"]
    assert (host["active"], host["dead"], host["allocated_kbps"]) == (1, 1, 30517)
    assert host["free_kbps"] == pytest.approx(free, abs=0.1)  # as allocate sees it
    with ctx.store.write() as tx:
        (reaped,) = transfers.reap(tx, ctx.settings, tx.now())
        assert transfers.status(tx, ctx.settings, tx.now())["dead"] == []
    assert reaped["transfer_id"] == gone.task_id


def test_default_node_is_the_global_rule(engine_db, monkeypatch) -> None:
    monkeypatch.delenv("RINGRIFT_NODE_ID", raising=False)
    assert _req("aws-1").node == identity.host_name()
    monkeypatch.setenv("RINGRIFT_NODE_ID", "node-7")
    assert _req("aws-1").node == "node-7"
    assert _req("aws-1", node="other").node == "other"
    ctx = engine_db.context()
    d = _start(ctx, "aws-1")
    with ctx.store.read() as tx:
        (row,) = transfers.active(tx, tx.now())
    assert (row["transfer_id"], row["node"], row["host"]) == (
        d.task_id,
        "node-7",
        identity.host_name(),
    )


def test_kbps_is_ambiguous_and_a_tiny_link_says_so(engine_db) -> None:
    for word in ("kbps", "KBPS", "kb/s"):
        with pytest.raises(UsageError, match="ambiguous.*use kib.*or mbit"):
            transfers.check_unit(word)
    assert [transfers.check_unit(u) for u in ("KiB/s", "mbps", "MiB", "bytes")] == [
        "kib",
        "mbit",
        "mib",
        "bytes",
    ]
    ctx = engine_db.context("bandwidth: {default_mbps: 0.005}\n")  # 0.61 KiB/s
    with ctx.store.read() as tx:
        d = transfers.evaluate(tx, ctx.settings, "vast-1", "critical", tx.now())
    assert not d.allowed
    (reason,) = d.reasons
    assert "none" not in reason.message and "0 KiB/s" not in reason.message
    assert "0.61 KiB/s" in reason.message and "less than 1 KiB/s" in reason.message
    # the configuration refuses it, not load: no retry can pass, so no retry time is given
    assert reason.retry_after is None and d.retry_after is None


def test_one_link_whatever_the_spelling_of_its_host(engine_db) -> None:
    """Host names are DNS names: RUNPOD-1, runpod-1 and runpod-1. share one link, so four
    critical starts in four spellings do not get four links' worth."""
    ctx = engine_db.context()
    first = _start(ctx, "runpod-1", "critical")
    assert first.allowed and first.kbps == 122070
    for spelling in ("RUNPOD-1", "Runpod-1", "runpod-1."):
        again = _start(ctx, spelling, "critical")
        assert not again.allowed and [r.rule for r in again.reasons] == ["bandwidth"], spelling
        assert again.retry_after == transfers.UNKNOWN_RETRY  # taken by load: it may free up
    with ctx.store.read() as tx:
        assert [r["remote"] for r in transfers.active(tx, tx.now())] == ["runpod-1"]


def test_a_dead_waiter_holds_no_place_in_a_hosts_line(engine_db) -> None:
    """A killed `bandwidth run --wait` leaves its row in the queue: the next start to that
    host reaps it (no task admission is needed to clear it)."""
    ctx = engine_db.context("bandwidth: {max_concurrent_transfers: 1}\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with ctx.store.write() as tx:
        queue.enqueue(tx, transfers.TASK_TYPE, "aws-2", identity.host_name(), gone.pid)
    decision = _start(ctx, "aws-2")
    assert decision.allowed, decision.summary()
    with ctx.store.read() as tx:
        assert tx.query("SELECT seq FROM waiters") == []


def test_bytes_past_what_the_store_keeps_are_refused(engine_db) -> None:
    ctx = engine_db.context()
    started = _start(ctx, "aws-3")
    with pytest.raises(UsageError, match="more than the store keeps"):
        _end(ctx, started.transfer_id, bytes=2**63)
    assert _end(ctx, started.transfer_id, bytes=2**63 - 1)["bytes"] == 2**63 - 1
    again = _start(ctx, "aws-3")
    _end(ctx, again.transfer_id, bytes=2**63 - 1)  # the host's total is past a BIGINT now
    with ctx.store.read() as tx:
        (host,) = transfers.status(tx, ctx.settings, tx.now())["hosts"]
    assert host["transfers"] == 2 and host["bytes"] == pytest.approx(2.0**64)
