"""``BandwidthManager``, the reference's Python face of the bandwidth manager, on both
engines: can_transfer / start_transfer / end_transfer as the reference uses them."""

from __future__ import annotations

import pytest

from ringrift_coord import bandwidth_manager
from ringrift_coord.bandwidth_manager import BandwidthManager
from ringrift_coord.clock import ManualClock
from ringrift_coord.errors import ConfigError, NotFound, UsageError

ENGINES = ("sqlite", "postgres")


def test_the_reference_usage(engine_db) -> None:
    clock = ManualClock()
    mgr = BandwidthManager(engine_db.context("bandwidth: {max_concurrent_transfers: 2}\n", clock))
    host = "runpod-a100-1"
    assert mgr.allocate(host) == 30517 and mgr.allocate(host, "critical") == 122070
    assert mgr.can_transfer(host, "models")
    assert mgr.start_transfer(host, "t-1", "models")
    assert mgr.last_decision is not None and mgr.last_decision.kbps == 30517
    assert mgr.start_transfer(host, "t-2", "games", "high")
    assert mgr.last_decision.kbps == 61035
    # at the cap: can_transfer says no, start_transfer returns False and admits nothing
    assert not mgr.can_transfer(host, "models")
    assert not mgr.start_transfer(host, "t-3", "models")
    assert [r.rule for r in mgr.last_decision.reasons] == ["transfer_cap"]
    assert mgr.allocate(host) == 0
    clock.advance(8)
    row = mgr.end_transfer(host, "t-1", 8 * 1024 * 20000)
    assert row is not None and row["observed_kbps"] == pytest.approx(20000)
    assert row["ema_kbps"] == pytest.approx(20000) and row["seconds"] == pytest.approx(8)
    assert mgr.can_transfer(host, "models")
    assert mgr.end_transfer(host, "t-1", 1) is None  # ended once
    with pytest.raises(UsageError, match="is to runpod-a100-1, not aws-1"):
        mgr.end_transfer("aws-1", "t-2", 1)
    with pytest.raises(NotFound):
        mgr.end_transfer(host, "never-started", 1)
    status = mgr.get_status()
    assert [t["transfer_id"] for t in status["active"]] == ["t-2"]
    (hist,) = status["hosts"]
    assert hist["transfers"] == 1 and hist["ema_kbps"] == pytest.approx(20000)


def test_a_new_id_and_the_holder(engine_db) -> None:
    mgr = BandwidthManager(engine_db.context())
    decision = mgr.start("aws-1", "data")
    assert decision.allowed and decision.transfer_id and decision.transfer_id.startswith("xfer-")
    assert decision.lease_token and decision.remote == "aws-1"
    with pytest.raises(UsageError, match="no running process"):
        mgr.start("aws-1", pid=999_999_999)
    with pytest.raises(UsageError, match="valid priorities"):
        mgr.can_transfer("aws-1", "data", "urgent")
    assert mgr.reap() == []  # its holder (this process) lives


def test_a_bad_bandwidth_section_is_raised_here(engine_db) -> None:
    mgr = BandwidthManager(engine_db.context("bandwidth: {priorities: {normal: 0}}\n"))
    with pytest.raises(ConfigError, match="priorities.normal must be above 0"):
        mgr.can_transfer("aws-1", "data")


def test_module_functions_use_the_process_wide_instance(engine_db, monkeypatch) -> None:
    monkeypatch.setattr(BandwidthManager, "_instance", BandwidthManager(engine_db.context()))
    assert bandwidth_manager.get_bandwidth_manager() is BandwidthManager._instance
    assert bandwidth_manager.can_transfer("vast-1", "data")
    assert bandwidth_manager.start_transfer("vast-1", "x-1", "data", "background")
    row = bandwidth_manager.end_transfer("vast-1", "x-1", 0)
    assert row is not None and row["bytes"] == 0
