"""``solov2 smoke``: a few training steps on generated images, printing losses.

A quick proof that a config builds, trains and predicts on this machine, before any data is at hand.
The steps are the training loop's own (:class:`~solov2.engine.step.TrainStep`) with the config's
optimiser, autocast and loss scaling; there is no learning-rate schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .amp import amp_dtype, make_scaler, overflow_status
from .config import Config
from .data.synthetic import synthetic_batch
from .engine.counters import StepCounters
from .engine.optim import build_optimizer, init_state
from .engine.step import TrainStep
from .model import build_model


def _train_step(model: torch.nn.Module, cfg: Config, device: str | torch.device, lr: float) -> TrainStep:
    """The training loop's step for ``model``: the config's optimiser at ``lr``, autocast, loss scale and
    clipping (no schedule, no DDP)."""
    kind = torch.device(device).type
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train, lr, device_kind=kind)
    init_state(optimizer)
    dtype = amp_dtype(kind, cfg.train.amp)
    return TrainStep(
        model,
        optimizer,
        params,
        device_kind=kind,
        dtype=dtype,
        scaler=make_scaler(kind, dtype, cfg.train.loss_scale),
        grad_clip=cfg.train.grad_clip,
        counters=StepCounters(device),
        overflow=overflow_status(kind, dtype, torch.device(device)),
    )


def smoke_run(
    cfg: Config,
    *,
    steps: int = 5,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
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
    step = _train_step(model, cfg, device, lr or cfg.train.base_lr)
    log(
        f"smoke: backbone {cfg.model.backbone.name} (depth {cfg.model.backbone.depth}), "
        f"{len(cfg.model.head.num_grids)} levels, "
        f"batch {batch_size} x {canvas[0]}x{canvas[1]}, {int(gt.valid.sum())} instances, device {device}, "
        f"optimizer {cfg.train.optimizer}"
    )
    model.train()
    losses, times = [], []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        out = step(images, gt, i)
        losses.append(float(out["loss"].detach()))
        times.append(time.perf_counter() - start)
        named = "  ".join(f"{k} {float(v.detach()):.4f}" for k, v in out.items() if k.startswith("loss_"))
        log(
            f"step {i}/{steps}  loss {losses[-1]:.4f}  {named}  positives {int(out['num_positives'])}  "
            f"dropped {int(out['dropped_positives'])}  {times[-1]:.2f} s"
        )
    skipped = step.counters.read().nonfinite
    if skipped:
        log(f"smoke: {skipped} step(s) skipped for a non-finite loss or gradient")
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
