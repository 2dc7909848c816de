"""Whether ``/dev/shm`` can hold the batches the loader workers keep in flight.

A worker hands each batch to the training process through shared memory, and up to
``prefetch_factor`` batches per worker wait there. When ``/dev/shm`` fills up, a worker dies of
SIGBUS ("DataLoader worker ... is killed by signal: Bus error"), often only after some batches went
through. Docker gives a container 64 MiB unless told otherwise, which is not one R50 batch per worker;
the operator's pods get ``shmSize`` (8 GiB by default).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import Config
from .loader import collate

__all__ = ["batch_bytes", "shm_size", "shm_warning"]

SHM = Path("/dev/shm")


def batch_bytes(cfg: Config) -> int:
    """Bytes of one training batch on the largest canvas, as the collate function allocates it (images
    and the compact ground truth of ``model.targets.max_instances`` slots, whatever the images hold)."""
    canvas = max(cfg.data.canvases, key=lambda c: c[0] * c[1])
    empty = collate(
        [None] * cfg.data.samples_per_device,
        canvas=canvas,
        max_instances=cfg.model.targets.max_instances,
        fill=cfg.data.pad_value,
    )
    tensors = [t for field in empty for t in (field if isinstance(field, tuple) else (field,))]
    return sum(t.numel() * t.element_size() for t in tensors)


def shm_size(shm: Path = SHM) -> int | None:
    """Bytes ``shm`` holds in all; None where there is none."""
    try:
        return shutil.disk_usage(shm).total
    except OSError:
        return None


def _mib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def shm_warning(cfg: Config, *, workers: int, local_processes: int, shm: Path = SHM) -> str | None:
    """A warning line when ``shm`` is smaller than what ``local_processes`` training processes of this
    node, each with ``workers`` loader workers ``data.prefetch_factor`` batches ahead, may keep in it;
    None when it is large enough, when nothing goes through it (no workers), or when there is no ``shm``."""
    size = shm_size(shm)
    if workers <= 0 or size is None:
        return None
    per_batch = batch_bytes(cfg)
    need = local_processes * workers * cfg.data.prefetch_factor * per_batch
    if size >= need:
        return None
    return (
        f"{shm} holds {_mib(size)}, but the loaders may keep up to {_mib(need)} there "
        f"({local_processes} process(es) x {workers} worker(s) x {cfg.data.prefetch_factor} batches ahead x "
        f"{_mib(per_batch)}); when it is full a worker dies with a bus error. Give the container more "
        "(docker run --shm-size, a SOLOv2Training's shmSize) or lower data.workers or data.prefetch_factor"
    )
