"""``events``: the event log. ``publish`` (store an event, or count a repeat), ``list`` (oldest
first, the newest ``--limit``), ``tail`` (the last few; ``--follow`` polls the store every
second and prints each new event as one line until Ctrl-C or SIGTERM, exit 0).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated, Any

import typer

from ringrift_coord.cli import views
from ringrift_coord.cli.common import (
    FormatOpt,
    NoHeaderOpt,
    done,
    globals_of,
    not_blank,
    table_output,
)
from ringrift_coord.cli.hot import emit_json, json_text, say
from ringrift_coord.errors import UsageError

events_app = typer.Typer(help="The event log: publish events, list them, tail them (--follow).")

FOLLOW_INTERVAL = 1.0  # seconds between two polls of the store
MAX_LIMIT = 100_000


def _complete_types(incomplete: str) -> list[str]:
    from ringrift_coord.events import KNOWN_TYPES

    return [t for t in KNOWN_TYPES if t.startswith(incomplete.upper())]


TypeOpt = Annotated[
    str | None,
    typer.Option(
        "--type", metavar="TYPE", help="Only events of this type.", autocompletion=_complete_types
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``events`` to the app."""
    app.add_typer(events_app, name="events")


def _event_type(value: str | None) -> str | None:
    from ringrift_coord.events import check_type

    return None if value is None else check_type(value, "option --type")


def _since(raw: str | None, now: float) -> float | None:
    """``--since``: a duration back from now (``1h``, ``30m``, ``2d``) or an ISO 8601 time."""
    if raw is None:
        return None
    from ringrift_coord import durations
    from ringrift_coord.inputs import instant

    try:
        return now - durations.parse(raw.strip())
    except ValueError:
        pass
    if not any(ch in raw for ch in "-:T"):
        raise UsageError(
            f"option --since: {raw!r} is neither a duration (1h, 30m, 2d) nor an ISO 8601 "
            "time (2026-12-01T12:00)"
        )
    return instant(raw, "since")


def _since_checked(raw: str | None) -> str | None:
    """``--since`` checked before the store is looked for (a bad one is exit 2 even where
    no store exists yet); the store's clock turns it into a time when reading."""
    if raw is not None:
        _since(raw, time.time())
    return raw


def _limit(value: int, option: str) -> int:
    if not 1 <= value <= MAX_LIMIT:
        raise UsageError(
            f"option {option}: {value} is not a number of events from 1 to {MAX_LIMIT}"
        )
    return value


def _read(g: Any, **query: Any) -> list[Any]:
    """Events from the store (none where no SQLite store exists yet); only reads."""
    from ringrift_coord import events
    from ringrift_coord.store import NoStore

    with g.context(create=False) as c:
        c.settings.require("events")  # the event log's own commands: its section must be right
        try:
            with c.store.read() as tx:
                since = query.pop("since_raw", None)
                return events.list_events(tx, since=_since(since, tx.now()), **query)
        except NoStore:
            return []


# --------------------------------------------------------------------------- publish


@events_app.command(
    "publish", short_help="Store an event (once per type and content) and print its id."
)
def events_publish(
    ctx: typer.Context,
    event_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE",
            help="The event's type: capital letters, digits and _ (TRAINING_COMPLETED, ...).",
            autocompletion=_complete_types,
        ),
    ],
    payload: Annotated[
        str,
        typer.Option(
            "--payload", metavar="JSON", help="The event's content: a JSON object, at most 64 KiB."
        ),
    ] = "{}",
    node: Annotated[
        str | None, typer.Option("--node", metavar="N", help="The node the event is about.")
    ] = None,
) -> None:
    """Store an event. The same type and content (the payload's canonical JSON) is stored
    once: publishing it again counts it (seen) and runs no hook again. Prints the event's id."""
    from ringrift_coord import events
    from ringrift_coord.identity import host_name, who_am_i
    from ringrift_coord.inputs import printable

    g = globals_of(ctx)
    kind = events.check_type(event_type)
    content = events.parse_payload(payload)
    node = not_blank("--node", node)
    if node is not None:
        node = printable(node).strip()
    known = kind in events.KNOWN_TYPES
    if not known and not g.quiet:
        hint = events.near_miss(kind)
        say(
            f"warning: {kind} is not a known event type (stored all the same)"
            + (f"; did you mean {hint}?" if hint else "")
        )
    with g.context() as c:
        c.settings.require("events")
        with c.store.write() as tx:
            event = events.publish(
                tx,
                c.settings,
                kind,
                content,
                source="user",
                node=node,
                who=who_am_i(),
                host=host_name(),
            )
    if g.json:
        emit_json({**event.to_dict(), "new": event.new, "known": known})
    else:
        views.event_published(event.to_dict(), event.new)
    done()


# --------------------------------------------------------------------------- list


@events_app.command(
    "list", short_help="Stored events, oldest first: when, type, node, how often seen, the payload."
)
def events_list(
    ctx: typer.Context,
    event_type: TypeOpt = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Only events published since WHEN: a duration back from now (1h, 30m, 2d) "
            "or an ISO 8601 time (2026-12-01T12:00, UTC unless it says).",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="At most the newest N events.")
    ] = 100,
    fmt: FormatOpt = None,
    no_header: NoHeaderOpt = False,
) -> None:
    """Stored events, oldest first (the newest last, like journalctl): when first and last
    published, type, node, how often seen, the payload. Only reads."""
    g = globals_of(ctx)
    table_output(fmt, no_header, ctx)
    kind, since = _event_type(event_type), _since_checked(since)  # options first, then the store
    found = _read(g, type=kind, since_raw=since, limit=_limit(limit, "--limit"))
    docs = [e.to_dict() for e in found]
    if g.json:
        emit_json({"events": docs})
    else:
        views.events_table(docs)
    done()


# --------------------------------------------------------------------------- tail


@events_app.command(
    "tail",
    short_help="The last N events, one line each; --follow prints each new one as it is stored.",
)
def events_tail(
    ctx: typer.Context,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep polling the store (every second) and print each new event as it "
            "arrives; Ctrl-C or SIGTERM ends it (exit 0).",
        ),
    ] = False,
    event_type: TypeOpt = None,
    lines: Annotated[
        int, typer.Option("-n", "--lines", metavar="N", help="The last N events first.")
    ] = 10,
) -> None:
    """The last N events, one line each (with --json: a document; with --follow --json: one
    JSON object a line). --follow then prints every new event as it is stored."""
    g = globals_of(ctx)
    kind = _event_type(event_type)
    if not 0 <= lines <= MAX_LIMIT:
        raise UsageError(f"option -n: {lines} is not a number of events from 0 to {MAX_LIMIT}")
    if not follow:
        found = _read(g, type=kind, limit=lines) if lines else []
        if g.json:
            emit_json({"events": [e.to_dict() for e in found]})
        else:
            for event in found:
                views.event_line(event.to_dict())
        done()
    # SIGTERM ends it like Ctrl-C, exit 0, at any moment: the handlers are in place before
    # the first read
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        found = _read(g, type=kind, limit=lines) if lines else []
        for event in found:
            _print_line(event.to_dict(), g.json)
        last = found[-1].id if found else None
        _follow(g, kind, last)
    except KeyboardInterrupt:
        done(0)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_line(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json_text(doc))
    else:
        views.event_line(doc)
    sys.stdout.flush()
    if getattr(sys.stdout, "lost", False):  # the reader is gone (| head -1): stop, as tail does
        raise KeyboardInterrupt


def _follow(g: Any, kind: str | None, last: int | None) -> None:
    """Poll for events stored after ``last`` until Ctrl-C or SIGTERM (``KeyboardInterrupt``).
    A store that is away for a while (PostgreSQL stopped, a lock held: ``StoreBusy``; the
    SQLite file deleted or replaced: ``StoreGone``, or another ``StateError``) is one line on
    stderr, and the polling goes on until it is back."""
    from ringrift_coord import events
    from ringrift_coord.errors import StateError, StoreBusy
    from ringrift_coord.store import NoStore

    away = False
    with g.context(create=False) as c:
        while True:
            try:
                with c.store.read() as tx:
                    if last is None:  # nothing shown: only what comes from now on
                        last = events.last_id(tx) if kind is None else _last_of(tx, kind)
                        new: list[Any] = []
                    else:
                        new = events.list_events(tx, type=kind, after_id=last)
                if away:
                    say("events tail: the store is back; following")
                    away = False
            except NoStore:
                new = []
                c.close()  # look again next time: the store may be created meanwhile
            except (StoreBusy, StateError) as exc:
                # a store deleted, replaced or damaged under the follower (StoreGone, ...) is
                # away too: it may be put back from a backup; the options and the first read
                # were checked before following, so a store that never answered fails there
                new = []
                if not away:
                    say(f"events tail: {exc.message.splitlines()[0]}; retrying every second")
                    away = True
                c.close()
            for event in new:
                _print_line(event.to_dict(), g.json)
                last = event.id
            if _reader_gone():  # | head -1 exited while nothing new came: stop now, as tail -f
                raise KeyboardInterrupt
            time.sleep(FOLLOW_INTERVAL)


def _reader_gone() -> bool:
    """Whether stdout's reader has gone (a pipe whose read end closed, a hung-up terminal):
    poll reports it without writing anything."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # 0: only errors and hang-ups are reported
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (a test's capture): never gone
        return False


def _last_of(tx: Any, kind: str) -> int:
    from ringrift_coord import events

    found = events.list_events(tx, type=kind, limit=1)
    return found[-1].id if found else events.last_id(tx)
