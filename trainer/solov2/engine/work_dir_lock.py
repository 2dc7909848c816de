"""One training per work directory: a second ``solov2 train`` into a work dir that a running one uses is
refused, where both would write the same checkpoints and ``last_checkpoint``.

Rank 0 takes an exclusive ``flock`` on ``WORK_DIR/.solov2-train.lock`` until the training ends (the
kernel, or the network file system's server, drops it when the process ends, however it ends) and
writes who holds it. A lock held by a live process of this machine refuses the new run at once. A lock
held elsewhere may be a lost node's, which a network file system keeps until its lease ends (about 90 s
on NFSv4): the new run waits for it, up to :func:`lock_wait_seconds`, saying so, then fails with
:class:`WorkDirBusy`, which a retry may get past. A file system without ``flock``, or a lock file this
user cannot open, gets no lock, with a warning. On an NFS mount that keeps locks on this machine only
(``nolock``, ``local_lock=all|flock``) the lock is taken with a warning: another machine's training
would not see it. Forked children (data-loading workers) close their copy of the lock's descriptor, so
that the lock ends with the training, not with the last of them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..device import _env_int, dist_timeout_s
from ..errors import ConfigError

__all__ = [
    "LOCK_NAME",
    "WAIT_SECONDS",
    "WorkDirBusy",
    "hold_work_dir",
    "lock_wait_seconds",
    "node_local_locks",
]

LOCK_NAME = ".solov2-train.lock"
MOUNTINFO = Path("/proc/self/mountinfo")
WAIT_SECONDS = 120
_HELD: list[IO[str]] = []


def _close_in_child() -> None:
    for file in _HELD:
        file.close()  # this process's descriptor only: the parent keeps the lock
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_wait_seconds() -> float:
    """How long rank 0 waits for a lock held elsewhere: :data:`WAIT_SECONDS`, and with several processes
    (``WORLD_SIZE``) at most half the time the others wait for it in the process group's set-up
    (``SOLOV2_DIST_TIMEOUT_SECONDS``), so that they see the work dir's error, not a timeout of their own."""
    if _env_int("WORLD_SIZE", 1) > 1:
        return min(WAIT_SECONDS, dist_timeout_s() / 2)
    return WAIT_SECONDS


class WorkDirBusy(RuntimeError):
    """Another machine's training holds the work dir past the wait: maybe a lost node's lock that its
    file system has not dropped yet, so a retry may succeed (not a :class:`ConfigError`)."""


class _Lock:
    """The held lock: :meth:`close` releases it."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        _HELD.append(file)

    def close(self) -> None:
        if self._file in _HELD:
            _HELD.remove(self._file)
        self._file.close()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (field 22 of ``/proc/PID/stat``), "" where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid, "start": _start_ticks(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` is a live process of this machine (not a pid reused in another container)."""
    me = _me()
    if (holder.get("host"), holder.get("boot_id")) != (me["host"], me["boot_id"]):
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and bool(holder.get("start")) and _start_ticks(pid) == holder["start"]


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that wrote no details"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def _holder(file: IO[str]) -> dict[str, Any]:
    file.seek(0)
    try:
        holder = json.loads(file.read() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return holder if isinstance(holder, dict) else {}


def node_local_locks(work_dir: Path, mountinfo: str | None = None) -> str | None:
    """The mount options by which ``work_dir``'s NFS mount keeps ``flock`` locks on this machine only
    (``nolock``, ``local_lock=all``, ``local_lock=flock``), or None (locks reach the server, or not NFS).

    The mount is the last one listed whose mount point holds ``work_dir``: an inner mount, or one mounted
    later over the same or an outer directory, which hides what was there.

    ``mountinfo``: the text of :data:`MOUNTINFO` (read when None; None where unreadable)."""
    if mountinfo is None:
        try:
            mountinfo = os.fsdecode(MOUNTINFO.read_bytes())
        except OSError:
            return None
    target = os.path.realpath(work_dir)
    found: tuple[str, list[str]] | None = None  # file system type, options
    for line in mountinfo.splitlines():
        mount, sep, source = line.partition(" - ")
        fields, super_fields = mount.split(" "), source.split(" ")  # fields may be empty ("- tmpfs  rw")
        if not sep or len(fields) < 6 or len(super_fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
        if target == point or target.startswith(point.rstrip("/") + "/"):
            found = (super_fields[0], fields[5].split(",") + super_fields[2].split(","))
    if found is None or not found[0].startswith("nfs"):
        return None
    local = [o for o in found[1] if o in ("nolock", "local_lock=all", "local_lock=flock")]
    return ", ".join(dict.fromkeys(local)) or None


def hold_work_dir(
    work_dir: Path, *, wait_s: float = WAIT_SECONDS, log: Callable[[str], None] = print
) -> _Lock | None:
    """Take ``work_dir``'s training lock; ``close()`` on the result releases it. None where the file
    system has no ``flock`` or the lock file cannot be opened (a warning is logged).

    Raises:
        ConfigError: a live process of this machine holds it.
        WorkDirBusy: a process elsewhere holds it past ``wait_s``.
    """
    path = work_dir / LOCK_NAME
    try:
        file = path.open("a+", encoding="utf-8", errors="replace")
    except OSError as exc:
        log(
            f"warning: --work-dir {work_dir}: no lock against a second training here ({path}: {exc.strerror})"
        )
        return None
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                file.close()
                log(
                    f"warning: --work-dir {work_dir}: no lock against a second training here ({exc.strerror})"
                )
                return None
        holder = _holder(file)
        if _alive_here(holder):
            file.close()
            if holder["pid"] == os.getpid():
                raise ConfigError(
                    f"--work-dir {work_dir}: this process holds it already (an earlier training in it has not "
                    "ended)"
                )
            raise ConfigError(
                f"--work-dir {work_dir}: in use by another training ({_describe(holder)}); wait for it to "
                "end, or choose another --work-dir"
            )
        if time.monotonic() >= deadline:
            file.close()
            raise WorkDirBusy(
                f"--work-dir {work_dir}: in use by another training ({_describe(holder)}) for more than "
                f"{wait_s:g} s; if that machine is gone, its file system lease keeps the lock a little longer"
            )
        if not waiting:
            log(
                f"--work-dir {work_dir}: locked by {_describe(holder)}, not a process of this machine; "
                f"waiting up to {wait_s:g} s (a lost node's lock ends with its file system lease)"
            )
            waiting = True
        time.sleep(1.0)
    file.seek(0)
    file.truncate()
    file.write(json.dumps(_me()) + "\n")
    file.flush()
    local = node_local_locks(work_dir)
    if local:
        log(
            f"warning: --work-dir {work_dir}: its NFS mount keeps locks on this machine only ({local}): a "
            "training into it from another machine would not be refused"
        )
    return _Lock(file)
