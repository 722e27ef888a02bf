"""The event log: what happened on the cluster, stored once per distinct content.

An event is a type (``TRAINING_COMPLETED``, ``HALT``, ...) and a payload (a JSON object). Its
digest is the SHA-256 of the canonical JSON of ``[type, source, node, payload]`` (keys sorted,
no spaces, UTF-8; integral numbers as integers, -0 as 0, text in Unicode NFC): publishing the
same type, source, node and content again stores nothing new, it raises the stored event's
``seen`` count and ``last_at``. ``publish`` is one upsert in the caller's write
transaction, so the tool's own events (halts, breaker transitions, OOMs, rate and optimizer
changes, denials) land with the change they describe, or not at all.

Hooks (``events.hooks``: name -> on globs, command, timeout) run for NEW events only, after the
transaction committed (``Tx.after_commit``), in a detached runner (``ringrift_coord.hookrun``)
in its own session: the publisher never waits for a hook and never fails because of one.
Events not published again for ``events.retention_days`` are pruned, about once per 64
publishes (a read never writes).
"""

from __future__ import annotations

import os

from ringrift_coord import jsontext
from ringrift_coord.errors import UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path (a refused can-spawn)
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Row, Tx

# The reference's training-loop events: launch scripts publish them (``events publish``).
REFERENCE_TYPES: tuple[str, ...] = (
    "TRAINING_COMPLETED",
    "EVALUATION_COMPLETED",
    "SELFPLAY_COMPLETE",
    "SELFPLAY_RATE_CHANGED",
    "PLATEAU_DETECTED",
    "MODEL_PROMOTED",
    "HYPERPARAMETER_UPDATED",
    "NEW_GAMES_AVAILABLE",
)
# The tool's own events (published in the transaction that makes the change they describe);
# SELFPLAY_RATE_CHANGED, the reference's own name, is published by ``adjust`` and ``rate
# negotiate`` too.
TOOL_TYPES: tuple[str, ...] = (
    "HALT",
    "UNHALT",
    "BREAKER_OPENED",
    "BREAKER_HALF_OPEN",
    "BREAKER_CLOSED",
    "BREAKER_RESET",
    "OOM",
    "CAP_LOWERED",
    "OPTIMIZER_ACTION",
    "TASK_DENIED",
)
KNOWN_TYPES: tuple[str, ...] = REFERENCE_TYPES + TOOL_TYPES

# an event type: [A-Z][A-Z0-9_]{0,63} (checked without ``re``: a refusal publishes one)
_TYPE_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TYPE_REST = _TYPE_FIRST | frozenset("0123456789_")
MAX_PAYLOAD = 64 * 1024  # bytes of canonical JSON
SOURCES = ("tool", "user")
DEFAULT_HOOK_TIMEOUT = 10.0
PRUNE_ONE_IN = 64  # prune about once per this many publishes

_COLUMNS = "id, type, digest, payload, source, host, node, who, at, last_at, seen"


class Event:
    """One stored event; ``new``: this publish stored it (False: it was seen before)."""

    __slots__ = (
        "id",
        "type",
        "digest",
        "_payload",
        "source",
        "host",
        "node",
        "who",
        "at",
        "last_at",
        "seen",
        "new",
    )

    def __init__(self, row: Row, new: bool = False) -> None:
        self.id = int(row["id"])
        self.type = str(row["type"])
        self.digest = str(row["digest"])
        self._payload: str | dict[str, Any] = row["payload"]  # JSON text until it is read
        self.source = str(row["source"])
        self.host = str(row["host"])
        self.node: str | None = row["node"]
        self.who: str | None = row["who"]
        self.at = float(row["at"])
        self.last_at = float(row["last_at"])
        self.seen = int(row["seen"])
        self.new = new

    @property
    def payload(self) -> dict[str, Any]:
        """The payload (parsed when first read: a refusal's publish never reads it)."""
        payload = self._payload
        if isinstance(payload, str):
            import json

            payload = self._payload = json.loads(payload)
        return payload

    def to_dict(self) -> dict[str, Any]:
        """The event as ``schema.EVENT`` names its fields (``event_id``: its id)."""
        from ringrift_coord.schema import EVENT

        return {name: getattr(self, "id" if name == "event_id" else name) for name in EVENT}


# --------------------------------------------------------------------------- inputs


def check_type(name: str, field: str = "argument TYPE") -> str:
    """A well-formed event type (``[A-Z][A-Z0-9_]{0,63}``), else a usage error."""
    if not isinstance(name, str) or not is_type_name(name):
        shown = name if not isinstance(name, str) else _short(name)
        raise UsageError(
            f"{field}: {shown!r} is not an event type: capital letters, digits and "
            "underscores, starting with a letter, at most 64 (e.g. TRAINING_COMPLETED)"
        )
    return name


def is_type_name(name: str) -> bool:
    """``[A-Z][A-Z0-9_]{0,63}``: a capital letter, then at most 63 capitals, digits or _."""
    return 0 < len(name) <= 64 and name[0] in _TYPE_FIRST and all(ch in _TYPE_REST for ch in name)


def near_miss(name: str) -> str | None:
    """The known type an unknown ``name`` is probably a misspelling of, or None."""
    if name in KNOWN_TYPES:
        return None
    import difflib

    found = difflib.get_close_matches(name, KNOWN_TYPES, n=1, cutoff=0.8)
    return found[0] if found else None


def parse_payload(text: str, field: str = "option --payload") -> dict[str, Any]:
    """The payload given as JSON text: an object, at most 64 KiB in canonical form."""
    import json

    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{field}: not valid JSON ({_short(str(exc))})") from None
    return check_payload(value, field)


def check_payload(value: Any, field: str = "payload") -> dict[str, Any]:
    """The payload normalised (``normalise``): a JSON object of valid Unicode text, at most
    ``MAX_PAYLOAD`` bytes in canonical form."""
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else f"a {type(value).__name__}"
        raise UsageError(f"{field}: must be a JSON object ({{...}}), got {kind}")
    value = normalise(value, field)
    size = len(canonical(value).encode("utf-8"))
    if size > MAX_PAYLOAD:
        raise UsageError(
            f"{field}: {size} bytes of canonical JSON is more than the {MAX_PAYLOAD} allowed"
        )
    return value


def normalise(value: Any, field: str = "payload") -> Any:
    """The same content in one form: an integral float as an int (1.0 is 1, -0.0 is 0), every
    key and string in Unicode NFC. NaN, Infinity and a lone surrogate (not text) are refused."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"{field}: {_short(value)!r} is not valid Unicode text (a lone surrogate)"
            ) from None
        if value.isascii():
            return value
        import unicodedata

        return unicodedata.normalize("NFC", value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if value.bit_length() > 13_000:  # Python writes no int of over 4,300 digits as text
            raise UsageError(f"{field}: a number of more than 3,900 digits is not accepted")
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{field}: NaN and Infinity are not JSON numbers")
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = normalise(str(key), field)
            if name in out:  # "é" written two ways: one key after NFC, a value would be lost
                raise UsageError(f"{field}: two keys are the same text {_short(name)!r}")
            out[name] = normalise(item, field)
        return out
    if isinstance(value, list | tuple):
        return [normalise(item, field) for item in value]
    raise UsageError(f"{field}: a {type(value).__name__} is not a JSON value")


def canonical(payload: Any) -> str:
    """The canonical JSON of a ``normalise``d value: keys sorted, no spaces, non-ASCII kept as
    is."""
    try:
        return jsontext.dumps(
            payload, sort_keys=True, compact=True, ensure_ascii=False, allow_nan=False
        )
    except ValueError:  # NaN or Infinity: not JSON
        raise UsageError("payload: NaN and Infinity are not JSON numbers") from None


def digest(
    event_type: str, payload: dict[str, Any], source: str = "user", node: str | None = None
) -> str:
    """SHA-256 (hex) of the canonical JSON of ``[type, source, node, payload]`` (the payload
    normalised): the same content published by the tool and by a user, or about two nodes, is
    two events."""
    where = None if node is None else normalise(node, "node")
    data = canonical([event_type, source, where, normalise(payload)]).encode("utf-8")
    return _sha256(data).hexdigest()


_sha256_of: Any = None  # the constructor _sha256 found, looked for once per process


def _sha256(data: bytes) -> Any:
    """SHA-256 from the interpreter's own module when it has one: ``hashlib`` loads OpenSSL
    first (~10 ms of CPU, measured as ``python -c 'import hashlib'`` against ``python -c
    pass``), on every refused admission; the digest is the same (a test compares). Found
    once: a failed import searches the whole path again (~60 µs) at every call."""
    global _sha256_of
    if _sha256_of is None:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # 3.12+
        except ImportError:
            try:
                from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
            except ImportError:  # an interpreter built without them
                from hashlib import sha256
        _sha256_of = sha256
    return _sha256_of(data)


def _short(text: str, limit: int = 80) -> str:
    from ringrift_coord.inputs import printable

    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- publish


def publish(
    tx: Tx,
    settings: Settings | None,
    event_type: str,
    payload: dict[str, Any],
    *,
    source: str = "user",
    node: str | None = None,
    who: str | None = None,
    host: str | None = None,
    now: float | None = None,
) -> Event:
    """Store the event (or count it again: same type, source, node and normalised payload) in
    ``tx``; the payload is stored normalised (``normalise``).

    A NEW event starts the hooks that match its type once ``tx`` has committed; a repeat
    does not. ``settings`` None: no hooks, the default retention."""
    check_type(event_type, "event type")
    payload = check_payload(payload)
    if source not in SOURCES:
        raise ValueError(f"event source {source!r}")
    if host is None:
        from ringrift_coord.identity import host_name

        host = host_name()
    at = tx.now() if now is None else now
    text = canonical(payload)
    row = tx.one(
        "INSERT INTO events (type, digest, payload, source, host, node, who, at, last_at, seen) "
        "VALUES (?,?,?,?,?,?,?,?,?,1) ON CONFLICT (digest) DO UPDATE SET "
        # a clock stepped back never moves last_at backwards
        "seen = events.seen + 1, last_at = CASE WHEN excluded.last_at > events.last_at "
        "THEN excluded.last_at ELSE events.last_at END "
        f"RETURNING {_COLUMNS}",
        (
            event_type,
            digest(event_type, payload, source, node),
            text,
            source,
            host,
            node,
            who,
            at,
            at,
        ),
    )
    assert row is not None
    event = Event(row, new=int(row["seen"]) == 1)
    if event.new and settings is not None:
        _fire_hooks(tx, settings, event)
    if os.urandom(1)[0] < 256 // PRUNE_ONE_IN:
        days = 7.0 if settings is None else float(settings.get("events.retention_days"))
        prune(tx, at, days)
    return event


def prune(tx: Tx, now: float, retention_days: float) -> int:
    """Delete the events not published again for ``retention_days``; how many went."""
    return tx.execute("DELETE FROM events WHERE last_at < ?", (now - retention_days * 86400.0,))


def list_events(
    tx: Tx,
    type: str | None = None,  # the design's name (shadows the builtin here only)
    since: float | None = None,
    after_id: int | None = None,
    limit: int | None = None,
) -> list[Event]:
    """Events oldest first (by id); with ``limit``, the newest ``limit`` of them. ``since``:
    last published at or after; ``after_id``: stored after that id (``tail --follow``)."""
    where: list[str] = []
    args: list[Any] = []
    if type is not None:
        where.append("type = ?")
        args.append(type)
    if since is not None:
        where.append("last_at >= ?")
        args.append(since)
    if after_id is not None:
        where.append("id > ?")
        args.append(after_id)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    if limit is None:
        rows = tx.query(f"SELECT {_COLUMNS} FROM events{clause} ORDER BY id", args)
    else:
        rows = tx.query(
            f"SELECT {_COLUMNS} FROM events{clause} ORDER BY id DESC LIMIT ?", [*args, limit]
        )
        rows.reverse()
    return [Event(row) for row in rows]


def last_id(tx: Tx) -> int:
    row = tx.one("SELECT MAX(id) AS m FROM events")
    return int(row["m"]) if row is not None and row["m"] is not None else 0


# --------------------------------------------------------------------------- hooks


def hooks_for(settings: Settings, event_type: str) -> list[dict[str, Any]]:
    """The hooks whose ``on`` globs match ``event_type``: name, command, timeout. A hook the
    cross-checks refused (no ``on`` or ``command``) is left out."""
    hooks = settings.get("events.hooks")
    if not hooks:  # (no glob to match: fnmatch would load re for nothing)
        return []
    from fnmatch import fnmatchcase

    found = []
    for name, hook in sorted(hooks.items()):
        on, command = hook.get("on"), hook.get("command")
        if not on or not command:
            continue
        if any(fnmatchcase(event_type, glob) for glob in on):
            timeout = hook.get("timeout")
            found.append(
                {
                    "name": name,
                    "command": list(command),
                    "timeout": float(DEFAULT_HOOK_TIMEOUT if timeout is None else timeout),
                }
            )
    return found


def hooks_log(settings: Settings) -> str:
    state_dir = getattr(settings, "state_dir", None)
    if not state_dir:
        from ringrift_coord.statedir import default_state_dir

        state_dir = default_state_dir(os.environ)
    return os.path.join(state_dir, "hooks.log")


def _fire_hooks(tx: Tx, settings: Settings, event: Event) -> None:
    hooks = hooks_for(settings, event.type)
    if not hooks:
        return
    job = {"event": event.to_dict(), "hooks": hooks, "log": hooks_log(settings)}
    tx.after_commit(lambda: start_runner(job))


def start_runner(job: dict[str, Any]) -> None:
    """Start the detached hook runner with ``job`` on its stdin (an unlinked temporary file:
    never a pipe the publisher could block on); never waits for it. A short-lived ``sh`` starts
    it in the background and exits at once (a double fork): the publisher reaps that shell, and
    the runner, whose parent is gone, is never its zombie (nor a ``ResourceWarning`` in a
    long-lived process). The hooks get the publisher's environment as it was: ``PYTHONPATH``,
    which the runner needs to find this package, goes back to what it was (or away)."""
    import json
    import subprocess
    import sys
    import tempfile

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    job = {**job, "pythonpath": env.get("PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as spool:
        spool.write(json.dumps(job, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        spool.flush()
        spool.seek(0)
        # (a background command's stdin is /dev/null unless redirected: the job goes by fd 3)
        shell = subprocess.Popen(  # noqa: S603 (our own runner; the words are ours, not a user's)
            ["/bin/sh", "-c", 'exec 3<&0; "$@" 0<&3 3<&- &', "sh"]
            + [sys.executable, "-m", "ringrift_coord.hookrun"],
            stdin=spool,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=env,
        )
        shell.wait()  # the shell only forks: a millisecond
