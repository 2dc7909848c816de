"""Reporting a failed run: the termination message of the first failure, and torch elastic's error file.

Several processes of one pod (``torchrun --nproc-per-node N``) share one termination log. When one of
them fails, its peers fail next, with consequential errors (a closed gloo connection, a timed-out
collective) that say nothing about the cause. So the first process to fail claims the message: under
torchrun it creates, exclusively, a marker file in the directory torchrun made for this attempt of the
run (the parent of the workers' ``TORCHELASTIC_ERROR_FILE`` folders), and only the process that
created it writes the termination log. Every process also records its exception in its own
``TORCHELASTIC_ERROR_FILE``, the file torchrun reads to name the first failure in its summary.
Without torchrun there is one process per termination log and it simply writes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..metrics import failure_message, write_termination_message

CLAIM_NAME = "solov2-termination-message.claim"


class Terminated(Exception):
    """The run stopped on SIGTERM (Kubernetes suspend, eviction, preemption) or a Ctrl-C (SIGINT):
    retrying resumes it. ``exit_code`` is 128 + the signal's number, what a shell reports for a process
    the signal killed: 143 for SIGTERM, 130 for SIGINT."""

    exit_code = 143

    def __init__(self, text: str, exit_code: int = 143) -> None:
        super().__init__(text)
        self.exit_code = exit_code


def _claim_path() -> Path | None:
    """The marker shared by the processes of this torchrun attempt, or None outside torchrun."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return None
    return Path(error_file).parent.parent / CLAIM_NAME


def claim_first_failure() -> bool:
    """True for the first process of this torchrun attempt that asks (or always, outside torchrun)."""
    marker = _claim_path()
    if marker is None:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError:  # the attempt's folder is gone or read-only: do not lose the message
        return True
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return True


def _record_elastic_error(exc: BaseException) -> None:
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    with contextlib.suppress(Exception):  # reporting must never hide the original error
        ErrorHandler().record_exception(exc)


def report_failure(termination_log: Path | None, exc: BaseException) -> bool:
    """Record ``exc`` in torch elastic's error file, and write its termination message if this
    process failed first. Returns whether the termination message was written."""
    _record_elastic_error(exc)
    if termination_log is None or not claim_first_failure():
        return False
    with contextlib.suppress(OSError):  # the original error matters more than this one
        write_termination_message(termination_log, failure_message(exc))
        return True
    return False
