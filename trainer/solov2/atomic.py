"""Files replaced atomically: written to a temporary file in the same directory, flushed to disk and
renamed over the target, so a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomically"]


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` named ``.NAME.<random>.tmp``, created as ``open()`` creates files (mode
    0666 less the umask, or the directory's default ACL; ``mkstemp``'s 0600 would keep a checkpoint or an
    exported model from every other user)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path`` (creating the parent directories), fsync
    it and rename it over ``path``. On any error the temporary file is removed and the error raised;
    ``path`` is then unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
