"""One training step with no host synchronisation: forward, targets and losses, backward, unscale,
clip, and an update applied only when the loss and the gradient are finite, decided on the device.

The training loop (:mod:`.train`) and the accelerator benchmarks (``bench/gpu_report.py``) both run
this class, so what is measured is what trains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..amp import FixedLossScaler, OverflowStatus, autocast
from ..model import total_loss
from ..structures import GroundTruth
from .counters import StepCounters
from .optim import apply_update, is_fused

__all__ = ["TrainStep"]


class TrainStep:
    """``step(images, gt, iteration)`` -> the forward's outputs plus ``loss`` (all on the device).

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
    ) -> None:
        self.forward, self.optimizer, self.params = forward, optimizer, params
        self.device_kind, self.dtype, self.scaler = device_kind, dtype, scaler
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        self.counters = counters
        self.loss_fn = loss_fn
        self.overflow = overflow
        self.update: Callable[[Tensor, Tensor | None], Tensor] = self._update
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
        finite = self.update(loss.detach(), None if self.overflow is None else self.overflow.overflowed())
        self.counters.add(finite=finite, dropped=out["dropped_positives"], iteration=iteration)
        out["loss"] = loss
        return out

    def _update(self, loss: Tensor, overflowed: Tensor | None) -> Tensor:
        """Unscale, clip and apply the gradients if they and ``loss`` are finite (and nothing
        ``overflowed``, where the device says so); returns that flag."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        # Under DDP the gradients are all-reduced: every rank sees the same norm and decides alike.
        finite = torch.isfinite(norm) & torch.isfinite(loss)
        if overflowed is not None:
            finite = finite & ~overflowed
        apply_update(self.optimizer, finite, self.device_kind)
        if isinstance(self.scaler, torch.amp.GradScaler):
            self.scaler.update()  # from unscale_'s inf check: lowers the scale after an overflow
        return finite
