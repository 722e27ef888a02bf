"""``serve``: a small read-only HTTP server for Prometheus and health checks.

Endpoints (GET or HEAD; any other method on them is 405, any other path 404):

- ``/metrics``: the Prometheus text exposition (``exposition``), plus this process's
  ``process_*`` series and ``ringrift_serve_requests_total{path,code}``;
- ``/admin/health/coordinators``: each component's lifecycle status, last error and stats
  (``CoordinatorRegistry.get_health_summary``);
- ``/admin/health/full``: the store (reachable, engine, scope, migrations applied vs known),
  halts, open breakers, each node's reading age, queue lengths and the optimizer's state;
  HTTP 200, or 503 when the store cannot be read within ``serve.store_timeout``.

The server is three components on ``CoordinatorBase``, registered in a
``CoordinatorRegistry``: the store reader (``HealthChecker``), the ``MetricsCollector`` and
the ``HttpListener``, registered last so that it stops first (the registry stops in reverse
order): on SIGTERM/SIGINT it stops accepting, lets the requests in flight finish (at most
``DRAIN_SECONDS``), then the other components stop.

No store connection outlives a request: each read opens its own store (PostgreSQL:
``connect_timeout`` and ``statement_timeout``; SQLite: the busy timeout; all of them
``store_timeout``) in a daemon thread, and the request waits for it at most
``store_timeout`` + ``GRACE_SECONDS``, so a store that hangs never hangs a request (the
thread finishes or fails on its own and closes what it opened).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from ringrift_coord.coordinator_base import (
    CoordinatorBase,
    CoordinatorRegistry,
    get_coordinator_registry,
)
from ringrift_coord.durations import human
from ringrift_coord.errors import ConfigError, CoordError, StateError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any

    from ringrift_coord.context import Context

DRAIN_SECONDS = 3.0  # the longest a shutdown waits for the requests in flight
GRACE_SECONDS = 0.5  # past store_timeout, before a request gives up on the store
MAX_READS = 8  # store reads (threads, connections) at once; more: 503 at once
HEADER_SECONDS = 5.0  # a client that sends no complete request head within this is dropped
MAX_CONNECTIONS = 64  # open connections at once (fewer when the fd limit is low): see cap()
WARN_EVERY = 10.0  # the loop's own errors (accept failing at the fd limit): one line per this
MAX_HEAD = 16 * 1024
PATHS = ("/metrics", "/admin/health/coordinators", "/admin/health/full")
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def is_loopback(host: str, addresses: list[str] | None = None) -> bool:
    """True for ``localhost``, loopback addresses (127.0.0.0/8, ::1), and a name whose
    addresses (``addresses``: what the listener bound; else resolved now) are all loopback."""
    import ipaddress
    import socket

    def loop_address(text: str) -> bool:
        try:
            return ipaddress.ip_address(text.strip("[]").split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    if host.lower() == "localhost" or loop_address(host):
        return True
    if addresses is None:
        try:
            addresses = [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
        except (OSError, UnicodeError):
            return False
    return bool(addresses) and all(loop_address(str(a)) for a in addresses)


def check_host(host: str | None, where: str = "option --host") -> str | None:
    """``[::1]`` (an IPv6 address in brackets, as in a URL) is ``::1``; anything else in
    brackets is refused with one line (exit 2)."""
    if host is None or not host.startswith("["):
        return host
    import ipaddress

    inner = host[1:-1] if host.endswith("]") else ""
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        error = UsageError if where.startswith("option") else ConfigError
        raise error(
            f"{where}: {host!r} is not an address: brackets are for an IPv6 address "
            "([::1]); give a host name or address"
        ) from None
    return inner


# --------------------------------------------------------------------------- store reads


def request_context(base: Context, timeout: float, *, create: bool = False) -> Context:
    """A ``Context`` like ``base`` whose store is opened on first use with every timeout
    at ``timeout`` (a missing SQLite store is created only with ``create``: ``serve``'s
    check at start); the caller closes it."""
    from ringrift_coord.context import Context
    from ringrift_coord.store import open_store

    class RequestContext(Context):
        @property
        def store(self):  # type: ignore[no-untyped-def]  # noqa: ANN202
            if self._store is None:
                self._store = open_store(
                    self.db,
                    self.state_dir,
                    busy_timeout=timeout,
                    connect_timeout=timeout,
                    env=self.env,
                    clock=self.clock,
                    shared_gid=self.shared_gid,
                    create=create,
                    statement_timeout=timeout,
                )
            return self._store

    return RequestContext(
        settings=base.settings,
        state_dir=base.state_dir,
        db=base.db,
        clock=base.clock,
        env=base.env,
        shared_gid=base.shared_gid,
        create_store=create,
    )


async def in_thread(fn: Callable[[], Any], timeout: float, name: str) -> Any:
    """``fn()`` in a daemon thread, waited for at most ``timeout`` seconds (``TimeoutError``
    then; the thread is left to finish on its own and never holds up the exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        try:
            value, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 (handed to the loop)
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:
            pass  # the loop closed meanwhile: nobody waits any more

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except BaseException:
        future.cancel()  # given up on: what the thread ends with later is dropped
        raise


def admission_lock(store: Any, timeout: float) -> dict[str, Any]:
    """Whether the lock every admission write takes can be had within ``timeout`` (the
    store's busy timeout): a writer holding it (a launcher stopped inside its transaction)
    is invisible to a read transaction but fails every admission with exit 75. The probe
    takes the lock and rolls back at once, writing nothing; a store that refuses the probe
    (no right to take it) is "unknown", never a failure."""
    started = time.monotonic()
    state, error = "free", None
    try:
        store.probe_write_lock()
    except CoordError as exc:
        # the busy timeout (SQLite; PostgreSQL's lock_timeout), or PostgreSQL's
        # statement_timeout (the same bound) when it came first
        if "still locked" in exc.message or "statement timeout" in exc.message:
            state, error = "held", f"admission lock held longer than {human(timeout)}"
        else:
            state, error = "unknown", exc.message
    return {
        "state": state,
        "error": error,
        "probe_seconds": round(time.monotonic() - started, 4),
    }


def full_health(ctx: Context) -> dict[str, Any]:
    """The store-derived part of ``/admin/health/full``, in ONE read transaction (the
    admission-lock probe is a second read: ``admission_lock``)."""
    from ringrift_coord import breakers, halts, queue, readings, slots
    from ringrift_coord.breakers import BreakerConfig
    from ringrift_coord.optimizer import utilization
    from ringrift_coord.store.migrations import MIGRATION_NAMES
    from ringrift_coord.transfers import TASK_TYPE as TRANSFER_QUEUE

    settings = ctx.settings
    cfg = BreakerConfig.from_settings(settings)
    max_age = float(settings.get("resources.max_sample_age"))
    store = ctx.store
    local = halts.snapshot(ctx.state_dir, store.scope)
    with store.read() as tx:
        now = tx.now()
        applied = {r["name"] for r in tx.query("SELECT name FROM schema_migrations")}
        halt = halts.status(tx, local, now)
        breaker_rows = [b for b in breakers.views(tx, cfg, now) if b["state"] != "closed"]
        latest = readings.all_latest(tx)
        waiting = queue.lengths(tx)
        counts = slots.counts(tx)
        optimizer = utilization.summary(tx, settings, now)
    nodes = []
    for row in latest:
        at = row.get("at")
        age = None if at is None else round(now - float(at), 3)
        stale = at is None or readings.is_stale(float(at), now, max_age)
        nodes.append({"node": row["node"], "age_seconds": age, "stale": stale})
    known = list(MIGRATION_NAMES)
    queues: dict[str, int] = {}
    transfers_waiting = 0
    for row in waiting:
        if row["task_type"] == TRANSFER_QUEUE:
            transfers_waiting += int(row["n"])
        else:
            queues[row["task_type"]] = int(row["n"])
    describe = store.describe()
    return {
        "at": round(now, 3),
        "store": {
            "reachable": True,
            "engine": describe.get("engine"),
            "scope": store.scope,
            "error": None,
        },
        "schema": {"applied": len(applied & set(known)), "known": len(known)},
        "halt": {
            "halted": bool(halt["halts"]) or halt["halt_file"] is not None,
            "paused": halt["paused"],
            "halts": halt["halts"],
            "halt_file": halt["halt_file"],
        },
        "breakers": {"open": len(breaker_rows), "breakers": breaker_rows},
        "readings": {"max_sample_age": max_age, "nodes": nodes},
        "queues": {"waiters": queues, "transfers_waiting": transfers_waiting},
        "tasks": {"running": sum(int(r["n"]) for r in counts)},
        "optimizer": optimizer,
    }


class StoreDownPage(StateError):
    """The store failed a ``/metrics`` read: ``page`` is the exposition without it
    (``ringrift_store_up 0``); raised so that the read counts as a failure."""

    def __init__(self, message: str, page: bytes) -> None:
        super().__init__(message)
        self.page = page


def exposition(ctx: Context) -> bytes:
    """``/metrics``' store part: every family in one read transaction (``metrics.gather``);
    a store that fails raises ``StoreDownPage`` holding the ``ringrift_store_up 0`` page."""
    from ringrift_coord import metrics

    collection = metrics.gather(ctx)
    page = metrics.render(collection)
    if collection.problem is not None:
        raise StoreDownPage(collection.problem, page)
    return page


def store_down_exposition(problem: str, ctx: Context) -> bytes:
    """``ringrift_store_up 0`` and what this host knows without the store (``metrics.down``:
    the collection time, configuration problems, the halt file): the store did not answer
    within the request's bound."""
    from ringrift_coord import metrics

    return metrics.render(metrics.down(ctx, problem))


# --------------------------------------------------------------------------- components


class TooBusy(CoordError):
    """Already ``MAX_READS`` store reads running (a store that hangs, scraped often)."""


class StoreReader(CoordinatorBase):
    """What the endpoints read from the store: one thread and one store per read, bounded
    by ``store_timeout``; counts reads, failures and the last read's duration. At most
    ``MAX_READS`` reads run at once in the process (a thread a hung store holds counts until
    it ends), so a store that hangs cannot pile up threads and connections."""

    _slots = threading.BoundedSemaphore(MAX_READS)

    def __init__(self, name: str, base: Context, store_timeout: float) -> None:
        super().__init__(name)
        self.set_dependency("context", base)
        self.store_timeout = store_timeout
        self.reads = 0
        self.failures = 0
        self.last_seconds: float | None = None
        self.last_ok_at: float | None = None

    async def read(self, fn: Callable[[Context], Any]) -> Any:
        """``fn(ctx)`` on a fresh request context; raises ``TimeoutError`` past the bound
        (``store_timeout`` + ``GRACE_SECONDS``), the store's ``CoordError`` when it fails
        (both recorded)."""
        base = self.get_dependency("context")
        timeout = self.store_timeout

        def work() -> Any:
            try:
                ctx = request_context(base, timeout)
                try:
                    return fn(ctx)
                finally:
                    ctx.close()
            finally:
                slots.release()

        self.reads += 1
        slots = self._slots
        if not slots.acquire(blocking=False):
            self.failures += 1
            error = TooBusy(f"{MAX_READS} store reads are still running; try again later")
            self.record_error(error)
            raise error
        started = time.monotonic()
        try:
            result = await in_thread(work, timeout + GRACE_SECONDS, f"serve-{self.name}")
        except Exception as exc:
            self.failures += 1
            self.record_error(exc)
            raise
        finally:
            self.last_seconds = round(time.monotonic() - started, 4)
        self.last_ok_at = time.time()
        return result

    def _stats(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "failures": self.failures,
            "last_read_seconds": self.last_seconds,
            "last_ok_at": self.last_ok_at,
            "store_timeout_seconds": self.store_timeout,
        }


class HealthChecker(StoreReader):
    """``/admin/health/full``."""

    async def check(self, registry: CoordinatorRegistry) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        timeout = self.store_timeout
        try:
            doc = await self.read(full_health)
            code = 200
            # then the admission-lock probe, a read of its own (at most store_timeout more)
            try:
                doc["admission_lock"] = await self.read(
                    lambda ctx: admission_lock(ctx.store, timeout)
                )
            except TimeoutError:
                doc["admission_lock"] = {
                    "state": "unknown",
                    "error": f"the lock probe did not end within {human(timeout)}",
                    "probe_seconds": None,
                }
            if doc["admission_lock"]["state"] == "held":
                code = 503
        except CoordError as exc:  # before TimeoutError: StoreBusy is one too
            doc = self._down(exc.message)
            code = 503
        except TimeoutError:
            doc = self._down(f"the store did not answer within {human(self.store_timeout)}")
            code = 503
        doc["store"]["read_seconds"] = round(time.monotonic() - started, 4)
        doc["store"]["timeout_seconds"] = self.store_timeout
        doc["status"] = "ok" if code == 200 else "unavailable"
        if code == 503 and doc["store"]["reachable"]:
            doc["error"] = doc["admission_lock"]["error"]
        doc["coordinators"] = {
            c["name"]: c["status"] for c in registry.get_health_summary()["coordinators"]
        }
        return code, doc

    def _down(self, message: str) -> dict[str, Any]:
        base = self.get_dependency("context")
        from ringrift_coord.store import resolve_db

        try:
            engine = resolve_db(base.db, base.state_dir, base.env)[0]
        except CoordError:
            engine = None
        return {
            "at": round(time.time(), 3),
            "store": {"reachable": False, "engine": engine, "scope": None, "error": message},
        }


class MetricsCollector(StoreReader):
    """``/metrics``: the exposition, or ``ringrift_store_up 0`` (and the families read
    without the store) when it failed."""

    def __init__(self, name: str, base: Context, store_timeout: float) -> None:
        super().__init__(name, base, store_timeout)
        self.requests: dict[tuple[str, int], int] = {}

    async def scrape(self) -> bytes:
        try:
            body = await self.read(exposition)
        except StoreDownPage as exc:  # counted as a failed read; the page says store_up 0
            body = exc.page
        except CoordError as exc:  # before TimeoutError: StoreBusy is one too
            body = store_down_exposition(exc.message, self.get_dependency("context"))
        except TimeoutError:
            body = store_down_exposition(
                "the store did not answer in time", self.get_dependency("context")
            )
        return bytes(body) + self._own()

    def _own(self) -> bytes:
        """This process's series: prometheus_client's process collector and the requests
        served so far."""
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
        from prometheus_client.core import CounterMetricFamily

        requests = self.requests

        class Requests:
            def collect(self):  # type: ignore[no-untyped-def]  # noqa: ANN202
                family = CounterMetricFamily(
                    "ringrift_serve_requests",
                    "HTTP requests answered by serve, by path and status code",
                    labels=["path", "code"],
                )
                for (path, code), n in sorted(requests.items()):
                    family.add_metric([path, str(code)], n)
                yield family

        registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)
        registry.register(Requests())
        return bytes(generate_latest(registry))


class HttpListener(CoordinatorBase):
    """The HTTP listener: accepts on ``host:port``, answers the three paths."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Callable[[], Awaitable[tuple[int, str, bytes]]]],
        *,
        access_log: Callable[[str], None] | None = None,
        on_request: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__("http")
        self.host, self.port = host, port
        self.routes = routes
        self.access_log = access_log
        self.on_request = on_request
        self._server: asyncio.base_events.Server | None = None
        # no complete request head yet, oldest first (the first evicted at the cap)
        self._connected: dict[asyncio.Task[Any], None] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()  # a request being answered
        self.requests = 0
        self.by_code: dict[int, int] = {}
        self.max_connections = connection_cap()
        self.addresses: list[str] = []  # what it listens on (a name: its addresses)
        self.refused = 0  # connections closed at once: the cap was reached

    async def _do_start(self) -> None:
        import errno

        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True, limit=MAX_HEAD
            )
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            if exc.errno == errno.EADDRINUSE:
                raise StateError(
                    f"cannot listen on {where}: the address is in use (another serve?); "
                    "pick another with --port or serve.port"
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise StateError(
                    f"cannot listen on {where}: permission denied (ports below 1024 need "
                    "privileges)"
                ) from None
            reason = exc.strerror or str(exc)
            raise StateError(f"cannot listen on {where}: {reason}") from None
        sockets = list(self._server.sockets or ())
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self.addresses = [str(sock.getsockname()[0]) for sock in sockets]

    async def _do_stop(self) -> None:
        if self._server is None:
            return
        self._server.close()  # no new connections from here on
        for task in self._connected:  # connections that have not asked anything yet
            task.cancel()
        pending = {t for t in self._in_flight | set(self._connected) if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=DRAIN_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)
        try:
            await asyncio.wait_for(self._server.wait_closed(), 0.5)
        except TimeoutError:
            pass

    def _stats(self) -> dict[str, Any]:
        return {
            "address": f"{self.host}:{self.port}",
            "requests": self.requests,
            "in_flight": sum(1 for t in self._in_flight if not t.done()),
            "connections": len(self._connected) + len(self._in_flight),
            "max_connections": self.max_connections,
            "refused_connections": self.refused,
            "responses": {str(code): n for code, n in sorted(self.by_code.items())},
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connected) + len(self._in_flight) >= self.max_connections:
            if not self._connected:  # all answering: no room, closed at once
                self.refused += 1
                writer.transport.abort()
                return
            oldest = next(iter(self._connected))  # a client that asked nothing yet
            del self._connected[oldest]
            oldest.cancel()
            self.refused += 1
        self._connected[task] = None
        started = time.monotonic()
        method, path, code = "-", "-", 0
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_SECONDS)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                return  # the client went away or never finished its request
            except asyncio.LimitOverrunError:
                head = b""
            self._connected.pop(task, None)
            self._in_flight.add(task)
            started = time.monotonic()
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                code, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
            else:
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                route = self.routes.get(path)
                if route is None:
                    code, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
                elif method not in ("GET", "HEAD"):
                    code, ctype, body = 405, "text/plain; charset=utf-8", b"GET or HEAD only\n"
                else:
                    try:
                        code, ctype, body = await route()
                    except Exception as exc:  # noqa: BLE001 (recorded; the client gets 500)
                        self.record_error(exc)
                        code, ctype, body = (
                            500,
                            "text/plain; charset=utf-8",
                            b"internal error (see the health summary's last_error)\n",
                        )
            headers = [
                f"HTTP/1.1 {code} {REASONS.get(code, '')}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}",
                "Connection: close",
                "Cache-Control: no-store",
            ]
            if code == 405:
                headers.append("Allow: GET, HEAD")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            try:
                await asyncio.wait_for(writer.drain(), HEADER_SECONDS)
            except (ConnectionError, TimeoutError):
                writer.transport.abort()  # a client that does not read: drop what is buffered
        except asyncio.CancelledError:
            pass  # shutting down: dropped (its task ends normally, nothing left to report)
        finally:
            if code:
                self.requests += 1
                self.by_code[code] = self.by_code.get(code, 0) + 1
                if self.on_request is not None:
                    self.on_request(path if path in self.routes else "other", code)
                if self.access_log is not None:
                    from ringrift_coord.inputs import printable

                    peer = writer.get_extra_info("peername")
                    who = peer[0] if isinstance(peer, tuple) else "-"
                    elapsed = time.monotonic() - started
                    self.access_log(
                        f"{who} {printable(method)[:16]} {printable(path)[:200]} {code} "
                        f"{elapsed * 1000:.0f}ms"
                    )
            writer.close()
            self._connected.pop(task, None)
            self._in_flight.discard(task)


# --------------------------------------------------------------------------- the server


class Server:
    """The three components, registered in ``registry`` (the process's by default)."""

    def __init__(
        self,
        ctx: Context,
        host: str,
        port: int,
        *,
        store_timeout: float,
        registry: CoordinatorRegistry | None = None,
        access_log: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        gate: SignalGate | None = None,
    ) -> None:
        self.ctx = ctx
        self.warn = warn or _stderr
        self.gate = gate
        self.registry = registry if registry is not None else get_coordinator_registry()
        self.health = HealthChecker("health", ctx, store_timeout)
        self.metrics = MetricsCollector("metrics", ctx, store_timeout)
        self.http = HttpListener(
            host,
            port,
            {
                "/metrics": self._metrics,
                "/admin/health/coordinators": self._coordinators,
                "/admin/health/full": self._full,
            },
            access_log=access_log,
            on_request=self._count,
        )
        # registered last: stops first (the registry stops in reverse order)
        for component in (self.health, self.metrics, self.http):
            self.registry.register(component)

    def _count(self, path: str, code: int) -> None:
        key = (path, code)
        self.metrics.requests[key] = self.metrics.requests.get(key, 0) + 1

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_METRICS, await self.metrics.scrape()

    async def _coordinators(self) -> tuple[int, str, bytes]:
        summary = self.registry.get_health_summary()
        return (200 if summary["healthy"] else 503), *_json(summary)

    async def _full(self) -> tuple[int, str, bytes]:
        code, doc = await self.health.check(self.registry)
        return code, *_json(doc)

    async def start(self) -> None:
        """Start every component (the listener last); a failure stops the ones started."""
        try:
            for component in self.registry.coordinators:
                if self.registry.received_signal is not None:
                    return  # a signal while starting: its shutdown stops what started
                await component.start()
        except BaseException:
            await self.registry.shutdown_all(timeout=DRAIN_SECONDS)
            raise

    async def run(self, on_ready: Callable[[Server], None] | None = None) -> dict[str, bool]:
        """Install SIGTERM/SIGINT, start, serve until one arrives; the shutdown's results.
        With a ``SignalGate``: a signal it caught before is acted on now, and it takes the
        signals back (recording them only) before the loop's handlers go."""
        gate = self.gate
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(LoopWarnings(self.warn))
        if gate is not None:
            with gate.blocked():
                gate.raising = False
                self.registry.install_signal_handlers(timeout=DRAIN_SECONDS + 1.5)
            if gate.received is not None:  # before the loop: shut down at once
                self.registry._on_signal(gate.received)
        else:
            self.registry.install_signal_handlers(timeout=DRAIN_SECONDS + 1.5)
        try:
            await self.start()
            if on_ready is not None and self.registry.received_signal is None:
                on_ready(self)
            return await self.registry.wait_shutdown()
        finally:
            if gate is not None:
                with gate.blocked():
                    self.registry.remove_signal_handlers()
                    gate.install()
            else:
                self.registry.remove_signal_handlers()


def connection_cap() -> int:
    """``MAX_CONNECTIONS``, or fewer where the open-file limit would not leave room for the
    store reads and their files (a half of what is left past 32, at least 4)."""
    import resource

    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, (int(soft) - 32) // 2))


class LoopWarnings:
    """The loop's exception handler: one line per problem (never a traceback), at most one
    per ``WARN_EVERY`` seconds (accept failing at the fd limit retries every second), with
    how many were left out since the last."""

    def __init__(self, warn: Callable[[str], None], every: float = WARN_EVERY) -> None:
        self.warn = warn
        self.every = every
        self.last: float | None = None
        self.skipped = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every:
            self.skipped += 1
            return
        from ringrift_coord.inputs import printable

        message = str(context.get("message") or "event loop error")
        exc = context.get("exception")
        if exc is not None:
            message = f"{message}: {type(exc).__name__}: {exc}"
        if self.skipped:
            message += f" ({self.skipped} more since the last warning)"
        self.last, self.skipped = now, 0
        self.warn(f"warning: {printable(message)[:300]}")


class Interrupted(BaseException):  # noqa: N818 (a stop, like KeyboardInterrupt)
    """SIGTERM or SIGINT before ``serve`` listens (the store probe, the imports): ``serve``
    stops there and exits 0."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGate:
    """``serve``'s SIGTERM and SIGINT from argument parsing to exit. Before the loop runs
    (``raising``) the first one raises ``Interrupted``; while the loop runs, the registry's
    handlers take over; after it (and for every further signal) they are only recorded, so
    a second signal while shutting down never ends the process otherwise than with exit 0."""

    SIGNALS = (2, 15)  # SIGINT, SIGTERM

    def __init__(self) -> None:
        self.received: int | None = None
        self.raising = True

    def install(self) -> None:
        import signal

        for sig in self.SIGNALS:
            signal.signal(sig, self._handler)

    def ignore(self) -> None:
        """Ignore both from here to the exit: Python's finalization puts back the default
        handlers of those it set (a signal then would end the process by that signal), but
        leaves ignored ones alone."""
        import signal

        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def _handler(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        if self.raising:
            self.raising = False
            raise Interrupted(signum)

    def blocked(self) -> Any:
        """A context manager that holds SIGTERM and SIGINT back (delivered when it ends):
        handlers are swapped inside it without a moment of the default ones."""
        import contextlib
        import signal

        @contextlib.contextmanager
        def hold() -> Any:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
            try:
                yield
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)

        return hold()


def _json(doc: dict[str, Any]) -> tuple[str, bytes]:
    text = json.dumps(doc, indent=2, sort_keys=False, default=str, ensure_ascii=True) + "\n"
    return "application/json", text.encode()


def settings_of(ctx: Context) -> tuple[str, int, float]:
    """``serve``'s host, port and store timeout from the settings (a bad ``serve`` section:
    its error, exit 3)."""
    ctx.settings.require("serve")
    host = str(ctx.settings.get("serve.host"))
    port = int(ctx.settings.get("serve.port"))
    timeout = float(ctx.settings.get("serve.store_timeout"))
    if not host.strip():
        raise ConfigError("serve.host is empty: give an address such as 127.0.0.1")
    return host, port, timeout


def _stderr(line: str) -> None:
    import sys

    sys.stderr.write(f"ringrift-coord: {line}\n")
    sys.stderr.flush()


__all__ = [
    "Interrupted",
    "SignalGate",
    "HealthChecker",
    "HttpListener",
    "MetricsCollector",
    "Server",
    "exposition",
    "full_health",
    "is_loopback",
    "settings_of",
]
