"""The optimiser and its update without host synchronisation.

Implementations, picked by :func:`build_optimizer` (``implementation="auto"``):

- torch's fused SGD / AdamW (``fused=True``) wherever the device has torch's fused kernels
  (``aten::_fused_sgd_`` / ``aten::_fused_adamw_``, asked of the dispatcher: :func:`has_fused_kernel`):
  CUDA, the CPU, and Ascend NPUs, where torch_npu implements them for its ``PrivateUse1`` device
  (torch_npu 2.14.0 registers ``_fused_sgd_``, ``_fused_sgd_.tensor_lr`` and ``_fused_adamw_`` for
  tensors in base formats: torch_npu's default, ``allow_internal_format`` off). On CUDA and the CPU
  the kernels take a ``found_inf`` tensor and skip the update on the device, so deciding "was this
  step finite?" never reads a value back. (On the CPU the fused kernels also avoid the per-step
  ``.item()`` that foreach AdamW does on its CPU step counter.) torch_npu's do not: its
  ``_fused_adamw_`` ignores ``found_inf`` (a non-finite step would be applied) and its ``_fused_sgd_``
  reads it with ``.item()`` (a host synchronisation per step) and refuses a momentum of 0. So on an
  NPU the fused kernels never get a ``found_inf``; the skip is made exact the other way (below), and
  SGD without momentum runs foreach.
- A tensor learning rate (``tensor_lr``, for compiled steps) only where the device has the fused
  kernel's ``tensor_lr`` overload; elsewhere (AdamW on torch_npu 2.14) the fused kernel with a float.
- Otherwise (an older torch_npu without them) torch's multi-tensor ``foreach`` implementation.
- Not the tensor-combining NPU optimisers (``torch_npu.optim.NpuFusedSGD``, apex's
  ``apex.optimizers.NpuFusedSGD``): apex's refuses to step outside ``apex.amp`` (which this trainer
  does not use: it runs torch's autocast), both refuse ``zero_grad(set_to_none=True)``, and neither
  takes a ``found_inf``, so skipping a non-finite step would need a host read (NpuFusedAdamW counts
  its steps in a Python int).
- ``implementation="foreach"`` forces torch's multi-tensor implementation (tests, benchmarks).

:func:`apply_update` applies a step only where ``finite`` is true, exactly: a skipped step changes
no parameter and no optimiser state. Fused torch optimisers on the CPU and CUDA get ``finite`` as their
``found_inf``; the others (and every optimiser on an NPU) keep a copy of parameters and state and put
it back with ``torch.where`` (one extra copy of the parameters and state per step, still no host
synchronisation). :func:`init_state` creates the optimiser state before the first step, so that a
skipped first step has a state to leave alone (torch's fused SGD would otherwise keep uninitialised
momentum buffers after a skipped first step).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..config import TrainConfig

__all__ = [
    "apply_update",
    "build_optimizer",
    "describe_optimizer",
    "has_fused_kernel",
    "init_state",
    "is_fused",
    "load_optimizer_state",
    "supports_found_inf",
]

# The dispatch key of each device kind's kernels: torch_npu registers the NPU's as PrivateUse1.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "npu": "PrivateUse1"}
# Where the fused kernels skip an update on a device-side ``found_inf`` without reading it back.
_FOUND_INF_ON_DEVICE = ("cpu", "cuda")


def has_fused_kernel(optimizer: str, device_kind: str, *, tensor_lr: bool = False) -> bool:
    """Whether torch's fused kernel for ``optimizer`` (``sgd`` or ``adamw``) is registered for
    ``device_kind`` (``cpu``, ``cuda`` or ``npu``), as the dispatcher says; ``tensor_lr``: its
    overload that takes the learning rate as a tensor."""
    key = _DISPATCH_KEYS.get(device_kind)
    overload = ".tensor_lr" if tensor_lr else ""
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"aten::_fused_{optimizer}_{overload}", key
    )


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    cfg: TrainConfig,
    lr: float,
    *,
    device_kind: str = "cpu",
    implementation: str = "auto",
    tensor_lr: bool = False,
) -> torch.optim.Optimizer:
    """SGD with momentum (the reference recipe) or AdamW, as ``cfg.optimizer`` says.

    ``implementation``: ``auto`` (fused where the device has the kernels, see the module docstring),
    ``fused`` or ``foreach``. ``tensor_lr`` keeps the learning rate in a tensor, so that a compiled
    update does not recompile when the schedule changes it, where the device's fused kernel takes a
    tensor learning rate (else the rate stays a float).
    """
    if implementation not in ("auto", "fused", "foreach"):
        raise ValueError(f"implementation: expected auto, fused or foreach, got {implementation!r}")
    params = list(params)
    # torch_npu's fused SGD refuses a momentum of 0 (torch then passes no momentum buffers).
    npu_refuses = device_kind == "npu" and cfg.optimizer == "sgd" and cfg.momentum == 0
    fused = implementation == "fused" or (
        implementation == "auto" and has_fused_kernel(cfg.optimizer, device_kind) and not npu_refuses
    )
    # capturable: foreach AdamW keeps its step counts on the device, beside the parameters, where the
    # restore of a skipped step reaches them (on the host they would count the skipped step).
    kind = {"fused": True} if fused else {"foreach": True}
    if not fused and cfg.optimizer == "adamw" and device_kind in ("cuda", "npu"):
        kind["capturable"] = True
    tensor_rate = tensor_lr and fused and has_fused_kernel(cfg.optimizer, device_kind, tensor_lr=True)
    rate: float | Tensor = torch.tensor(lr, dtype=torch.float32) if tensor_rate else lr
    if fused and isinstance(rate, Tensor) and params:
        rate = rate.to(params[0].device)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=rate, weight_decay=cfg.weight_decay, **kind)
    return torch.optim.SGD(params, lr=rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kind)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimiser runs torch's fused kernels (``fused=True``)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups
    )


def supports_found_inf(optimizer: torch.optim.Optimizer, device_kind: str) -> bool:
    """Whether the optimiser skips its own update on a device-side ``found_inf`` without reading it
    back: torch's fused ones on the CPU and CUDA (not torch_npu's, see the module docstring)."""
    return device_kind in _FOUND_INF_ON_DEVICE and is_fused(optimizer)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """``torch.optim.SGD (fused)``, ``torch.optim.AdamW (foreach)``: the class and its implementation."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    mode = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
    return f"{type(optimizer).__module__.split('.')[0]}.optim.{type(optimizer).__name__} ({mode})"


def init_state(optimizer: torch.optim.Optimizer) -> None:
    """Create torch SGD / AdamW state as their first step would, with the values that step starts from
    (zero momentum, zero moments, step 0). For SGD without dampening a zero momentum buffer gives the
    same first update as no buffer. Other optimisers are left to create their state themselves."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state or not p.requires_grad:
                continue
            if isinstance(optimizer, torch.optim.SGD) and group["momentum"] and not group["dampening"]:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
                on_device = group["fused"] or group["capturable"]
                state["step"] = torch.zeros(
                    (), dtype=torch.float32, device=p.device if on_device else torch.device("cpu")
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this run's implementation (a checkpoint written by
    a fused optimiser resumes with foreach and the other way round) and learning-rate type."""
    keys = ("fused", "foreach", "capturable")
    kept = [({k: g[k] for k in keys if k in g}, g["lr"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (implementation, lr) in zip(optimizer.param_groups, kept, strict=True):
        group.update(implementation)
        if isinstance(lr, Tensor) and not isinstance(group["lr"], Tensor):
            group["lr"] = lr.fill_(float(group["lr"]))
        elif not isinstance(lr, Tensor) and isinstance(group["lr"], Tensor):
            group["lr"] = float(group["lr"])
        on_device = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, Tensor):
                device = p.device if on_device else torch.device("cpu")
                optimizer.state[p]["step"] = step.to(device=device, dtype=torch.float32)


def _stepped_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> list[Tensor]:
    """Parameters with a gradient and their state tensors on ``device``: what a step may change."""
    out: list[Tensor] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            out.append(p.data)
            out.extend(t for t in optimizer.state[p].values() if isinstance(t, Tensor) and t.device == device)
    return out


def apply_update(optimizer: torch.optim.Optimizer, finite: Tensor, device_kind: str | None = None) -> None:
    """``optimizer.step()`` if ``finite`` (a bool tensor on the parameters' device, whose kind
    ``device_kind`` defaults to), else nothing at all; decided on the device, never on the host."""
    if supports_found_inf(optimizer, device_kind or finite.device.type):
        optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
        return
    tensors = _stepped_tensors(optimizer, finite.device)
    saved = [t.clone() for t in tensors]
    optimizer.step()
    _restore_where(tensors, saved, finite)


def _restore_where(tensors: Sequence[Tensor], saved: Sequence[Tensor], keep_new: Tensor) -> None:
    for t, old in zip(tensors, saved, strict=True):
        t.copy_(torch.where(keep_new, t, old))
