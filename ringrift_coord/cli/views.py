"""Human output of every command: Rich tables and plain lines. Nothing here decides anything.

Stored text is data, never markup: node and config names, reasons, who and host, paths
reach the terminal only through ``_text`` (a Rich ``Text`` of the printable form: no markup
parsed, no control character) or ``line`` (the same for plain lines). Markup appears only in
literals written here. ``--json`` output does not come through here.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ringrift_coord.inputs import printable

_console: Console | None = None

STATE_STYLE = {"closed": "green", "open": "red", "half_open": "yellow"}
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", None: ""}


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False, soft_wrap=False)
    return _console


def _text(value: Any, style: str = "", empty: str = "-") -> Text:
    """One piece of data as Rich text: never parsed as markup, control characters escaped."""
    shown = empty if value is None or value == "" else printable(str(value))
    return Text(shown, style=style)


def line(*parts: Any) -> None:
    """One plain line on stdout (no Rich), every part in its printable form."""
    sys.stdout.write("".join(printable(str(p)) for p in parts) + "\n")


def ts(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{sign}{seconds:.0f}s"
    if seconds < 5400:
        return f"{sign}{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{sign}{seconds / 3600:.1f}h"
    return f"{sign}{seconds / 86400:.1f}d"


def _limit(value: Any) -> str:
    return "∞" if value is None else str(value)


def _table(title: str | Text, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


# --------------------------------------------------------------------------- tasks


def tasks_table(rows: list[dict[str, Any]]) -> None:
    table = _table(
        f"running tasks ({len(rows)})",
        "task id",
        "type",
        "node",
        "host",
        "pid",
        "age",
        "lease left",
        "config",
    )
    for r in rows:
        table.add_row(
            _text(r["task_id"]),
            _text(r["task_type"]),
            _text(r["node"]),
            _text(r["host"]),
            _text(r["pid"]),
            age(r["age"]),
            age(r["lease_left"]),
            _text(r.get("config_name")),
        )
    console().print(table)


def history_table(rows: list[dict[str, Any]]) -> None:
    table = _table(
        "finished tasks", "task id", "type", "node", "ended", "duration", "exit", "status", "reason"
    )
    for r in rows:
        table.add_row(
            _text(r["task_id"]),
            _text(r["task_type"]),
            _text(r["node"]),
            ts(r["ended_at"]),
            age(r["duration"]),
            _text(r["exit_code"]),
            _text(r["status"], "green" if r["status"] == "ok" else "red"),
            _text(r.get("reason"), empty=""),
        )
    console().print(table)


TIME_FIELDS = ("started_at", "ended_at", "lease_expires", "at")
DURATION_FIELDS = ("age", "lease_left", "duration")


def task_show(doc: dict[str, Any]) -> None:
    """``tasks show``: every recorded field of one task, one ``key: value`` line each."""
    line(f"task {doc['task_id']}: {doc['status']}")

    def fields(row: dict[str, Any], indent: str = "  ") -> None:
        for key, value in row.items():
            if key in TIME_FIELDS and value is not None:
                shown = ts(value)
            elif key in DURATION_FIELDS and value is not None:
                shown = age(value)
            else:
                shown = "-" if value is None or value == "" else str(value)
            line(f"{indent}{key}: {shown}")

    if doc["running"] is not None:
        line("running:")
        fields(doc["running"])
    for row in doc["history"]:
        line("ended:")
        fields(row)
    for d in doc["decisions"]:
        verdict = "allowed" if d["allowed"] else "denied"
        rules = "; ".join(r["message"] for r in d["rules"])
        line(f"decision: {ts(d['at'])} {d['action']} {verdict} by {d.get('who') or '-'}")
        if rules:
            line(f"  {rules}")


def cancelled(result: dict[str, Any]) -> None:
    if result["released_by"] == "already_ended":
        line(f"task {result['task_id']} had already ended ({result['status']}); nothing to do")
        return
    by = "its run wrapper" if result["released_by"] == "wrapper" else "cancel"
    line(
        f"cancelled {result['task_id']} ({result['task_type']} on {result['node']}) with "
        f"{result['signal']}{', then SIGKILL' if result['escalated'] else ''}: "
        f"{result['status']}, slot released by {by} ({result['reason']})"
    )


def reaped(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        line(f"reaped {r['task_id']} ({r['task_type']} on {r['node']}): {r['reason']}")
    line(f"{len(rows)} slot(s) freed")


def reservations_table(rows: list[dict[str, Any]]) -> None:
    table = _table("reservations", "id", "node", "type", "slots", "expires", "by")
    for r in rows:
        table.add_row(
            _text(r["res_id"]),
            _text(r["node"]),
            _text(r["task_type"]),
            _text(r["slots"]),
            ts(r["expires_at"]),
            _text(r.get("who")),
        )
    console().print(table)


def decisions_table(rows: list[dict[str, Any]]) -> None:
    table = _table(
        "admission decisions (newest first)",
        "at",
        "action",
        "type",
        "node",
        "who",
        "decision",
        "rules",
    )
    for r in rows:
        verdict = Text("allowed", "green") if r["allowed"] else Text("denied", "red")
        table.add_row(
            ts(r["at"]),
            _text(r["action"]),
            _text(r["task_type"]),
            _text(r["node"]),
            _text(r.get("who")),
            verdict,
            _text("; ".join(x["message"] for x in r["rules"])),
        )
    console().print(table)


# --------------------------------------------------------------------------- settings, caps


def settings_table(doc: dict[str, Any], title: str) -> None:
    file = doc["config_file"]
    table = _table(
        Text(f"{title} (config file: {printable(file) if file else 'none'})"),
        "key",
        "value",
        "source",
    )
    for r in doc["values"]:
        value = r["value"]
        shown = "null (unlimited)" if value is None else str(value)
        style = "" if r["source"] == "default" else "bold"
        table.add_row(_text(r["key"]), _text(shown), _text(r["source"]), style=style)
    console().print(table)


def caps_tables(doc: dict[str, Any]) -> None:
    """``limits``' second part: the caps lowered after repeated OOMs, the backpressure."""
    out = console()
    if not doc["lowered_caps"] and not doc["backpressure"]:
        out.print("no OOM-lowered caps or backpressure in force")
        return
    if doc["lowered_caps"]:
        table = _table(
            "caps lowered after repeated OOMs",
            "node",
            "type",
            "cap",
            "configured",
            "OOMs",
            "lowered at",
        )
        for r in doc["lowered_caps"]:
            table.add_row(
                _text(r["node"]),
                _text(r["task_type"]),
                _text(r["cap"], "red"),
                _limit(r["configured"]),
                _text(r["ooms"]),
                ts(r["lowered_at"]),
            )
        out.print(table)
    if doc["backpressure"]:
        backpressure_table(doc["backpressure"])


def backpressure_table(rows: list[dict[str, Any]]) -> None:
    """The nodes whose spawn rate is cut: the factor now (it recovers with time), the factor
    the last job left, and when."""
    table = _table(
        "backpressure (spawn-rate factor per node, recovering with time)",
        "node",
        "factor now",
        "last set to",
        "at",
    )
    for r in rows:
        table.add_row(
            _text(r["node"]),
            Text(f"×{r['factor']:.2f}", "yellow"),
            _text(f"×{r['stored_factor']:.2f}"),
            ts(r["updated_at"]),
        )
    console().print(table)


# --------------------------------------------------------------------------- halts


def halted(record: dict[str, Any]) -> None:
    what = "every task type" if record["scope"] == "*" else record["scope"]
    until = "" if record["expires_at"] is None else f" until {ts(record['expires_at'])}"
    node = record.get("node", "*")
    where = "cluster-wide" if node == "*" else f"on node {node} only"
    line(f"halted {what} {where}{until} (by {record['who']})")


def unhalted(result: dict[str, Any]) -> None:
    lifted = ", ".join("all types" if s == "*" else s for s in result["lifted"]) or "nothing"
    if result.get("node") is not None:
        lifted += f" on node {result['node']}"
    extra = " and removed the halt file" if result["removed_halt_file"] else ""
    line(f"unhalted: {lifted}{extra}")


def halt_check(status: dict[str, Any]) -> None:
    """Every halt in force, or "not halted" (a halt of another type is listed as well)."""
    out = console()
    if not status["halted"]:
        out.print("not halted")
        return
    for h in status["halts"]:
        scope = "all types" if h["scope"] == "*" else h["scope"]
        if h.get("node", "*") != "*":
            scope += f" on node {h['node']}"
        until = "" if h["expires_at"] is None else f", until {ts(h['expires_at'])}"
        out.print(
            Text.assemble(
                ("HALTED", "red"),
                f" {printable(scope)} by {printable(str(h['who']))} at {ts(h['at'])}{until}: ",
                printable(h["reason"] or "no reason given"),
            )
        )
    info = status["halt_file"]
    if info is not None:
        why = f": {printable(info['reason'])}" if info.get("reason") else ""
        out.print(Text.assemble(("HALTED", "red"), f" this host by {printable(info['path'])}{why}"))


# --------------------------------------------------------------------------- status


def status_screen(doc: dict[str, Any]) -> None:
    out = console()
    store = doc["store"]
    where = store.get("path") or store.get("server") or "?"
    out.print(
        Text.assemble(
            ("ringrift-coord", "bold"),
            f" · engine {store['engine']} ({printable(str(where))}) · state {doc['state']} · "
            f"{doc['total_tasks']} running task(s) · {ts(doc['at'])}",
        )
    )
    halts = doc["halt"]
    if halts["halts"] or halts["halt_file"] is not None:
        halt_check({**halts, "halted": True})
    else:
        out.print("[green]no halt in force[/]")
    table = _table(
        "tasks vs limits",
        "type",
        "running",
        "queued",
        "cluster limit",
        "per-node limit",
        "per node",
    )
    for name, entry in doc["by_type"].items():
        cluster, per_node_limit = entry.get("cluster_limit"), entry.get("per_node_limit")
        limited = cluster is not None or per_node_limit is not None
        if not entry["running"] and not entry.get("queued") and not limited:
            continue
        full = cluster is not None and entry["running"] >= cluster
        nodes = ", ".join(
            f"{node} {count}/{_limit(per_node_limit)}"
            for node, count in sorted(entry["nodes"].items())
        )
        table.add_row(
            _text(name),
            _text(entry["running"], "red" if full else ""),
            _text(entry.get("queued", 0)),
            _limit(cluster),
            _limit(per_node_limit),
            _text(nodes),
        )
    out.print(table)
    if doc["reservations"]:
        reservations_table(doc["reservations"])
    if doc["tasks"]:
        tasks_table(doc["tasks"])
    not_closed = [r for r in doc["breakers"] if r["state"] != "closed"]
    if not_closed:
        breakers_table(not_closed, doc["at"])


# --------------------------------------------------------------------------- breakers


def breakers_table(
    rows: list[dict[str, Any]], now: float, backpressure: list[dict[str, Any]] | None = None
) -> None:
    if backpressure:
        backpressure_table(backpressure)
    if not rows:
        console().print("no circuit breakers recorded (every node and type is closed)")
        return
    table = _table(
        f"circuit breakers ({len(rows)})",
        "node",
        "type",
        "state",
        "failures in window",
        "spawn failures",
        "last reason",
        "opened at",
        "retry at / in",
    )
    for r in rows:
        state = _text(r["state"], STATE_STYLE.get(r["state"], "white"))
        if r["state"] == "half_open" and r.get("trials_in_flight"):
            state.append(f" ({r['trials_in_flight']} trial(s) running)")
        retry = "-"
        if r["retry_at"] is not None:
            retry = f"{ts(r['retry_at'])} (in {age(max(0.0, r['retry_at'] - now))})"
        elif r["state"] == "half_open":
            retry = "now (trial)"
        table.add_row(
            _text(r["node"]),
            _text(r["task_type"]),
            state,
            _text(r["failures"]),
            _text(r.get("spawn_failures", 0)),
            _text(r["last_reason"]),
            ts(r["opened_at"]),
            retry,
        )
    console().print(table)


def breakers_reset(
    rows: list[dict[str, Any]], scope: str, factors: list[dict[str, Any]] | None = None
) -> None:
    for r in rows:
        line(f"reset {r['task_type']} on {r['node']} (was {r['state']})")
    line(f"{len(rows)} breaker(s) reset ({scope})")
    for f in factors or []:
        line(f"full spawn rate back on {f['node']} (backpressure was x{f['factor']:.3g})")


def outcome_recorded(doc: dict[str, Any], ok: bool) -> None:
    extra = ""
    if doc["state"] == "open" and doc["retry_after"] is not None:
        extra = f", retry in {doc['retry_after']:.0f} s"
    line(
        f"recorded {'success' if ok else 'failure'} for {doc['task_type']} on {doc['node']}: "
        f"breaker {doc['state']} ({doc['failures']} failure(s) in the window{extra})"
    )


# --------------------------------------------------------------------------- readings


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _hardware(r: dict[str, Any]) -> str:
    parts = []
    if r.get("gpu_count"):
        parts.append(f"{r.get('gpu_name') or 'GPU'} x{r['gpu_count']}")
    elif r.get("gpu_count") == 0:
        parts.append("no GPU")
    elif r.get("gpu_name"):
        parts.append(str(r["gpu_name"]))
    if r.get("cpus"):
        parts.append(f"{r['cpus']} cpus")
    if r.get("memory_gb"):
        parts.append(f"{r['memory_gb']:g} GB")
    return ", ".join(parts) or "hardware unknown"


def reported(r: dict[str, Any]) -> None:
    """``report``'s one line: the stored reading."""
    load = "-" if r.get("load_avg") is None else f"{r['load_avg']:.2f}"
    line(
        f"reported {r['node']} ({r['source']}): cpu {_pct(r.get('cpu'))}, "
        f"mem {_pct(r.get('memory'))}, disk {_pct(r.get('disk'))}, gpu {_pct(r.get('gpu'))}, "
        f"load {load}; {_hardware(r)}"
    )


def _level_cell(value: Any, level: str | None, text: str, stale: bool) -> Text:
    if value is None:
        return Text("-")
    return Text(text, "dim" if stale else LEVEL_STYLE[level])


def _caps(caps: dict[str, Any]) -> Text:
    parts: list[Text] = []
    for name, limit in caps["effective"].items():
        if name in caps["lowered"]:
            was = _limit(caps["per_node"].get(name))
            parts.append(Text.assemble((f"{name} {limit}", "red"), f" (OOM, was {was})"))
        else:
            parts.append(Text(f"{name} {limit}"))
    if caps["backpressure"] < 1.0:
        rate = f"rate ×{caps['backpressure']:.2f}"
        parts.append(Text.assemble((rate, "yellow"), " (backpressure)"))
    return Text(", ").join(parts) if parts else Text("-")


def resources_table(doc: dict[str, Any], node: str | None) -> None:
    t = doc["thresholds"]
    title = (
        f"resources (critical blocks the node: disk {t['disk']['critical']}%, memory "
        f"{t['memory']['critical']}%, cpu {t['cpu']['critical']}%, gpu "
        f"{t['gpu']['critical']}%, load {t['load_avg_critical_per_cpu']:g}×cpus; samples "
        f"older than {doc['max_sample_age']:g} s are stale)"
    )
    table = _table(
        Text(title),
        "node",
        "source",
        "age",
        "cpu",
        "mem",
        "disk",
        "gpu",
        "load",
        "hardware",
        "caps",
    )
    entries = list(doc["nodes"])
    if doc["live"] is not None:
        entries.append(doc["live"])
    for r in entries:
        stale, lv = r["stale"], r["levels"]
        live = r is doc["live"]
        name = _text(r["node"])
        if live:
            name.append(" (live)")
            when = Text("now" + ("" if r["used_by_admission"] else " (not used by admission)"))
        elif stale:
            when = Text.assemble(("STALE", "red"), f" {age(r['age'])}")
        else:
            when = Text(age(r["age"]))
        load = "-" if r["load_avg"] is None else f"{r['load_avg']:.2f}"
        if r["load_critical"] is not None and r["load_avg"] is not None:
            load += f"/{r['load_critical']:g}"
        table.add_row(
            name,
            _text(r["source"]),
            when,
            _level_cell(r["cpu"], lv["cpu"], _pct(r["cpu"]), stale),
            _level_cell(r["memory"], lv["memory"], _pct(r["memory"]), stale),
            _level_cell(r["disk"], lv["disk"], _pct(r["disk"]), stale),
            _level_cell(r["gpu"], lv["gpu"], _pct(r["gpu"]), stale),
            _level_cell(r["load_avg"], lv["load_avg"], load, stale),
            _text(_hardware(r)),
            _caps(r["caps"]),
        )
    out = console()
    out.print(table)
    if not doc["nodes"]:
        which = f"node {printable(node)}" if node else "any node"
        out.print(Text(f"no reading stored for {which} (ringrift-coord report stores one)"))
