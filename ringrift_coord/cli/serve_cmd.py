"""``serve``: /metrics and the health endpoints over HTTP until SIGTERM or SIGINT
(``ringrift_coord.server``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ringrift_coord.cli.common import done, globals_of, not_blank
from ringrift_coord.cli.hot import say


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="H",
            help="Address to listen on (default serve.host, 127.0.0.1). Any other than "
            "loopback lets everyone who can reach it read the cluster's state.",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", metavar="P", help="TCP port (default serve.port, 9464)."),
    ] = None,
    access_log: Annotated[
        bool,
        typer.Option("--access-log", help="One line per request on stderr (default: quiet)."),
    ] = False,
) -> None:
    """Serve /metrics, /admin/health/coordinators and /admin/health/full over HTTP (read
    only) until SIGTERM or SIGINT, then exit 0."""
    from ringrift_coord import server

    gate = server.SignalGate()  # SIGTERM/SIGINT from here on: exit 0, whenever they come
    gate.install()
    try:
        _serve(ctx, gate, host, port, access_log)
    except server.Interrupted:
        done()  # stopped before it listened (the store probe, the imports)
    finally:
        gate.ignore()  # until the exit: Python's finalization would restore the defaults


def _serve(
    ctx: typer.Context, gate: Any, host: str | None, port: int | None, access_log: bool
) -> None:
    import asyncio

    from ringrift_coord import server
    from ringrift_coord.errors import StoreBusy, UsageError
    from ringrift_coord.store.base import StoreUnwritable

    g = globals_of(ctx)
    host = server.check_host(not_blank("--host", host))
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"option --port: {port} is not a TCP port (1..65535)")
    with g.context() as c:
        conf_host, conf_port, timeout = server.settings_of(c)
        from ringrift_coord.cli.metrics_cmd import warn_config

        warn_config(c.settings)  # /metrics goes on without a bad optimizer/bandwidth section
        host = host if host is not None else server.check_host(conf_host, "serve.host") or ""
        port = port if port is not None else conf_port
        probe = server.request_context(c, timeout, create=True)
        try:  # open (or create) it once: a bad --db is exit 3 now, not 503 on every request
            probe.store  # noqa: B018
        except StoreBusy as exc:
            say(f"warning: {exc.message}; /admin/health/full answers 503 until it is back")
        except StoreUnwritable as exc:
            # a store on a filesystem remounted read-only (errors=remount-ro) is what a
            # monitor must still show: its reads open it read-only, as `metrics` does
            probe.close()
            probe = server.request_context(c, timeout)
            probe.store  # noqa: B018  (a store that cannot even be read: exit 3 here)
            say(f"warning: {exc.message.splitlines()[0]}; serving it read-only")
        finally:
            probe.close()
        app = server.Server(
            c,
            host,
            port,
            store_timeout=timeout,
            access_log=say if access_log else None,
            warn=say,
            gate=gate,
        )

        def ready(srv: server.Server) -> None:
            if not server.is_loopback(srv.http.host, srv.http.addresses or None):
                say(
                    f"warning: listening on {srv.http.host}, not loopback: anyone who can "
                    f"reach {srv.http.host}:{srv.http.port} can read the cluster's state (no "
                    "authentication)"
                )
            where = f"[{srv.http.host}]" if ":" in srv.http.host else srv.http.host
            say(f"serving http://{where}:{srv.http.port} (/metrics, /admin/health/*)")

        results = asyncio.run(app.run(ready))
    failed = sorted(name for name, ok in results.items() if not ok)
    if failed:
        say(f"warning: did not stop cleanly: {', '.join(failed)}")
    done()
