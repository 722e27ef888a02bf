"""What the package ships besides its code, under ``ringrift_coord/data/``, and ``config init``.

``data/config/unified_loop.yaml``  the commented reference config (every key, its default)
``data/completions/``              bash, zsh and fish completion scripts
``data/scripts/``                  the launch wrappers ``selfplay.sh`` and ``training.sh``
``data/man/ringrift-coord.1``      the man page

These files are the only copies in the source tree; the completions and the man page are
generated from the Typer app by ``scripts/gen-completions.py`` and ``scripts/gen-manpage.py``
(a test fails when a shipped file differs from a fresh generation). They are read through
``importlib.resources``, so they work from a wheel, a zip or a source checkout alike.
"""

from __future__ import annotations

import os
from importlib import resources

from ringrift_coord.errors import StateError, UsageError

REFERENCE_CONFIG = "config/unified_loop.yaml"
COMPLETIONS = {
    "bash": "ringrift-coord.bash",
    "zsh": "_ringrift-coord",
    "fish": "ringrift-coord.fish",
}
LAUNCH_SCRIPTS = ("selfplay.sh", "training.sh")
MAN_PAGE = "man/ringrift-coord.1"

# A config holds limits, not secrets, and every user on a node must be able to read the one
# under /etc: readable by all, writable by its owner alone (what the trust check requires).
FILE_MODE = 0o644
DIR_MODE = 0o755


def data_file(name: str) -> resources.abc.Traversable:
    """One shipped file, by its path under ``data/`` (e.g. ``config/unified_loop.yaml``)."""
    return resources.files("ringrift_coord").joinpath("data", *name.split("/"))


def read_text(name: str) -> str:
    return data_file(name).read_text(encoding="utf-8")


def reference_config() -> str:
    """The commented reference config, as shipped."""
    return read_text(REFERENCE_CONFIG)


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    if shell not in COMPLETIONS:
        from difflib import get_close_matches

        near = get_close_matches(shell, list(COMPLETIONS), n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise UsageError(f"no completion for shell {shell!r} ({hint}choose from bash, zsh, fish)")
    return read_text(f"completions/{COMPLETIONS[shell]}")


def _make_parents(directory: str) -> None:
    """Create ``directory`` and its missing parents, each new one mode 0755 whatever the umask."""
    from ringrift_coord.statedir import make_dirs

    try:
        make_dirs(directory, DIR_MODE)
    except FileExistsError:
        pass  # made by someone else meanwhile: left as it is
    if not os.path.isdir(directory):
        raise StateError(f"cannot write the config: {directory} is not a directory")


def write_reference_config(path: str, *, force: bool = False) -> str:
    """Write the reference config to ``path`` (mode 0600, parents created 0700); its absolute
    path. An existing ``path`` is refused unless ``force``; then it is replaced atomically (a
    symlink there is replaced, never followed)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise StateError(f"cannot write the config: {path} is a directory")
    if os.path.lexists(path) and not force:
        raise StateError(f"{path} already exists (pass --force to overwrite it)")
    text = reference_config().encode("utf-8")
    directory = os.path.dirname(path)
    try:
        _make_parents(directory)
        # --force: a temporary file renamed over the old one; else created where it must not
        # exist yet (O_EXCL: a file that appeared meanwhile is never clobbered)
        target = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        target = target if force else path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if force:
                os.replace(target, path)
        except BaseException:
            os.unlink(target)
            raise
        finally:
            os.close(fd)
    except FileExistsError:
        raise StateError(f"{path} already exists (pass --force to overwrite it)") from None
    except OSError as exc:
        raise StateError(f"cannot write the config {path}: {exc.strerror or exc}") from None
    return path
