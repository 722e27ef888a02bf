"""Durations as people write and read them: ``90``, ``5m``, ``1h30m``, ``3w`` in; ``45 s``,
``12 min``, ``~4 h``, ``~2 d`` out.

``parse`` is the one reader of a duration, for every option (``--ttl``, ``--timeout``,
``--since``), every environment variable and every setting of the config that is a number
of seconds; ``human`` is the one way a message shows one. Imports nothing: the fast parser
reads it on every launch.
"""

from __future__ import annotations

UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
EXAMPLES = "90, 45s, 5m, 1h30m, 2d or 3w"
_DIGITS = "0123456789"


def parse(text: str) -> float:
    """``text`` as seconds: a plain number (seconds: ``90``, ``2.5``) or one or more numbers
    each followed by a unit, ``s``, ``m``, ``h``, ``d`` or ``w`` (``5m``, ``1h30m``, ``1.5h``).

    Only ASCII digits, no sign, no spaces, each unit at most once: anything else is a
    ``ValueError`` whose message says what was wrong in words an operator can act on.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration (e.g. {EXAMPLES})")
    if text.startswith("-") and len(text) > 1:
        raise ValueError(f"{text!r} is negative: a duration is 0 or more (e.g. {EXAMPLES})")
    number, total, seen = "", 0.0, ""
    for ch in text:
        if ch in _DIGITS or (ch == "." and "." not in number):
            number += ch
            continue
        if ch in UNITS and _is_number(number) and ch not in seen:
            total += float(number) * UNITS[ch]
            number, seen = "", seen + ch
            continue
        break
    else:
        if not seen and _is_number(number):
            total = float(number)  # plain seconds
        elif not seen or number:
            total = -1.0
        if 0 <= total < float("inf"):
            return total
        if total > 0:
            raise ValueError(f"{text[:40]!r}{'...' if len(text) > 40 else ''} is too long")
    raise ValueError(
        f"{text!r} is not a number of seconds or a duration with units s, m, h, d, w "
        f"(e.g. {EXAMPLES})"
    )


def _is_number(word: str) -> bool:
    return word not in ("", ".")


def human(seconds: float) -> str:
    """``seconds`` for a message: ``0.3 s``, ``45 s``, ``12 min``, ``1 h 30 min``, ``~4 h``,
    ``~2 d``: exact while it is short, rounded (``~``) once the minutes no longer matter."""
    value = max(0.0, float(seconds))
    if value < 10:
        shown = f"{value:.1f}".rstrip("0").rstrip(".")
        return f"{shown} s"
    if value < 59.5:
        return f"{value:.0f} s"
    minutes = round(value / 60)
    if minutes < 60:
        return f"{minutes} min"
    if value < 3 * 3600:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h" if rest == 0 else f"{hours} h {rest} min"
    hours = round(value / 3600)
    exact = abs(value - hours * 3600) < 30
    if hours < 48:
        return f"{hours} h" if exact else f"~{hours} h"
    days = round(value / 86400)
    return f"{days} d" if abs(value - days * 86400) < 30 else f"~{days} d"
