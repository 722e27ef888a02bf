"""``bandwidth``: transfer admission by host link and priority.

``allocate`` (read-only: the rate a transfer would get, in ``rsync --bwlimit`` units),
``start`` / ``end`` (admit a transfer and close it with its bytes), ``status`` (active
transfers and each host's history). ``bandwidth run`` (a hot command, see ``cli/spec.py``)
wraps a transfer command the way ``run`` wraps a job.
"""

from __future__ import annotations

import math
import os
import time
from typing import Annotated, Any

import typer

from ringrift_coord import schema
from ringrift_coord.cli import views
from ringrift_coord.cli.common import (
    FormatOpt,
    NoHeaderOpt,
    done,
    globals_of,
    not_blank,
    table_output,
)
from ringrift_coord.cli.hot import NotDelivered, deliver, emit_json, json_text, say, say_if_cut
from ringrift_coord.errors import CoordError, ExitCode, UsageError

bandwidth_app = typer.Typer(
    help="Transfer admission: per-host bandwidth by priority, concurrent-transfer caps."
)

_PRIORITIES = ("critical", "high", "normal", "background")

PriorityOpt = Annotated[
    str | None,
    typer.Option(
        "--priority",
        metavar="P",
        help="critical, high, normal (the default) or background: the share of the host's "
        "link the transfer asks for (bandwidth.priorities).",
        autocompletion=lambda incomplete: [p for p in _PRIORITIES if p.startswith(incomplete)],
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``bandwidth`` to the app."""
    app.add_typer(bandwidth_app, name="bandwidth")


def _host(host: str) -> str:
    from ringrift_coord import transfers

    if not host.strip():
        raise UsageError("argument HOST must not be empty")
    return transfers.check_remote(host)


def _shown_rate(kbps: int, unit: str) -> str:
    """``kbps`` (whole KiB/s) in ``unit``, rounded down: never above the allocation."""
    from ringrift_coord import transfers

    value, _ = transfers.in_unit(kbps, unit)
    if unit in ("kib", "bytes"):
        return str(int(value))
    return f"{math.floor(value * 10 + 1e-9) / 10:.1f}"


# --------------------------------------------------------------------------- allocate


@bandwidth_app.command(
    "allocate",
    short_help="The rate in KiB/s a transfer to HOST would get now (nothing is admitted).",
)
def bandwidth_allocate(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(metavar="HOST", help="The remote host of the transfer.")],
    priority: PriorityOpt = None,
    unit: Annotated[
        str | None,
        typer.Option(
            "--unit",
            metavar="U",
            help="kib (KiB/s, the default: rsync --bwlimit's unit), mib (MiB/s), mbit "
            "(Mbit/s) or bytes (bytes/s).",
        ),
    ] = None,
) -> None:
    """The rate a transfer to HOST would get now, in KiB/s (1024 bytes/s: the unit of
    rsync --bwlimit), rounded down; just the number. Read-only: nothing is admitted
    (bandwidth start does that). Refused (HOST at its concurrent-transfer cap, its link
    taken, or halted): exit 1, the reason on stderr, nothing on stdout. Check the exit
    status before using the number, since rsync reads an empty or 0 --bwlimit as no limit:
    rate=$(ringrift-coord bandwidth allocate HOST) || exit 75, then
    rsync --bwlimit="$rate" ..."""
    from ringrift_coord import transfers

    g = globals_of(ctx)
    remote = _host(host)
    prio = transfers.check_priority(priority)
    chosen = transfers.check_unit(unit)
    from ringrift_coord.store import NoStore

    with g.context(create=False) as c:
        c.settings.require("bandwidth")
        try:
            with c.store.read() as tx:
                decision = transfers.evaluate(
                    tx, c.settings, remote, prio, tx.now(), halt_source=c.state_dir
                )
        except NoStore:  # nothing recorded on this host yet: no transfer is active
            decision = transfers.decide(c.settings, remote, prio, [])
    if g.json:
        doc = decision.to_dict()
        doc.pop("transfer_id", None)
        doc["unit"] = transfers.in_unit(decision.kbps, chosen)[1]
        shown = _shown_rate(decision.kbps, chosen)
        doc["rate"] = int(shown) if chosen in ("kib", "bytes") else float(shown)
        emit_json(doc)
    elif decision.allowed:
        views.line(_shown_rate(decision.kbps, chosen))
    else:
        say(decision.summary())
    done(ExitCode.OK if decision.allowed else ExitCode.DENIED)


# --------------------------------------------------------------------------- start


@bandwidth_app.command(
    "start", short_help="Admit a transfer to HOST atomically and print its id and rate."
)
def bandwidth_start(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(metavar="HOST", help="The remote host of the transfer.")],
    kind: Annotated[
        str,
        typer.Option("--kind", metavar="K", help="What is moved (data, model, games, ...)."),
    ],
    priority: PriorityOpt = None,
    pid: Annotated[
        int | None,
        typer.Option(
            "--pid",
            metavar="PID",
            help="The process doing the transfer (default: the calling shell): the transfer "
            "is reaped once it is gone.",
        ),
    ] = None,
    transfer_id: Annotated[
        str | None,
        typer.Option("--transfer-id", metavar="ID", help="Use this id (default: xfer-<hex>)."),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            metavar="N",
            help="The node doing it, whose halts stop it (default: $RINGRIFT_NODE_ID, else "
            "this host's name).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only the id: no note of the rate on stderr.")
    ] = False,
) -> None:
    """Admit a transfer to HOST atomically and print its id; its allocated rate (KiB/s) goes
    to stderr (and under kbps with --json). End it with bandwidth end ID --bytes N. At the
    cap, or with the link taken: exit 1 with the numbers on stderr."""
    from ringrift_coord import procs, transfers

    g = globals_of(ctx)
    g.quiet = quiet
    remote = _host(host)
    not_blank("--kind", kind)
    node = not_blank("--node", node)
    holder_pid = os.getppid() if pid is None else pid
    if holder_pid <= 0 or procs.start_time(holder_pid) is None:
        raise UsageError(f"--pid {holder_pid}: no running process with that pid on this host")
    req = transfers.TransferRequest(
        remote,
        kind,
        priority,
        node=node,
        source="start",
        transfer_id=transfer_id,
        pid=holder_pid,
        pid_start=procs.start_time(holder_pid),
    )
    with g.context() as c:
        c.settings.require("bandwidth")
        with c.store.write() as tx:
            decision = transfers.start(tx, c.settings, req, tx.now(), halt_source=c.state_dir)
        if not decision.allowed:
            if g.json:
                emit_json({**decision.to_dict(), "lease_token": None})
            else:
                say(decision.summary())
            done(ExitCode.DENIED)
        assert decision.task_id is not None
        if g.json:
            doc = decision.to_dict()
            doc["lease_token"] = decision.lease_token
            delivered = deliver(json_text(doc))
        else:
            delivered = deliver(f"{decision.task_id}\n")
        if not delivered:
            # nobody could ever end a transfer whose id never arrived: end it now
            try:
                with c.store.write() as tx:
                    transfers.end(
                        tx,
                        c.settings,
                        decision.task_id,
                        tx.now(),
                        token=decision.lease_token,
                        status="stopped",
                        reason="id could not be delivered",
                    )
            except CoordError:
                pass  # it is reaped once the holder is gone
            raise NotDelivered(
                "bandwidth start: the transfer id could not be written to stdout; the "
                "transfer was ended (nothing is held: try again)"
            )
    if not g.json and not quiet:
        say(
            f"{decision.task_id}: {decision.kbps} KiB/s to {remote} ({decision.host_type}, "
            f"{decision.priority}; {decision.active} of {decision.cap} transfers)"
        )
    done()


# --------------------------------------------------------------------------- end


# rounded like the other documents: times to the millisecond, rates to 0.1 KiB/s
_END_ROUNDING = {
    "started_at": 3,
    "ended_at": 3,
    "seconds": 3,
    "kbps": 1,
    "observed_kbps": 1,
    "ema_kbps": 1,
}


@bandwidth_app.command(
    "end", short_help="Close transfer ID and record its bytes, seconds and observed rate."
)
def bandwidth_end(
    ctx: typer.Context,
    transfer_id: Annotated[str, typer.Argument(metavar="ID", help="The transfer's id.")],
    nbytes: Annotated[
        int | None,
        typer.Option(
            "--bytes",
            metavar="N",
            help="Bytes moved (rsync --stats: total bytes sent + received); without it no "
            "rate is recorded.",
        ),
    ] = None,
    status: Annotated[
        str,
        typer.Option("--status", metavar="S", help="ok (the default), failed, killed, stopped."),
    ] = "ok",
    reason: Annotated[
        str | None, typer.Option("--reason", metavar="TEXT", help="Why (for the history).")
    ] = None,
    token: Annotated[
        int | None,
        typer.Option("--token", metavar="T", help="The transfer's fencing token (start --json)."),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No line of its own: the exit status says it all."),
    ] = False,
) -> None:
    """Close transfer ID and record its bytes, seconds and observed rate (and the host's
    moving average of observed rates; a transfer under 1 second records its bytes but no
    rate). Already ended: says so, exit 0."""
    from ringrift_coord import transfers

    g = globals_of(ctx)
    g.quiet = quiet
    if not transfer_id.strip():
        raise UsageError("argument ID must not be empty")
    if nbytes is not None and nbytes < 0:
        raise UsageError(f"option --bytes: {nbytes} is not a number of bytes (0 or more)")
    if reason is not None:
        from ringrift_coord.inputs import printable

        say_if_cut(reason)
        reason = printable(reason)
    with g.context() as c:
        c.settings.require("bandwidth")
        with c.store.write() as tx:
            row = transfers.end(
                tx,
                c.settings,
                transfer_id,
                tx.now(),
                token=token,
                bytes=nbytes,
                status=status,
                reason=reason,
            )
        limit = None if row is None else transfers.link(c.settings, row["remote"])["limit_kbps"]
    if g.json:
        doc: dict[str, Any] = {"transfer_id": transfer_id, "ended": row is not None}
        doc.update({k: None if row is None else row[k] for k in schema.TRANSFER_ENDED})
        for key, places in _END_ROUNDING.items():
            if doc[key] is not None:
                doc[key] = round(float(doc[key]), places)
        doc["limit_kbps"] = None if limit is None else round(float(limit), 1)
        emit_json(doc)
    elif quiet:
        pass
    elif row is None:
        say(f"{transfer_id} had already ended")
    else:
        views.transfer_ended(row, limit)
    done()


# --------------------------------------------------------------------------- status


@bandwidth_app.command(
    "status",
    short_help="Active transfers and each host's link, history and observed rates (read-only).",
)
def bandwidth_status(
    ctx: typer.Context,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Active transfers and each host's link and history: transfers, bytes, seconds, the
    observed rate and its moving average against the configured limit. Read-only."""
    from ringrift_coord import transfers

    g = globals_of(ctx)
    table_output(fmt, no_header, ctx)
    from ringrift_coord.store import NoStore

    with g.context(create=False) as c:
        c.settings.require("bandwidth")
        try:
            with c.store.read() as tx:
                now = tx.now()
                doc = transfers.status(tx, c.settings, now)
        except NoStore:  # nothing recorded yet (and none created): no transfers yet
            now = c.clock.time() if c.clock is not None else time.time()
            doc = transfers.empty_status(c.settings)
    doc["at"] = now
    if g.json:
        emit_json(doc)
    else:
        views.bandwidth_status(doc)
    done()
