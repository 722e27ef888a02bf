"""The bytes a transfer command moved: from rsync's ``--stats`` output, or from a file.

``StatsScanner`` reads a command's output as it streams by, line by line, holding only the
line in progress (at most ``MAX_LINE`` bytes) and the numbers found so far, never the whole
output. What went over the link is ``Total bytes sent`` + ``Total bytes received`` (rsync
``--stats``); without them, rsync's summary line ``sent N bytes  received M bytes ...``
(``-v``). The last report wins. Numbers may carry thousands separators (``1,234,567``, or
``1.234.567`` in a locale that groups with dots) or, with rsync ``-h``, a unit
(``1.23M``: powers of 1000, as one ``-h`` prints them; approximate).

``bytes_from_file`` reads ``--bytes-from FILE``: one non-negative integer the command wrote.
"""

from __future__ import annotations

import re

MAX_LINE = 4096  # a longer line is not a stats line: it is skipped, not kept

_NUMBER = rb"([0-9][0-9,.]*[KMGTP]?)"
_TOTAL = re.compile(rb"^\s*Total bytes (sent|received):\s*" + _NUMBER + rb"\s*$")
_SUMMARY = re.compile(
    rb"^\s*sent\s+" + _NUMBER + rb"\s+bytes\s+received\s+" + _NUMBER + rb"\s+bytes"
)
_GROUPED = re.compile(r"^[0-9]{1,3}([,.][0-9]{3})+$")
_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}


def parse_number(text: str) -> int | None:
    """rsync's way of writing a byte count as an int; None when it is not one."""
    if text.isdigit():
        return int(text)
    if _GROUPED.match(text):
        return int(text.replace(",", "").replace(".", ""))
    unit = _UNITS.get(text[-1:])
    if unit is not None:
        body = text[:-1].replace(",", ".")  # a decimal comma in some locales
        try:
            value = float(body)
        except ValueError:
            return None
        return int(round(value * unit))
    return None


class StatsScanner:
    """Feed it the output chunk by chunk (``feed``); ``total`` is the bytes reported."""

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False  # inside a line longer than MAX_LINE
        self.sent: int | None = None
        self.received: int | None = None
        self._summary: tuple[int, int] | None = None

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if self._skipping:
                self._skipping = False  # the end of the over-long line
                continue
            self._line(line)
        if len(self._partial) > MAX_LINE:
            self._partial, self._skipping = b"", True

    def finish(self) -> None:
        """The output ended: its last line may have no line break."""
        if self._partial and not self._skipping:
            self._line(self._partial)
        self._partial, self._skipping = b"", False

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        match = _TOTAL.match(line)
        if match is not None:
            value = parse_number(match.group(2).decode("ascii"))
            if value is not None:
                if match.group(1) == b"sent":
                    self.sent = value
                else:
                    self.received = value
            return
        match = _SUMMARY.match(line)
        if match is not None:
            sent = parse_number(match.group(1).decode("ascii"))
            received = parse_number(match.group(2).decode("ascii"))
            if sent is not None and received is not None:
                self._summary = (sent, received)

    @property
    def total(self) -> int | None:
        """Bytes over the link (sent + received); None when the output reported none."""
        if self.sent is not None or self.received is not None:
            return (self.sent or 0) + (self.received or 0)
        if self._summary is not None:
            return self._summary[0] + self._summary[1]
        return None


def scan_text(text: str | bytes) -> int | None:
    """The bytes a whole output reports (``StatsScanner`` over one chunk)."""
    scanner = StatsScanner()
    scanner.feed(text.encode() if isinstance(text, str) else text)
    scanner.finish()
    return scanner.total


def bytes_from_file(path: str) -> tuple[int | None, str | None]:
    """(bytes, None) from a file holding one non-negative integer (commas allowed), or
    (None, why not) when it is missing, unreadable or holds something else."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(256)
    except OSError as exc:
        return None, f"cannot read {path!r}: {exc.strerror or exc}"
    text = raw.decode("ascii", "replace").strip()
    value = parse_number(text) if text and not text[-1:].isalpha() else None
    if value is None:
        shown = text[:40] if text.isprintable() else repr(text[:40])
        return None, f"{path!r} does not hold a byte count (found {shown!r})"
    return value, None
