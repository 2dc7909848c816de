"""Step counters kept on the device, read back only when the training loop logs.

Every training step adds to a few int64 scalars on the device (no host synchronisation); :meth:`read`
copies them to the host once, for the progress line, the metrics and the divergence check, and starts
a new window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["StepCounters", "WindowCounts"]


@dataclass(frozen=True)
class WindowCounts:
    """What happened since the previous read."""

    nonfinite: int
    """Steps skipped because their loss or gradient was not finite."""
    longest_run: int
    """The longest run of consecutive non-finite steps that ended or continued in this window."""
    current_run: int
    """Consecutive non-finite steps up to the last step (0 if it was finite)."""
    first_nonfinite: int
    """Iteration (1-based) of the first non-finite step of the window, 0 if none."""
    last_nonfinite: int
    """Iteration of the last non-finite step of the window, 0 if none."""
    dropped_positives: int
    """Positive (instance, cell) pairs that did not fit the targets' buffer."""


class StepCounters:
    """Non-finite steps and dropped positives, accumulated on ``device``."""

    _FIELDS = ("nonfinite", "longest_run", "current_run", "first_nonfinite", "last_nonfinite", "dropped")

    def __init__(self, device: torch.device | str) -> None:
        self.values = torch.zeros(len(self._FIELDS), dtype=torch.int64, device=device)

    def add(self, *, finite: Tensor, dropped: Tensor, iteration: int) -> None:
        """Record one step: ``finite`` (bool scalar tensor), ``dropped`` (int scalar tensor) and its
        1-based ``iteration``. Only device operations."""
        bad = (~finite).to(torch.int64)
        nonfinite, longest, run, first, last, drop = self.values.unbind()
        run = (run + 1) * bad
        at = torch.full_like(first, iteration)
        updated = torch.stack(
            [
                nonfinite + bad,
                torch.maximum(longest, run),
                run,
                torch.where((first == 0) & (bad > 0), at, first),
                torch.where(bad > 0, at, last),
                drop + dropped.to(torch.int64),
            ]
        )
        self.values.copy_(updated)

    def read(self, *, distributed: bool = False) -> WindowCounts:
        """Copy the counters to the host (the one synchronisation) and start a new window; the
        current run of non-finite steps carries over. ``distributed``: every process calls this at the
        same step, and dropped positives are summed over them (the non-finite counts are the same on
        every rank: the step agrees on skipping)."""
        values = self.values.clone()
        if distributed:
            dropped_here = values[5:].clone()
            dist.all_reduce(dropped_here, op=dist.ReduceOp.SUM)
            values[5:] = dropped_here
        nonfinite, longest, run, first, last, dropped = values.tolist()
        fresh = torch.zeros_like(self.values)
        fresh[2] = self.values[2]
        fresh[1] = self.values[2]
        self.values.copy_(fresh)
        return WindowCounts(nonfinite, longest, run, first, last, dropped)
