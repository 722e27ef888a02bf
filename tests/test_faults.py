"""Faults of the environment, injected for real: a full disk and a read-only filesystem under
the SQLite store (a small tmpfs mounted by the test; root only), each a clear line naming the
fault and where, exit 3, nothing decided, and the store usable again once the fault is gone."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Coord, own_tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs of its own (unmounted afterwards)."""
    with own_tmpfs(tmp_path / "fs", "size=512k,mode=0755") as where:
        yield where


def _fill(where: Path) -> Path:
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)  # unbuffered: the last write is the one that fails
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _coord_on(tmp_path: Path, where: Path) -> Coord:
    coord = Coord(tmp_path)
    coord.env["RINGRIFT_COORDINATOR_DIR"] = str(where / "state")
    coord.env.pop("RINGRIFT_COORD_DB", None)
    return coord


def test_a_full_disk_during_admission_and_release_says_so(tmp_path: Path, small_fs: Path) -> None:
    coord = _coord_on(tmp_path, small_fs)
    held = coord("register", "selfplay", "--node", "n1", "-q")
    assert held.returncode == 0, held.stderr
    task_id = held.stdout.strip()
    filler = _fill(small_fs)
    for argv in (("register", "selfplay", "--node", "n1", "-q"), ("unregister", task_id)):
        refused = coord(*argv)
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "disk full" in refused.stderr and str(small_fs) in refused.stderr
        assert "disk I/O error" not in refused.stderr
    filler.unlink()  # room again: the slot was never lost, the release goes through now
    released = coord("unregister", task_id)
    assert released.returncode == 0, released.stderr


def test_a_read_only_filesystem_is_said_plainly(tmp_path: Path, small_fs: Path) -> None:
    coord = _coord_on(tmp_path, small_fs)
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
    remounted = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True
    )
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
    try:
        refused = coord("register", "selfplay", "--node", "n1", "-q")
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "read-only here (its filesystem is mounted read-only" in refused.stderr
        assert "unable to open database file" not in refused.stderr
        # an emergency halt that lands nowhere (no row, no halt file) says NOT halted
        halt = coord("halt", "--reason", "disk trouble")
        assert halt.returncode == 3 and halt.stderr.count("\n") == 1, halt.stderr
        assert halt.stderr.startswith("ringrift-coord: error: NOT halted: "), halt.stderr
        assert "halted in the store" not in halt.stderr
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=False)
    assert coord("register", "selfplay", "--node", "n1", "-q").returncode == 0
