"""The bytes a transfer command moved: from rsync's ``--stats`` output, or from a file.

``StatsScanner`` reads a command's output as it streams by, line by line, holding only the
line in progress (at most ``MAX_LINE`` bytes) and the numbers found so far, never the whole
output. What went over the link is ``Total bytes sent`` + ``Total bytes received`` (rsync
``--stats``); without them, rsync's summary line ``sent N bytes  received M bytes ...``
(``-v``). The last report wins. Numbers may carry thousands separators (``1,234,567``, or
``1.234.567`` in a locale that groups with dots) or, with rsync ``-h``, a unit letter
(``1.23M``): one ``-h`` prints powers of 1000, ``-hh`` powers of 1024 with the same letters,
so the scanner is told which (``human_unit`` reads it from an rsync command's words; any
other command: 1000). Such sizes are rounded by rsync: approximate.

``bytes_from_file`` reads ``--bytes-from FILE``: one non-negative integer the command wrote.
"""

from __future__ import annotations

import os
import re

MAX_LINE = 4096  # a longer line is not a stats line: it is skipped, not kept

_NUMBER = rb"([0-9][0-9,.]*[KMGTP]?)"
_TOTAL = re.compile(rb"^\s*Total bytes (sent|received):\s*" + _NUMBER + rb"\s*$")
_SUMMARY = re.compile(
    rb"^\s*sent\s+" + _NUMBER + rb"\s+bytes\s+received\s+" + _NUMBER + rb"\s+bytes"
)
_GROUPED = re.compile(r"^[0-9]{1,3}([,.][0-9]{3})+$")
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
# rsync's short options that take a value: the rest of their word (or the next word) is it
_VALUED = set("eBTfM@")


def human_unit(argv: list[str] | tuple[str, ...]) -> int:
    """The unit (1000 or 1024) of the size letters the command's output will carry, as
    rsync counts it: its level starts at 1, each ``-h`` (``--human-readable``) adds one,
    ``--no-h`` sets it to 0; level 2 is units of 1000, 3 and above of 1024. So ``-hh`` is
    1024, ``--no-h -hh`` 1000. A command that is not rsync itself: 1000."""
    if not argv or os.path.basename(argv[0]) != "rsync":
        return 1000
    level = 1
    skip_next = False
    for word in argv[1:]:
        if skip_next:
            skip_next = False
            continue
        if word == "--":
            break
        if word in ("--human-readable", "--human"):
            level += 1
        elif word in ("--no-human-readable", "--no-h"):
            level = 0
        elif word.startswith("-") and not word.startswith("--"):
            for i, letter in enumerate(word[1:], 1):
                if letter == "h":
                    level += 1
                elif letter in _VALUED:
                    skip_next = i == len(word) - 1  # the value is the next word
                    break
    return 1024 if level >= 3 else 1000


def parse_number(text: str, unit: int = 1000) -> int | None:
    """rsync's way of writing a byte count as an int (a size letter in powers of ``unit``);
    None when it is not one."""
    if text.isdigit():
        return int(text)
    if _GROUPED.match(text):
        return int(text.replace(",", "").replace(".", ""))
    power = _POWERS.get(text[-1:])
    if power is not None:
        body = text[:-1].replace(",", ".")  # a decimal comma in some locales
        try:
            value = float(body)
        except ValueError:
            return None
        return int(round(value * unit**power))
    return None


class StatsScanner:
    """Feed it the output chunk by chunk (``feed``); ``total`` is the bytes reported."""

    def __init__(self, unit: int = 1000) -> None:
        self.unit = unit  # of the size letters (``human_unit``)
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
            value = parse_number(match.group(2).decode("ascii"), self.unit)
            if value is not None:
                if match.group(1) == b"sent":
                    self.sent = value
                else:
                    self.received = value
            return
        match = _SUMMARY.match(line)
        if match is not None:
            sent = parse_number(match.group(1).decode("ascii"), self.unit)
            received = parse_number(match.group(2).decode("ascii"), self.unit)
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


def scan_text(text: str | bytes, unit: int = 1000) -> int | None:
    """The bytes a whole output reports (``StatsScanner`` over one chunk)."""
    scanner = StatsScanner(unit)
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
