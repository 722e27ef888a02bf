"""Human output of every command: tables and plain lines. Nothing here decides anything.

Every table is a ``Grid``, printed in the command's format (``set_format``): Rich on a
terminal, plain aligned columns in a pipe, tab-separated with ``--format tsv``. Ids, node and
type names and times are never cut: free text wraps first, and a terminal too narrow for the
rest leaves whole columns out and says which. Colour only repeats a word (``BLOCKED``,
``warn``, ``FULL``, a breaker's state), so ``NO_COLOR`` and pipes lose nothing.

Stored text is data, never markup: node and config names, reasons, who and host, paths
reach the terminal only through ``_text`` (a Rich ``Text`` of the printable form: no markup
parsed, no control character) or ``line`` (the same for plain lines). Markup appears only in
literals written here. ``--json`` output does not come through here.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ringrift_coord.durations import human
from ringrift_coord.inputs import printable

_console: Console | None = None

STATE_STYLE = {"closed": "green", "open": "red", "half_open": "yellow"}
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", None: ""}

FORMATS = ("table", "plain", "tsv")
_format: str | None = None  # None: "table" on a terminal, "plain" otherwise
_no_header = False


def set_format(fmt: str | None, no_header: bool = False) -> None:
    """How tables are printed: ``table`` (Rich, colour, box drawing, fitted to the terminal),
    ``plain`` (aligned columns, no box, no colour, nothing cut), ``tsv`` (one row a line,
    cells split by tabs); None picks ``table`` on a terminal and ``plain`` otherwise.
    ``no_header``: no titles and no column names (plain and tsv)."""
    global _format, _no_header
    _format, _no_header = fmt, no_header


def output_format() -> str:
    if _format is not None:
        return _format
    return "table" if sys.stdout.isatty() else "plain"


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


def note(message: str | Text) -> None:
    """A line outside a table (a title, an empty result): said in every format but tsv
    (whose stdout is rows only) and not with ``--no-header``."""
    fmt = output_format()
    if fmt == "tsv" or _no_header:
        return
    if fmt == "plain":
        sys.stdout.write((message.plain if isinstance(message, Text) else message) + "\n")
    else:
        console().print(message)


def say(message: str | Text) -> None:
    """A line that is the answer itself (not a title): said in every format; never wrapped
    outside a terminal."""
    if output_format() == "table":
        console().print(message)
    else:
        sys.stdout.write((message.plain if isinstance(message, Text) else message) + "\n")


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
    """A limit; none is ``∞`` to people and ``-`` (an empty cell) in tsv, for scripts."""
    if value is None:
        return "-" if output_format() == "tsv" else "∞"
    return str(value)


def _tsv_name(header: str) -> str:
    """A column name a script can use: ``per-node limit`` → ``per_node_limit``, ``EMA%`` →
    ``EMA_pct``."""
    return "_".join(re.findall(r"[A-Za-z0-9]+", header.replace("%", " pct"))) or "-"


class Col:
    """A column of a ``Grid``. ``text`` columns hold free text (reasons, rule messages,
    hardware): they are the ones that wrap to fit a terminal. Every other column (ids, node
    and type names, times, numbers) is never cut or wrapped; ``drop`` ranks the columns a
    terminal too narrow for all of them leaves out first (1 first; None: never)."""

    __slots__ = ("header", "text", "drop")

    def __init__(self, header: str, *, text: bool = False, drop: int | None = None) -> None:
        self.header, self.text, self.drop = header, text, drop


class Grid:
    """A table, printed in the chosen format (see ``set_format``). Ids, names and times are
    never truncated: on a narrow terminal free text wraps, then the box drawing goes, then
    the columns with a ``drop`` rank are left out, and a line says which."""

    def __init__(self, title: str | Text, *cols: Col | str) -> None:
        self.title = title
        self.cols = [c if isinstance(c, Col) else Col(c) for c in cols]
        self.rows: list[list[Text]] = []

    def add(self, *cells: Any, style: str = "") -> None:
        row = [c if isinstance(c, Text) else _text(c) for c in cells]
        if style:
            for cell in row:
                cell.stylize(style)
        self.rows.append(row)

    def show(self) -> None:
        fmt = output_format()
        if fmt == "tsv":
            self._tsv()
        elif fmt == "plain":
            self._plain()
        else:
            self._table()

    def _tsv(self) -> None:
        out = []
        if not _no_header:
            out.append("\t".join(_tsv_name(c.header) for c in self.cols))
        for row in self.rows:
            out.append("\t".join(cell.plain.replace("\t", " ") or "-" for cell in row))
        sys.stdout.write("".join(f"{x}\n" for x in out))

    def _plain(self) -> None:
        from rich.cells import cell_len

        lines = [[c.header for c in self.cols]] if not _no_header else []
        lines += [[cell.plain for cell in row] for row in self.rows]
        widths = [max((cell_len(r[i]) for r in lines), default=0) for i in range(len(self.cols))]
        out = []
        if not _no_header:
            out.append(self.title.plain if isinstance(self.title, Text) else self.title)
        for r in lines:
            cells = [v + " " * (widths[i] - cell_len(v)) for i, v in enumerate(r)]
            out.append("  ".join(cells).rstrip())
        sys.stdout.write("".join(f"{x}\n" for x in out))

    def _table(self) -> None:
        from rich import box

        out = console()
        width = out.width
        keep = list(range(len(self.cols)))
        # the narrowest each column may be (headers wrapped at words, free text wrapped),
        # with headers in one line, and with nothing wrapped
        need, whole, natural = {}, {}, {}
        for i, col in enumerate(self.cols):
            words = max((len(w) for w in col.header.split()), default=0)
            widest = max((row[i].cell_len for row in self.rows), default=0)
            need[i] = max(words, widest)
            whole[i] = natural[i] = max(len(col.header), widest)
            if col.text:
                need[i] = whole[i] = min(need[i], max(words, 16))  # free text wraps to this

        def fits(cols: list[int], boxed: bool, widths: dict[int, int] = need) -> bool:
            overhead = 3 * len(cols) + 1 if boxed else 2 * (len(cols) - 1)
            return sum(widths[i] for i in cols) + overhead <= width

        boxed = fits(keep, True, natural)  # box drawing only where nothing has to wrap
        droppable = sorted(
            (i for i, c in enumerate(self.cols) if c.drop is not None),
            key=lambda i: self.cols[i].drop or 0,
        ) + [i for i, c in enumerate(self.cols) if c.drop is None and c.text]  # then free text
        left_out = []
        while not boxed and not fits(keep, False) and droppable:
            gone = droppable.pop(0)
            keep.remove(gone)
            left_out.append(self.cols[gone].header)
        table = Table(  # the title is printed on its own: a terminal-wide line, never markup
            box=box.HEAVY_HEAD if boxed else None,
            pad_edge=boxed,
            show_edge=boxed,
        )
        wrap_headers = not fits(keep, boxed, whole)
        for i in keep:
            col = self.cols[i]
            if col.text:
                table.add_column(col.header, overflow="fold")
            else:
                table.add_column(
                    Text(col.header, no_wrap=False, overflow="fold"),  # headers may wrap
                    no_wrap=True,
                    min_width=need[i],
                    max_width=need[i] if wrap_headers else None,
                    overflow="fold",
                )
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        if self.title:
            title = self.title if isinstance(self.title, Text) else Text(self.title)
            out.print(title, style="italic")
        if fits(keep, boxed):
            out.print(table)
        else:  # still too narrow: longer lines rather than a cut id
            overhead = 3 * len(keep) + 1 if boxed else 2 * (len(keep) - 1)
            wide = Console(
                highlight=False,
                soft_wrap=False,
                width=sum(need[i] for i in keep) + overhead,
                color_system=out.color_system,  # type: ignore[arg-type]
                no_color=out.no_color,
            )
            wide.print(table)
        if left_out:
            out.print(
                Text(
                    f"(left out at {width} columns: {', '.join(left_out)}; "
                    "--format plain shows every column)",
                    "dim",
                )
            )


# --------------------------------------------------------------------------- tasks


def tasks_table(rows: list[dict[str, Any]]) -> None:
    grid = Grid(
        f"running tasks ({len(rows)})",
        "task id",
        Col("type", drop=5),  # last to go: the id starts with it
        "node",
        Col("host", drop=2),
        Col("pid", drop=4),
        "age",
        Col("lease left", drop=3),
        Col("config", drop=1),
    )
    for r in rows:
        grid.add(
            r["task_id"],
            r["task_type"],
            r["node"],
            r["host"],
            r["pid"],
            age(r["age"]),
            age(r["lease_left"]),
            r.get("config_name"),
        )
    grid.show()


def history_table(rows: list[dict[str, Any]], now: float | None = None) -> None:
    grid = Grid(
        "finished tasks",
        "task id",
        Col("type", drop=5),  # last to go: the id starts with it
        "node",
        Col("ended", drop=1),
        "ago",
        Col("duration", drop=2),
        Col("exit", drop=3),
        "status",
        Col("reason", text=True, drop=4),
    )
    for r in rows:
        grid.add(
            r["task_id"],
            r["task_type"],
            r["node"],
            ts(r["ended_at"]),
            "-" if now is None or r["ended_at"] is None else age(now - r["ended_at"]),
            age(r["duration"]),
            r["exit_code"],
            _text(r["status"], "green" if r["status"] == "ok" else "red"),
            r.get("reason"),
        )
    grid.show()


TIME_FIELDS = ("started_at", "ended_at", "lease_expires", "at")
DURATION_FIELDS = ("age", "lease_left", "duration")


def task_show(doc: dict[str, Any]) -> None:
    """``tasks show``: every recorded field of one task, one ``key: value`` line each."""
    line(f"task {doc['task_id']}: {doc['status']}")

    def fields(row: dict[str, Any], indent: str = "  ") -> None:
        for key, value in row.items():
            if key == "id":  # the history table's own row number: nothing to an operator
                continue
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


def reaped(
    rows: list[dict[str, Any]],
    transfers: list[dict[str, Any]] | None = None,
    *,
    kept: int = 0,
    host: str | None = None,
) -> None:
    """``tasks reap``; ``kept``: the tasks of live holders on ``host``, this host, that a
    ``--host`` naming it left alone."""
    for r in rows:
        line(f"reaped {r['task_id']} ({r['task_type']} on {r['node']}): {r['reason']}")
    line(f"{len(rows)} slot(s) freed")
    if kept:
        line(
            f"kept {kept} task(s) of live holders on {host} (this host): --host frees a dead "
            "host's slots; end a live job to free its slot"
        )
    for r in transfers or []:
        line(f"reaped transfer {r['transfer_id']} (to {r['remote']}): {r['reason']}")
    if transfers:
        line(f"{len(transfers)} transfer(s) ended")


def reservations_table(rows: list[dict[str, Any]]) -> None:
    grid = Grid("reservations", "id", "node", "type", "slots", "expires", Col("by", drop=1))
    for r in rows:
        grid.add(
            r["res_id"], r["node"], r["task_type"], r["slots"], ts(r["expires_at"]), r.get("who")
        )
    grid.show()


def decisions_table(rows: list[dict[str, Any]]) -> None:
    grid = Grid(
        "admission decisions (newest first)",
        "at",
        Col("action", drop=2),
        "type",
        "node",
        Col("who", drop=1),
        "decision",
        Col("rules", text=True),
    )
    for r in rows:
        verdict = Text("allowed", "green") if r["allowed"] else Text("denied", "red")
        grid.add(
            ts(r["at"]),
            r["action"],
            r["task_type"],
            r["node"],
            r.get("who"),
            verdict,
            "; ".join(x["message"] for x in r["rules"]),
        )
    grid.show()


# --------------------------------------------------------------------------- settings, caps


def settings_table(doc: dict[str, Any], title: str) -> None:
    file = doc["config_file"]
    grid = Grid(
        Text(f"{title} (config file: {printable(file) if file else 'none'})"),
        "key",
        Col("value", text=True),
        Col("source", text=True),
    )
    for r in doc["values"]:
        value = r["value"]
        shown = str(value).lower() if isinstance(value, bool) else str(value)  # YAML's words
        if value is None:  # a limit that is null is no limit; another null setting is unset
            limit = r["key"].startswith(("task_limits.", "rate_limits."))
            shown = "null (unlimited)" if limit else "null (not set)"
            if output_format() == "tsv":  # an empty cell for scripts, as ``_limit`` gives
                shown = "-"
        if not r.get("used", True):
            shown += " (not used yet)"
        style = "" if r["source"] == "default" else "bold"
        grid.add(r["key"], shown, r["source"], style=style)
    grid.show()


def caps_tables(doc: dict[str, Any]) -> None:
    """``limits``' second part: the caps lowered after repeated OOMs, the backpressure."""
    if not doc["lowered_caps"] and not doc["backpressure"]:
        note("no OOM-lowered caps or backpressure in force")
        return
    if doc["lowered_caps"]:
        grid = Grid(
            "caps lowered after repeated OOMs",
            "node",
            "type",
            "cap",
            "configured",
            "OOMs",
            "lowered at",
        )
        for r in doc["lowered_caps"]:
            grid.add(
                r["node"],
                r["task_type"],
                _text(r["cap"], "red"),
                _limit(r["configured"]),
                r["ooms"],
                ts(r["lowered_at"]),
            )
        grid.show()
    if doc["backpressure"]:
        backpressure_table(doc["backpressure"])


def backpressure_table(rows: list[dict[str, Any]]) -> None:
    """The nodes whose spawn rate is cut: the factor now (it recovers with time), the factor
    the last job left, and when."""
    grid = Grid(
        "backpressure (spawn-rate factor per node, recovering with time)",
        "node",
        "factor now",
        Col("last set to", drop=1),
        "at",
    )
    for r in rows:
        grid.add(
            r["node"],
            Text(f"×{r['factor']:.2f}", "yellow"),
            f"×{r['stored_factor']:.2f}",
            ts(r["updated_at"]),
        )
    grid.show()


# --------------------------------------------------------------------------- halts


def _reach(doc: dict[str, Any]) -> str:
    """Where a halt holds, as the store says it: "this host's store sqlite:/…/tasks.db" or
    "cluster-wide on postgres host/db" (never a password)."""
    return printable(str(doc.get("store_scope") or "the store"))


def halted(record: dict[str, Any]) -> None:
    what = "every task type" if record["scope"] == "*" else record["scope"]
    until = "" if record["expires_at"] is None else f" until {ts(record['expires_at'])}"
    node = record.get("node", "*")
    only = "" if node == "*" else f" on node {node} only"
    line(f"halted {what}{only} in {_reach(record)}{until} (by {record['who']})")


def unhalted(result: dict[str, Any]) -> None:
    parts = []
    for h in result.get("lifted_halts") or [{"scope": s, "node": "*"} for s in result["lifted"]]:
        what = "all types" if h["scope"] == "*" else h["scope"]
        parts.append(f"{what} everywhere" if h["node"] == "*" else f"{what} on node {h['node']}")
    if result["removed_halt_file"]:
        parts.append("removed the halt file")
    line(f"unhalted in {_reach(result)}: {'; '.join(parts) or 'nothing'}")


def halt_check(status: dict[str, Any]) -> None:
    """Every halt in force, or "not halted" (a halt of another type is listed as well)."""
    if not status["halted"]:
        say(f"not halted in {_reach(status)}")
        return
    for h in status["halts"]:
        scope = "all types" if h["scope"] == "*" else h["scope"]
        if h.get("node", "*") != "*":
            scope += f" on node {h['node']}"
        until = "" if h["expires_at"] is None else f", until {ts(h['expires_at'])}"
        say(
            Text.assemble(
                ("HALTED", "red"),
                f" {printable(scope)} in {_reach(status)} by {printable(str(h['who']))} at "
                f"{ts(h['at'])}{until}: ",
                printable(h["reason"] or "no reason given"),
            )
        )
    info = status["halt_file"]
    if info is not None and info.get("mirror"):  # halt's own copy: the same halt, not another
        say(
            f"  (mirrored in {printable(info['path'])}: this host stays halted while the "
            "store cannot be read)"
        )
    elif info is not None:
        why = f": {printable(info['reason'])}" if info.get("reason") else ""
        say(Text.assemble(("HALTED", "red"), f" this host by {printable(info['path'])}{why}"))


# --------------------------------------------------------------------------- status


def _type_rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The types ``status`` shows: those with a limit, a running task or a waiter."""
    shown = []
    for name, entry in doc["by_type"].items():
        limited = entry.get("cluster_limit") is not None or entry.get("per_node_limit") is not None
        if entry["running"] or entry.get("queued") or entry.get("held") or limited:
            shown.append((name, entry))
    return shown


def _queued(entry: dict[str, Any], *, short: bool = False) -> str:
    """A type's waiters: ``2 queued`` (``2`` with ``short``), and those a halt or peak hours
    hold back, who start once it lifts: ``2 queued, 5 held`` (``2 +5 held``)."""
    queued, held = entry.get("queued", 0), entry.get("held", 0)
    if short:
        return f"{queued} +{held} held" if held else str(queued)
    return f"{queued} queued, {held} held" if held else f"{queued} queued"


def _full(count: int, limit: Any) -> bool:
    return limit is not None and count >= limit


def _halted_word(halts: dict[str, Any], task_type: str, *, own_only: bool = False) -> str:
    """What stops ``task_type`` now: ``HALTED`` (everywhere), ``drained n1,n2`` or ``-``.
    ``own_only``: a drain of every type is left out (said once, on its own line)."""
    if halts["halt_file"] is not None:
        return "HALTED"
    scopes = (task_type,) if own_only else ("*", task_type)
    hit = [
        h
        for h in halts["halts"]
        if h["scope"] in scopes or (h["scope"] == "*" and h.get("node", "*") == "*")
    ]
    if any(h.get("node", "*") == "*" for h in hit):
        return "HALTED"
    nodes = sorted({printable(str(h["node"])) for h in hit})
    return f"drained {','.join(nodes)}" if nodes else "-"


def status_brief(doc: dict[str, Any]) -> None:
    """``status --brief``: the halts in force, then one line per type (tsv: one row per
    type, with a ``halt`` column)."""
    halts = doc["halt"]
    if output_format() == "tsv":
        # (its columns stay as scripts know them: the held waiters are in --json and text)
        grid = Grid(
            "", "type", "running", "queued", "nodes", "cluster limit", "per-node limit", "halt"
        )
        for name, e in _type_rows(doc):
            grid.add(
                name,
                e["running"],
                e.get("queued", 0),
                len(e["nodes"]),
                _limit(e.get("cluster_limit")),
                _limit(e.get("per_node_limit")),
                _halted_word(halts, name),
            )
        grid.show()
        return
    if halts["halts"] or halts["halt_file"] is not None:  # a halted cluster never looks idle
        halt_check({**halts, "halted": True})
    store_warnings(doc)
    for name, e in _type_rows(doc):
        cluster, per_node = e.get("cluster_limit"), e.get("per_node_limit")
        full = " FULL" if _full(e["running"], cluster) else ""
        nodes_full = sum(1 for c in e["nodes"].values() if _full(c, per_node))
        at_cap = f", {nodes_full} node(s) FULL" if nodes_full else ""
        halted = _halted_word(halts, name, own_only=True)
        stop = "" if halted == "-" else f" [{halted}]"
        line(
            f"{name}: {e['running']}/{_limit(cluster)} running{full} on {len(e['nodes'])} "
            f"node(s), {_queued(e)}; per node {_limit(per_node)}{at_cap}{stop}"
        )


def status_screen(doc: dict[str, Any], readings: dict[str, Any] | None = None) -> None:
    """``status``: the store, the halts, the tasks against their limits per type, a node ×
    type summary (one row per node), reservations and the breakers that are not closed.
    The task list itself is ``tasks``. ``tsv`` and ``--no-header``: one row per (node,
    type) with tasks.
    ``readings`` (``resources``' document): each node's admission word (``BLOCKED``, ``warn``)
    in the node rows, and a row for a node a reading blocks or warns about without tasks."""
    types = _type_rows(doc)
    if output_format() == "tsv" or _no_header:  # rows only: one kind of row
        grid = Grid("", "node", "type", "running", "per-node limit")
        for name, e in types:
            for node, count in sorted(e["nodes"].items()):
                grid.add(node, name, count, _limit(e.get("per_node_limit")))
        grid.show()
        return
    store = doc["store"]
    where = store.get("store_scope") or store.get("path") or store.get("server") or "?"
    note(
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
        note(Text.assemble(("no halt in force", "green"), f" in {_reach(halts)}"))
    store_warnings(doc)
    grid = Grid(
        "tasks vs limits",
        "type",
        "running",
        "queued",
        "nodes",
        "cluster limit",
        "per-node limit",
        Col("full", text=True),
    )
    for name, e in types:
        cluster, per_node = e.get("cluster_limit"), e.get("per_node_limit")
        marks = []
        if _full(e["running"], cluster):
            marks.append("FULL cluster-wide")
        nodes_full = sum(1 for c in e["nodes"].values() if _full(c, per_node))
        if nodes_full:
            marks.append(f"{nodes_full} node(s) full")
        grid.add(
            name,
            _text(e["running"], "red" if _full(e["running"], cluster) else ""),
            _queued(e, short=True),
            len(e["nodes"]),
            _limit(cluster),
            _limit(per_node),
            _text(", ".join(marks), "red", empty=""),
        )
    grid.show()
    by_node: dict[str, list[tuple[str, int, Any]]] = {}
    for name, e in types:
        for node, count in e["nodes"].items():
            by_node.setdefault(node, []).append((name, count, e.get("per_node_limit")))
    words: dict[str, Text] = {}
    for r in (readings or {}).get("nodes", []):
        word = admission_word(r)
        if r["node"] in by_node or word.plain.startswith(("BLOCKED", "warn")):
            words[r["node"]] = word
    opt = doc.get("optimizer") or {}
    target_of = {  # the optimizer's self-play targets admission enforces now
        t["node"]: t["target"] for t in opt.get("selfplay_targets") or [] if t.get("in_force")
    }
    if by_node or words:
        listed = sorted(set(by_node) | set(words))  # with tasks, or a reading that blocks/warns
        grid = Grid(
            f"tasks per node ({len(listed)} node(s); FULL: at the per-node limit)",
            "node",
            "tasks",
            "reading",
            Col("by type (running/per-node limit)", text=True),
        )
        for node in listed:
            entries = by_node.get(node, [])
            grid.add(
                node,
                sum(count for _, count, _ in entries),
                words.get(node, Text("-")),
                ", ".join(
                    f"{name}={count}/{_limit(limit)}"
                    + (" FULL" if _full(count, limit) else "")
                    + (
                        f" (optimizer target {target_of[node]})"
                        if name == "selfplay" and node in target_of
                        else ""
                    )
                    for name, count, limit in entries
                ),
            )
        grid.show()
    if doc["reservations"]:
        reservations_table(doc["reservations"])
    optimizer_status(doc.get("optimizer"))
    not_closed = [r for r in doc["breakers"] if r["state"] != "closed"]
    if not_closed:
        breakers_table(not_closed, doc["at"])


# --------------------------------------------------------------------------- breakers


def breakers_table(
    rows: list[dict[str, Any]], now: float, backpressure: list[dict[str, Any]] | None = None
) -> None:
    # after the breakers, and only where a second table cannot be mistaken for their rows
    # (not in tsv, not without headers): `limits` lists the backpressure in every format
    also = backpressure if backpressure and output_format() != "tsv" and not _no_header else []
    if not rows:
        note("no circuit breakers recorded (every node and type is closed)")
        if also:
            backpressure_table(also)
        return
    grid = Grid(
        f"circuit breakers ({len(rows)})",
        "node",
        "type",
        "state",
        Col("failures in window", drop=2),
        Col("spawn failures", drop=1),
        Col("last reason", text=True, drop=4),
        Col("opened at", drop=3),
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
        grid.add(
            r["node"],
            r["task_type"],
            state,
            r["failures"],
            r.get("spawn_failures", 0),
            r["last_reason"],
            ts(r["opened_at"]),
            retry,
        )
    grid.show()
    if also:
        backpressure_table(also)


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
        extra = f", retry in {human(doc['retry_after'])}"
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
        parts.append(f"{r['memory_gb']:g} GiB")  # --memory-gb and /proc/meminfo's total: GiB
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


def admission_word(r: dict[str, Any]) -> Text:
    """What a reading means for admission, in words (colour only repeats it): ``BLOCKED``
    and the critical resources, ``warn`` and the resources past their warning level,
    ``stale`` (ignored), ``unused`` (a live reading admission does not use), ``ok``."""
    levels = r["levels"]
    names = {"memory": "mem", "load_avg": "load"}
    critical = [names.get(k, k) for k, v in levels.items() if v == "critical"]
    warning = [names.get(k, k) for k, v in levels.items() if v == "warning"]
    if r.get("used_by_admission") is False:
        return Text("unused")
    if r["stale"]:
        return Text("stale", "dim")
    if r["blocking"]:
        return Text(f"BLOCKED {','.join(critical)}", "bold red")
    if warning:
        return Text(f"warn {','.join(warning)}", "yellow")
    return Text("ok", "green")


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
    hw = caps.get("hardware_cap")
    if hw and hw["max_selfplay_jobs"] is not None:
        how = "enforced" if hw["enforced"] else "not enforced"
        parts.append(Text(f"hw cap {hw['max_selfplay_jobs']} by {hw['bounded_by']} ({how})"))
    return Text(", ").join(parts) if parts else Text("-")


def resources_table(doc: dict[str, Any], node: str | None) -> None:
    t = doc["thresholds"]
    title = (
        f"resources (critical blocks the node: disk {t['disk']['critical']}%, memory "
        f"{t['memory']['critical']}%, cpu {t['cpu']['critical']}%, gpu "
        f"{t['gpu']['critical']}%, load {t['load_avg_critical_per_cpu']:g}×cpus; samples "
        f"older than {human(doc['max_sample_age'])} are stale)"
    )
    grid = Grid(
        Text(title),
        "node",
        "admission",
        Col("source", drop=1),
        "age",
        "cpu",
        "mem",
        "disk",
        "gpu",
        Col("load", drop=4),
        Col("hardware", text=True, drop=2),
        Col("caps", text=True, drop=3),
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
            when = Text("now")
        elif stale:
            when = Text.assemble(("STALE", "red"), f" {age(r['age'])}")
        else:
            when = Text(age(r["age"]))
        load = "-" if r["load_avg"] is None else f"{r['load_avg']:.2f}"
        if r["load_critical"] is not None and r["load_avg"] is not None:
            load += f"/{r['load_critical']:g}"
        grid.add(
            name,
            admission_word(r),
            r["source"],
            when,
            _level_cell(r["cpu"], lv["cpu"], _pct(r["cpu"]), stale),
            _level_cell(r["memory"], lv["memory"], _pct(r["memory"]), stale),
            _level_cell(r["disk"], lv["disk"], _pct(r["disk"]), stale),
            _level_cell(r["gpu"], lv["gpu"], _pct(r["gpu"]), stale),
            _level_cell(r["load_avg"], lv["load_avg"], load, stale),
            _hardware(r),
            _caps(r["caps"]),
        )
    grid.show()
    if not doc["nodes"]:
        which = f"node {printable(node)}" if node else "any node"
        note(Text(f"no reading stored for {which} (ringrift-coord report stores one)"))


def reading_alerts(alerts: list[dict[str, Any]], node: str) -> list[str]:
    """``report``'s stderr lines for the reading it just stored: what blocks the node,
    what is past its warning level."""
    out = []
    for a in alerts:
        what = printable(f"node {node} {a['message']}")
        if a["level"] == "critical":
            out.append(f"warning: {what}: new spawns on this node are refused")
        else:
            out.append(f"warning: {what}: past the warning level, new spawns still admitted")
    return out


# --------------------------------------------------------------------------- optimizer


def _band(targets: dict[str, Any], resource: str) -> str:
    t = targets.get(resource) or {}
    return f"{t.get('min', 0):g}-{t.get('max', 0):g}%"


def _where(value: Any, targets: dict[str, Any], resource: str) -> str:
    """``72% (target 60-80%: in range)`` / ``low`` / ``high`` / ``no data``."""
    if value is None:
        return f"no data (target {_band(targets, resource)})"
    t = targets[resource]
    if value < t["scale_up_below"]:
        word = f"low: scale up below {t['scale_up_below']:g}%"
    elif value < t["min"]:
        word = "below the range"
    elif value > t["scale_down_above"]:
        word = f"high: scale down above {t['scale_down_above']:g}%"
    elif value > t["max"]:
        word = "above the range"
    else:
        word = "in range"
    return f"{value:.0f}% (target {_band(targets, resource)}: {word})"


def _per_hour(value: Any) -> str:
    return "-" if value is None else f"{float(value):g}/h"


def adjusted(doc: dict[str, Any]) -> None:
    """``adjust``: what the step did (or would do), the figures it used, the node targets.
    Its lines wrap at word boundaries on a terminal, never in a pipe."""
    if not doc["acted"] and not doc["dry_run"]:
        say(_text(f"not adjusted: {doc['reason']}; rate {_per_hour(doc['rate'])}"))
        return
    head = "dry run (nothing stored): " if doc["dry_run"] else ""
    conf = "-" if doc["confidence"] is None else f"{doc['confidence']:.2f}"
    if doc["rate"] == doc["previous_rate"]:
        change = f"rate stays {_per_hour(doc['rate'])}"
    else:
        change = f"rate {_per_hour(doc['previous_rate'])} -> {_per_hour(doc['rate'])}"
    say(_text(f"{head}{doc['action']}: {change} (confidence {conf})"))
    say(_text(f"  {doc['reason']}"))
    util = doc.get("utilization") or {}
    if util:
        say(
            _text(
                f"  cluster: cpu {_pct(util.get('cpu'))}, gpu {_pct(util.get('gpu'))}, "
                f"gpu memory {_pct(util.get('gpu_memory'))}; {util.get('fresh_nodes', 0)} fresh "
                f"node(s) ({util.get('gpu_nodes', 0)} GPU, {util.get('cpu_nodes', 0)} CPU), "
                f"{util.get('stale_nodes', 0)} stale; {util.get('running_jobs', 0)} running "
                f"job(s), {util.get('selfplay_jobs', 0)} self-play"
            )
        )
    fc = doc.get("forecast")
    if fc and fc.get("value") is not None:
        slope = fc.get("slope_per_min")
        slope_text = "" if slope is None else f", {slope:+.2f} points/min"
        say(
            _text(
                f"  forecast {fc['value']:.1f}% (confidence {fc.get('confidence') or 0:.2f}"
                f"{slope_text}, {fc.get('samples') or 0} sample(s))"
            )
        )
    ctl = doc.get("controller")
    if ctl:
        say(
            _text(
                f"  controller on {ctl['resource']}: input {ctl['input']:.1f}% vs setpoint "
                f"{ctl['setpoint']:g}%, output {ctl['output']:+.3f} of the rate"
            )
        )
    targets = doc.get("node_targets") or []
    if targets:
        grid = Grid(
            "self-play targets" + (" (not stored)" if doc["dry_run"] else ""),
            "node",
            "target",
            "self-play cap",
        )
        for t in targets:
            grid.add(t["node"], t["target"], _limit(t.get("cap")))
        grid.show()


def utilization_screen(doc: dict[str, Any]) -> None:
    """``utilization``: the cluster against the targets, the optimizer's state, the nodes."""
    util, targets = doc["utilization"], doc["targets"]
    if output_format() == "tsv" or _no_header:  # rows only: the node table
        _utilization_nodes(doc)
        return
    note(Text.assemble(("cluster utilization", "bold"), f" · {ts(doc['at'])}"))
    for resource in ("cpu", "gpu"):
        mark = " (controlling)" if doc.get("controlling") == resource else ""
        say(Text(f"{resource}: {_where(util.get(resource), targets, resource)}{mark}"))
    say(Text(f"gpu memory: {_pct(util.get('gpu_memory'))}"))
    stale = ""
    if util.get("stale_nodes"):
        names = ", ".join(printable(str(n)) for n in util.get("stale_names") or [])
        stale = f" (left out: {names})"
    say(
        Text(
            f"nodes: {util['fresh_nodes']} fresh ({util['gpu_nodes']} GPU, "
            f"{util['cpu_nodes']} CPU), {util['stale_nodes']} stale{stale}; "
            f"{util['running_jobs']} running job(s), {util['selfplay_jobs']} self-play"
        )
    )
    say(Text(optimizer_line(doc)))
    _utilization_nodes(doc)


def _utilization_nodes(doc: dict[str, Any]) -> None:
    nodes = doc.get("nodes") or []
    if nodes:
        targets_by_node = {t["node"]: t for t in doc.get("selfplay_targets") or []}
        grid = Grid(
            "nodes",
            "node",
            "kind",
            "cpu",
            "gpu",
            "gpu mem",
            "self-play",
            "target",
            "age",
        )
        for r in nodes:
            t = targets_by_node.get(r["node"])
            target = "-" if t is None else f"{t['target']}" + ("" if t["in_force"] else " (old)")
            grid.add(
                r["node"],
                r["kind"],
                _pct(r.get("cpu")),
                _pct(r.get("gpu")),
                _pct(r.get("gpu_memory")),
                r.get("selfplay_jobs", 0),
                target,
                _text(
                    age(r.get("age")) + (" STALE" if r.get("stale") else ""),
                    "yellow" if r.get("stale") else "",
                ),
            )
        grid.show()


def optimizer_line(doc: dict[str, Any]) -> str:
    """The optimizer in one line: the rate, the last action, its confidence and age, or why
    it holds or has not run."""
    if doc.get("problem"):
        return f"optimizer: not in use: {printable(str(doc['problem']))}"
    if not doc.get("stored"):
        return (
            f"optimizer: never adjusted: rate {_per_hour(doc.get('rate'))} (the initial one); "
            "admission is not limited by it (run `ringrift-coord adjust` from cron)"
        )
    conf = doc.get("confidence")
    conf_text = "" if conf is None else f", confidence {conf:.2f}"
    in_force = sum(1 for t in doc.get("selfplay_targets") or [] if t.get("in_force"))
    return (
        f"optimizer: rate {_per_hour(doc.get('rate'))}; last action {doc.get('action')}"
        f"{conf_text}, {age(doc.get('age'))} ago by {printable(str(doc.get('updated_by')))}; "
        f"{in_force} node target(s) in force; {printable(str(doc.get('reason') or ''))}"
    )


def optimizer_status(doc: dict[str, Any] | None) -> None:
    """``status``'s optimizer line (one line at 80 columns): utilization against the targets,
    the rate, the last action with its confidence and age; or why it holds, has never run or
    is not in use. ``utilization`` has the reason in full."""
    if not doc:
        return
    if doc.get("problem"):
        note(Text(optimizer_line(doc)))
        return
    util, targets = doc["utilization"], doc["targets"]
    shown = [r for r in ("gpu", "cpu") if util.get(r) is not None]
    if not shown:
        where = "no fresh cpu/gpu readings"
    else:
        bands = {_band(targets, r) for r in shown}
        band = (
            f"target {bands.pop()}"
            if len(bands) == 1
            else "targets " + ", ".join(f"{r} {_band(targets, r)}" for r in shown)
        )
        where = " ".join(f"{r} {_pct(util[r])}" for r in shown) + f" ({band})"
    if not doc.get("stored"):
        note(Text(f"optimizer: never adjusted · {where} · rate {_per_hour(doc.get('rate'))}"))
        return
    conf = doc.get("confidence")
    action = f"{doc.get('action')}" + ("" if conf is None else f" {conf:.2f}")
    parts = [where, f"rate {_per_hour(doc.get('rate'))}", f"{action} {age(doc.get('age'))} ago"]
    reason = str(doc.get("reason") or "")
    if reason.startswith("no fresh readings"):
        parts.append("holding: no fresh readings")
    in_force = [t for t in doc.get("selfplay_targets") or [] if t.get("in_force")]
    if doc.get("selfplay_targets") and not in_force:
        parts.append("targets lapsed")
    note(Text("optimizer: " + " · ".join(parts)))


# --------------------------------------------------------------------------- capacity


def capacity_report(
    doc: dict[str, Any],
    *,
    jobs_per_cpu: float,
    memory_gb_per_job: float,
    per_node_limit: int | None,
) -> None:
    """``capacity``: the cap and what bounds it, each bound with its figures, where the
    hardware came from and whether admission enforces the cap."""
    inputs, bounds = doc["inputs"], doc["bounds"]
    cap = doc["max_selfplay_jobs"]
    if doc["source"] == "node":
        origin = f"node {inputs['node']}'s latest reading ({age(inputs['age'])} old)"
    elif doc["source"] == "detect":
        origin = "this host, detected (psutil, NVML)"
        if inputs.get("gpu_note"):
            origin += f"; no GPU seen: {inputs['gpu_note']}"
    else:
        origin = "given by hand"
    if cap is None:
        line(f"max self-play jobs: unknown: no GPU, CPU count or memory known ({origin})")
        line("admission does not limit a node of unknown hardware")
        return
    line(f"max self-play jobs: {cap} (bounded by {doc['bounded_by']})")
    if "gpu" in bounds:
        per_gpu = doc["per_gpu"]
        gpus = bounds["gpu"] // per_gpu if per_gpu else inputs.get("gpu_count")
        name = inputs.get("gpu_name")
        named = f" ({name!r})" if name and name != doc["gpu_model"] else ""
        if doc["gpu_model"] is not None:
            model = f"{doc['gpu_model']}{named}: {per_gpu} per GPU"
        else:
            model = (
                f"{name!r}" if name else "a GPU of unknown model"
            ) + f": not in hardware.gpu_jobs: default_gpu_jobs {per_gpu} per GPU"
        line(f"  gpu     {bounds['gpu']:>5}  {gpus} x {model}")
    else:
        line("  gpu         -  no GPU")
    if "cpu" in bounds:
        line(f"  cpu     {bounds['cpu']:>5}  {inputs['cpus']} cpus x {jobs_per_cpu:g} per cpu")
    else:
        line("  cpu         -  CPU count unknown")
    if "memory" in bounds:
        line(
            f"  memory  {bounds['memory']:>5}  {inputs['memory_gb']:g} GiB / "
            f"{memory_gb_per_job:g} GiB per job"
        )
    else:
        line("  memory      -  memory unknown")
    line(f"hardware: {origin}")
    limit = "no per-node limit" if per_node_limit is None else f"per-node limit {per_node_limit}"
    if doc["enforced"]:
        line(f"admission: enforced for selfplay (hardware.cap_selfplay is true); {limit}")
    else:
        line(f"admission: not enforced (hardware.cap_selfplay is false); {limit}")


# --------------------------------------------------------------------------- rate, distribution


def _rate(value: Any) -> str:
    """A rate in games per hour, as people read it (``1250``, ``1312.5``)."""
    return "-" if value is None else f"{float(value):.6g}"


LIMITED_BY = {
    "min": "raised to the minimum rate {min}",
    "max": "lowered to the maximum rate {max}",
    "max_change": "one negotiation moves the rate by at most {pct} of the current {previous}",
    "over_target": "the cluster is over its utilization target: the rate is not raised",
}


def rate_screen(doc: dict[str, Any]) -> None:
    """``rate show``: the current rate (a title: not in tsv, not with --no-header), then its
    history newest first."""
    bounds = doc["bounds"]
    if doc["stored"]:
        confidence = doc["confidence"]
        conf = "" if confidence is None else f", confidence {confidence:.2f}"
        note(
            Text(
                printable(
                    f"self-play rate {_rate(doc['rate'])} games/h (last action "
                    f"{doc['action']}{conf}; set {ts(doc['updated_at'])} by "
                    f"{doc['updated_by'] or '-'}); bounds {_rate(bounds['min'])}.."
                    f"{_rate(bounds['max'])}"
                )
            )
        )
    else:
        note(
            f"self-play rate {_rate(doc['rate'])} games/h (the initial rate: nothing "
            f"negotiated or adjusted yet); bounds {_rate(bounds['min'])}..{_rate(bounds['max'])}"
        )
    grid = Grid(
        "rate history (newest first)",
        "at",
        "rate",
        Col("previous", drop=3),
        Col("requested", drop=2),
        "source",
        "action",
        Col("requestor", drop=4),
        Col("who", drop=1),
        Col("reason", text=True),
    )
    for r in doc["history"]:
        grid.add(
            ts(r["at"]),
            _rate(r["rate"]),
            _rate(r.get("previous_rate")),
            _rate(r.get("requested_rate")),
            r.get("source"),
            r.get("action"),
            r.get("requestor"),
            r.get("who"),
            r.get("reason"),
        )
    if doc["history"]:
        grid.show()
    else:
        note("no rate change recorded yet")


def rate_negotiated(doc: dict[str, Any]) -> None:
    """``rate negotiate``: the approved rate and, when it differs, why."""
    approved, asked = doc["approved_rate"], doc["requested_rate"]
    line(
        f"approved self-play rate {_rate(approved)} games/h (requested {_rate(asked)}, "
        f"was {_rate(doc['previous_rate'])}; {doc['action']})"
    )
    bounds = doc.get("bounds") or {}
    for limit in doc["limited_by"]:
        template = LIMITED_BY.get(limit, limit)
        line(
            "  "
            + template.format(
                min=_rate(bounds.get("min")),
                max=_rate(bounds.get("max")),
                pct=f"{float(bounds.get('max_change') or 0) * 100:g}%",
                previous=_rate(doc["previous_rate"]),
            )
        )
    targets = doc.get("node_targets") or []
    if targets:
        shown = ", ".join(f"{t['node']} {t['target']}/{t['cap']}" for t in targets)
        line(f"self-play job targets (target/cap): {shown}")


def distribution_table(doc: dict[str, Any]) -> None:
    """``distribution``: each config's weight and share of the total."""
    if doc["unit"] == "slots":
        title = f"{doc['total']} self-play slots on {doc['node']} ({doc['basis']})"
    else:
        title = f"{doc['total']} self-play games/h ({doc['basis']})"
    grid = Grid(Text(printable(title)), "config", "weight", "share")
    for part in doc["parts"]:
        grid.add(part["config"], f"{part['weight']:g}", part["share"])
    grid.show()


# --------------------------------------------------------------------------- bandwidth


def size(nbytes: float | None, *, short: bool = False) -> str:
    """Bytes as people read them: ``512 B``, ``3.2 KiB``, ``52.4 MiB``, ``1.3 GiB``
    (``short``, for tables: ``512B``, ``3.2K``, ``52.4M``, ``1.3G``)."""
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            shown = f"{value:.0f}" if unit == "B" else f"{value:.1f}"
            return f"{shown}{unit[0]}" if short else f"{shown} {unit}"
        value /= 1024
    return "-"  # not reached


def _kbps(value: float | None) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def transfer_ended(row: dict[str, Any], limit_kbps: float | None) -> None:
    """``bandwidth end``: one line: bytes, seconds, the observed rate against the allocated
    one, the host's moving average against its limit."""
    text = f"ended {row['transfer_id']} to {row['remote']} ({row['status']}) after " + human(
        row["seconds"]
    )
    if row.get("bytes") is None:
        text += ": bytes unknown, no rate recorded"
    else:
        text += f": {size(row['bytes'])}"
        observed = row.get("observed_kbps")
        if observed is not None:
            pct = 100.0 * observed / row["kbps"] if row["kbps"] else 0.0
            text += f", {observed:.0f} KiB/s observed of {row['kbps']:.0f} allocated ({pct:.0f}%)"
        else:
            text += " (under 1 s: too short to measure a rate; none recorded)"
    if row.get("ema_kbps") is not None and limit_kbps:
        pct = 100.0 * row["ema_kbps"] / limit_kbps
        text += f"; EMA {row['ema_kbps']:.0f} KiB/s, {pct:.0f}% of the {limit_kbps:.0f} limit"
    line(text)


def bandwidth_status(doc: dict[str, Any]) -> None:
    """``bandwidth status``: the active transfers, then each host's link and history.
    Rows only (tsv, ``--no-header``): the transfers alone, each with its state (active or
    dead) in a column of its own, so that every line is a transfer (the hosts: ``--json``)."""
    dead_rows = doc.get("dead", [])
    rows_only = output_format() == "tsv" or _no_header
    title = f"active transfers ({len(doc['active'])})"
    if dead_rows:  # not active, not allocated: waiting for the next start or tasks reap
        title += f"; {len(dead_rows)} dead (holder gone: not counted)"
    columns: list[str | Col] = [
        "transfer id",
        "remote",
        Col("kind", drop=3),
        "priority",
        "KiB/s",
        Col("node", drop=1),
        Col("pid", drop=2),
        "age",
    ]
    active = Grid(title, *columns, *(["state"] if rows_only else []))
    for r in [*doc["active"], *dead_rows]:
        dead = r.get("dead") is not None
        cells = [
            r["transfer_id"] + (" (dead)" if dead and not rows_only else ""),
            r["remote"],
            r["kind"],
            r["priority"],
            _kbps(r["kbps"]),
            r["node"],
            r.get("pid"),
            age(r["age"]),
        ]
        active.add(*cells, *([("dead" if dead else "active")] if rows_only else []))
    active.show()
    if rows_only:
        return
    hosts = Grid(
        "hosts (KiB/s; act: active/cap +N waiting +N held; obs: bytes over timed secs)",
        "remote",
        Col("type", drop=4),
        "limit",
        Col("alloc", drop=3),
        "act",
        "ended",
        "bytes",
        Col("secs", drop=2),
        Col("timed", drop=2),
        "obs",
        "EMA",
        Col("EMA%", drop=1),
    )
    for h in doc["hosts"]:
        hosts.add(
            h["remote"],
            h["host_type"],
            _kbps(h["limit_kbps"]),
            _kbps(h["allocated_kbps"]),
            f"{h['active']}/{h['cap']}"
            + (f" +{h['queued']}" if h.get("queued") else "")
            + (f" +{h['held']} held" if h.get("held") else ""),
            h["transfers"],
            "-" if h.get("bytes") is None else size(h["bytes"], short=True),
            f"{h['seconds']:.0f}" if h["transfers"] else "-",
            f"{h['timed_seconds']:.0f}" if h.get("observed_kbps") is not None else "-",
            _kbps(h["observed_kbps"]),
            _kbps(h["ema_kbps"]),
            "-" if h["ema_pct"] is None else f"{h['ema_pct']:.0f}%",
        )
    if doc["hosts"]:
        hosts.show()
    else:
        note("no transfers yet")


# --------------------------------------------------------------------------- schedule


def peak_verdict(found: Any) -> None:
    """``schedule can-start``: yes on stdout; no, with when to retry, on stderr."""
    if found.allowed:
        line("yes: ", found.reason)
        return
    retry = ""
    if found.retry_shown is not None:
        retry = f"; retry at {found.retry_shown} (in {human(found.retry_after)})"
    sys.stderr.write(printable(f"ringrift-coord: no: {found.reason}{retry}") + "\n")


# --------------------------------------------------------------------------- schedule


def _key(doc: dict[str, Any]) -> str:
    config = doc.get("config_name")
    return doc["task_type"] + (f" ({config})" if config else "")


def _expected_words(seconds: Any, source: str, samples: int, used: int, needed: int) -> str:
    if source == "learned":
        dropped = samples - used
        out = f" ({dropped} dropped as outliers)" if dropped else ""
        return f"~{human(seconds)}, learned from {samples} successful run(s){out}"
    if source == "default":
        return (
            f"~{human(seconds)}, the type's default ({samples} of {needed} runs recorded "
            "before it is learned)"
        )
    return f"unknown: no default duration and {samples} of {needed} runs recorded"


def expected_duration(doc: dict[str, Any]) -> None:
    """``schedule expected``: one line."""
    words = _expected_words(
        doc["expected_seconds"], doc["source"], doc["samples"], doc["used"], doc["needed"]
    )
    line(f"{_key(doc)}: expected {words}")


def duration_recorded(doc: dict[str, Any]) -> None:
    """``schedule record``: what was recorded and the expected duration now."""
    words = _expected_words(
        doc["expected_seconds"], doc["expected_source"], doc["samples"], doc["used"], doc["needed"]
    )
    line(f"recorded {_exact(doc['recorded_seconds'])} for {_key(doc)}; expected now {words}")


def _exact(seconds: float) -> str:
    """A duration as given, to the millisecond: ``100 s``, ``14400 s (4 h)``."""
    shown = f"{seconds:.3f}".rstrip("0").rstrip(".")
    if seconds < 60 or seconds % 60:  # "2 min" for 100 s would not be what was given
        return f"{shown} s"
    return f"{shown} s ({human(seconds)})"


def durations_forgotten(doc: dict[str, Any]) -> None:
    """``schedule forget``: how many recorded durations were deleted."""
    key = doc["task_type"] + " (every config)" if doc["all_configs"] else _key(doc)
    line(f"forgot {doc['forgotten']} recorded duration(s) of {key}; it uses its default now")


def stale_table(doc: dict[str, Any]) -> None:
    """``schedule stale``: the tasks past stale_factor x their expected duration."""
    rows = doc["tasks"]
    factor = f"{doc['stale_factor']:g}"
    if not rows:
        note(
            f"no stale task: none of the {doc['checked']} running task(s) is older than "
            f"{factor} x its expected duration (as of {ts(doc['at'])})"
        )
        return
    grid = Grid(
        f"stale tasks: older than {factor} x their expected duration (as of {ts(doc['at'])})",
        "task id",
        Col("type", drop=4),
        "node",
        "age",
        "expected",
        Col("ratio", drop=3),
        Col("source", drop=1),
        Col("config", drop=2),
    )
    for r in rows:
        grid.add(
            r["task_id"],
            r["task_type"],
            r["node"],
            age(r["age"]),
            age(r["expected_seconds"]),
            f"{r['times_expected']:.1f}",
            r["expected_source"],
            r.get("config_name"),
        )
    grid.show()


def next_slot(doc: dict[str, Any]) -> None:
    """``schedule next-slot``: the answer, each limit, and the running tasks it rests on."""
    what = f"{doc['task_type']} on {doc['node']}"
    if _format is not None:  # --format: the table alone, as every command prints it
        _next_slot_grid(doc)
        return
    if doc["free_now"]:
        say(Text(printable(f"a slot for {what} is free now")))
    elif doc["free_at"] is None:
        say(
            Text(
                printable(
                    f"no slot for {what} now; when one frees cannot be told (a running task "
                    "or the type has no expected duration, or the limit is 0)"
                )
            )
        )
    else:
        say(
            Text(
                printable(
                    f"a slot for {what} is expected to free at {ts(doc['free_at'])} "
                    f"(in {human(doc['in_seconds'])})"
                )
            )
        )
    for limit in doc["limits"]:
        scope = "per-node" if limit["kind"] == "per_node" else "cluster"
        queued = f" + {limit['queued']} queued" if limit["queued"] else ""
        if limit["reserved"]:
            queued += f" + {limit['reserved']} reserved"
        state = "full" if limit["binds"] else "room"
        note(f"  {scope} limit {limit['limit']}: {limit['running']} running{queued} ({state})")
    if doc["basis"]:
        _next_slot_grid(doc)


def _next_slot_grid(doc: dict[str, Any]) -> None:
    grid = Grid(
        "running tasks by expected end",
        "task id",
        "node",
        "started",
        "expected end",
        "overdue",
        Col("expected", drop=2),
        Col("config", drop=1),
    )
    for r in doc["basis"]:
        grid.add(
            r["task_id"],
            r["node"],
            ts(r["started_at"]),
            None if r["expected_end_at"] is None else ts(r["expected_end_at"]),
            "yes" if r["overdue"] else "no",
            age(r["expected_seconds"]),
            r.get("config_name"),
        )
    grid.show()


# --------------------------------------------------------------------------- events


def _payload(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc.get("payload") or {}, sort_keys=True, ensure_ascii=False)


def event_published(doc: dict[str, Any], new: bool) -> None:
    """``events publish``: the event's id; a repeat says how often it was seen."""
    if new:
        line(doc["event_id"])
    else:
        line(doc["event_id"], f" (already stored: seen {doc['seen']} times)")


def events_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        note("no events")
        return
    grid = Grid(
        f"events ({len(rows)}, oldest first)",
        "id",
        "at",
        "type",
        Col("node", drop=3),
        Col("seen", drop=4),
        Col("last", drop=2),
        Col("source", drop=1),
        Col("payload", text=True),
    )
    for r in rows:
        grid.add(
            r["event_id"],
            ts(r["at"]),
            r["type"],
            r.get("node"),
            r["seen"],
            ts(r["last_at"]) if r["seen"] > 1 else "-",
            r["source"],
            _payload(r),
        )
    grid.show()


def event_line(doc: dict[str, Any]) -> None:
    """One event as one plain line (``events tail``): time, id, type, node, payload, seen."""
    node = f" node={doc['node']}" if doc.get("node") else ""
    seen = f" (seen {doc['seen']} times)" if doc["seen"] > 1 else ""
    line(ts(doc["at"]), f" #{doc['event_id']} ", doc["type"], node, " ", _payload(doc), seen)


# --------------------------------------------------------------------------- status --watch


def captured(draw: Any, width: int) -> Text:
    """What ``draw()`` prints through this module (its console and stdout), as Rich text
    for a live screen ``width`` columns wide: the tables drawn as on a terminal of that
    width (``table`` format), each line cut at ``width`` rather than wrapped."""
    import contextlib
    import io

    global _console, _format
    real = console()
    buf = io.StringIO()
    saved, saved_format = _console, _format
    _console = Console(
        file=buf,
        width=width,
        force_terminal=real.is_terminal,
        color_system=real.color_system,  # type: ignore[arg-type]
        no_color=real.no_color,
        highlight=False,
        soft_wrap=False,
    )
    _format = "table"
    try:
        with contextlib.redirect_stdout(buf):  # lines written past the console, wide tables
            draw()
    finally:
        _console, _format = saved, saved_format
    body = Text.from_ansi(buf.getvalue().rstrip("\n"), no_wrap=True, overflow="crop")
    body.no_wrap, body.overflow = True, "crop"
    return body


def watch_header(now: float, interval: float, error: str | None, last_ok: float | None) -> Text:
    """The live screen's first line(s): the time, the refresh interval and how to leave;
    a store error (shown, then retried) in red with the time of the last good read."""
    every = f"{interval:g}s"
    head = Text.assemble(
        ("ringrift-coord status", "bold"),
        f" · every {every} · {ts(now)} · ",
        ("Ctrl-C to quit", "dim"),
        no_wrap=True,
        overflow="ellipsis",
    )
    if error is None:
        return head
    since = "no good read yet" if last_ok is None else f"showing the read of {ts(last_ok)}"
    problem = Text(f"store error, retrying every {every}: ", style="bold red")
    problem.append(_text(error.splitlines()[0] if error else "unknown error", "red"))
    problem.append(f" ({since})", style="dim")
    return Text("\n").join([head, problem])


# --------------------------------------------------------------------------- doctor

DOCTOR_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def doctor_report(doc: dict[str, Any]) -> None:
    """``doctor``: one entry per check (level, name, what was found, wrapped to the terminal's
    width), a ``fix:`` line under each that is not ok, then the verdict."""
    import shutil
    import textwrap

    width = max(40, shutil.get_terminal_size((80, 24)).columns)
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        width = 1 << 20  # a pipe (grep, a log): one line per check, the fix on its own line
    indent = " " * 22
    for check in doc["checks"]:
        level = check["level"]
        head = f"{level:<5} {printable(check['name']):<16}"
        rows = textwrap.wrap(
            printable(check["found"]),
            width=width,
            initial_indent=" " * len(head),
            subsequent_indent=indent,
            break_on_hyphens=False,
        ) or [" " * len(head)]
        first = Text.assemble((f"{level:<5}", DOCTOR_STYLE.get(level, "")), head[5:])
        first.append(rows[0][len(head) :])
        say(first)
        for row in rows[1:]:
            say(Text(row))
        if check["fix"] and level != "ok":
            for row in textwrap.wrap(
                printable(check["fix"]),
                width=width,
                initial_indent=indent + "fix: ",
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
            ):
                say(Text(row))
    failures, warnings = doc["failed_checks"], doc["warned_checks"]
    if failures:
        say(
            Text.assemble(
                ("needs an operator", "red"),
                f": {failures} check(s) failed, {warnings} warning(s); see the fix lines",
            )
        )
    else:
        say(
            Text.assemble(
                ("healthy", "green"),
                f" ({warnings} warning(s))" if warnings else "",
            )
        )


def store_warnings(doc: dict[str, Any]) -> None:
    """``status``'s warnings about the store: read-only here, and a line for each process
    (or session) holding it long."""
    read_only = (doc.get("store") or {}).get("read_only")
    if read_only:
        say(
            Text.assemble(
                ("warning", "yellow"),
                f": the store is read-only here ({printable(read_only)}): nothing can be "
                "admitted or released on this host until it can be written",
            )
        )
    for holder in doc.get("long_holds") or []:
        say(Text.assemble(("warning", "yellow"), ": ", printable(holder["message"])))
