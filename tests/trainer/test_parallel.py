"""DistributedDataParallel as training wraps the model: what it adds to every step."""

from __future__ import annotations

import inspect
import socket

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from solov2.config import load_config
from solov2.data.synthetic import synthetic_batch
from solov2.device import Runtime
from solov2.engine.parallel import replicate, running_statistics_diverge
from solov2.model import build_model, total_loss
from solov2.targets import compact_ground_truth

from .host_reads import DispatchedOps

RUNTIME = Runtime(device=torch.device("cpu"), kind="cpu", world_size=2)


@pytest.fixture
def process_group():
    """A one-process gloo group: DDP does per step what it does with more, minus the waiting."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _model(*opts: str):
    cfg = load_config("solov2_tiny_cpu", ["data.canvases=[[64,64]]", *opts])
    torch.manual_seed(0)
    images, gt = synthetic_batch(2, (64, 64), max_instances=cfg.model.targets.max_instances, seed=0)
    return build_model(cfg, pretrained=False).train(), images, compact_ground_truth(gt)


def _steady(replica, model, images, gt) -> None:
    """Three steps: DDP rebuilds its buckets in the second, so the next one is a steady-state step."""
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        total_loss(replica(images, gt)).backward()


def test_running_statistics_diverge_only_where_batch_norm_trains() -> None:
    assert running_statistics_diverge(_model()[0])  # the tiny config trains BatchNorm statistics
    assert not running_statistics_diverge(_model("model.backbone.norm_eval=true")[0])  # the COCO recipes
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(_model()[0])
    assert not running_statistics_diverge(synced)
    model = _model()[0].eval()
    running_statistics_diverge(model)
    assert not model.training  # the mode is left as it was


@pytest.mark.parametrize(("norm_eval", "broadcasts"), [("true", False), ("false", True)])
def test_buffers_are_broadcast_before_a_forward_only_where_statistics_train(
    process_group, norm_eval: str, broadcasts: bool
) -> None:
    model, images, gt = _model(f"model.backbone.norm_eval={norm_eval}")
    replica = replicate(model, RUNTIME)
    _steady(replica, model, images, gt)
    with DispatchedOps() as ops:
        replica(images, gt)
    assert (ops.counts["c10d.broadcast_"] > 0) is broadcasts
    assert (ops.counts["aten.copy_"] >= len(list(model.buffers()))) is broadcasts


@pytest.mark.skipif(
    "batched_grad_copy" not in inspect.signature(DistributedDataParallel).parameters,
    reason="this torch copies gradients into DDP's buckets one parameter at a time",
)
def test_gradients_reach_the_buckets_in_a_few_operations_with_the_same_values(process_group) -> None:
    model, images, gt = _model("model.backbone.norm_eval=true")
    replica = replicate(model, RUNTIME)
    params = [p for p in model.parameters() if p.requires_grad]
    _steady(replica, model, images, gt)
    model.zero_grad(set_to_none=True)
    loss = total_loss(replica(images, gt))
    with DispatchedOps() as ddp:
        loss.backward()
    ddp_grads = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    loss = total_loss(model(images, gt))
    with DispatchedOps() as plain:
        loss.backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, ddp_grads, strict=True))
    # A per-parameter copy or average would add one or two operators for each of the parameters.
    assert ddp.total - plain.total < len(params) // 4, (ddp.counts - plain.counts).most_common(5)
