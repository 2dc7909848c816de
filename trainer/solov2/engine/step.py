"""One training step with no host synchronisation: forward, targets and losses, backward, unscale,
clip, and an update applied only when the loss and the gradient are finite, decided on the device.

The training loop (:mod:`.train`) and the accelerator benchmarks (``bench/gpu_report.py``) both run
this class, so what is measured is what trains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from ..amp import FixedLossScaler, OverflowStatus, autocast
from ..model import total_loss
from ..structures import GroundTruth
from .counters import StepCounters
from .optim import apply_update, is_fused

__all__ = ["TrainStep"]


class TrainStep:
    """``step(images, gt, iteration)`` -> the forward's outputs plus ``loss`` and ``applied`` (whether
    the update was applied: a bool scalar), all on the device.

    Args:
        forward: the (DDP-wrapped, possibly compiled) model in training mode.
        optimizer: from :func:`~.optim.build_optimizer`, with :func:`~.optim.init_state` applied.
        params: the trainable parameters (clipped together).
        device_kind: ``cpu``, ``cuda`` or ``npu`` (the autocast device type).
        dtype: the autocast dtype, or None for fp32.
        scaler: a GradScaler or :class:`~solov2.amp.FixedLossScaler` for fp16, else None.
        grad_clip: max gradient norm (0 disables clipping).
        compile_update: also ``torch.compile`` the update (unscale, clip, finiteness, optimiser), unless
            the optimiser is fused (already a few kernels).
        loss_fn: sums the forward's ``loss_*`` outputs (a hook for tests).
        overflow: on an NPU that saturates fp16 overflows, its float status
            (:class:`~solov2.amp.OverflowStatus`): a step that overflowed in the backward pass is
            skipped like a non-finite one.
        distributed: several processes train one model. The gradients are all-reduced, so every rank
            sees the same norm, but the loss and an NPU's overflow flag are each rank's own: one
            all-reduce on the device (max) makes a step that is non-finite on any rank skipped on all,
            so that the replicas never drift apart.
    """

    def __init__(
        self,
        forward: Callable[..., dict[str, Tensor]],
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        *,
        device_kind: str,
        dtype: torch.dtype | None,
        scaler: torch.amp.GradScaler | FixedLossScaler | None,
        grad_clip: float,
        counters: StepCounters,
        compile_update: bool = False,
        loss_fn: Callable[[dict[str, Tensor]], Tensor] = total_loss,
        overflow: OverflowStatus | None = None,
        distributed: bool = False,
    ) -> None:
        self.forward, self.optimizer, self.params = forward, optimizer, params
        self.device_kind, self.dtype, self.scaler = device_kind, dtype, scaler
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        self.counters = counters
        self.loss_fn = loss_fn
        self.overflow = overflow
        self.distributed = distributed
        self.update: Callable[[Tensor], Tensor] = self._update
        if compile_update and not is_fused(optimizer):
            self.update = torch.compile(self._update, dynamic=False)

    def __call__(self, images: Tensor, gt: GroundTruth, iteration: int) -> dict[str, Tensor]:
        """Step ``iteration`` (1-based, recorded with a non-finite step) on device-resident inputs."""
        with autocast(self.device_kind, self.dtype):
            out = self.forward(images, gt)
        loss = self.loss_fn(out)
        self.optimizer.zero_grad(set_to_none=True)
        if self.overflow is not None:
            self.overflow.clear()
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        bad = ~torch.isfinite(loss.detach())
        if self.overflow is not None:
            bad = bad | self.overflow.overflowed()
        finite = self.update(_on_any_rank(bad) if self.distributed else bad)
        self.counters.add(finite=finite, dropped=out["dropped_positives"], iteration=iteration)
        out["loss"] = loss
        out["applied"] = finite
        return out

    def _update(self, bad: Tensor) -> Tensor:
        """Unscale, clip and apply the gradients if they are finite and the step is not ``bad`` (a
        non-finite loss or an overflow, on any rank); returns whether it was applied."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        finite = torch.isfinite(norm) & ~bad
        apply_update(self.optimizer, finite, self.device_kind)
        if isinstance(self.scaler, torch.amp.GradScaler):
            self.scaler.update()  # from unscale_'s inf check: lowers the scale after an overflow
        return finite


def _on_any_rank(flag: Tensor) -> Tensor:
    """``flag`` (a bool scalar on the device) or-ed over all processes: one all-reduce, no host read."""
    value = flag.to(torch.float32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value[0] > 0
