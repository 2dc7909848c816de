"""Checks of a command's outputs before anything is loaded: a path that cannot be written should stop
a run at its start, not after hours of training (or minutes of evaluation, or an export)."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checkpoint import LAST

CHECKPOINTS = "checkpoints"


def _refuse_broken_link(path: Path, flag: str) -> None:
    """A symbolic link whose target does not exist (or a loop of links) is an error: nothing can be
    created through it."""
    if not path.is_symlink() or path.exists():
        return
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{flag}: {str(path)!r} is a loop of symbolic links") from None
    raise ConfigError(f"{flag}: {str(path)!r} links to {os.readlink(path)!r}, which does not exist")


def _nearest_existing(path: Path, flag: str) -> Path:
    """``path`` or the nearest of its parents that exists (an unreadable parent counts as existing).
    A broken symbolic link on the way is an error."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
            _refuse_broken_link(candidate, flag)
        except OSError:
            return candidate
    return Path(".")


def check_output_dir(flag: str, path: Path, *, named: Path | None = None, create: bool = False) -> None:
    """``path`` is a directory this process can create files in, or one it can make (``create``: make it
    now and write a probe file; otherwise nothing is created, and the command makes it when it writes).
    ``named``: the path the flag names, when that is not ``path`` (a file in it)."""
    existing = _nearest_existing(path, flag)
    try:
        is_dir = existing.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot reach {existing} ({exc.strerror or exc})") from None
    if not is_dir:
        where = "" if existing == (named or path) else f"{str(existing)!r} "
        raise ConfigError(f"{flag}: {where}is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write files in {existing} (permission denied)")
    if not create:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot write files in {path} ({exc.strerror or exc})") from None


def check_output_file(flag: str, path: Path) -> None:
    """``path`` can be written as a file: not a directory, in a directory that is, or can be made,
    writable (nothing is created)."""
    try:
        is_dir = path.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot reach {path} ({exc.strerror or exc})") from None
    if is_dir:
        raise ConfigError(f"{flag}: is a directory (pass a file path)")
    _refuse_broken_link(path, flag)
    check_output_dir(flag, path.parent, named=path)


def check_termination_log(path: Path | None) -> None:
    """The termination log can be written: not a directory, in an existing, writable directory."""
    if path is None:
        return
    try:
        _check_termination_log(path, f"--termination-log {path}")
    except OSError as exc:  # a parent that cannot be searched
        raise ConfigError(f"--termination-log {path}: cannot reach it ({exc.strerror or exc})") from None


def _check_termination_log(path: Path, flag: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{flag}: is a directory (pass a file path, or '' to disable the message)")
    _refuse_broken_link(path, flag)
    existing = _nearest_existing(path.parent, flag)
    if not existing.is_dir():
        raise ConfigError(f"{flag}: {str(existing)!r} is a file, not a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag}: directory {str(path.parent)!r} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag}: the file is not writable")
    if not path.exists() and not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{flag}: cannot create files in {str(path.parent)!r}")


def check_metrics_port(port: int | None) -> None:
    """The port is valid and, in the process that will serve it (rank 0), free to listen on."""
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port {port}: must lie in 0..65535 (0 = any free port)")
    if not port or os.environ.get("RANK", "0") != "0":
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server binds it
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen ({exc.strerror or exc})") from None


def check_work_dir(work_dir: Path, *, resume: bool) -> None:
    """The work directory is (or can be made) a writable directory, and without ``resume`` it holds
    no checkpoints of an earlier run (which a new run would silently mix with its own)."""
    flag = f"--work-dir {work_dir}"
    ckpt_dir = work_dir / CHECKPOINTS
    check_output_dir(flag, ckpt_dir, named=work_dir, create=True)
    if resume:
        return
    earlier = sorted(p.name for p in ckpt_dir.glob("*.pth"))
    if earlier or (ckpt_dir / LAST).exists():
        shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "") or LAST
        raise ConfigError(
            f"{flag}: holds checkpoints of an earlier run ({shown}); pass --resume to continue it, "
            f"or delete {ckpt_dir} (or choose another --work-dir) to start over"
        )


def check_outputs(opts: Any) -> None:
    """Every output path and port of a run, checked before anything is loaded. The work dir comes
    first: it is created, and the termination log may be inside it."""
    check_work_dir(opts.work_dir, resume=opts.resume)
    check_termination_log(opts.termination_log)
    check_metrics_port(opts.metrics_port)
