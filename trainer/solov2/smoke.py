"""``solov2 smoke``: a few forward / loss / backward / SGD steps on generated images, printing losses.

A quick proof that a config builds, trains and predicts on this machine, before any data is at hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .config import Config
from .data.synthetic import synthetic_batch
from .model import build_model, total_loss


def smoke_run(
    cfg: Config,
    *,
    steps: int = 5,
    batch_size: int | None = None,
    device: str = "cpu",
    lr: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train ``steps`` steps on one synthetic batch (the loss should fall), then run inference once.

    Returns the first and last total loss, seconds per step and the detections found.
    """
    torch.manual_seed(cfg.train.seed)
    batch_size = batch_size or cfg.data.samples_per_device
    canvas = cfg.data.canvases[0]
    images, gt = synthetic_batch(
        batch_size, canvas, max_instances=cfg.model.targets.max_instances, seed=cfg.train.seed
    )
    gt.validate(cfg.model.head.num_classes, canvas)
    images, gt = images.to(device), gt.to(device)
    model = build_model(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=lr or cfg.train.base_lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    log(
        f"smoke: {cfg.model.backbone.depth}-layer ResNet, {len(cfg.model.head.num_grids)} levels, "
        f"batch {batch_size} x {canvas[0]}x{canvas[1]}, {int(gt.valid.sum())} instances, device {device}"
    )
    model.train()
    losses, times = [], []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        out = model(images, gt)
        loss = total_loss(out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        log(
            f"step {step}/{steps}  loss {losses[-1]:.4f}  loss_cls {float(out['loss_cls'].detach()):.4f}  "
            f"loss_mask {float(out['loss_mask'].detach()):.4f}  positives {int(out['num_positives'])}  "
            f"dropped {int(out['dropped_positives'])}  {times[-1]:.2f} s"
        )
    model.eval()
    with torch.no_grad():
        det = model(images)
    found = int(det.valid.sum())
    log(
        f"inference: {found} detections kept over {batch_size} images (top score {float(det.scores.max()):.3f})"
    )
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "seconds_per_step": sum(times[1:]) / max(len(times) - 1, 1),
        "detections": found,
    }
