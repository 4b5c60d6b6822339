"""Atomic file writing (a file is either absent, or complete and final), the checks and lock
of a file a run will write, and the one-line error for a file a user named that cannot be read.

Everything anynet saves (data in the cache, model files, checkpoints, metrics, plots) goes through
`atomic_write`: the bytes go to a temporary file in the same folder, are flushed to disk, and only
then is the temporary renamed over the destination. A crash or Ctrl-C at any moment leaves the old
file (if any) untouched and no half-written file behind, except after SIGKILL or a power cut,
which can leave the temporary: its name, `.NAME.PID.XXXXXXXX.tmp`, carries the writer's process
id, so `remove_stale_temporaries` can tell a dead writer's leftovers from a live writer's file.

`output_problem` says, before any slow work, why a file could not be written (a folder, a parent
that is a file, a folder that refuses new files). `exclusive_lock` makes one process at a time
the writer of a file: an `fcntl.flock` on `.NAME.lock` beside it, which the kernel releases when
the process dies, however it dies, so a killed run never blocks the next one.

Not for: reading files (beyond the error for one that cannot be read), or locking across machines
(flock on a network file system may not be shared between hosts).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from anynet.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; rename it to `path` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` keeps
    whatever it held before.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# How `open_regular` and `input_error` word a refusal: {path}; {what}, what was expected ("an
# IDX file", "checkpoint"); {why}, the system's reason or the kind of file found instead.
INPUT_WORDS = {
    "missing": "{path}: no such file",
    "folder": "{path}: is a folder, not {what}",
    "special": "{path}: not a regular file ({why}); give the path of {what}",
    "unreadable": "{path}: cannot read ({why})",
}
# The same refusals for a model file or checkpoint ("checkpoint run.npz does not exist").
MODEL_FILE_WORDS = {
    "missing": "{what} {path} does not exist",
    "folder": "{what} {path} is a folder, not a file",
    "special": "{what} {path} is not a regular file ({why}); give the path of a file anynet "
               "train wrote",
    "unreadable": "{what} {path} cannot be read ({why})",
}


def input_error(path: str | os.PathLike, error: OSError, what: str,
                kind: type[UserError] = UserError, words: dict = INPUT_WORDS) -> UserError:
    """The one-line error for a file a user named that could not be opened or read:
    no such file, a folder instead of `what` ("an image file"), or the system's reason."""
    if isinstance(error, FileNotFoundError):
        key = "missing"
    elif isinstance(error, IsADirectoryError):
        key = "folder"
    else:
        key = "unreadable"
    return kind(words[key].format(path=path, what=what, why=error.strerror or error))


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, from its `os.stat` mode, for messages."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def open_regular(path: str | os.PathLike, what: str, kind: type[UserError] = UserError,
                 words: dict = INPUT_WORDS) -> io.BufferedReader:
    """Open a file a user named, for reading bytes, refusing anything but a regular file: a
    named pipe or a device would block or never end. `what` ("an IDX file") names what was
    expected; every failure is one line of `kind`, worded by `words` (`input_error`)."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        _refuse_special(path, info.st_mode, what, kind, words)
        # O_NONBLOCK: should the path become a pipe after the check, opening it does not hang
        f = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    except OSError as e:
        raise input_error(path, e, what, kind, words) from None
    try:  # what was opened, should the path have changed since the check
        _refuse_special(path, os.fstat(f.fileno()).st_mode, what, kind, words)
    except BaseException:
        f.close()
        raise
    return f


def _refuse_special(path: str | os.PathLike, mode: int, what: str, kind: type[UserError],
                    words: dict) -> None:
    if not stat.S_ISREG(mode):
        raise kind(words["special"].format(path=path, what=what, why=file_kind(mode)))


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- temporaries

# mkstemp adds 8 characters from [a-z0-9_] between our prefix and suffix
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp")


def _temporary_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (this one included; one owned by another user too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else (EPERM)
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: list[str],
                             older_than: float | None = None) -> list[Path]:
    """Remove the temporaries `atomic_write` left in `folder` for the files `names` when its
    process was killed; return the paths removed.

    A temporary is stale when the process that wrote it (the pid in its name) is gone and it was
    last modified before `older_than` (a `time.time()`, default now). A live writer's temporary,
    and any file not named by `atomic_write`, is never touched. A reused pid keeps a stale file
    until that process ends: the safe side.
    """
    folder = Path(folder)
    older_than = time.time() if older_than is None else older_than
    wanted = set(names)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or match["name"] not in wanted or process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mtime < older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


# ----------------------------------------------------------------------------- outputs


def output_problem(path: str | os.PathLike) -> str | None:
    """Why `path` could not be written by `atomic_write`, or None if it can.

    Checks that `path` is not a folder and that its nearest existing ancestor is a folder that
    takes new files: it makes and removes an empty temporary there, the only test of permissions
    that holds for every user (root ignores mode bits) and every file system (read-only mounts).
    Creates nothing that stays: missing parent folders are made by `atomic_write` when it writes.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return "is a folder, not a file"
        folder = next(p for p in path.parents if p.exists() or p == p.parent)
        if not folder.is_dir():
            return f"{folder} is a file, not a folder"
    except OSError as e:  # a name too long, a loop of links: stat itself refuses
        return _name_problem(e) or f"cannot use this path ({reason(e)})"
    try:
        fd, probe = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp",
                                     dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return _name_problem(e) or f"cannot write in {folder} ({reason(e)})"
    return None


def _name_problem(error: OSError) -> str | None:
    """The words for a name the file system refuses as too long, else None."""
    if error.errno != errno.ENAMETOOLONG:
        return None
    extra = len(_temporary_prefix("")) + len("XXXXXXXX.tmp")
    return (f"the name is too long for the file system (a file name, and the temporary "
            f"written beside it, {extra} bytes longer, must fit in 255 bytes); choose a "
            "shorter one")


def reason(error: OSError) -> str:
    """The system's words for an OSError ("No space left on device"), without the errno."""
    return error.strerror or str(error)


def remedy(error: OSError) -> str:
    """What a user can do about a failed write, in a few words."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable"
    return "fix that"


# ----------------------------------------------------------------------------- locking


class LockedError(Exception):
    """Another live process holds the lock; `pid` is its process id (None if unknown)."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is locked by process {pid}")
        self.path, self.pid = path, pid


def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of `path`: `.NAME.lock` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Be the only process writing `path` while the block runs; LockedError if another is.

    Takes a non-blocking `flock` on `.NAME.lock` beside `path`, writes our pid in it for the
    other process's error message, and removes it at the end. OSError if the lock file cannot
    be created. Where there is no fcntl (Windows), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = lock_path_for(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise LockedError(Path(path), int(holder) if holder.isdigit() else None) from None
        # The holder before us may have removed the file between our open and our flock (and a
        # third process made a new one): the lock counts only if it is on the file at `lock`.
        try:
            ours = os.fstat(fd)
            current = os.stat(lock)
            if (ours.st_dev, ours.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: no one can have taken it in between
        os.close(fd)
