"""Values that come from outside (operators, the environment, hand-written files): the clean,
printable form they are stored and shown in, and the checks the core applies to them."""

from __future__ import annotations

from ringrift_coord.errors import UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_SECONDS = 1e9  # about 31 years: an expiry past what timestamps can show breaks listings
MAX_SLOTS = 1_000_000  # beyond any node, and beyond what the store keeps
_WHITESPACE = "\t\n\r\v\f"


def printable(text: str) -> str:
    """``text`` as one clean line: safe to store (UTF-8) and to print on a terminal.

    Bytes that are not UTF-8 (``os.environ`` keeps them as lone surrogates) become ``\\xff``;
    control characters (an ESC sequence would drive the terminal) become ``\\x1b``; line
    breaks and tabs become spaces. Clean text comes back unchanged.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif ch in _WHITESPACE:
            out.append(" ")
        elif 0xDC80 <= code <= 0xDCFF:  # one byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def seconds(value: float | None, field: str) -> float | None:
    """A duration (a halt's or a reservation's ttl): positive, finite, at most 1e9 s."""
    if value is None:
        return None
    if not 0 < value < float("inf"):  # also refuses nan
        raise UsageError(f"{value:g} is not a positive number of seconds", field=field)
    if value > MAX_SECONDS:
        raise UsageError(f"{value:g} is more than 1e9 seconds (about 31 years)", field=field)
    return float(value)


def slot_count(value: int, field: str) -> int:
    """A number of slots: 1 to 1000000."""
    if not 1 <= value <= MAX_SLOTS:
        raise UsageError(f"{value} is not a number of slots from 1 to {MAX_SLOTS}", field=field)
    return int(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to a mistyped ``word``, or "": the one
    hint of every parser (options, commands, task types)."""
    import difflib

    match = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""
