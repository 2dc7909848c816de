"""Learning rate: linear scaling with the total batch, linear warm-up, step decay."""

from __future__ import annotations

from ..config import TrainConfig


def scaled_lr(cfg: TrainConfig, total_batch: int) -> float:
    """``base_lr`` was tuned for ``base_batch_size`` images per step; scale it linearly."""
    return cfg.base_lr * total_batch / cfg.base_batch_size


def lr_factor(iteration: int, *, iters_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the scaled learning rate at a global iteration (0-based).

    Warm-up goes linearly from ``warmup_factor`` to 1 over ``warmup_iters``; the rate is multiplied by
    ``lr_gamma`` once each of the ``lr_steps`` epochs (fractions allowed) has been completed.
    """
    epochs_done = iteration / max(iters_per_epoch, 1)
    factor = cfg.lr_gamma ** sum(epochs_done >= step for step in cfg.lr_steps)
    if iteration < cfg.warmup_iters:
        factor *= cfg.warmup_factor + (1 - cfg.warmup_factor) * iteration / cfg.warmup_iters
    return factor


def schedule_warnings(cfg: TrainConfig, total_iters: int) -> list[str]:
    """Settings that have no effect in a run of ``total_iters`` iterations (legal, likely mistakes)."""
    out = []
    if cfg.warmup_iters > total_iters:
        out.append(
            f"train.warmup_iters ({cfg.warmup_iters}) is longer than the run ({total_iters} iterations): "
            "the learning rate never reaches train.base_lr"
        )
    late = [s for s in cfg.lr_steps if s >= cfg.epochs]
    if late:
        out.append(
            f"train.lr_steps [{', '.join(f'{s:g}' for s in late)}] do not come before the end of the run "
            f"(train.epochs={cfg.epochs}): "
            "the learning rate is not decayed there"
        )
    return out
