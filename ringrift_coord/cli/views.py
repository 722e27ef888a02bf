"""Rich rendering of the core's results. Nothing here decides anything."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False, soft_wrap=False)
    return _console


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


def tasks_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"running tasks ({len(rows)})", title_justify="left")
    for col in ("task id", "type", "node", "host", "pid", "age", "lease left", "config"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["task_id"],
            r["task_type"],
            r["node"],
            r["host"],
            str(r["pid"] or "-"),
            age(r["age"]),
            age(r["lease_left"]),
            r.get("config_name") or "-",
        )
    console().print(table)


def history_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="finished tasks", title_justify="left")
    for col in ("task id", "type", "node", "ended", "duration", "exit", "status", "reason"):
        table.add_column(col)
    for r in rows:
        colour = "green" if r["status"] == "ok" else "red"
        table.add_row(
            r["task_id"],
            r["task_type"],
            r["node"],
            ts(r["ended_at"]),
            age(r["duration"]),
            "-" if r["exit_code"] is None else str(r["exit_code"]),
            f"[{colour}]{r['status']}[/]",
            r.get("reason") or "",
        )
    console().print(table)


def reservations_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="reservations", title_justify="left")
    for col in ("id", "node", "type", "slots", "expires", "by"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["res_id"],
            r["node"],
            r["task_type"],
            str(r["slots"]),
            ts(r["expires_at"]),
            r.get("who") or "-",
        )
    console().print(table)


def decisions_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="admission decisions (newest first)", title_justify="left")
    for col in ("at", "action", "type", "node", "who", "decision", "rules"):
        table.add_column(col)
    for r in rows:
        verdict = "[green]allowed[/]" if r["allowed"] else "[red]denied[/]"
        rules = "; ".join(x["message"] for x in r["rules"]) or "-"
        table.add_row(
            ts(r["at"]), r["action"], r["task_type"], r["node"], r.get("who") or "-", verdict, rules
        )
    console().print(table)


def settings_table(rows: list[dict[str, Any]], title: str, file: str | None) -> None:
    table = Table(title=f"{title} (config file: {file or 'none'})", title_justify="left")
    for col in ("key", "value", "source"):
        table.add_column(col)
    for r in rows:
        value = r["value"]
        shown = "null (unlimited)" if value is None else str(value)
        style = "" if r["source"] == "default" else "bold"
        table.add_row(r["key"], shown, r["source"], style=style)
    console().print(table)


def halt_check(status: dict[str, Any], halted: bool) -> None:
    if not halted:
        console().print("not halted")
        return
    for h in status["halts"]:
        scope = "all types" if h["scope"] == "*" else h["scope"]
        until = "" if h["expires_at"] is None else f", until {ts(h['expires_at'])}"
        console().print(
            f"[red]HALTED[/] {scope} by {h['who']} at {ts(h['at'])}{until}: "
            f"{h['reason'] or 'no reason given'}"
        )
    if status["halt_file"] is not None:
        info = status["halt_file"]
        console().print(
            f"[red]HALTED[/] this host by {info['path']}"
            + (f": {info['reason']}" if info.get("reason") else "")
        )


def status_screen(doc: dict[str, Any]) -> None:
    out = console()
    store = doc["store"]
    where = store.get("path") or store.get("server") or "?"
    out.print(
        f"[bold]ringrift-coord[/] · engine {store['engine']} ({where}) · "
        f"state {doc['state']} · {doc['total_tasks']} running task(s) · "
        f"{ts(time.time())}"
    )
    halts = doc["halt"]
    if halts["halts"] or halts["halt_file"] is not None:
        halt_check(halts, True)
    else:
        out.print("[green]no halt in force[/]")
    table = Table(title="tasks vs limits", title_justify="left")
    for col in ("type", "running", "queued", "cluster limit", "per-node limit", "per node"):
        table.add_column(col)
    for name, entry in doc["by_type"].items():
        if (
            not entry["running"]
            and not entry.get("queued")
            and entry.get("cluster_limit") is None
            and entry.get("per_node_limit") is None
        ):
            continue
        cluster = entry.get("cluster_limit")
        running = str(entry["running"])
        if cluster is not None and entry["running"] >= cluster:
            running = f"[red]{running}[/]"
        per_node_limit = entry.get("per_node_limit")
        nodes = (
            ", ".join(
                f"{node} {count}/{_limit(per_node_limit)}"
                for node, count in sorted(entry["nodes"].items())
            )
            or "-"
        )
        table.add_row(
            name,
            running,
            str(entry.get("queued", 0)),
            _limit(cluster),
            _limit(per_node_limit),
            nodes,
        )
    out.print(table)
    if doc["reservations"]:
        reservations_table(doc["reservations"])
    if doc["tasks"]:
        tasks_table(doc["tasks"])
