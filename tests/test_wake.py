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
from test_wait import Waiter

ENGINES = ("sqlite", "postgres")

CONFIG = """\
task_limits: {selfplay: {per_node: 1, cluster: 500}}
rate_limits: {selfplay: {per_minute: null}}
run: {poll_interval: 0.05, wake_poll: WAKE}
"""

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


@pytest.mark.parametrize("planted", ["symlink-to-a-fifo", "regular-file"])
def test_planted_files_among_the_doorbells_are_never_written_or_followed(
    slot, planted: str
) -> None:
    """A name like a doorbell ahead of the real waiter (place 0), each protection by itself:
    a symlink to a FIFO somebody reads (only O_NOFOLLOW keeps the ringer out of it: the FIFO
    check would pass it) and a regular file (only the FIFO check keeps it unwritten). The
    release writes to neither and still wakes the waiter."""
    coord, held, waiters, _ = slot
    if coord.engine != "sqlite":
        pytest.skip("the wake directory is SQLite's")
    log = coord.tmp / "log"
    w = asking(coord, waiters, log, "a")
    wake = Path(str(coord.db) + "-wake")
    (real,) = os.listdir(wake)
    kind, _seq, tag = real.split(".")
    ahead = wake / f"{kind}.0.{tag}"
    target = coord.tmp / "target"
    reader = None
    if planted == "symlink-to-a-fifo":
        os.mkfifo(target, 0o600)
        reader = os.open(target, os.O_RDWR | os.O_NONBLOCK)
        os.symlink(target, ahead)
    else:
        ahead.write_bytes(b"")
    try:
        time.sleep(0.3)
        assert coord("unregister", held).returncode == 0
        wait_for(lambda: log_lines(log), PROMPT, "the waiter to start its job")
        assert w.wait() == 0, w.stderr
        if reader is not None:
            with pytest.raises(BlockingIOError):
                os.read(reader, 16)  # nothing was written through the symlink
            assert os.path.islink(ahead)
        else:
            assert ahead.read_bytes() == b""
    finally:
        if reader is not None:
            os.close(reader)


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


# --------------------------------------------------------------------------- review fixes


def test_a_signal_in_a_post_commit_ring_is_not_swallowed(engine_db) -> None:
    """SIGTERM landing while a committed change's after-commit work runs (SQLite rings its
    FIFOs there) still ends the waiter: the signal's exception goes on once the rest of the
    after-commit work has run; other failures there are still swallowed."""
    from ringrift_coord.launcher import Interrupted

    store = engine_db.open()
    ran: list[str] = []

    def signalled() -> None:
        raise Interrupted(signal.SIGTERM)

    def broken() -> None:
        raise RuntimeError("a hook that failed")

    with pytest.raises(Interrupted):
        with store.write() as tx:
            tx.execute("DELETE FROM waiters")
            tx.after_commit(broken)
            tx.after_commit(signalled)
            tx.after_commit(lambda: ran.append("after"))
    assert ran == ["after"]
    with store.write() as tx:
        tx.after_commit(broken)  # swallowed: the change landed
        tx.after_commit(lambda: ran.append("again"))
    assert ran == ["after", "again"]


def test_a_peak_hours_waiter_wakes_when_its_window_ends() -> None:
    """Held back by peak hours that end in 5 s, a waiter with a doorbell sleeps 5 s, not the
    held-back floor (wake_poll x 10): no ring comes when the window ends."""
    from ringrift_coord.decision import Decision, Reason
    from ringrift_coord.launcher import PEAK_POLL, _wait_interval

    def peak(ends: float) -> Decision:
        reason = Reason("peak_hours", "peak hours", retry_after=ends)
        return Decision(False, "selfplay", "n1", [reason], retry_after=ends)

    assert _wait_interval(peak(5.0), False, 0.05, (2.0, 30.0)) == 5.0
    assert _wait_interval(peak(5.0), False, 0.05, None) == 5.0
    assert _wait_interval(peak(3 * 3600.0), False, 0.05, (2.0, 30.0)) == PEAK_POLL
    assert _wait_interval(peak(0.001), False, 0.05, (2.0, 30.0)) == 0.05


def test_a_killed_waiters_fifo_with_this_waiters_seq_is_replaced(coord: Coord) -> None:
    """A new (or restored) store hands out seq 1 again while the wake directory still holds
    the FIFO of a waiter killed with seq 1: nobody reads it, so it is stale and replaced;
    a publishing waiter's temp left a minute ago is removed too."""
    if coord.engine != "sqlite":
        pytest.skip("the wake directory is SQLite's")
    from ringrift_coord.wake import node_tag

    coord.write_config(CONFIG.replace("WAKE", "30"))
    assert coord("halt").returncode == 0 and coord("unhalt").returncode == 0  # the store
    wake = Path(str(coord.db) + "-wake")
    wake.mkdir(mode=0o700)
    stale = [wake / f"selfplay.{seq}.{node_tag('n1')}" for seq in range(1, 4)]
    for path in stale:
        os.mkfifo(path, 0o600)
    old_temp, new_temp = wake / ".new-1-deadbeef", wake / ".new-2-cafef00d"
    os.mkfifo(old_temp, 0o600)
    os.mkfifo(new_temp, 0o600)
    os.utime(old_temp, (time.time() - 120, time.time() - 120))
    result = coord("run", "selfplay", "--node", "n1", "--wait", "--", "true", timeout=30)
    assert result.returncode == 0, result.stderr
    assert not stale[0].exists()  # seq 1: replaced by the waiter's own, then removed
    assert not old_temp.exists() and new_temp.exists()  # a fresh temp may be publishing


def test_a_regular_file_at_the_waiters_own_doorbell_is_refused(coord: Coord) -> None:
    """Only a dead waiter's FIFO is stale: a regular file at the name is never replaced."""
    if coord.engine != "sqlite":
        pytest.skip("the wake directory is SQLite's")
    from ringrift_coord.wake import node_tag

    coord.write_config(CONFIG.replace("WAKE", "30"))
    assert coord("halt").returncode == 0
    wake = Path(str(coord.db) + "-wake")
    wake.mkdir(mode=0o700)
    for seq in range(1, 4):
        (wake / f"selfplay.{seq}.{node_tag('n1')}").write_bytes(b"x")
    result = coord("run", "selfplay", "--node", "n1", "--wait", "--", "true", timeout=30)
    assert result.returncode == 3, result.stderr
    assert "refusing it" in result.stderr and "Traceback" not in result.stderr
    assert all((wake / n).read_bytes() == b"x" for n in os.listdir(wake) if n[0] != ".")


def test_held_back_doorbells_stand_in_a_line_of_their_own(tmp_path: Path) -> None:
    """Real FIFOs: a freed slot never rings a held-back waiter (it could not use the slot);
    an unhalt (a ring of every queue) rings the head of each line; a held-back waiter rung
    rings the next held-back one; one that rejoins stands in line again."""
    from ringrift_coord.clock import SYSTEM_CLOCK
    from ringrift_coord.wake import FifoDoorbell, ring_fifos

    wake = str(tmp_path / "tasks.db-wake")

    def bell(seq: int, node: str) -> FifoDoorbell:
        return FifoDoorbell(wake, "selfplay", seq, node, SYSTEM_CLOCK, None)

    held1, line2, held3, held4 = bell(1, "n1"), bell(2, "n2"), bell(3, "n1"), bell(4, "n1")
    try:
        for b in (held1, held3, held4):
            b.held_back = True
        assert sorted(n.split(".")[0] for n in os.listdir(wake)) == ["held"] * 3 + ["selfplay"]
        # ten slots freed on n2 (or n1): only the waiter in line hears them
        for _ in range(10):
            ring_fifos(wake, [("selfplay", "n2"), ("selfplay", "n1")], None)
        assert line2.wait(0) is True
        assert [b.wait(0) for b in (held1, held3, held4)] == [False, False, False]
        line2.ring_next()  # admitted: nobody in line after it; the held ones hear nothing
        assert [b.wait(0) for b in (held1, held3, held4)] == [False, False, False]
        ring_fifos(wake, [(None, None)], None)  # an unhalt
        assert (held1.wait(0), line2.wait(0), held3.wait(0)) == (True, True, False)
        held1.ring_held_next()  # the held cascade
        assert (held3.wait(0), held4.wait(0), line2.wait(0)) == (True, False, False)
        held3.held_back = False  # it may wait in line again
        assert os.path.exists(os.path.join(wake, held3.name))
        ring_fifos(wake, [("selfplay", "n1")], None)
        assert (line2.wait(0), held3.wait(0), held4.wait(0)) == (True, True, False)
    finally:
        for b in (held1, line2, held3, held4):
            b.close()
    assert os.listdir(wake) == []


def test_unhalt_of_a_node_wakes_its_waiters_past_one_the_limits_deny(coord: Coord) -> None:
    """The head of the line waits on n2 (its slot is taken); n1 is halted and its waiters
    are held back. `unhalt --node n1` rings the held line too: n1's waiters run at once,
    though the head of the line is denied and rings nobody (their own poll: minutes)."""
    coord.write_config(CONFIG.replace("WAKE", "30") + "store: {lease_ttl: 600}\n")
    holder = subprocess.Popen(["sleep", "600"])
    waiters: list[Waiter] = []
    log = coord.tmp / "log"
    try:
        held = coord("register", "selfplay", "--node", "n2", "--pid", str(holder.pid))
        assert held.returncode == 0, held.stderr
        on_n2 = coord.popen(
            "run", "selfplay", "--node", "n2", "--wait", "--", "true",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(
            lambda: rows(coord, "SELECT seq FROM waiters WHERE node = 'n2'"),
            30,
            "the n2 waiter in line",
        )
        assert coord("halt", "--node", "n1").returncode == 0
        for name in ("a", "b"):
            asking(coord, waiters, log, name)
        time.sleep(1.0)  # both held back, asleep
        assert log_lines(log) == []
        assert coord("unhalt", "--node", "n1").returncode == 0
        lifted = time.monotonic()
        for w in waiters:
            assert w.wait(timeout=60) == 0, w.stderr
        assert time.monotonic() - lifted < 2 * 0.2 + PROMPT
        assert on_n2.poll() is None  # still waiting for n2's slot
        on_n2.kill()
        on_n2.wait(timeout=10)
    finally:
        for w in waiters:
            if w.proc.poll() is None:
                w.proc.kill()
        holder.kill()
        holder.wait(timeout=10)


def test_a_stopped_listen_backend_never_keeps_a_waiter_from_its_job(coord: Coord) -> None:
    """The server process of the waiters' LISTEN connections is stopped (SIGSTOP): a ring
    goes unheard, the safety poll admits the waiter, and its ring of the next one (on that
    connection) gives up after the store's reply timeout: the job starts. A waiter whose
    --timeout passes meanwhile leaves within the same bound."""
    if coord.engine != "postgres":
        pytest.skip("LISTEN is PostgreSQL's")
    coord.write_config(CONFIG.replace("WAKE", "1") + "store: {busy_timeout: 1}\n")
    bound = 1 + 5 + 5  # busy timeout + statement margin + reply margin: the reply timeout
    holder = subprocess.Popen(["sleep", "600"])
    waiters: list[Waiter] = []
    stopped: list[int] = []
    log = coord.tmp / "log"
    try:
        held = coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid))
        assert held.returncode == 0, held.stderr
        w = asking(coord, waiters, log, "a")
        quitter = coord.popen(
            "run", "selfplay", "--node", "n1", "--wait", "--timeout", "3", "--", "true",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = 'ringrift-coord-wait'"
        wait_for(lambda: len(rows(coord, query)) == 2, 30, "two LISTEN connections")
        for (pid,) in rows(coord, query):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        started = time.monotonic()
        _, err = quitter.communicate(timeout=3 + bound + PROMPT)
        assert quitter.returncode == 75, err
        assert "gave up waiting" in err
        assert time.monotonic() - started < 3 + bound + PROMPT
        assert coord("unregister", held.stdout.strip()).returncode == 0
        released = time.monotonic()
        wait_for(lambda: log_lines(log), bound + PROMPT, "the waiter to start its job")
        assert time.monotonic() - released < bound + PROMPT
        assert w.wait(timeout=30) == 0, w.stderr
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        for w in waiters:
            if w.proc.poll() is None:
                w.proc.kill()
        holder.kill()
        holder.wait(timeout=10)
