"""Atomic file writing (a file is either absent, or complete and final), and the one-line
error for a file a user named that cannot be read.

Everything anynet saves (data in the cache, model files, checkpoints, metrics, plots) goes through
`atomic_write`: the bytes go to a temporary file in the same folder, are flushed to disk, and only
then is the temporary renamed over the destination. A crash or Ctrl-C at any moment leaves the old
file (if any) untouched and no half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
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


def input_error(path: str | os.PathLike, error: OSError, what: str,
                kind: type[UserError] = UserError) -> UserError:
    """The one-line error for a file a user named that could not be opened or read:
    no such file, a folder instead of `what` ("an image file"), or the system's reason."""
    if isinstance(error, FileNotFoundError):
        return kind(f"{path}: no such file")
    if isinstance(error, IsADirectoryError):
        return kind(f"{path}: is a folder, not {what}")
    return kind(f"{path}: cannot read ({error.strerror or error})")


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
