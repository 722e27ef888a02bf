"""Values that come from outside (operators, the environment, hand-written files): the clean,
printable form they are stored and shown in, and the checks the core applies to them."""

from __future__ import annotations

from ringrift_coord.errors import UsageError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_SECONDS = 1e9  # about 31 years: an expiry past what timestamps can show breaks listings
# the instants --now and --since take: the epoch to the year 9000, so that a day's windows,
# an expected finish or a duration added to one stays within what datetime can show
INSTANTS = (0.0, 221845392000.0)
MAX_SLOTS = 1_000_000  # beyond any node, and beyond what the store keeps
# a reason (a halt's, a release's, a breaker failure's, a transfer's): what is kept of it.
# A longer one is cut, never refused: a halt or a release must not fail over its reason (a
# halt's HALT event has a bounded payload); the command line says when it cut one
MAX_REASON = 1000
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


def reason(text: str | None) -> str | None:
    """A reason as it is kept: None for none or a blank one (an empty ``$REASON``), else its
    first ``MAX_REASON`` characters (the last one ``…`` when it was cut)."""
    if text is None or not text.strip():
        return None
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def slot_count(value: int, field: str) -> int:
    """A number of slots: 1 to 1000000."""
    if not 1 <= value <= MAX_SLOTS:
        raise UsageError(f"{value} is not a number of slots from 1 to {MAX_SLOTS}", field=field)
    return int(value)


def instant(text: str, field: str) -> float:
    """An ISO 8601 time (``2026-12-01T12:00``, ``...Z``, ``...+02:00``; a time without a zone
    is UTC, the cluster's clock) as seconds since the epoch: ``--now``, ``--since``."""
    from datetime import UTC, datetime

    raw = text.strip()
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{text!r} is not an ISO 8601 time like 2026-12-01T12:00 (UTC) or "
            "2026-12-01T12:00+02:00",
            field=field,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        seconds = moment.timestamp()
    except (OverflowError, ValueError):  # 0001-01-01T00:00+01:00 is in year 0
        seconds = float("nan")
    if not INSTANTS[0] <= seconds <= INSTANTS[1]:
        raise UsageError(
            f"{text!r} is outside the times this tool answers for (1970 to 9000)", field=field
        )
    return seconds


# --------------------------------------------------------------------------- numbers
#
# A number is written as a number: plain ASCII decimal. Python's int() and float() also take
# '٣' (other scripts' digits), ' 7 ' (spaces), '+5' and '1_000'; YAML 1.1 reads 010 as 8,
# 0x10 as 16 and 1:30 as 90. Each of those is refused with what to write instead.

_DIGITS = frozenset("0123456789")
_NON_FINITE = frozenset(("inf", "-inf", "infinity", "-infinity", "nan", "-nan"))


def _is_digits(text: str) -> bool:
    return bool(text) and all(ch in _DIGITS for ch in text)


def _is_decimal(text: str) -> bool:
    """``-?(digits[.digits]|.digits)([eE][+-]?digits)?`` in ASCII."""
    body = text[1:] if text.startswith("-") else text
    mantissa, e, exponent = body.replace("E", "e").partition("e")
    if e:
        exponent = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        if not _is_digits(exponent):
            return False
    whole, dot, fraction = mantissa.partition(".")
    if not dot:
        return _is_digits(whole)
    return (_is_digits(whole) and (not fraction or _is_digits(fraction))) or (
        not whole and _is_digits(fraction)
    )


def strict_int(raw: str) -> int | None:
    """``raw`` as an integer when it is written ``-?[0-9]+`` (ASCII), else None."""
    body = raw[1:] if raw.startswith("-") else raw
    return int(raw) if _is_digits(body) else None


def strict_float(raw: str) -> float | None:
    """``raw`` as a number when it is plain ASCII decimal (an exponent allowed), else None.

    ``inf`` and ``nan`` are read too, so that the range checks name them."""
    if _is_decimal(raw) or raw.lower() in _NON_FINITE:
        return float(raw)
    return None


def number_hint(raw: str, *, yaml: bool = False) -> str | None:
    """What to write instead of ``raw``, a number in another form ("write 5, not '+5'"),
    or None when ``raw`` does not read as a number at all. With ``yaml``, also YAML 1.1's
    readings: a leading 0 is octal, ``1:30`` is base 60."""
    text = raw.strip()
    sign = "-" if text.startswith("-") else ""
    body = text[1:] if text[:1] in ("+", "-") else text
    body = body.replace("_", "")
    low = body.lower()
    plain_text = raw and raw.isascii() and raw.isprintable() and " " not in raw
    shown = raw if plain_text else repr(raw)
    try:
        if low[:2] in ("0x", "0o", "0b"):
            value = int(body[2:], {"x": 16, "o": 8, "b": 2}[low[1]])
            return f"write {sign}{value}, not {shown}"
        if yaml and ":" in body:  # YAML 1.1's base 60: 1:30 is 90
            parts = body.split(":")
            total = 0.0
            for part in parts:
                total = total * 60 + float(part)
            number = int(total) if total.is_integer() else total
            return f"write {sign}{number}, not {shown}"
        if yaml and len(body) > 1 and _is_digits(body) and body[0] == "0":
            decimal = int(body, 10)
            if all(ch < "8" for ch in body):  # YAML 1.1 reads a leading 0 as octal
                return f"write {sign}{decimal} or {sign}{int(body, 8)}, not {shown}"
            return f"write {sign}{decimal}, not {shown}"
        number = int(body) if body.isdigit() else float(body)  # other scripts' digits too
    except (ValueError, KeyError):
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    if isinstance(number, float) and not number.is_integer() or abs(number) >= 1e16:
        plain = repr(number)
    else:
        plain = str(int(number))
    if f"{sign}{plain}" == raw:
        return None
    return f"write {sign}{plain}, not {shown}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to a mistyped ``word``, or "": the one
    hint of every parser (options, commands, task types)."""
    import difflib

    # options are matched by their names: the dashes every one shares would make '--fix'
    # look like '--config'
    names = {choice.lstrip("-") or choice: choice for choice in sorted(set(choices))}
    match = difflib.get_close_matches(word.lstrip("-") or word, list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[match[0]]}?)" if match else ""
