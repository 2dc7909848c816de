"""Files replaced atomically: written to a temporary file in the same directory, flushed to disk and
renamed over the target, so a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomically"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""The mode ``open()`` gives a new file in this process (0644 under the usual umask); ``mkstemp``'s
files are 0600, which would keep a checkpoint or an exported model from every other user."""


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path`` (creating the parent directories), fsync
    it and rename it over ``path``, with the mode a plain ``open()`` would give it. On any error the
    temporary file is removed and the error raised; ``path`` is then unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
