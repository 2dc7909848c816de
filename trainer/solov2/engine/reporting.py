"""What the training loop reports at a logging iteration, as small parts it calls: the losses by name,
the throughput window, the time left, and the verdict on non-finite steps."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserError
from .counters import WindowCounts

__all__ = [
    "LossWindow",
    "RunClock",
    "ThroughputWindow",
    "TrainingDiverged",
    "diverged_error",
    "loss_values",
    "nonfinite_verdict",
    "results_losses",
]


def loss_values(out: Mapping[str, Tensor]) -> dict[str, float]:
    """The losses of a training step's output by component: ``total`` (``out["loss"]``) and one per
    ``loss_*`` entry, its prefix dropped (``loss_cls`` -> ``cls``), in the output's order. Reads the
    values back to the host (a synchronisation: logging iterations only)."""
    values = {"total": float(out["loss"].detach())}
    for key, value in out.items():
        if key.startswith("loss_"):
            values[key.removeprefix("loss_")] = float(value.detach())
    return values


class LossWindow:
    """The losses of the steps since the last report, summed on the device (no host synchronisation in
    a step) and averaged when read, as mmdetection's logs average over their interval; skipped
    (non-finite) steps are left out of the mean."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: Tensor | None = None  # one per name, then the count of finite steps

    def add(self, out: Mapping[str, Tensor], finite: Tensor) -> None:
        """One step's ``loss`` and ``loss_*`` outputs; ``finite`` (a bool scalar on the device) says
        whether the step was applied."""
        names = ["loss", *(k for k in out if k.startswith("loss_"))]
        values = torch.stack(
            [*(out[k].detach().float() for k in names), torch.ones_like(out["loss"], dtype=torch.float32)]
        )
        if self.sums is None or names != self.names:
            self.names, self.sums = names, torch.zeros_like(values)
        self.sums += torch.where(finite, values, torch.zeros_like(values))

    def read(self) -> dict[str, float]:
        """Mean losses by component (``total``, ``cls``, ...; as :func:`loss_values`) over the finite
        steps since the last read (a host synchronisation: logging iterations only); ``{}`` when there
        were none."""
        if self.sums is None:
            return {}
        *sums, steps = self.sums.tolist()
        self.sums.zero_()
        if not steps:
            return {}
        return {
            ("total" if n == "loss" else n.removeprefix("loss_")): v / steps
            for n, v in zip(self.names, sums, strict=True)
        }


def results_losses(losses: Mapping[str, float]) -> dict[str, float]:
    """:func:`loss_values` under the output's own names, for the results: ``loss``, ``loss_cls``, ..."""
    return {("loss" if name == "total" else f"loss_{name}"): value for name, value in losses.items()}


@dataclass
class ThroughputWindow:
    """Images, steps and data-loading waits since the last report, for images/s and times per step."""

    start: float = field(default_factory=time.perf_counter)
    images: int = 0
    steps: int = 0
    data_wait: float = 0.0

    def add(self, *, images: int, data_wait: float) -> None:
        """One step of ``images`` images (all processes) that waited ``data_wait`` seconds for its batch."""
        self.images += images
        self.steps += 1
        self.data_wait += data_wait

    def figures(self, now: float) -> dict[str, float]:
        """``images_per_second``, and ``data_wait`` and ``step_time`` per step, over the window."""
        elapsed = now - self.start
        steps = max(self.steps, 1)
        return {
            "images_per_second": self.images / max(elapsed, 1e-9),
            "data_wait": self.data_wait / steps,
            "step_time": elapsed / steps,
        }

    def restart(self) -> None:
        """Start a new window now."""
        self.start, self.images, self.steps, self.data_wait = time.perf_counter(), 0, 0, 0.0


@dataclass
class RunClock:
    """Time since training (re)started at iteration ``start_iteration``: the time left and the run's
    images per second.

    The run's rate is measured from the first progress line on (:meth:`settled`) once a step has
    followed it, so that start-up (compilation, the loader workers' first batches, the first step's
    allocations) does not count: a short performance run reports its steady rate.
    """

    start_iteration: int
    start: float = field(default_factory=time.perf_counter)
    steady_iteration: int | None = None
    steady_start: float = 0.0

    def settled(self, now: float, iteration: int) -> None:
        """Note the first progress line (later calls change nothing)."""
        if self.steady_iteration is None:
            self.steady_iteration, self.steady_start = iteration, now

    def eta(self, now: float, iteration: int, total_iterations: int) -> float:
        """Seconds left at the mean step time so far."""
        done = iteration - self.start_iteration
        return (now - self.start) / max(done, 1) * (total_iterations - iteration)

    def images_per_second(self, iteration: int, batch: int, now: float | None = None) -> float:
        """Images (``batch`` per iteration) trained per second since the first progress line, or since
        the start when no step followed that line."""
        now = time.perf_counter() if now is None else now
        since, start = self.start_iteration, self.start
        if self.steady_iteration is not None and iteration > self.steady_iteration:
            since, start = self.steady_iteration, self.steady_start
        return (iteration - since) * batch / max(now - start, 1e-9)


def nonfinite_verdict(counts: WindowCounts, limit: int) -> tuple[str | None, bool]:
    """The log line for a window's skipped non-finite steps (None if there were none), and whether
    ``limit`` consecutive ones were reached (training must stop)."""
    if not counts.nonfinite:
        return None, False
    where = (
        f"iteration {counts.last_nonfinite}: non-finite loss or gradient, step skipped"
        if counts.nonfinite == 1
        else f"iterations {counts.first_nonfinite}..{counts.last_nonfinite}: non-finite loss or "
        f"gradient, {counts.nonfinite} steps skipped"
    )
    return f"{where} ({counts.longest_run} in a row at most, limit {limit})", counts.longest_run >= limit


class TrainingDiverged(UserError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def diverged_error(counts: WindowCounts, limit: int) -> TrainingDiverged:
    """The error that stops training after ``limit`` consecutive non-finite steps, with what to try."""
    return TrainingDiverged(
        f"training stopped: {counts.longest_run} consecutive steps had a non-finite loss or gradient "
        f"(train.max_nonfinite={limit}); try a lower train.base_lr, train.amp=off or a fixed train.loss_scale"
    )
