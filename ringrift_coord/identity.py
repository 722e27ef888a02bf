"""Who and where: the host name holders are recorded under, this host's node id, and the
operator behind a call, as read from the environment.

Environment values are whatever bytes the caller's shell held: ``$USER`` and
``$RINGRIFT_COORD_HOST`` are stored and shown in their clean printable form (``\\xff`` for a
byte that is not UTF-8, ``\\x1b`` for an escape), so no such value can stop a command — the
emergency ``halt`` least of all. ``$RINGRIFT_NODE_ID`` names the node whose limits a request
counts against, so an unclean one is refused with a clear line instead of being guessed at.
"""

from __future__ import annotations

import os

from ringrift_coord.errors import UsageError
from ringrift_coord.inputs import printable

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Mapping

HOST_ENV = "RINGRIFT_COORD_HOST"  # containers, or several simulated hosts on one machine
NODE_ENV = "RINGRIFT_NODE_ID"

_HOST: str | None = None


def host_name() -> str:
    """This host's name as holders record it: a holder elsewhere is judged by its lease."""
    global _HOST
    if _HOST is None:
        # os.uname().nodename == gethostname(), without importing socket
        _HOST = printable(os.environ.get(HOST_ENV) or os.uname().nodename)
    return _HOST


def local_node() -> str:
    """This host's node id ($RINGRIFT_NODE_ID, else the host name), in its printable form:
    what a request for this host's own node looks like. Never raises."""
    return printable(os.environ.get(NODE_ENV) or host_name())


def default_node(env: Mapping[str, str] | None = None) -> str:
    """The node a request names when it names none: $RINGRIFT_NODE_ID, else the host name."""
    env = os.environ if env is None else env
    node = env.get(NODE_ENV)
    if not node:
        return host_name()
    if not node.isprintable():
        raise UsageError(
            f"{NODE_ENV} '{printable(node)}' is not a clean node name (control characters or "
            "bytes that are not UTF-8): set it to plain text, or name the node explicitly"
        )
    return node


_WHO: dict[tuple[str | None, ...], str] = {}


def who_am_i(env: Mapping[str, str] | None = None) -> str:
    """The operator or account behind this call, for the audit trail: ``user@host``."""
    env = os.environ if env is None else env
    key = (env.get("SUDO_USER"), env.get("USER"), env.get("LOGNAME"))
    if key not in _WHO:
        _WHO[key] = _who(env)
    return _WHO[key]


def _who(env: Mapping[str, str]) -> str:
    user = env.get("SUDO_USER") or env.get("USER") or env.get("LOGNAME")
    if not user:
        try:
            import pwd

            user = pwd.getpwuid(os.geteuid()).pw_name
        except (ImportError, KeyError):
            user = f"uid {os.geteuid()}"
    return f"{printable(user)}@{host_name()}"
