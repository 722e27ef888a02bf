"""The state directory: where it is, and when it is refused.

The state directory holds the SQLite file and the ``EMERGENCY_HALT`` file. It defaults to
``$XDG_STATE_HOME/ringrift-coord`` (never a shared /tmp path), is created mode 0700, and is
refused when it is a symlink, owned by another user, writable by group or others, or inside a
directory another user can change. A store shared by a host's users is the one exception: a
setgid directory of the group ``store.shared_group`` names. Here too: the mode of every file
the tool creates, and when a file read back from a store is trusted.
"""

from __future__ import annotations

import errno
import os
import stat

from ringrift_coord.errors import ConfigError, StateError

TYPE_CHECKING = False  # typing costs start-up time on the hot path; annotations are lazy
if TYPE_CHECKING:
    from collections.abc import Mapping

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


def clean_env_path(name: str, value: str, shown: str | None = None) -> str:
    """``value`` of the environment variable ``name`` (a path or store address), refused
    (exit 3) when it holds a control character: a stray newline or escape from an env file
    would otherwise name a new, separate state directory or store, silently (``--db`` and
    ``--state-dir`` refuse the same, exit 2). ``shown``: the value as a message may show it
    (a store address without its password)."""
    if value.isprintable() or not any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in value):
        return value
    shown = repr(value) if shown is None else shown
    raise ConfigError(
        f"{name}: {shown} contains control characters (a stray newline or escape?): set it "
        "to the path or address alone"
    )


def default_state_dir(env: Mapping[str, str]) -> str:
    explicit = env.get(STATE_DIR_ENV)
    if explicit:
        return clean_env_path(STATE_DIR_ENV, explicit)
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ringrift-coord")


def ensure_state_dir(path: str, shared_group: str | int | None = None) -> str:
    """Create ``path`` (mode 0700) if missing, then refuse it unless it is safe to use."""
    path = prepare_state_dir(path)
    check_state_dir_group(path, shared_group)
    return path


def prepare_state_dir(path: str) -> str:
    """Create ``path`` (mode 0700) if missing; refuse it when it, or a directory above it, can
    be changed by an untrusted user. A group-writable directory is checked against the
    configured shared group afterwards (``check_state_dir_group``), once settings are read."""
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            make_dirs(path)
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
    check_parents(path, "state directory")
    return path


def make_dirs(path: str, mode: int = 0o700) -> None:
    """mkdir -p with ``mode`` for each directory made, whatever the umask. FileExistsError
    when another process made ``path`` itself meanwhile (its maker's mode, not ours)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if directory == missing[0]:
                raise
            continue
        os.chmod(directory, mode)


def check_state_dir(path: str, st: os.stat_result) -> None:
    """What is refused whatever the configuration: a symlink, not a directory, an owner other
    than you (or root, for a shared store), write access for others."""
    if stat.S_ISLNK(st.st_mode):
        raise StateError(
            f"state directory {path} is a symlink; refusing it (point --state-dir at the real "
            "directory)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"state directory {path} exists but is not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise StateError(
            f"state directory {path} is owned by uid {st.st_uid}, not by you (uid "
            f"{os.geteuid()}) or root; refusing it"
        )
    if st.st_mode & 0o002:
        raise StateError(
            f"state directory {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {path}"
        )


def check_state_dir_group(path: str, shared_group: str | int | None) -> int | None:
    """The shared group's id when ``path`` is a store shared by that group, else None.

    A private store is yours and writable by you alone. A shared store is owned by root or
    you, has the configured group (``store.shared_group``), is setgid (so every file in it
    gets that group) and is not writable by others. Anything else is refused.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StateError(f"cannot inspect state directory {path}: {exc.strerror}") from None
    check_state_dir(path, st)
    gid = None if shared_group is None else group_id(shared_group)
    mode = stat.S_IMODE(st.st_mode)
    if gid is None or st.st_gid != gid or not mode & 0o020:  # private: yours alone
        if st.st_uid != os.geteuid():
            shared = (
                f": a store owned by root is used only as one shared by a group: set "
                f"store.shared_group to its group ({_group_name(st.st_gid)})"
                if mode & 0o020
                else "; refusing it"
            )
            raise StateError(
                f"state directory {path} is owned by uid {st.st_uid}, not by you (uid "
                f"{os.geteuid()}){shared}"
            )
        if mode & 0o020:
            hint = (
                f"its group {_group_name(st.st_gid)} is not store.shared_group ({shared_group})"
                if gid is not None
                else f"set store.shared_group to {_group_name(st.st_gid)} for a store shared "
                "by that group"
            )
            raise StateError(
                f"state directory {path} is writable by group or others (mode {mode:04o}); "
                f"run: chmod 700 {path}, or {hint}"
            )
        return None
    if mode & 0o020 and not mode & stat.S_ISGID:
        raise StateError(
            f"shared state directory {path} is not setgid (mode {mode:04o}), so files in it "
            f"would not get group {_group_name(gid)}; run: chmod 2770 {path}"
        )
    return gid


def group_id(group: str | int) -> int:
    """The id of ``group`` (a name or a number); ConfigError when there is no such group."""
    import grp

    try:
        return grp.getgrgid(group).gr_gid if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except (KeyError, OverflowError):
        raise ConfigError(f"no group {group!r} on this host", key="store.shared_group") from None


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_parents(path: str, what: str) -> None:
    """Refuse ``path`` when a directory above it can be changed by another user (OpenSSH's
    StrictModes): every directory on the way, as written and as resolved, must be owned by
    root or you and writable by no one else, except a sticky directory (like /tmp) whose
    entry on the way is yours (or root's). ``path`` itself may not exist yet (a database
    about to be created, by you)."""
    me = os.geteuid()
    for chain in (os.path.abspath(path), os.path.realpath(path)):
        child = chain
        while True:
            parent = os.path.dirname(child)
            if parent == child:
                break
            try:
                pst = os.stat(parent)
                if not stat.S_ISDIR(pst.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                try:
                    cst = os.lstat(child)
                except FileNotFoundError:
                    if child != chain:
                        raise
                    # only the entry's owner is looked at, and you will create it
                    cst = os.stat_result((0, 0, 0, 0, me, 0, 0, 0, 0, 0))
            except OSError as exc:
                raise _unusable(exc, parent, path, what) from None
            _check_parent(parent, pst, cst, me, path, what)
            child = parent


def _unusable(exc: OSError, parent: str, path: str, what: str) -> StateError:
    """Why ``path`` cannot be used, said of what is wrong: a directory missing (nothing
    creates it), a file where a directory should be, a name too long; else what failed."""
    if exc.errno == errno.ENAMETOOLONG:
        parts = os.path.abspath(path).split(os.sep)
        size = max(len(os.fsencode(part)) for part in parts)
        shown = path if len(path) <= 120 else f"{path[:40]}...{path[-40:]} ({len(path)} chars)"
        too_long = (
            f"a name in it is {size} bytes, more than a file name may have"
            if size > 255  # the usual NAME_MAX; else the whole path is past PATH_MAX
            else "the whole path is longer than the system takes"
        )
        return StateError(f"{what} {shown}: {too_long}: give a shorter one")
    if exc.errno == errno.ENOENT:
        return StateError(f"{what} {path}: {missing_directory(parent)}")
    if exc.errno == errno.ENOTDIR:
        return StateError(f"{what} {path}: {parent} is not a directory; give a path in one")
    return StateError(f"cannot inspect {parent} above {what} {path}: {exc.strerror}")


def _check_parent(
    parent: str, pst: os.stat_result, cst: os.stat_result, me: int, path: str, what: str
) -> None:
    mode = stat.S_IMODE(pst.st_mode)
    if pst.st_uid not in (me, 0):
        raise StateError(
            f"{what} {path} is inside {parent}, owned by uid {pst.st_uid} (not you or root), "
            "who can replace it; refusing it"
        )
    if mode & 0o022:
        if mode & stat.S_ISVTX and cst.st_uid in (me, 0):
            return  # sticky (like /tmp): only the entry's owner can replace it, and it is ours
        raise StateError(
            f"{what} {path} is inside {parent}, writable by "
            f"{'others' if mode & 0o002 else 'its group'} (mode {mode:04o}) and not sticky, "
            "so another user can replace it; refusing it"
        )


def missing_directory(directory: str) -> str:
    """What to say of a directory that does not exist where a file is to be: it is not
    created (a mistyped path must not grow a tree of directories), and how to make it."""
    import shlex

    return (
        f"the directory {directory} does not exist, and is not created: create it first "
        f"(mkdir -p {shlex.quote(directory)}) or give a path in a directory that exists"
    )


def is_private_dir(path: str) -> bool:
    """Whether ``path`` is yours and writable by you alone."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def user_cache_dir(env: Mapping[str, str]) -> str | None:
    """``$XDG_CACHE_HOME/ringrift-coord`` (made private, checked like a state directory), or
    None when it cannot be used: then nothing is cached."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        path = prepare_state_dir(os.path.join(base, "ringrift-coord"))
    except StateError:
        return None
    return path if is_private_dir(path) else None


def private_file_mode(shared_gid: int | None) -> int:
    """The mode of every file the tool creates: 0600, or 0660 in a store shared by a group."""
    return 0o600 if shared_gid is None else 0o660


def shared_gid_of(state_dir: str) -> int | None:
    """The group of an accepted state directory that is shared (group-writable), else None."""
    try:
        st = os.stat(state_dir)
    except OSError:
        return None
    return st.st_gid if st.st_mode & 0o020 else None


def create_file(path: str, shared_gid: int | None) -> int:
    """Create ``path`` (which must not exist) with the tool's mode whatever the umask, in the
    shared group when there is one; returns a descriptor open for writing."""
    mode = private_file_mode(shared_gid)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        if shared_gid is not None and os.fstat(fd).st_gid != shared_gid:
            os.fchown(fd, -1, shared_gid)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def untrusted_file(
    path: str, st: os.stat_result, shared_gid: int | None, *, second_name_ok: bool = False
) -> str | None:
    """Why a file read back from a store cannot be trusted, or None: it must be a regular file
    with one name, owned by you or root (or in the shared group), writable by no one else.
    ``second_name_ok``: its other name is known to be a moment's, in the same directory."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_nlink > 1 and not (second_name_ok and st.st_nlink == 2):
        return f"{path} has {st.st_nlink} hard links (another name can change it)"
    mode = stat.S_IMODE(st.st_mode)
    if shared_gid is not None and st.st_gid == shared_gid:
        if mode & 0o002:
            return f"{path} is writable by others (mode {mode:04o})"
        return None
    if st.st_uid not in (os.geteuid(), 0):
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if mode & 0o022:
        return f"{path} is writable by group or others (mode {mode:04o})"
    return None


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
