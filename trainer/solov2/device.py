"""Devices (cpu, cuda, npu), distributed set-up from torchrun's environment, and mixed precision.

Ascend NPUs come through ``torch_npu``, which cannot even be imported without Ascend's CANN toolkit.
torch >= 2.5 would auto-load it on ``import torch`` (and fail there), so the ``solov2`` package sets
``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` before torch is imported and this module imports ``torch_npu``
itself, only when an NPU is asked for or auto-detected, catching every failure.

torchrun gives every process ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus ``MASTER_ADDR`` and
``MASTER_PORT``); they are used as they are, never derived (on Ascend clusters a pod-level ``RANK``
from a scheduler would be wrong for multi-process pods).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def npu_status() -> tuple[bool, str]:
    """Whether an Ascend NPU is usable, and why not: never raises, even without CANN."""
    if importlib.util.find_spec("torch_npu") is None:
        return False, "torch_npu is not installed"
    try:
        importlib.import_module("torch_npu")
    except Exception as exc:  # missing CANN libraries raise ImportError, OSError or RuntimeError
        return (
            False,
            f"torch_npu failed to import ({type(exc).__name__}: {exc}); is the CANN toolkit sourced?",
        )
    npu = getattr(torch, "npu", None)
    try:
        if npu is None or not npu.is_available() or npu.device_count() < 1:
            return False, "torch_npu imported but no NPU is visible (check ASCEND_RT_VISIBLE_DEVICES)"
    except Exception as exc:
        return False, f"torch.npu query failed: {exc}"
    return True, f"{npu.device_count()} NPU(s)"


def detect_device_kind(requested: str = "auto") -> str:
    """``auto`` picks npu, then cuda, then cpu. An explicit kind that is unavailable is an error."""
    kind = requested.split(":")[0]
    if kind not in ("auto", *BACKENDS):
        raise ConfigError(f"--device: expected auto, cpu, cuda or npu (optionally :N), got {requested!r}")
    if kind in ("auto", "npu"):
        ok, why = npu_status()
        if ok:
            return "npu"
        if kind == "npu":
            raise ConfigError(f"--device npu: no usable NPU: {why}")
    if kind in ("auto", "cuda"):
        if torch.cuda.is_available():
            return "cuda"
        if kind == "cuda":
            raise ConfigError("--device cuda: torch sees no CUDA device")
    return "cpu"


@dataclass(frozen=True)
class Runtime:
    """Where this process computes and who its peers are."""

    device: torch.device
    kind: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return BACKENDS[self.kind]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}: expected an integer, got {value!r}") from exc


def auto_device_warning(requested: str, kind: str) -> str | None:
    """Why ``--device auto`` left an installed torch_npu unused (CANN not sourced, no NPU visible), so
    that a run meant for NPUs does not train on the CPU unnoticed; None when there is nothing to say."""
    if requested != "auto" or kind == "npu" or importlib.util.find_spec("torch_npu") is None:
        return None
    ok, why = npu_status()
    return (
        None if ok else f"--device auto: torch_npu is installed but no NPU is used ({why}); running on {kind}"
    )


def _device_index(requested: str, default: int) -> int:
    if ":" not in requested:
        return default
    try:
        return int(requested.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"--device {requested!r}: the index after ':' must be an integer") from None


def _bind(kind: str, index: int) -> torch.device:
    """Make device ``index`` of ``kind`` this process's current one."""
    if kind == "cuda":
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if kind == "npu":
        torch.npu.set_device(index)  # type: ignore[attr-defined]
        return torch.device("npu", index)
    return torch.device("cpu")


def select_device(requested: str = "auto") -> torch.device:
    """The device ``--device`` names (``auto``, a kind, or a kind with an index; a kind alone is its
    device 0), made this process's current one: for the single-process commands."""
    return _bind(detect_device_kind(requested), _device_index(requested, 0))


def setup_runtime(requested: str = "auto", *, timeout_s: int | None = None) -> Runtime:
    """Pick the device, bind this process to ``LOCAL_RANK``'s device and join the process group.

    The group's backend is hccl on NPU, nccl on CUDA and gloo on CPU. ``timeout_s`` defaults to
    ``HCCL_CONNECT_TIMEOUT`` when set, else 30 minutes.
    """
    rank, local_rank, world_size = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
    if not 0 <= rank < world_size:
        raise ConfigError(f"environment: RANK={rank} must lie in [0, WORLD_SIZE={world_size})")
    kind = detect_device_kind(requested)
    device = _bind(kind, _device_index(requested, local_rank))
    if world_size > 1 and not dist.is_initialized():
        timeout = timeout_s or _env_int("HCCL_CONNECT_TIMEOUT", 1800)
        dist.init_process_group(
            backend=BACKENDS[kind],
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=max(timeout, 60)),
        )
    return Runtime(device=device, kind=kind, rank=rank, local_rank=local_rank, world_size=world_size)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


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
    return torch.float16 if amp == "fp16" else torch.bfloat16


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
    try:
        utils = importlib.import_module("torch_npu.npu.utils")
        return bool(utils.is_support_inf_nan())
    except Exception:  # no torch_npu, an older one without the query, or no device initialised
        return None


def saturates_fp16(kind: str, dtype: torch.dtype | None) -> bool:
    """True when fp16 overflows on this device saturate: no inf/NaN reaches the gradients, so neither
    a dynamic loss scale nor the non-finite step skip can see them."""
    return kind == "npu" and dtype is torch.float16 and npu_reports_inf_nan() is False


class OverflowStatus:
    """Overflow on a saturation-mode NPU (:func:`saturates_fp16`), read on the device: such an NPU
    saturates an overflowing value to the largest finite one and raises a flag in its float status
    register instead of giving inf/NaN. :meth:`clear` resets the register before the backward pass
    (where loss scaling can overflow), :meth:`overflowed` reads it afterwards into a tensor, as
    torch_npu's own overflow check does, but without copying it to the host. Under several processes
    the flags are all-reduced (max), so that every rank skips the same steps."""

    def __init__(self, device: torch.device, *, distributed: bool) -> None:
        self._npu = importlib.import_module("torch_npu")
        self._buffer = torch.zeros(8, dtype=torch.float32, device=device)
        self.distributed = distributed

    def clear(self) -> None:
        self._npu.npu_clear_float_status(self._buffer)

    def overflowed(self) -> torch.Tensor:
        """A bool scalar on the device: whether anything overflowed since :meth:`clear`, on any rank."""
        flag = (self._npu.npu_get_float_status(self._buffer)[:1] != 0).to(torch.float32)
        if self.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag[0] > 0


def overflow_status(
    kind: str, dtype: torch.dtype | None, device: torch.device, *, distributed: bool = False
) -> OverflowStatus | None:
    """An :class:`OverflowStatus` where fp16 overflows saturate, else None (inf/NaN show them)."""
    return OverflowStatus(device, distributed=distributed) if saturates_fp16(kind, dtype) else None


def make_scaler(
    kind: str, dtype: torch.dtype | None, loss_scale: float
) -> torch.amp.GradScaler | FixedLossScaler | None:
    """fp16 needs loss scaling (dynamic GradScaler or a fixed scale); fp32 and bf16 do not.

    A dynamic scale on an NPU that saturates fp16 overflows (:func:`saturates_fp16`) is refused: its
    growth and back-off read inf/NaN in the gradients, which such an NPU never produces (the training
    step skips overflowing steps there with :class:`OverflowStatus`, under a fixed scale)."""
    if dtype is not torch.float16:
        return None
    if loss_scale > 0:
        return FixedLossScaler(loss_scale)
    if saturates_fp16(kind, dtype):
        raise ConfigError(
            "train.loss_scale=0 (dynamic) needs fp16 overflows to show as inf/NaN, but this NPU "
            "saturates them (no INF_NAN mode, as on a first-generation Ascend 910): use a fixed scale, "
            "train.loss_scale=128 as in the ModelZoo recipe, or train.amp=off"
        )
    return torch.amp.GradScaler(kind)
