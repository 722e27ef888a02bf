"""One feedback step over the store: the ``adjust`` command and ``apply_feedback_adjustment``.

In one serialised write transaction (SQLite ``BEGIN IMMEDIATE``, PostgreSQL's advisory lock,
like every admission), so two racing adjusts act once:

1. the last adjust less than ``optimizer.min_interval`` ago → nothing happens ("already
   adjusted ... by ..."; ``acted`` false, exit 0);
2. cluster utilization from the fresh readings (``utilization.cluster``); none fresh → the
   optimizer holds: it records ``action none`` with the reason (``status`` shows it) and
   changes no rate and no targets (old targets lapse after ``optimizer.state_ttl``);
3. the controlling resource (the bottleneck) gets a utilization sample; a trend fitted over
   the recent samples forecasts ``trend.horizon`` ahead, and the controller's measurement is
   ``measured + confidence × (forecast − measured)``;
4. the PID controller (``pid``) turns it into a fraction of the rate to change this run; the
   new rate, bounded by ``optimizer.rate.min``..``max``, is stored with the per-node self-play
   targets it implies (``state.set_rate``), the action (``scale_up`` / ``scale_down`` /
   ``none``) and its confidence: the share of fresh nodes × (0.5 + 0.5 × the trend's
   confidence).

``dry_run`` does the same computation in a read transaction and stores nothing.
"""

from __future__ import annotations

import math
import time

from ringrift_coord import durations, schema
from ringrift_coord.optimizer import pid, trend, utilization
from ringrift_coord.optimizer import state as opt_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Store, Tx

EPSILON = 1e-9
MIN_KEEP = 86400.0  # the last day of the rate's history stays whatever the log's setting


def adjust(
    store: Store,
    settings: Settings,
    *,
    dry_run: bool = False,
    who: str | None = None,
    host: str | None = None,
    requestor: str | None = None,
) -> dict[str, Any]:
    """One feedback step (see the module's docstring); returns what it did or would do.
    ``requestor``: who asked (``adjust --requestor``, ``apply_feedback_adjustment``), logged
    in the rate's history beside the account (``who``)."""
    if requestor is not None:  # data: printable, length-capped, like a negotiation's
        from ringrift_coord.optimizer.negotiate import text

        requestor = text(requestor, "requestor")
    # a bad setting it reads refuses before the store is touched (exit 3, naming its source)
    for section in ("resource_targets", "optimizer", "hardware"):
        settings.require(section)
    if dry_run:
        with store.read() as tx:
            return step(tx, settings, tx.now(), dry_run=True, who=who, host=host)
    with store.write() as tx:
        return step(tx, settings, tx.now(), dry_run=False, who=who, host=host, requestor=requestor)


def _document(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "acted": False,
        "dry_run": False,
        "action": "none",
        "rate": None,
        "previous_rate": None,
        "confidence": None,
        "reason": None,
        "utilization": None,
        "controlling": None,
        "measurement": None,
        "forecast": None,
        "controller": None,
        "node_targets": [],
        "at": None,
    }
    doc.update(fields)
    return doc


def step(
    tx: Tx,
    settings: Settings,
    now: float,
    *,
    dry_run: bool,
    who: str | None = None,
    host: str | None = None,
    requestor: str | None = None,
) -> dict[str, Any]:
    """One feedback step inside ``tx`` (a write transaction unless ``dry_run``)."""
    opt = settings.get("optimizer")
    tgt = utilization.targets(settings)
    saved = opt_state.load(tx, settings)
    old_rate = float(saved["rate"])
    if not saved["stored"]:  # never adjusted nor negotiated: start from the load running now
        old_rate = opt_state.rate_of_load(tx, settings, now) or old_rate
    previous = opt_state.last_adjust(tx)
    last_row = None if dry_run else previous
    too_soon = ""
    if previous is not None and dry_run:  # what a real adjust now would do: say it
        age = now - float(previous["at"])
        if -float(opt["min_interval"]) < age < float(opt["min_interval"]):
            too_soon = (
                f" (a real adjust now would act not: the last one was {durations.human(abs(age))}"
                f" ago, within optimizer.min_interval)"
            )
    if last_row is not None:
        last = float(last_row["at"])
        age = now - last
        if -float(opt["min_interval"]) < age < float(opt["min_interval"]):
            by = f" by {last_row['who']}" if last_row.get("who") else ""
            return _document(
                action=saved["action"],
                rate=old_rate,
                previous_rate=old_rate,
                confidence=saved["confidence"],
                reason=f"already adjusted {durations.human(abs(age))} ago{by} (at "
                f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(last))}; "
                f"optimizer.min_interval is {durations.human(float(opt['min_interval']))})",
                at=now,
            )
    if not dry_run:  # the rate's history is kept as long as the decision log
        keep = max(float(settings.get("store.decision_log_days")) * 86400.0, MIN_KEEP)
        opt_state.prune_history(tx, now - keep)
    util = utilization.cluster(tx, settings, now)
    util.pop("nodes")  # per-node rows: `utilization` shows them
    fresh, stale = int(util["fresh_nodes"]), int(util["stale_nodes"])
    resource = utilization.controlling(util, tgt)
    if fresh == 0 or resource is None:
        if fresh == 0:
            names = util["stale_names"]
            shown = ", ".join(names[:5]) + (f", +{len(names) - 5} more" if len(names) > 5 else "")
            reason = (
                f"no fresh readings: {stale} stale ({shown})"
                if stale
                else "no fresh readings: no node has reported (ringrift-coord report)"
            )
        else:
            reason = f"no fresh readings with a CPU or GPU figure ({fresh} fresh)"
        reason += "; holding the rate"
        if not dry_run:  # the rate and the targets stay (the targets lapse by themselves)
            opt_state.set_rate(
                tx,
                settings,
                rate=old_rate,
                now=now,
                source="adjust",
                action="none",
                previous_rate=old_rate,
                confidence=0.0,
                reason=reason,
                requestor=requestor,
                who=who,
                host=host,
                pid=saved.get("pid") or {},
                detail={"utilization": util, "hold": True},
                retarget=False,
            )
        return _document(
            acted=not dry_run,
            dry_run=dry_run,
            rate=old_rate,
            previous_rate=old_rate,
            confidence=0.0,
            reason=reason,
            utilization=util,
            at=now,
        )

    measured = float(util[resource])
    trend_cfg = opt["trend"]
    window = float(trend_cfg["window"])
    if not dry_run:
        keep = max(window, 3.0 * float(opt["interval"]))
        opt_state.add_sample(tx, now, util, keep)
    points = [
        (float(row["at"]), float(row[resource]))
        for row in opt_state.samples(tx, now - window)
        if row.get(resource) is not None and row["at"] <= now
    ]
    if dry_run:
        points.append((now, measured))
    forecast = trend.forecast(
        points,
        now,
        window=window,
        horizon=float(trend_cfg["horizon"]),
        min_samples=int(trend_cfg["min_samples"]),
    )
    blended = trend.blend(measured, forecast)

    stored_pid = saved.get("pid") or {}
    pid_state = stored_pid.get("pid_state") if stored_pid.get("resource") == resource else None
    cfg = pid.PIDConfig.from_settings(settings, resource)
    # the controller acts on the blend; settling inside the band ends only once the reading
    # itself (``observed``) is well inside too
    output, new_state, detail = pid.step(
        cfg, dict(pid_state or {}), blended, now, observed=measured
    )
    if not math.isfinite(output):
        output = 0.0
    # The rate moves by the output once per optimizer.interval, however often adjust runs:
    # a run sooner than that moves it by its share of the interval (two timers 150 s apart
    # each make half a step, instead of doubling the loop's gain until it oscillates).
    share = 1.0
    if previous is not None:
        since = now - float(previous["at"])
        share = min(1.0, max(0.0, since / max(float(opt["interval"]), 1.0)))
    output *= share
    new_rate = opt_state.bounded_rate(round(old_rate * (1.0 + output), 1), settings)
    if new_rate > old_rate + EPSILON:
        action = "scale_up"
    elif new_rate < old_rate - EPSILON:
        action = "scale_down"
    else:
        action = "none"
    trend_conf = float(forecast.get("confidence") or 0.0)
    confidence = round((fresh / (fresh + stale)) * (0.5 + 0.5 * trend_conf), 3)

    band = tgt[resource]
    where = f"{resource} {measured:.1f}%"
    if forecast.get("value") is not None and trend_conf > 0:
        where += f" (forecast {float(forecast['value']):.1f}%, confidence {trend_conf:.2f})"
    # where the reading itself stands (the forecast is shown beside it, not in its place)
    if band["min"] <= measured <= band["max"]:
        position = f"inside the target {band['min']:g}-{band['max']:g}%"
        if action != "none":  # coming from outside, or the forecast leaving the band
            position += f", steering towards {band['target']:g}%"
    elif measured < band["min"]:
        position = f"below the target {band['min']:g}-{band['max']:g}%"
    else:
        position = f"above the target {band['min']:g}-{band['max']:g}%"
    if action == "none":
        bounds = settings.get("optimizer.rate")
        if abs(output) > EPSILON and new_rate >= float(bounds["max"]):
            outcome = f"rate stays at its maximum {new_rate:g}/h"
        elif abs(output) > EPSILON and new_rate <= float(bounds["min"]):
            outcome = f"rate stays at its minimum {new_rate:g}/h"
        else:
            outcome = f"rate holds at {new_rate:g}/h"
    else:
        outcome = f"rate {old_rate:g} -> {new_rate:g}/h"
    reason = f"{where} {position}: {outcome}{too_soon}"

    controller = {
        "resource": resource,
        "interval_share": round(share, 3),
        "setpoint": band["target"],
        "input": blended,
        "output": output,
        # the controller's own figures; a name the JSON vocabulary gives another meaning
        # (``error`` is a failed command's message) gets a ``pid_`` prefix
        **{
            (f"pid_{k}" if k in schema.FIELDS else k): v
            for k, v in detail.items()
            if k != "measurement"  # the controller's input, above: one name, one value
        },
    }
    pid_doc = {"resource": resource, "pid_state": new_state}
    record = {
        "utilization": util,
        "controlling": resource,
        "measurement": measured,
        "forecast": forecast,
        "controller": controller,
    }
    # holding inside the band takes room from no node: a target never falls below what the
    # node runs now (scale-down, and a hold outside the band at a bound, do lower it)
    hold = action == "none" and band["min"] <= measured <= band["max"]
    if dry_run:
        found = opt_state.implied_targets(tx, settings, new_rate, now, hold)
    else:
        found = opt_state.set_rate(
            tx,
            settings,
            rate=new_rate,
            now=now,
            source="adjust",
            action=action,
            previous_rate=old_rate,
            confidence=confidence,
            reason=reason,
            requestor=requestor,
            who=who,
            host=host,
            pid=pid_doc,
            detail=record,
            hold=hold,
        )
    return _document(
        acted=not dry_run,
        dry_run=dry_run,
        action=action,
        rate=new_rate,
        previous_rate=old_rate,
        confidence=confidence,
        reason=reason,
        utilization=util,
        controlling=resource,
        measurement=measured,
        forecast={
            "value": forecast.get("value"),
            "confidence": trend_conf,
            "slope_per_min": forecast.get("slope_per_min"),
            "samples": forecast.get("samples"),
        },
        controller=controller,
        node_targets=[
            {"node": node, "target": target, "cap": cap} for node, (target, cap) in found.items()
        ],
        at=now,
    )
