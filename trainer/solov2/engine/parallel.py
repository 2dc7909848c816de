"""The model handles of a training run: the model itself, its replica across processes (DDP) and the
forward the step calls (possibly compiled), plus the process group that agrees on a SIGTERM stop."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config
from ..device import Runtime

__all__ = ["compile_forward", "replicate", "stop_group", "sync_batch_norm"]


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


def replicate(model: nn.Module, runtime: Runtime) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under several processes (gradients all-reduced;
    BatchNorm buffers broadcast from rank 0 before every forward), else ``model`` itself."""
    if not runtime.distributed:
        return model
    ids = [runtime.device.index] if runtime.kind != "cpu" else None
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


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
    all-reduce); None when the default group is gloo already or there is one process."""
    if runtime.distributed and runtime.backend != "gloo":
        return dist.new_group(backend="gloo")
    return None
