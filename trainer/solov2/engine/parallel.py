"""The model handles of a training run: the model itself, its replica across processes (DDP) and the
forward the step calls (possibly compiled), plus the process group that agrees on a SIGTERM stop."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config
from ..device import Runtime

__all__ = [
    "compile_forward",
    "ddp_options",
    "replicate",
    "running_statistics_diverge",
    "stop_group",
    "sync_batch_norm",
]


def sync_batch_norm(model: nn.Module, cfg: Config, runtime: Runtime) -> nn.Module:
    """``model`` with SyncBatchNorm when ``train.sync_bn`` asks for it and it can apply (several
    accelerator processes, BatchNorm statistics not frozen by ``model.backbone.norm_eval``)."""
    if (
        runtime.distributed
        and cfg.train.sync_bn
        and runtime.kind != "cpu"
        and not cfg.model.backbone.norm_eval
    ):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def running_statistics_diverge(model: nn.Module) -> bool:
    """Whether a training forward of ``model`` updates BatchNorm running statistics from this process's
    batch alone (a BatchNorm in training mode that is not a SyncBatchNorm), so that processes drift apart."""
    was_training = model.training
    model.train()
    diverge = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not isinstance(m, nn.SyncBatchNorm)
        and m.training
        and m.track_running_stats
        for m in model.modules()
    )
    model.train(was_training)
    return diverge


def share_running_statistics(model: nn.Module, runtime: Runtime) -> None:
    """Give every process rank 0's BatchNorm running statistics where they trained per process (see
    :func:`running_statistics_diverge`), so that every rank evaluates the model the checkpoint holds."""
    if not runtime.distributed or not running_statistics_diverge(model):
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in module.buffers(recurse=False):
                dist.broadcast(buffer, src=0)


def replicate(model: nn.Module, runtime: Runtime) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under several processes (gradients all-reduced),
    else ``model`` itself, with :func:`ddp_options`."""
    if not runtime.distributed:
        return model
    ids = [runtime.device.index] if runtime.kind != "cpu" else None
    return DistributedDataParallel(model, device_ids=ids, **ddp_options(model))


def ddp_options(model: nn.Module) -> dict[str, bool]:
    """DistributedDataParallel's options for ``model``, chosen to launch few operations per step.

    - Gradients are views into DDP's buckets (``gradient_as_bucket_view``) and, where torch offers it
      (``batched_grad_copy``, torch 2.14), a bucket's gradients are copied and averaged by two
      operations instead of one or two per parameter (R50: 178 fewer per step; the same values).
    - Buffers are broadcast from rank 0 before every forward only where the processes' BatchNorm
      statistics would drift apart (:func:`running_statistics_diverge`). The COCO recipes freeze
      them (``model.backbone.norm_eval``), so every process keeps the same buffers, and each forward
      saves that collective and the copy back into every buffer (169 in the R50 model). Torch before 2.13 names
      the option ``broadcast_buffers`` and then also leaves buffers out of the start-up broadcast:
      every process builds the same model from the same seed and weights anyway.
    """
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    sync_buffers = running_statistics_diverge(model)
    options = {"gradient_as_bucket_view": True}
    options["forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"] = (
        sync_buffers
    )
    if "batched_grad_copy" in accepted:
        options["batched_grad_copy"] = True
    return options


def compile_forward(replica: nn.Module, *, compile: bool, mode: str, distributed: bool) -> Callable:
    """The forward the training step calls: ``replica``, or ``torch.compile`` of it. Forward, targets
    and losses are one graph; AOTAutograd compiles its backward with it."""
    if not compile:
        return replica
    return torch.compile(
        replica, dynamic=False, fullgraph=not distributed, mode=None if mode == "default" else mode
    )


def stop_group(runtime: Runtime) -> dist.ProcessGroup | None:
    """A gloo group beside nccl or hccl, through which every process agrees on a SIGTERM stop (a CPU
    all-reduce); None when the default group is gloo already or there is one process. Its collectives
    wait as long as the default group's (a new group does not inherit that timeout)."""
    if runtime.distributed and runtime.backend != "gloo":
        return dist.new_group(backend="gloo", timeout=timedelta(seconds=runtime.timeout_s))
    return None
