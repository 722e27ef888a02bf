"""``run --wait`` sleeps on a doorbell: a release, an unhalt... wakes the waiter whose turn it is.

Real ``ringrift-coord run --wait`` processes wait for a slot (per-node limit 1) held by a
``register``-ed sleeper. The safety poll (``run.wake_poll``) is set to 30 s where only a
ring can explain a prompt admission: each of those tests fails (times out) when the ring
is made a no-op. SQLite rings one FIFO per waiter in ``<db>-wake/``; PostgreSQL notifies.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, wait_for

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits: {selfplay: {per_node: 1, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
run: {poll_interval: 0.05, wake_poll: WAKE}
"""

JOB = 'echo "start $1" >> "$0"; sleep 0.2; echo "end $1" >> "$0"'
PROMPT = 10.0  # seconds: well under the 30 s safety poll, generous for a loaded machine


def rows(coord: Coord, sql: str) -> list[tuple]:
    """Rows straight from the store (either engine), outside the tool."""
    if coord.engine == "postgres":
        import psycopg

        with psycopg.connect(coord.env["RINGRIFT_COORD_DB"], autocommit=True) as conn:
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            except psycopg.errors.UndefinedTable:
                return []  # the first command has not made the schema yet
    if not coord.db.exists():
        return []
    conn = sqlite3.connect(f"file:{coord.db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def decisions_by(coord: Coord, pid: int) -> int:
    """How many admissions process ``pid`` has asked for (its first one is logged)."""
    return len(rows(coord, f"SELECT id FROM decisions WHERE pid = {int(pid)}"))


def log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


class Waiter:
    def __init__(self, coord: Coord, log: Path, name: str, env: dict[str, str] | None = None):
        self.name = name
        self.err = coord.tmp / f"waiter-{name}.err"
        with open(self.err, "w") as err:
            self.proc = coord.popen(
                "run",
                "selfplay",
                "--node",
                "n1",
                "--wait",
                "--",
                "sh",
                "-c",
                JOB,
                str(log),
                name,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env or {},
            )
        self.pid = self.proc.pid

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"waiter {self.name} still waiting after {timeout} s") from None

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def asking(coord: Coord, waiters: list[Waiter], log: Path, name: str, **kw: object) -> Waiter:
    """Start a waiter; return once it has asked once (its doorbell is made before that)."""
    w = Waiter(coord, log, name, **kw)  # type: ignore[arg-type]
    waiters.append(w)
    wait_for(
        lambda: decisions_by(coord, w.pid) or w.proc.poll() is not None,
        30,
        f"waiter {name} to ask for a slot",
    )
    assert w.proc.poll() is None, f"waiter {name} exited early: {w.stderr}"
    return w


@pytest.fixture
def slot(coord: Coord) -> Iterator[tuple[Coord, str, list[Waiter], subprocess.Popen]]:
    """The slot held by a registered sleeper; yields (coord, its task id, waiters, sleeper)."""
    coord.write_config(CONFIG.replace("WAKE", "30"))
    holder = subprocess.Popen(["sleep", "600"])
    waiters: list[Waiter] = []
    try:
        result = coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert result.returncode == 0, result.stderr
        yield coord, result.stdout.strip(), waiters, holder
    finally:
        for w in waiters:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(timeout=10)
        holder.kill()
        holder.wait(timeout=10)


def test_a_release_wakes_the_waiter_at_once(slot) -> None:
    coord, held, waiters, _ = slot
    log = coord.tmp / "log"
    w = asking(coord, waiters, log, "a")
    time.sleep(0.5)  # asleep on its doorbell (its next poll is 30 s away)
    assert coord("unregister", held).returncode == 0
    released = time.monotonic()
    wait_for(lambda: log_lines(log), PROMPT, "the waiter to start its job")
    assert time.monotonic() - released < PROMPT
    assert w.wait() == 0, w.stderr
    if coord.engine == "sqlite":  # its doorbell went with it
        assert [n for n in os.listdir(str(coord.db) + "-wake") if not n.startswith(".")] == []


def test_a_dead_waiter_is_skipped_and_the_next_one_rung(slot) -> None:
    """The head of the line was SIGKILLed (its doorbell stays behind, nobody reading it): the
    release rings the next live waiter instead, and the dead one's FIFO is removed."""
    coord, held, waiters, _ = slot
    log = coord.tmp / "log"
    dead = asking(coord, waiters, log, "dead")
    live = asking(coord, waiters, log, "live")
    wake = str(coord.db) + "-wake"
    if coord.engine == "sqlite":
        assert len(os.listdir(wake)) == 2
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait(timeout=10)
    time.sleep(0.5)
    assert coord("unregister", held).returncode == 0
    wait_for(lambda: log_lines(log), PROMPT, "the live waiter to start its job")
    assert live.wait() == 0, live.stderr
    assert log_lines(log) == ["start live", "end live"]
    if coord.engine == "sqlite":
        assert os.listdir(wake) == []  # the dead one's FIFO removed by the ringer


def test_unhalt_wakes_the_halted_waiters_and_they_run_in_arrival_order(slot) -> None:
    coord, held, waiters, _ = slot
    assert coord("unregister", held).returncode == 0  # a free slot: only the halt holds them
    assert coord("halt", "--reason", "maintenance").returncode == 0
    log = coord.tmp / "log"
    names = [str(i) for i in range(5)]
    for name in names:
        asking(coord, waiters, log, name)
    time.sleep(0.5)
    assert log_lines(log) == []
    assert coord("unhalt").returncode == 0
    lifted = time.monotonic()
    for w in waiters:
        assert w.wait(timeout=60) == 0, w.stderr
    # five 0.2 s jobs one after another; without a ring nobody would ask for 30 s
    assert time.monotonic() - lifted < 5 * 0.2 + PROMPT
    started = [line.split()[1] for line in log_lines(log) if line.startswith("start")]
    assert sorted(started) == names
    if coord.engine == "sqlite":  # the cascade: each rejoins, then rings the next
        assert started == names
        expected = [f"{word} {name}" for name in names for word in ("start", "end")]
        assert log_lines(log) == expected  # one at a time


def test_a_lost_ring_is_caught_by_the_safety_poll(coord: Coord) -> None:
    """The holder dies without a release (nothing rings): the waiter's safety poll reaps it
    and takes the slot within about run.wake_poll."""
    coord.write_config(CONFIG.replace("WAKE", "1"))
    holder = subprocess.Popen(["sleep", "600"])
    waiters: list[Waiter] = []
    try:
        result = coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert result.returncode == 0, result.stderr
        log = coord.tmp / "log"
        w = asking(coord, waiters, log, "a")
        holder.kill()
        holder.wait(timeout=10)
        assert w.wait(timeout=30) == 0, w.stderr
        assert log_lines(log) == ["start a", "end a"]
        reaped = rows(coord, "SELECT status FROM task_history WHERE status = 'reaped'")
        assert len(reaped) == 1
    finally:
        for w in waiters:
            if w.proc.poll() is None:
                w.proc.kill()
        holder.kill()
        holder.wait(timeout=10)


# --------------------------------------------------------------------------- SQLite: files


def test_a_planted_symlink_as_the_wake_directory_is_refused(slot, tmp_path: Path) -> None:
    coord, held, waiters, _ = slot
    if coord.engine != "sqlite":
        pytest.skip("the wake directory is SQLite's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, str(coord.db) + "-wake")
    result = coord("run", "selfplay", "--node", "n1", "--wait", "--", "true", timeout=30)
    assert result.returncode == 3, result.stderr
    assert "wake directory" in result.stderr and "symlink" in result.stderr
    assert "Traceback" not in result.stderr
    assert coord("unregister", held).returncode == 0  # a ringer never follows it either
    assert os.listdir(elsewhere) == []


def test_planted_files_among_the_doorbells_are_never_written_or_followed(slot) -> None:
    """A symlink and a regular file named like doorbells ahead of the real waiter: the
    release writes to neither (nor through the symlink), and still wakes the waiter."""
    coord, held, waiters, _ = slot
    if coord.engine != "sqlite":
        pytest.skip("the wake directory is SQLite's")
    log = coord.tmp / "log"
    w = asking(coord, waiters, log, "a")
    wake = Path(str(coord.db) + "-wake")
    (real,) = os.listdir(wake)
    kind, _seq, tag = real.split(".")
    target = coord.tmp / "target"
    target.write_bytes(b"")
    os.symlink(target, wake / f"{kind}.0.{tag}")
    planted = wake / f"{kind}.1.{tag}"
    if f"{kind}.1.{tag}" != real:
        planted.write_bytes(b"")
    time.sleep(0.3)
    assert coord("unregister", held).returncode == 0
    wait_for(lambda: log_lines(log), PROMPT, "the waiter to start its job")
    assert w.wait() == 0, w.stderr
    assert target.read_bytes() == b""
    if planted.exists():
        assert planted.read_bytes() == b""


def test_a_planted_name_at_the_waiters_own_doorbell_is_refused(coord: Coord) -> None:
    if coord.engine != "sqlite":
        pytest.skip("the wake directory is SQLite's")
    coord.write_config(CONFIG.replace("WAKE", "30"))
    assert coord("halt").returncode == 0  # makes the store; nobody is admitted
    wake = Path(str(coord.db) + "-wake")
    wake.mkdir(mode=0o700)
    target = coord.tmp / "target"
    target.write_bytes(b"")
    from ringrift_coord.wake import node_tag

    for seq in range(1, 4):  # the first waiter of a fresh store gets seq 1
        os.symlink(target, wake / f"selfplay.{seq}.{node_tag('n1')}")
    result = coord("run", "selfplay", "--node", "n1", "--wait", "--", "true", timeout=30)
    assert result.returncode == 3, result.stderr
    assert "refusing it" in result.stderr and "Traceback" not in result.stderr
    assert target.read_bytes() == b""
    assert all(os.path.islink(wake / n) for n in os.listdir(wake))  # nothing replaced


# --------------------------------------------------------------------------- PostgreSQL


def test_a_release_on_another_host_wakes_the_waiter(slot) -> None:
    coord, held, waiters, _ = slot
    if coord.engine != "postgres":
        pytest.skip("one SQLite store is one host's")
    assert coord("unregister", held).returncode == 0
    far = {"RINGRIFT_COORD_HOST": "far-host"}  # the slot is held from another host now
    taken = coord("register", "selfplay", "--node", "n1", "--pid", "1", env=far)
    assert taken.returncode == 0, taken.stderr
    log = coord.tmp / "log"
    w = asking(coord, waiters, log, "a", env={"RINGRIFT_COORD_HOST": "near-host"})
    time.sleep(0.5)
    assert coord("unregister", taken.stdout.strip(), env=far).returncode == 0
    released = time.monotonic()
    wait_for(lambda: log_lines(log), PROMPT, "the waiter to start its job")
    assert time.monotonic() - released < PROMPT
    assert w.wait() == 0, w.stderr


def test_without_listen_the_waiter_polls_and_is_still_admitted(coord: Coord) -> None:
    """A role that may hold one connection only (its LISTEN connection is refused, as behind
    PgBouncer in transaction mode LISTEN hears nothing): the poll doorbell admits it."""
    if coord.engine != "postgres":
        pytest.skip("LISTEN is PostgreSQL's")
    import psycopg

    url = coord.env["RINGRIFT_COORD_DB"]
    coord.write_config(CONFIG.replace("WAKE", "0.5"))
    assert coord("halt").returncode == 0 and coord("unhalt").returncode == 0  # the schema
    role = f"w{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    holder = subprocess.Popen(["sleep", "600"])
    waiters: list[Waiter] = []
    try:
        held = coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert held.returncode == 0, held.stderr
        log = coord.tmp / "log"
        limited = url.replace("postgresql://ringrift@", f"postgresql://{role}@")
        w = asking(coord, waiters, log, "a", env={"RINGRIFT_COORD_DB": limited})
        listening = rows(
            coord,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ringrift-coord-wait'",
        )
        assert listening == [(0,)]  # no LISTEN connection: it polls
        assert coord("unregister", held.stdout.strip()).returncode == 0
        assert w.wait(timeout=30) == 0, w.stderr
        assert log_lines(log) == ["start a", "end a"]
    finally:
        for w in waiters:
            if w.proc.poll() is None:
                w.proc.kill()
        holder.kill()
        holder.wait(timeout=10)


def test_a_transfer_that_ends_wakes_the_bandwidth_waiter(coord: Coord) -> None:
    coord.write_config(
        "bandwidth: {max_concurrent_transfers: 1}\nrun: {poll_interval: 0.05, wake_poll: 30}\n"
    )
    gate, out = coord.tmp / "gate", coord.tmp / "out"
    holder = coord.popen(
        "bandwidth", "run", "h1", "--",
        "sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate),
        stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    waiter = None
    try:
        wait_for(
            lambda: rows(coord, "SELECT pgid FROM transfers WHERE pgid IS NOT NULL"),
            30,
            "the first transfer",
        )
        waiter = coord.popen(
            "bandwidth", "run", "h1", "--wait", "--", "sh", "-c", 'echo in > "$0"', str(out),
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(
            lambda: rows(coord, "SELECT seq FROM waiters WHERE task_type = 'transfer'"),
            30,
            "the bandwidth waiter in line",
        )
        time.sleep(0.5)
        gate.touch()
        assert holder.wait(timeout=30) == 0
        ended = time.monotonic()
        assert waiter.wait(timeout=30) == 0
        assert time.monotonic() - ended < PROMPT  # rung: its own poll is 30 s away
        assert out.read_text() == "in\n"
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_ends_a_sleeping_waiter_at_once(slot, sig: signal.Signals) -> None:
    """Asleep on its doorbell (a FIFO's select, a LISTEN connection's wait), a waiter still
    ends on SIGTERM/SIGHUP at once and leaves the line."""
    coord, _, waiters, _ = slot
    log = coord.tmp / "log"
    w = asking(coord, waiters, log, "a")
    time.sleep(0.5)
    os.kill(w.pid, sig)
    assert w.wait(timeout=PROMPT) == 128 + sig, w.stderr
    assert rows(coord, "SELECT seq FROM waiters") == []
    assert log_lines(log) == []
