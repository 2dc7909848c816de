"""Mixed precision: the autocast dtype per device, loss scaling, and fp16 overflow on NPUs that
saturate it instead of giving inf/NaN (a first-generation Ascend 910)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch

from .errors import ConfigError


def amp_dtype(kind: str, amp: str) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on a device kind; None means fp32.

    ``auto`` is bf16 on CUDA, fp16 on NPU (the Ascend recipe) and fp32 on CPU, where bf16 autocast
    is many times slower than fp32.
    """
    if amp == "off" or (amp == "auto" and kind == "cpu"):
        return None
    if amp == "auto":
        return torch.bfloat16 if kind == "cuda" else torch.float16
    if kind == "cpu":
        raise ConfigError(f"train.amp: {amp} is for GPUs and NPUs; on CPU use off or auto (fp32)")
    if amp == "bf16" and kind == "npu" and npu_supports_bf16() is False:
        # torch's autocast would only warn and run fp32
        raise ConfigError(
            "train.amp: bf16 needs an Ascend 910B or later, and this NPU has no bf16 (a first-generation "
            "Ascend 910): use fp16 (auto, with a loss scale) or off"
        )
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _ask_torch_npu(query: str) -> bool | None:
    """``torch_npu.npu.utils.<query>()`` about this process's NPU; None when torch_npu does not say."""
    try:
        utils = importlib.import_module("torch_npu.npu.utils")
        return bool(getattr(utils, query)())
    except Exception:  # no torch_npu, an older one without the query, or no device initialised
        return None


def npu_supports_bf16() -> bool | None:
    """Whether this process's NPU computes in bf16 (Atlas A2, the Ascend 910B, and later); None when
    torch_npu does not say."""
    return _ask_torch_npu("is_bf16_supported")


@contextlib.contextmanager
def autocast(kind: str, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=kind, dtype=dtype):
            yield


class FixedLossScaler:
    """A fixed fp16 loss scale (the ModelZoo recipe's 128): scales the loss and unscales the gradients,
    nothing more; the scale never changes. The training step (:class:`~solov2.engine.step.TrainStep`)
    skips a step whose loss or gradient is not finite. Same interface as the parts of GradScaler used."""

    def __init__(self, scale: float) -> None:
        self.scale_value = float(scale)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale_value)

    def update(self) -> None:
        pass

    def get_scale(self) -> float:
        return self.scale_value

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale_value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale_value = float(state["scale"])


def npu_reports_inf_nan() -> bool | None:
    """Whether this process's NPU gives inf/NaN on an fp16 overflow (INF_NAN mode: Atlas A2 and later,
    by default) rather than saturating it to the largest finite value and only raising a status flag
    (saturation mode: the first-generation Ascend 910 knows no other); None when torch_npu does not
    say."""
    return _ask_torch_npu("is_support_inf_nan")


def saturates_fp16(kind: str, dtype: torch.dtype | None) -> bool:
    """True when fp16 overflows on this device saturate: no inf/NaN reaches the gradients, so neither
    a dynamic loss scale nor the non-finite step skip can see them."""
    return kind == "npu" and dtype is torch.float16 and npu_reports_inf_nan() is False


class OverflowStatus:
    """Overflow on a saturation-mode NPU (:func:`saturates_fp16`), read on the device: such an NPU
    saturates an overflowing value to the largest finite one and raises a flag in its float status
    register instead of giving inf/NaN. :meth:`clear` resets the register before the backward pass
    (where loss scaling can overflow), :meth:`overflowed` reads it afterwards into a tensor, as
    torch_npu's own overflow check does, but without copying it to the host. The flag is this
    process's: :class:`~solov2.engine.step.TrainStep` all-reduces it with the loss's finiteness."""

    def __init__(self, device: torch.device) -> None:
        self._npu = importlib.import_module("torch_npu")
        self._buffer = torch.zeros(8, dtype=torch.float32, device=device)

    def clear(self) -> None:
        self._npu.npu_clear_float_status(self._buffer)

    def overflowed(self) -> torch.Tensor:
        """A bool scalar on the device: whether anything overflowed since :meth:`clear`."""
        return self._npu.npu_get_float_status(self._buffer)[0] != 0


def overflow_status(kind: str, dtype: torch.dtype | None, device: torch.device) -> OverflowStatus | None:
    """An :class:`OverflowStatus` where fp16 overflows saturate, else None (inf/NaN show them)."""
    return OverflowStatus(device) if saturates_fp16(kind, dtype) else None


def make_scaler(
    kind: str, dtype: torch.dtype | None, loss_scale: float
) -> torch.amp.GradScaler | FixedLossScaler | None:
    """fp16 needs loss scaling (dynamic GradScaler or a fixed scale); fp32 and bf16 do not.

    A dynamic scale on an NPU that saturates fp16 overflows (:func:`saturates_fp16`) is refused: no
    inf/NaN reaches the gradients there, and torch_npu's GradScaler falls back to reading the NPU's
    overflow flag back to the host at every step, the synchronisation the training step avoids (it
    skips overflowing steps there with :class:`OverflowStatus`, on the device, under a fixed scale)."""
    if dtype is not torch.float16:
        return None
    if loss_scale > 0:
        return FixedLossScaler(loss_scale)
    if saturates_fp16(kind, dtype):
        raise ConfigError(
            "train.loss_scale=0 (dynamic) needs fp16 overflows to show as inf/NaN, but this NPU "
            "saturates them (no INF_NAN mode, as on a first-generation Ascend 910), where a dynamic scale "
            "reads the overflow flag back to the host at every step: use a fixed scale, "
            "train.loss_scale=128 as in the ModelZoo recipe, or train.amp=off"
        )
    return torch.amp.GradScaler(kind)
