"""Stopping on SIGTERM (what Kubernetes sends on suspend, eviction, preemption and node drain) and on
SIGINT (Ctrl-C), alike.

Inside the training loop the handler only raises a flag; the loop stops at the next step boundary
(every process at the same one, see :func:`agree`), writes a checkpoint and raises
:class:`~.failures.Terminated`. Outside the loop (start-up, evaluation) there is no step to finish,
so the handler raises :class:`Terminated` at once. A watchdog bounds the wait: ``timeout_s`` after
the signal, if the process is still running, it writes the termination message and exits with 128 +
the signal's number (143, or 130 for SIGINT). A second Ctrl-C does not wait for the step boundary: it
raises KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from .failures import Terminated

__all__ = ["SigtermStop", "agree", "leave_process_group"]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SigtermStop:
    """SIGTERM and SIGINT handling for one run, installed by :meth:`install` until :meth:`uninstall`.

    Args:
        describe: the termination text (iteration, checkpoint) at the moment it is asked for.
        timeout_s: seconds from the signal to the forced exit.
        on_timeout: called (from the watchdog thread) just before the forced exit, with the text.
    """

    def __init__(
        self, describe: Callable[[], str], *, timeout_s: float, on_timeout: Callable[[str], None]
    ) -> None:
        self.describe, self.timeout_s, self.on_timeout = describe, timeout_s, on_timeout
        self.requested = False
        self.signal = signal.SIGTERM  # the one that asked for the stop
        self.deferred = False  # True inside the training loop: stop at the next step boundary
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None
        self._pid = os.getpid()

    @property
    def signal_name(self) -> str:
        return self.signal.name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked data-loading worker inherits this handler; torchrun signals its whole process
            # group. The worker keeps serving batches until the training process shuts it down.
            return
        if self.requested:
            if signum == signal.SIGINT == self.signal:
                raise KeyboardInterrupt  # Ctrl-C twice: do not wait for the step boundary
            return  # torchrun and the kubelet may both signal; the first one counts
        self.requested = True
        self.signal = signal.Signals(signum)
        self._timer = threading.Timer(self.timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        if not self.deferred:
            raise Terminated(self.describe(), self.exit_code)

    def _expire(self) -> None:
        text = f"{self.describe()}; no clean stop within {self.timeout_s:g} s (--stop-timeout)"
        try:
            self.on_timeout(text)
        finally:
            os._exit(self.exit_code)


def agree(flag: bool, group: Any = None) -> bool:
    """Whether any process of the group has ``flag`` set (every process must call it); one small CPU
    all-reduce on ``group`` (a gloo group), no device synchronisation."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def leave_process_group(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    """A data-loading worker's ``worker_init_fn``: leave the training process's process group.

    torchrun stops its workers by signalling their whole process group, and a loader worker killed
    by that SIGTERM would end the run with "DataLoader worker killed" before the training process
    reaches its step boundary. Outside the group, the worker keeps serving batches until the
    training process shuts it down. ``then`` is the loader's own ``worker_init_fn``, if any."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if then is not None:
        then(worker_id)
