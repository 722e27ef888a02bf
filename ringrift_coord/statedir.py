"""The state directory: where it is, and when it is refused.

The state directory holds the SQLite file and the ``EMERGENCY_HALT`` file. It defaults to
``$XDG_STATE_HOME/ringrift-coord`` (never a shared /tmp path), is created mode 0700, and is
refused when it is a symlink, owned by another user, or writable by group or others.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from ringrift_coord.errors import StateError

STATE_DIR_ENV = "RINGRIFT_COORDINATOR_DIR"
MOUNTINFO_ENV = "RINGRIFT_COORD_MOUNTINFO"  # diagnostics and tests: read this mount table

# Filesystems on which SQLite's WAL (shared memory + POSIX locks) cannot be trusted.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "fuse.sshfs",
        "sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
        "fuse.cephfs",
    }
)


def default_state_dir(env: Mapping[str, str]) -> str:
    explicit = env.get(STATE_DIR_ENV)
    if explicit:
        return explicit
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ringrift-coord")


def ensure_state_dir(path: str) -> str:
    """Create ``path`` (mode 0700) if missing, then refuse it unless it is safe to use."""
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # another process made it first: check what it made
        except OSError as exc:
            raise StateError(
                f"cannot create state directory {path}: {exc.strerror}; "
                "set --state-dir or RINGRIFT_COORDINATOR_DIR to a directory you own"
            ) from None
        st = os.lstat(path)
    except OSError as exc:
        raise StateError(f"cannot inspect state directory {path}: {exc.strerror}") from None
    check_state_dir(path, st)
    return path


def check_state_dir(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise StateError(
            f"state directory {path} is a symlink; refusing it (point --state-dir at the real "
            "directory)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"state directory {path} exists but is not a directory")
    if st.st_uid != os.geteuid():
        raise StateError(
            f"state directory {path} is owned by uid {st.st_uid}, not by you (uid "
            f"{os.geteuid()}); refusing it"
        )
    if st.st_mode & 0o022:
        raise StateError(
            f"state directory {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {path}"
        )


def filesystem_type(path: str, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``path``, from the mount table (None if unknown)."""
    mountinfo = mountinfo or os.environ.get(MOUNTINFO_ENV) or "/proc/self/mountinfo"
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount_point = _unescape(fields[4])
        fs_type = right.split()[0]
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def refuse_network_filesystem(db_path: str) -> None:
    fs_type = filesystem_type(os.path.dirname(os.path.abspath(db_path)))
    if fs_type and (
        fs_type in NETWORK_FILESYSTEMS or fs_type.split(".")[-1] in NETWORK_FILESYSTEMS
    ):
        raise StateError(
            f"{db_path} is on a network filesystem ({fs_type}), where SQLite's WAL locking does "
            "not work; use the PostgreSQL engine (--db postgresql://...) or a local state directory"
        )


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
