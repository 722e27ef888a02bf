"""``bandwidth run``: a transfer held exactly as long as a real command runs.

The real wrapper (``python -m ringrift_coord bandwidth run``) around real commands (sh,
sleep, rsync): the granted rate in ``{bwlimit}`` and ``$RINGRIFT_BWLIMIT_KBPS``, the bytes
read from rsync's ``--stats`` on the way through (or ``--bytes-from``), the exit codes and
statuses of ``run``, the cap and the fair queue, signals, reaping of a killed wrapper, and
a real ``rsync --bwlimit={bwlimit}`` that keeps to the printed limit. The store is read back
through ``transfers`` (both engines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, alive, wait_for

from ringrift_coord import transfers
from ringrift_coord.context import Context
from ringrift_coord.transfer_run import substitute
from ringrift_coord.transfer_stats import (
    MAX_LINE,
    StatsScanner,
    bytes_from_file,
    parse_number,
    scan_text,
)

ENGINES = ("sqlite", "postgres")
RSYNC = shutil.which("rsync")
needs_rsync = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")

# default host type: 100 Mbit/s = 12207.03 KiB/s; normal gets a quarter, floored
DEFAULT_NORMAL = 3051
DEFAULT_HIGH = 6103

RSYNC_STATS = """\
Number of files: 2 (reg: 1, dir: 1)
Total file size: 3,000,000 bytes
Total transferred file size: 3,000,000 bytes
Total bytes sent: 3,000,842
Total bytes received: 35

sent 3,000,842 bytes  received 35 bytes  2,000,584.67 bytes/sec
total size is 3,000,000  speedup is 1.00
"""


# --------------------------------------------------------------------------- helpers


def store(coord: Coord) -> Context:
    """A context on the wrapper's store, to read what it recorded."""
    return Context.open(
        db=coord.env.get("RINGRIFT_COORD_DB"),
        state_dir=str(coord.state_dir),
        config=str(coord.config),
        env=coord.env,
    )


def active(coord: Coord) -> list[dict]:
    with store(coord) as ctx, ctx.store.read() as tx:
        return [dict(r) for r in transfers.active(tx, tx.now())]


def history(coord: Coord) -> list[dict]:
    with store(coord) as ctx, ctx.store.read() as tx:
        return [dict(r) for r in transfers.history(tx, 100)]


def only_history(coord: Coord) -> dict:
    rows = history(coord)
    assert len(rows) == 1, rows
    return rows[0]


class Wrapper:
    """A ``bandwidth run`` in the background, its output in files."""

    def __init__(self, coord: Coord, *args: str) -> None:
        self.out = coord.tmp / f"bw-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = coord.popen(*args, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"wrapper still running after {timeout} s") from None

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Process groups to SIGKILL when the test ends, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------- stats parsing


def test_rsync_numbers_with_separators_and_units() -> None:
    assert parse_number("1,234,567") == 1234567
    assert parse_number("1.234.567") == 1234567  # a locale that groups with dots
    assert parse_number("56") == 56
    assert parse_number("1.23M") == 1230000  # rsync -h: powers of 1000
    assert parse_number("12,5K") == 12500  # a decimal comma
    assert parse_number("1,23") is None and parse_number("abc") is None


def test_stats_sum_sent_and_received_fed_in_any_chunks() -> None:
    assert scan_text(RSYNC_STATS) == 3_000_842 + 35
    scanner = StatsScanner()
    for byte in RSYNC_STATS.encode():  # one byte at a time: lines split anywhere
        scanner.feed(bytes([byte]))
    scanner.finish()
    assert (scanner.sent, scanner.received, scanner.total) == (3_000_842, 35, 3_000_877)
    # the summary line alone (rsync -v without --stats); the last report wins
    assert scan_text("sent 1,234 bytes  received 56 bytes  100.00 bytes/sec\n") == 1290
    assert scan_text("Total bytes sent: 5\nTotal bytes received: 1\n" * 2) == 6
    assert scan_text("Total bytes sent: 10\r\nTotal bytes received: 2") == 12  # no last \n
    assert scan_text("copied 3 files\nno stats here\n") is None


def test_the_scanner_keeps_a_bounded_tail_not_the_output() -> None:
    scanner = StatsScanner()
    scanner.feed(b"x" * (10 * MAX_LINE))  # one endless line (a progress bar with \r)
    assert len(scanner._partial) <= MAX_LINE
    scanner.feed(b"Total bytes sent: 99\n")  # the rest of that over-long line: skipped
    for _ in range(1000):
        scanner.feed(b"file-name-with-some-length.bin\n")
    scanner.feed(b"Total bytes sent: 7\nTotal bytes received: 3\n")
    assert len(scanner._partial) <= MAX_LINE and scanner.total == 10


def test_bytes_from_file(tmp_path: Path) -> None:
    good = tmp_path / "n"
    good.write_text("123456\n")
    assert bytes_from_file(str(good)) == (123456, None)
    good.write_text("1,024")
    assert bytes_from_file(str(good)) == (1024, None)
    for text in ("", "lots", "-5", "1.5M"):
        good.write_text(text)
        value, problem = bytes_from_file(str(good))
        assert value is None and problem is not None and "byte count" in problem
    value, problem = bytes_from_file(str(tmp_path / "missing"))
    assert value is None and problem is not None and "cannot read" in problem


def test_bwlimit_is_substituted_in_every_word() -> None:
    argv = ["rsync", "--bwlimit={bwlimit}", "{bwlimit}", "a{bwlimit}b{bwlimit}", "{bw}"]
    assert substitute(argv, 3051) == ["rsync", "--bwlimit=3051", "3051", "a3051b3051", "{bw}"]


# --------------------------------------------------------------------------- the wrapper


def test_rate_id_and_bytes_reach_the_command_and_the_history(coord: Coord) -> None:
    script = (
        'echo "limit=$RINGRIFT_BWLIMIT_KBPS arg=$1 id=$RINGRIFT_TRANSFER_ID"; '
        "echo 'Total bytes sent: 1,000'; echo 'Total bytes received: 24'"
    )
    done = coord(
        "bandwidth", "run", "h1", "--kind", "models", "--", "sh", "-c", script, "sh", "{bwlimit}"
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]  # the command's stdout is passed through, whole
    expected = rf"limit={DEFAULT_NORMAL} arg={DEFAULT_NORMAL} id=(xfer-[0-9a-f]{{12}})"
    match = re.fullmatch(expected, first)
    assert match, done.stdout
    assert done.stdout.splitlines()[1:] == ["Total bytes sent: 1,000", "Total bytes received: 24"]
    row = only_history(coord)
    assert (row["transfer_id"], row["remote"], row["kind"], row["priority"]) == (
        match.group(1),
        "h1",
        "models",
        "normal",
    )
    assert (row["status"], row["bytes"], row["kbps"]) == ("ok", 1024, DEFAULT_NORMAL)
    # done in well under a second: the bytes are kept, but that is no measured rate
    assert row["seconds"] < 1.0
    assert row["observed_kbps"] is None and row["ema_kbps"] is None
    assert active(coord) == []


def test_json_document_and_the_commands_output_on_stderr(coord: Coord) -> None:
    done = coord(
        "--json",
        "bandwidth",
        "run",
        "gpu-aws-3",
        "--priority",
        "high",
        "--",
        "sh",
        "-c",
        "echo 'Total bytes sent: 2048'; exit 4",
    )
    assert done.returncode == 4, done.stderr
    doc = json.loads(done.stdout)  # one document, and nothing else, on stdout
    assert "Total bytes sent: 2048" in done.stderr
    assert doc["remote"] == "gpu-aws-3" and doc["host_type"] == "aws"
    assert (doc["priority"], doc["kbps"], doc["limit_kbps"]) == ("high", 30517, 61035.2)
    assert (doc["exit_code"], doc["status"], doc["reason"]) == (4, "failed", "exit code 4")
    assert doc["bytes"] == 2048 and doc["task_type"] == "transfer"
    assert doc["transfer_id"] == doc["task_id"] and doc["transfer_id"].startswith("xfer-")
    assert doc["observed_kbps"] is None  # under 1 second: no measured rate
    assert only_history(coord)["status"] == "failed"


def test_bytes_from_a_file_when_the_output_has_no_stats(coord: Coord) -> None:
    count = coord.tmp / "moved"
    done = coord(
        "bandwidth", "run", "h1", "--bytes-from", str(count), "--",
        "sh", "-c", 'echo copying; echo 4096 > "$0"', str(count),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "copying\n" and done.stderr == ""
    assert only_history(coord)["bytes"] == 4096
    # a file that does not hold a number: one warning, the bytes unknown, the exit the job's
    done = coord("bandwidth", "run", "h1", "--bytes-from", str(count), "--", "sh", "-c", "true")
    assert done.returncode == 0
    count.write_text("junk")
    done = coord("bandwidth", "run", "h1", "--bytes-from", str(count), "--", "true")
    assert done.returncode == 0
    assert "--bytes-from:" in done.stderr and "bytes are not recorded" in done.stderr
    rows = history(coord)
    assert [r["bytes"] for r in rows][:2] == [None, 4096]
    # stats in the output come first
    done = coord(
        "bandwidth", "run", "h1", "--bytes-from", str(count), "--",
        "sh", "-c", "echo 'Total bytes sent: 12'",
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    assert history(coord)[0]["bytes"] == 12


def test_a_large_output_streams_through_and_its_stats_still_count(coord: Coord) -> None:
    """More than a pipe holds (8 MiB through a 64 KiB pipe): the wrapper copies as the job
    writes, so the job never blocks, and the stats at the end are read."""
    script = (
        "head -c 8388608 /dev/zero | tr '\\0' 'x' | fold -w 1000; echo; "
        "echo 'Total bytes sent: 8,388,608'; echo 'Total bytes received: 0'"
    )
    done = subprocess.run(
        coord.argv("bandwidth", "run", "h1", "--", "sh", "-c", script),
        env=coord.env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(b"x") == 8 * 1024 * 1024
    assert done.stdout.endswith(b"Total bytes received: 0\n")
    assert only_history(coord)["bytes"] == 8 * 1024 * 1024


def test_a_gone_reader_of_our_stdout_stops_the_copy_not_the_transfer(coord: Coord) -> None:
    """``bandwidth run ... | head -1``: the copy to our stdout stops, the job runs on."""
    script = (
        '"$0" -m ringrift_coord bandwidth run h1 -- '
        'sh -c "seq 1 200000; echo Total bytes sent: 5" | head -1; echo "rc=${PIPESTATUS[0]}"'
    )
    done = subprocess.run(
        ["bash", "-c", script, coord.argv()[0]],
        env=coord.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "1\nrc=0\n", (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    row = only_history(coord)  # the job ran to its end; its stats still counted
    assert (row["status"], row["bytes"]) == ("ok", 5)


def test_the_lease_is_renewed_while_the_command_runs(coord: Coord, cleanup) -> None:
    coord.write_config("store: {lease_ttl: 1}\n")  # renewed every 0.5 s
    gate = coord.tmp / "gate"
    wrapper = Wrapper(
        coord, "bandwidth", "run", "h1", "--",
        "sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate),
    )  # fmt: skip
    cleanup.append(wrapper.pid)
    (row,) = wait_for(lambda: [r for r in active(coord) if r["pgid"]], 30, "the transfer")
    cleanup.append(row["pgid"])
    first = row["lease_expires"]
    wait_for(lambda: active(coord)[0]["lease_expires"] > first + 1, 30, "a renewal")
    gate.touch()
    assert wrapper.wait() == 0, wrapper.stderr
    assert only_history(coord)["status"] == "ok"


def test_a_stalled_reader_of_our_output_stops_no_renewal(coord: Coord, cleanup) -> None:
    """The job fills a pipe nobody reads (`bandwidth run ... | sleep`): its output waits,
    the lease is still renewed, and once the reader drains it everything arrives in order
    and the transfer ends with its bytes."""
    coord.write_config("store: {lease_ttl: 1}\n")  # renewed every 0.5 s
    gate = coord.tmp / "gate"
    script = (
        'yes | head -c 2000000; echo "Total bytes sent: 2,000,000"; '
        'while [ ! -e "$0" ]; do sleep 0.05; done'
    )
    read_end, write_end = os.pipe()
    proc = coord.popen("bandwidth", "run", "h1", "--", "sh", "-c", script, str(gate),
                       stdout=write_end, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(write_end)
    cleanup.append(proc.pid)
    try:
        (row,) = wait_for(lambda: [r for r in active(coord) if r["pgid"]], 30, "the transfer")
        cleanup.append(row["pgid"])
        first = row["lease_expires"]  # the pipe (64 KiB) is full long before 2 MB
        wait_for(lambda: active(coord)[0]["lease_expires"] > first + 2, 30, "renewals")
        gate.touch()
        received = bytearray()
        while chunk := os.read(read_end, 1 << 16):
            received += chunk
    finally:
        os.close(read_end)
    assert proc.wait(timeout=60) == 0
    assert len(received) == 2_000_000 + len("Total bytes sent: 2,000,000\n")
    assert only_history(coord)["bytes"] == 2_000_000


def test_a_writer_left_outside_the_group_does_not_hold_the_wrapper(coord: Coord) -> None:
    """The job leaves a process in its own session writing into the pipe forever: the
    wrapper takes what the job wrote (a bounded amount), releases, and exits."""
    leftover = coord.tmp / "leftover.pid"
    script = (
        f'setsid sh -c "echo \\$\\$ > {leftover}; exec yes" & echo "Total bytes sent: 7"; sleep 0.3'
    )
    proc = coord.popen("bandwidth", "run", "h1", "--", "sh", "-c", script,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        if leftover.exists():
            try:
                os.kill(int(leftover.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass  # ended by the closed pipe
    row = only_history(coord)
    assert (row["status"], row["bytes"]) == ("ok", 7)


def test_a_signal_ends_the_wait_for_a_stalled_reader_after_the_release(coord: Coord) -> None:
    """The job is done and its transfer released; the wrapper still holds output our reader
    does not take: SIGTERM ends the wrapper now (it forwards nothing to a dead group)."""
    read_end, write_end = os.pipe()
    proc = coord.popen("bandwidth", "run", "h1", "--", "sh", "-c", "yes | head -c 300000",
                       stdout=write_end, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(write_end)
    try:
        wait_for(lambda: history(coord), 30, "the transfer's release")
        assert proc.poll() is None  # still handing on the job's output
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
    assert only_history(coord)["status"] == "ok"


def test_a_command_that_cannot_run_is_126_127_and_released(coord: Coord) -> None:
    done = coord("bandwidth", "run", "h1", "--", "no-such-command-xyz")
    assert done.returncode == 127
    assert "cannot run 'no-such-command-xyz'" in done.stderr
    row = only_history(coord)
    assert row["status"] == "failed" and "cannot run" in row["reason"]
    assert active(coord) == []


def test_usage_errors(coord: Coord) -> None:
    for argv, message in [
        (("bandwidth", "run", "h1"), "bandwidth run needs a command"),
        (("bandwidth", "run", "h1", "--priority", "urgent", "true"), "priorit"),
        (("bandwidth", "run", "h1", "--timeout", "5", "true"), "--timeout only applies"),
        (("bandwidth", "run", "h1", "--no-slot-exit-code", "300", "true"), "0-255"),
        (("bandwidth", "run", " ", "true"), "argument HOST must not be empty"),
    ]:
        done = coord(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert history(coord) == []


def test_other_bandwidth_words_go_to_typer(coord: Coord) -> None:
    done = coord("bandwidth", "--help")
    assert done.returncode == 0 and "run" in done.stdout
    done = coord("bandwidth", "run", "--help")
    assert done.returncode == 0
    assert "KiB/s" in done.stdout and "--bytes-from" in done.stdout


# --------------------------------------------------------------------------- cap and queue

CAP_ONE = """\
bandwidth: {max_concurrent_transfers: 1}
run: {poll_interval: 0.05}
"""


def test_the_cap_refuses_with_75_and_wait_gets_in_after(coord: Coord, cleanup) -> None:
    coord.write_config(CAP_ONE)
    gate = coord.tmp / "gate"
    holder = Wrapper(
        coord, "bandwidth", "run", "h1", "--",
        "sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate),
    )  # fmt: skip
    cleanup.append(holder.pid)
    wait_for(lambda: active(coord) and active(coord)[0]["pgid"], 30, "the first transfer")
    denied = coord("bandwidth", "run", "h1", "--", "true")
    assert denied.returncode == 75
    assert "transfer_cap" in denied.stderr or "at its cap of 1" in denied.stderr
    assert coord("bandwidth", "run", "h1", "--no-slot-exit-code", "9", "--", "true").returncode == 9
    timed_out = coord("bandwidth", "run", "h1", "--wait", "--timeout", "0.3", "--", "true")
    assert timed_out.returncode == 75
    assert "gave up waiting for a transfer to h1" in timed_out.stderr
    # another remote is not held back
    assert coord("bandwidth", "run", "h2", "--", "true").returncode == 0
    # a waiter is in line: status and tasks work, and show no "transfer" task type (the
    # transfers are `bandwidth status`'s)
    waiter = Wrapper(coord, "bandwidth", "run", "h1", "--wait", "--", "sh", "-c", "echo in")
    with store(coord) as ctx:
        wait_for(lambda: _waiting(ctx), 30, "the waiter in line")
    for argv in (("status",), ("tasks",), ("can-spawn", "selfplay"), ("bandwidth", "status")):
        done = coord(*argv)
        assert done.returncode == 0, (argv, done.stderr)
    assert not re.search(r"^transfer ", coord("status").stdout, re.M)  # no task type line
    status = json.loads(coord("--json", "status").stdout)
    assert "transfer" not in status["by_type"]
    assert all(entry["queued"] == 0 for entry in status["by_type"].values())
    hosts = json.loads(coord("--json", "bandwidth", "status").stdout)["hosts"]
    assert [(h["remote"], h["active"], h["queued"]) for h in hosts if h["remote"] == "h1"] == [
        ("h1", 1, 1)
    ]
    assert re.search(r"^h1 .* 1/1 \+1 ", coord("bandwidth", "status").stdout, re.M)
    gate.touch()
    assert holder.wait() == 0, holder.stderr
    assert waiter.wait() == 0, waiter.stderr
    assert waiter.out.read_text() == "in\n"
    assert [r["status"] for r in history(coord)] == ["ok"] * 3  # holder, h2, waiter
    assert active(coord) == []


def _waiting(ctx: Context) -> bool:
    with ctx.store.read() as tx:
        return bool(tx.query("SELECT seq FROM waiters WHERE task_type = 'transfer'"))


# --------------------------------------------------------------------------- signals, reaping


def test_sigterm_is_forwarded_and_the_transfer_ends_stopped(coord: Coord, cleanup) -> None:
    wrapper = Wrapper(coord, "bandwidth", "run", "h1", "--", "sleep", "30")
    cleanup.append(wrapper.pid)
    (row,) = wait_for(lambda: [r for r in active(coord) if r["pgid"]], 30, "the transfer")
    cleanup.append(row["pgid"])
    os.kill(wrapper.pid, signal.SIGTERM)
    assert wrapper.wait() == 128 + signal.SIGTERM
    hist = only_history(coord)
    assert hist["status"] == "stopped" and "forwarded SIGTERM" in hist["reason"]
    assert not alive(row["pid"])


def test_a_killed_wrapper_and_job_are_reaped_by_the_next_start(coord: Coord, cleanup) -> None:
    wrapper = Wrapper(coord, "bandwidth", "run", "h1", "--", "sleep", "60")
    cleanup.append(wrapper.pid)
    (row,) = wait_for(lambda: [r for r in active(coord) if r["pgid"]], 30, "the transfer")
    cleanup.append(row["pgid"])
    os.killpg(row["pgid"], signal.SIGKILL)  # the job's group ...
    os.kill(wrapper.pid, signal.SIGKILL)  # ... and the wrapper: nobody releases it
    wrapper.proc.wait(timeout=10)
    wait_for(lambda: not alive(row["pid"]), 10, "the job to die")
    assert [r["transfer_id"] for r in active(coord)] == [row["transfer_id"]]  # still listed
    assert history(coord) == []
    done = coord("bandwidth", "run", "h1", "--", "true")  # the next start on that remote
    assert done.returncode == 0, done.stderr
    by_id = {r["transfer_id"]: r for r in history(coord)}
    reaped = by_id[row["transfer_id"]]
    assert reaped["status"] == "reaped" and "holder process gone" in reaped["reason"]
    assert active(coord) == []


def test_a_live_job_keeps_its_transfer_when_only_the_wrapper_dies(coord: Coord, cleanup) -> None:
    wrapper = Wrapper(coord, "bandwidth", "run", "h1", "--", "sleep", "60")
    cleanup.append(wrapper.pid)
    (row,) = wait_for(lambda: [r for r in active(coord) if r["pgid"]], 30, "the transfer")
    cleanup.append(row["pgid"])
    os.kill(wrapper.pid, signal.SIGKILL)
    wrapper.proc.wait(timeout=10)
    assert coord("bandwidth", "run", "h1", "--", "true").returncode == 0
    # the job still moves data under its allocation: not reaped while its group lives
    assert [r["transfer_id"] for r in active(coord)] == [row["transfer_id"]]
    os.killpg(row["pgid"], signal.SIGKILL)
    wait_for(lambda: not alive(row["pid"]), 10, "the job to die")
    assert coord("bandwidth", "run", "h1", "--", "true").returncode == 0
    assert active(coord) == []
    assert {r["transfer_id"]: r["status"] for r in history(coord)}[row["transfer_id"]] == "reaped"


# --------------------------------------------------------------------------- real rsync


def _rsync_tree(tmp: Path, megabytes: int) -> tuple[Path, Path]:
    src, dst = tmp / "src", tmp / "dst"
    src.mkdir()
    dst.mkdir()
    for n in range(4):  # random: incompressible, and rsync -z is not used anyway
        (src / f"part{n}.bin").write_bytes(os.urandom(megabytes * 1024 * 1024 // 4))
    return src, dst


@needs_rsync
def test_real_rsync_records_what_it_reported(coord: Coord) -> None:
    """Fast, on both engines: the bytes recorded are rsync's own sent + received."""
    src, dst = _rsync_tree(coord.tmp, 1)
    done = coord(
        "bandwidth", "run", "h1", "--priority", "critical", "--",
        "rsync", "-a", "--stats", "--bwlimit={bwlimit}", f"{src}/", f"{dst}/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = re.search(r"Total bytes sent: ([0-9,]+)", done.stdout)
    received = re.search(r"Total bytes received: ([0-9,]+)", done.stdout)
    assert sent and received, done.stdout
    reported = int(sent.group(1).replace(",", "")) + int(received.group(1).replace(",", ""))
    assert reported > 1024 * 1024
    row = only_history(coord)
    assert (row["bytes"], row["status"], row["kbps"]) == (reported, "ok", 12207)
    assert sorted(p.name for p in dst.iterdir()) == [f"part{n}.bin" for n in range(4)]


# 256 Mbit/s: normal priority (a quarter) gets 64 Mbit/s = 7812 KiB/s, so 32 MiB take ~4 s
RSYNC_LIMIT = """\
bandwidth:
  host_types:
    testlink: {match: ["testlink-*"], mbps: 256}
"""


@needs_rsync
def test_real_rsync_keeps_to_the_printed_limit(tmp_path: Path) -> None:
    """Once, on SQLite (no ``coord`` fixture, so not once per engine): the timing is the
    command's, the engines only record it (the fast test above checks both)."""
    coord = Coord(tmp_path)
    coord.write_config(RSYNC_LIMIT)
    src, dst = _rsync_tree(coord.tmp, 32)
    started = time.monotonic()
    done = coord(
        "--json", "bandwidth", "run", "testlink-1", "--",
        "rsync", "-a", "--stats", "--bwlimit={bwlimit}", f"{src}/", f"{dst}/",
        timeout=120,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["kbps"] == 7812 and doc["host_type"] == "testlink"
    moved = doc["bytes"]
    assert moved is not None and moved >= 32 * 1024 * 1024
    achieved = moved / 1024 / doc["duration"]  # KiB/s over the command's own run
    assert abs(achieved - doc["kbps"]) <= 0.2 * doc["kbps"], (achieved, doc, wall)
    assert 3.0 <= doc["duration"] <= wall
    row = only_history(coord)
    assert row["bytes"] == moved
    assert abs(row["observed_kbps"] - achieved) <= 0.05 * achieved
    print(f"rsync: {moved} bytes in {doc['duration']:.2f} s = {achieved:.0f} KiB/s "
          f"(limit {doc['kbps']} KiB/s, wall {wall:.2f} s)")  # fmt: skip


# --------------------------------------------------------------------------- halts


def test_a_halt_stops_new_transfers_and_a_waiter_gets_in_after_unhalt(
    coord: Coord, cleanup
) -> None:
    """A halt of every type (or of sync, what a transfer is) refuses allocate, start and run
    with the halt's reason; a halt of another type does not; an unhalt lets a waiter in."""
    assert coord("halt", "--type", "training", "--reason", "other").returncode == 0
    assert coord("bandwidth", "allocate", "h1").returncode == 0
    assert coord("halt", "--type", "sync", "--reason", "link maintenance").returncode == 0
    for argv in (("bandwidth", "allocate", "h1"), ("bandwidth", "start", "h1", "--kind", "d")):
        done = coord(*argv)
        assert done.returncode == 1, (argv, done.stderr)
        assert "link maintenance" in done.stderr and done.stdout == ""
    doc = json.loads(coord("--json", "bandwidth", "allocate", "h1").stdout)
    assert doc["allowed"] is False and [r["rule"] for r in doc["reasons"]] == ["halt"]
    assert doc["rate"] == 0
    ran = coord("bandwidth", "run", "h1", "--", "true")
    assert ran.returncode == 75 and "link maintenance" in ran.stderr
    assert coord("unhalt", "--type", "sync").returncode == 0
    assert coord("halt", "--reason", "3 a.m. stop").returncode == 0  # every type
    waiter = Wrapper(coord, "bandwidth", "run", "h1", "--wait", "--", "sh", "-c", "echo in")
    cleanup.append(waiter.pid)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # a real process waiting: it keeps asking, unadmitted
        assert waiter.proc.poll() is None and not active(coord)
        time.sleep(0.1)
    assert coord("unhalt").returncode == 0
    assert waiter.wait() == 0, waiter.stderr
    assert waiter.out.read_text() == "in\n"
    assert [r["status"] for r in history(coord)] == ["ok"]


# --------------------------------------------------------------------------- rsync -h levels


def test_the_size_unit_comes_from_rsyncs_own_words() -> None:
    """One -h: sizes in powers of 1000; -hh (any spelling): 1024, with the same letters."""
    from ringrift_coord.transfer_stats import human_unit

    assert human_unit(["rsync", "-a", "--stats"]) == 1000
    assert human_unit(["rsync", "-ah", "--stats"]) == 1000
    assert human_unit(["rsync", "-ahh", "--stats"]) == 1024
    assert human_unit(["/usr/bin/rsync", "-h", "-a", "-h"]) == 1024
    assert human_unit(["rsync", "-h", "--human-readable"]) == 1024
    assert human_unit(["rsync", "--human-readable", "--human-readable"]) == 1024
    assert human_unit(["rsync", "-hh", "--no-h", "-h"]) == 1000  # --no-h starts over at 0
    assert human_unit(["rsync", "--no-h", "-hh"]) == 1000  # level 2, as real rsync 3.2.7 says
    assert human_unit(["rsync", "--no-h", "-hhh"]) == 1024
    assert human_unit(["rsync", "-e", "ssh -h -h", "-ah"]) == 1000  # -e's value is not rsync's
    assert human_unit(["rsync", "-essh -hh", "-a"]) == 1000
    assert human_unit(["rsync", "-a", "--", "-hh"]) == 1000  # a file name
    assert human_unit(["sh", "-c", "rsync -ahh --stats a b"]) == 1000  # not rsync itself
    assert human_unit([]) == 1000
    assert parse_number("1.50M", 1024) == 1572864 and parse_number("1.50M") == 1500000
    assert parse_number("2G", 1024) == 2 * 1024**3 and parse_number("12,345", 1024) == 12345
    scanner = StatsScanner(1024)
    scanner.feed(b"Total bytes sent: 1.00M\nTotal bytes received: 2.00K\n")
    scanner.finish()
    assert scanner.total == 1024 * 1024 + 2048


def test_a_run_of_rsync_hh_reads_sizes_in_1024s(coord: Coord, tmp_path: Path) -> None:
    """A command named rsync given -hh: its output's K/M/G are read as powers of 1024 (a
    stand-in rsync prints what rsync -hh --stats prints); through sh -c: 1000."""
    fake = tmp_path / "bin" / "rsync"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'Total bytes sent: 3.00M'\necho 'Total bytes received: 1.00K'\n"
    )
    fake.chmod(0o755)
    done = coord("bandwidth", "run", "h1", "--", str(fake), "-ahh", "--stats", "a", "b")
    assert done.returncode == 0, done.stderr
    assert only_history(coord)["bytes"] == 3 * 1024 * 1024 + 1024
    done = coord("bandwidth", "run", "h2", "--", "sh", "-c", f"{fake} -ahh --stats a b")
    assert done.returncode == 0, done.stderr
    (row,) = [r for r in history(coord) if r["remote"] == "h2"]
    assert row["bytes"] == 3 * 1000 * 1000 + 1000  # not rsync itself: read as one -h


def test_unbelievable_bytes_are_a_warning_and_the_job_keeps_its_exit(coord: Coord) -> None:
    """A byte count past what the store keeps (a garbled stats line, a bad --bytes-from
    file) is not recorded: one warning, the job's exit code, the transfer released."""
    huge = "99999999999999999999"
    done = coord(
        "bandwidth", "run", "h1", "--", "sh", "-c", f'echo "Total bytes sent: {huge}"; exit 3'
    )
    assert done.returncode == 3, done.stderr
    assert f"the command's stats: {huge} bytes is not believable" in done.stderr
    assert "internal error" not in done.stderr
    row = only_history(coord)
    assert (row["status"], row["bytes"]) == ("failed", None)
    count = coord.tmp / "bytes"
    count.write_text(huge + "0000\n")
    done = coord("bandwidth", "run", "h1", "--bytes-from", str(count), "--", "true")
    assert done.returncode == 0 and "--bytes-from: " in done.stderr, done.stderr
    assert active(coord) == []


def test_a_host_type_without_mbps_fails_only_the_bandwidth_commands(coord: Coord) -> None:
    path = coord.write_config('bandwidth: {host_types: {lab: {match: ["lab-*"]}}}\n')
    spawn = coord("can-spawn", "selfplay", "--node", "n1")
    assert spawn.returncode == 0, spawn.stderr
    assert "host type lab has no mbps" in spawn.stderr  # one warning line
    allocate = coord("bandwidth", "allocate", "lab-1")
    assert allocate.returncode == 3
    assert allocate.stderr.startswith(f"ringrift-coord: error: {path}:1: ")
    assert "host type lab has no mbps" in allocate.stderr
