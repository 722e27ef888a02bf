"""JSON text of plain values, exactly as ``json.dumps`` writes it, without importing ``json``.

Why not ``json``: a refused admission writes three small JSON texts (the decision log's
rules, the denial counter's labels, the TASK_DENIED event), and ``import json`` loads
``re`` and ``enum`` with it: ~10 ms of CPU on every refused ``can-spawn`` and every
``run --wait`` that has to wait, about a fifth of the command (measured with 40 runs of
``python -c 'import json'`` against ``python -c pass``). The values written on that path
are dicts with text keys, lists, text, numbers, booleans and None, and what ``default``
turns into text; anything else (another key type, a subclass of a JSON type, a ``default``
that gives no text, NaN or an infinity refused) is handed to ``json.dumps`` itself, so the
text (or the error) is always the one ``json.dumps`` gives (a test compares the two over
generated values). ``default`` must be pure, as ``str`` is: a value handed on is written
again from the start, and ``default`` called again.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# json.encoder's escapes: the two-character ones, \u00XX for the other control characters
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_ESCAPES["\t"] = "\\t"
for _code in range(0x20):
    _ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")
del _code


class _Unsupported(Exception):
    """A value this module does not write itself: ``json.dumps`` does."""


def _text(s: str, ascii_only: bool) -> str:
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'  # the common case: nothing to escape (DEL is not printable)
    out = []
    for ch in s:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ascii_only or 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:  # a surrogate pair, as json writes characters beyond the BMP
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


def dumps(
    value: Any,
    *,
    sort_keys: bool = False,
    compact: bool = False,
    ensure_ascii: bool = True,
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``json.dumps(value, sort_keys=..., separators=(",", ":") if compact else None,
    ensure_ascii=..., allow_nan=..., default=...)``, with json's ValueError for NaN or an
    infinity when ``allow_nan`` is False."""
    item_sep, key_sep = (",", ":") if compact else (", ", ": ")

    def write(v: Any) -> str:
        kind = type(v)
        if kind is str:
            return _text(v, ensure_ascii)
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if kind is int:
            return int.__repr__(v)
        if kind is float:
            if v != v or v in (float("inf"), float("-inf")):
                if not allow_nan:
                    raise _Unsupported  # json's own error, in its words for this version
                return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
            return float.__repr__(v)
        if kind is list or kind is tuple:
            return "[" + item_sep.join(write(item) for item in v) + "]"
        if kind is dict:
            if any(type(key) is not str for key in v):
                raise _Unsupported
            items = sorted(v.items()) if sort_keys else list(v.items())
            return "{" + item_sep.join(write(k) + key_sep + write(x) for k, x in items) + "}"
        # a subclass of a JSON type is json's to write (an IntEnum as its number); any
        # other value goes through ``default``, written here when that gives text
        if default is not None and not isinstance(v, str | int | float | list | tuple | dict):
            found = default(v)
            if type(found) is str:
                return _text(found, ensure_ascii)
        raise _Unsupported

    try:
        return write(value)
    except (_Unsupported, RecursionError):
        import json

        return json.dumps(
            value,
            sort_keys=sort_keys,
            separators=(item_sep, key_sep),
            ensure_ascii=ensure_ascii,
            allow_nan=allow_nan,
            default=default,
        )
