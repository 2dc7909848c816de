"""Data loaders that yield static-shape :class:`~solov2.structures.Batch` es.

The batch sampler runs in the main process and hands every image to the workers as a key
``(index, epoch, canvas)``; a worker seeds the image's augmentation from ``(seed, epoch, index)``. So the
data of an epoch depends only on ``(seed, epoch)``, not on the number of workers or which worker decodes
what, and a resumed run (``start_batch``) gets exactly the batches it had not trained on.

Advance epochs with ``loader.set_epoch(epoch, start_batch=0)`` before iterating; counters (images,
truncated instances, replaced bad images) are in ``loader.stats()`` (see :class:`Loader`).

Truncation: an image with more than ``max_instances`` instances keeps the ``max_instances`` largest by
mask area (in annotation order); small instances are the least reliable and the most numerous. COCO's
busiest images have somewhat fewer than the default 100; building a loader logs how many images exceed
``max_instances`` (from ``dataset.instance_counts()``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..config import Config, DataConfig
from ..errors import DataError, UserError
from ..structures import MASK_STRIDE, Batch, CompactGroundTruth
from ..targets import mask_statistics
from .buckets import BucketBatchSampler, EvalBatchSampler, mix_seed
from .coco import CocoInstances, Sample
from .cpus import default_workers
from .transforms import EvalTransform, TrainTransform

__all__ = [
    "BatchCollator",
    "Loader",
    "LoaderStats",
    "build_eval_loader",
    "build_train_loader",
    "collate",
    "pin_options",
    "resolve_workers",
]

_log = logging.getLogger(__name__)
_REPLACEMENT_TRIES = 8


class LoaderStats:
    """Counters shared by the main process and the workers: one row per process, summed on read."""

    FIELDS = ("images", "padding_images", "instances", "truncated_images", "truncated_instances", "replaced")

    def __init__(self, workers: int = 0) -> None:
        self._counts = torch.zeros(workers + 1, len(self.FIELDS), dtype=torch.int64).share_memory_()

    def add(self, **counts: int) -> None:
        info = get_worker_info()
        workers = self._counts.shape[0] - 1
        row = self._counts[0 if info is None or workers == 0 else 1 + info.id % workers]
        for name, value in counts.items():
            row[self.FIELDS.index(name)] += value

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, self._counts.sum(0).tolist(), strict=True))


def _zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Zeros; inside a worker allocated straight in shared memory (fresh shared memory reads as zeros),
    so sending the batch to the main process copies nothing and untouched mask slots cost nothing."""
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    numel = 1
    for s in shape:
        numel *= s
    try:
        storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)  # what default_collate uses
    except (AttributeError, RuntimeError):  # a torch without it: allocate, and pay one copy when sent
        return torch.zeros(shape, dtype=dtype)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def collate(
    samples: Sequence[Sample | None],
    *,
    canvas: tuple[int, int],
    max_instances: int,
    with_gt: bool = True,
    stats: LoaderStats | None = None,
    fill: Sequence[int],
) -> Batch:
    """Stack samples (each padded to ``canvas`` or smaller, content at the top-left) into a Batch; the
    rest of each canvas gets the RGB colour ``fill`` (``DataConfig.pad_value`` in the loaders).

    The ground truth is a :class:`~solov2.structures.CompactGroundTruth`: masks at stride 4, and each
    instance's centre of mass and pixel count, computed here at the canvas resolution.
    ``None`` entries become padding images (all ``fill``, ``image_id == -1``, sizes ``(0, 0)``, no instances).
    Instances are padded to ``max_instances`` with ``valid = False``; beyond it the largest are kept.
    """
    b, (ch, cw), n_max = len(samples), canvas, max_instances
    if ch % MASK_STRIDE or cw % MASK_STRIDE:
        raise ValueError(f"collate: the {ch}x{cw} canvas is not a multiple of the mask stride {MASK_STRIDE}")
    images = _zeros((b, 3, ch, cw), torch.uint8)
    image_ids = torch.full((b,), -1, dtype=torch.int64)
    image_sizes = torch.zeros(b, 2, dtype=torch.int64)
    original_sizes = torch.zeros(b, 2, dtype=torch.int64)
    if with_gt:
        boxes = torch.zeros(b, n_max, 4)
        labels = torch.zeros(b, n_max, dtype=torch.int64)
        masks = _zeros((b, n_max, ch // MASK_STRIDE, cw // MASK_STRIDE), torch.uint8)
        valid = torch.zeros(b, n_max, dtype=torch.bool)
        centers = torch.zeros(b, n_max, 2)
        pixels = torch.zeros(b, n_max, dtype=torch.int64)
    counts = dict.fromkeys(LoaderStats.FIELDS[:5], 0)
    colour = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)
    for i, s in enumerate(samples):
        if s is None:
            images[i] = colour
            counts["padding_images"] += 1
            continue
        h, w = s.image.shape[-2:]
        if h > ch or w > cw:
            raise ValueError(f"collate: a {h}x{w} sample does not fit the {ch}x{cw} canvas")
        images[i, :, :h, :w] = s.image
        images[i, :, h:] = colour  # the strips the image leaves: below it, and right of it
        images[i, :, :h, w:] = colour
        image_ids[i] = s.image_id
        image_sizes[i] = torch.tensor(s.image_size)
        original_sizes[i] = torch.tensor(s.original_size)
        counts["images"] += 1
        if not with_gt:
            continue
        n = s.labels.shape[0]
        if n == 0:
            continue
        small, centre, area = _instance_statistics(s.masks)
        keep = torch.arange(n)
        if n > n_max:
            keep = torch.sort(torch.argsort(area, descending=True, stable=True)[:n_max]).values
            counts["truncated_images"] += 1
            counts["truncated_instances"] += n - n_max
        k = keep.shape[0]
        masks[i, :k, : small.shape[-2], : small.shape[-1]] = small[keep]
        centers[i, :k] = centre[keep]
        pixels[i, :k] = area[keep]
        boxes[i, :k] = s.boxes[keep]
        labels[i, :k] = s.labels[keep]
        valid[i, :k] = True
        counts["instances"] += k
    if stats is not None:
        stats.add(**counts)
    gt = CompactGroundTruth(boxes, labels, masks, valid, centers, pixels) if with_gt else None
    return Batch(images, gt, image_ids, image_sizes, original_sizes)


def _instance_statistics(masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masks ``[n, h, w]`` (content at the canvas's top-left) -> stride-4 masks, centres of mass and
    pixel counts, as :func:`~solov2.targets.compact_ground_truth` computes them on the padded canvas.
    The masks are zero-padded to multiples of 8 first (the canvas's sides are multiples of 32, so this
    stays inside it; zeros change no sum, and 8 lets the row and column counts read 8 pixels at once)."""
    h, w = masks.shape[-2:]
    padded = F.pad(masks, (0, -w % 8, 0, -h % 8))
    return mask_statistics(padded, MASK_STRIDE)


class BatchCollator:
    """``collate_fn`` for items ``(canvas index, Sample | None)`` of one canvas."""

    def __init__(self, data: DataConfig, *, max_instances: int, with_gt: bool, stats: LoaderStats) -> None:
        self.canvases = [tuple(c) for c in data.canvases]
        self.fill = data.pad_value
        self.max_instances, self.with_gt, self.stats = max_instances, with_gt, stats

    def __call__(self, items: Sequence[tuple[int, Sample | None]]) -> Batch:
        canvas = self.canvases[items[0][0]]
        samples = [s for _, s in items]
        return collate(
            samples, canvas=canvas, max_instances=self.max_instances, with_gt=self.with_gt, stats=self.stats,
            fill=self.fill,
        )  # fmt: skip


class _KeyedBatches(Sampler[list[tuple[int, int, int]]]):
    """Wraps a bucket sampler: each index becomes a key ``(index, epoch, canvas)``."""

    def __init__(self, sampler: BucketBatchSampler | EvalBatchSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)  # type: ignore[union-attr]

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)
        for canvas, indices in self.sampler.iter_batches():
            yield [(i, epoch, canvas) for i in indices]


class _TrainSamples(Dataset):
    """Decodes and augments ``(index, epoch, canvas)`` keys; a bad image is replaced by the next readable
    image of its bucket (augmented with the original key's randomness), or by padding if none is found."""

    def __init__(self, dataset: CocoInstances, cfg: Config, buckets: list[list[int]], seed: int, stats):
        self.dataset, self.buckets, self.seed, self.stats = dataset, buckets, seed, stats
        self.canvases = [tuple(c) for c in cfg.data.canvases]
        self.transform = TrainTransform(cfg.data)
        self.position = {i: p for bucket in buckets for p, i in enumerate(bucket)}

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int, seed: int, canvas: int) -> Sample | None:
        """Image ``index`` decoded straight to its training size and flip, drawn from ``seed``; unpadded
        (collate places it on the canvas)."""
        size, flip = self.transform.plan(
            self.dataset.original_size(index), canvas=self.canvases[canvas], seed=seed
        )
        return self.dataset.load_resized(index, size, flip=flip)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[int, Sample | None]:
        index, epoch, canvas = key
        seed = mix_seed(self.seed, epoch, index)
        sample = self._load(index, seed, canvas)
        if sample is None:
            bucket, pos = self.buckets[canvas], self.position[index]
            for step in range(1, min(_REPLACEMENT_TRIES, len(bucket) - 1) + 1):
                sample = self._load(bucket[(pos + step) % len(bucket)], seed, canvas)
                if sample is not None:
                    self.stats.add(replaced=1)
                    break
        return canvas, sample


class _EvalSamples(Dataset):
    """Decodes ``(index, epoch, canvas)`` keys for evaluation; index -1 and bad images give padding."""

    def __init__(self, dataset: CocoInstances, cfg: Config, with_gt: bool) -> None:
        self.dataset, self.with_gt = dataset, with_gt
        self.canvases = [tuple(c) for c in cfg.data.canvases]
        self.transform = EvalTransform(cfg.data)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[int, Sample | None]:
        index, _, canvas = key
        sample = None if index < 0 else self.dataset.load(index, annotations=self.with_gt)
        return canvas, None if sample is None else self.transform(sample, canvas=self.canvases[canvas])


def _worker_error(exc: UserError) -> UserError | None:
    """The error a data-loading worker raised, as it raised it, from the copy that ``DataLoader`` raises
    in the main process (same type, but the worker's whole traceback as its message); None if ``exc`` is
    not such a copy."""
    kind, text = type(exc), str(exc)
    if not text.startswith(f"Caught {kind.__name__} in ") or "\nOriginal Traceback" not in text:
        return None
    name = kind.__qualname__
    if kind.__module__ not in ("__main__", "builtins"):  # how ``traceback`` names the type
        name = f"{kind.__module__}.{name}"
    start = text.rfind(f"\n{name}: ")  # the traceback's last line is "module.Type: message"
    if start < 0:
        return None
    return kind(text[start + len(name) + 3 :].rstrip("\n"))


class Loader(DataLoader):
    """A ``DataLoader`` of :class:`~solov2.structures.Batch` es with the few things a training loop asks of it.

    A bad image or annotation met by a worker process stops iteration with the worker's
    :class:`~solov2.errors.UserError` (a one-line message naming the file), as without workers, not with
    the worker's traceback."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        try:
            yield from super().__iter__()
        except UserError as exc:
            original = _worker_error(exc)
            if original is None:
                raise
            raise original from None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Batches and augmentation of ``epoch`` from now on, starting at its batch ``start_batch``."""
        self.batch_sampler.set_epoch(epoch, start_batch)  # type: ignore[union-attr]

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch for this rank (the same on every rank)."""
        return self.batch_sampler.sampler.batches_per_epoch  # type: ignore[union-attr]

    def stats(self) -> dict[str, int]:
        """Counts since the loader was built, over all processes: ``images``, ``padding_images``,
        ``instances``, ``truncated_images``, ``truncated_instances``, ``replaced`` (bad images)."""
        return self.collate_fn.stats.as_dict()  # type: ignore[attr-defined]


def resolve_workers(cfg: Config) -> int:
    """``data.workers``, with -1 resolved by :func:`~.cpus.default_workers`."""
    return default_workers() if cfg.data.workers < 0 else cfg.data.workers


# torch >= 2.9 pins for the current accelerator (an NPU included) and warns that DataLoader's
# pin_memory_device is deprecated; older releases are told the device type when it is not CUDA.
_NAMES_PIN_DEVICE = torch.__version__ < (2, 9)


def pin_options(device_kind: str) -> dict[str, Any]:
    """``pin_memory`` and ``pin_memory_device`` of a loader that feeds a ``device_kind`` device: pinned on
    CUDA and NPUs, so that copies to the device do not wait (from pageable memory an NPU copy even
    synchronises its stream)."""
    return {"pin_memory": device_kind != "cpu", "pin_memory_device": "npu" if device_kind == "npu" else ""}


def _loader(
    ds: Dataset,
    batches: _KeyedBatches,
    collator: BatchCollator,
    cfg: Config,
    seed: int,
    pin: bool | None,
    device: str,
) -> Loader:
    workers = resolve_workers(cfg)
    pin = torch.cuda.is_available() if pin is None else pin
    return Loader(
        ds,
        batch_sampler=batches,
        collate_fn=collator,
        num_workers=workers,
        pin_memory=pin,  # page-locked batches: the step's non-blocking copies overlap with compute
        pin_memory_device=device if pin and device not in ("", "cuda") and _NAMES_PIN_DEVICE else "",
        persistent_workers=workers > 0,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds; leaves the global RNG alone
    )


def _warn_untrained(sampler: BucketBatchSampler, cfg: Config, world_size: int) -> None:
    """Log the images that never train because their canvas gets fewer of them than one global batch."""
    untrained = sampler.untrained()
    if not untrained:
        return
    canvases = ", ".join(
        f"{n} on the {sampler.canvases[k][0]}x{sampler.canvases[k][1]} canvas" for k, n in untrained.items()
    )
    _log.warning(
        "%d images never train (%s): a canvas with fewer images than one global batch of "
        "data.samples_per_device=%d x %d ranks never fills one; a smaller data.samples_per_device, or "
        "data.canvases that put these images with others, trains them",
        sum(untrained.values()),
        canvases,
        cfg.data.samples_per_device,
        world_size,
    )


def build_train_loader(
    dataset: CocoInstances,
    cfg: Config,
    *,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    start_batch: int = 0,
    seed: int | None = None,
    pin_memory: bool | None = None,
    pin_memory_device: str = "",
) -> Loader:
    """Shuffled, augmented training batches of ``cfg.data.samples_per_device`` images for one rank.

    ``seed`` defaults to ``cfg.train.seed``; ``(seed, epoch)`` fix the epoch's batches and augmentation.
    ``len(loader)`` is the same on every rank. ``pin_memory`` defaults to "CUDA is available";
    ``pin_memory_device`` names another device type to pin for (``npu``).
    """
    dataset.check_num_classes(cfg.model.head.num_classes)
    seed = cfg.train.seed if seed is None else seed
    sampler = BucketBatchSampler(
        dataset.image_sizes(),
        cfg.data.canvases,
        img_scale=cfg.data.img_scale,
        batch_size=cfg.data.samples_per_device,
        shuffle=True,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=True,
    )
    sampler.set_epoch(epoch, start_batch)
    if sampler.batches_per_epoch == 0:
        sizes = [len(b) for b in sampler.buckets]
        raise DataError(
            f"data.samples_per_device: {dataset.ann_file} has too few images for one batch of "
            f"{cfg.data.samples_per_device} x {world_size} ranks on any canvas (images per canvas: {sizes})"
        )
    _warn_untrained(sampler, cfg, world_size)
    max_instances = cfg.model.targets.max_instances
    over = [n - max_instances for n in dataset.instance_counts() if n > max_instances]
    if over:
        _log.warning(
            "%d images have more than model.targets.max_instances=%d instances; up to %d instances per epoch "
            "are dropped (the smallest of each image)",
            len(over),
            max_instances,
            sum(over),
        )
    stats = LoaderStats(resolve_workers(cfg))
    ds = _TrainSamples(dataset, cfg, sampler.buckets, seed, stats)
    collator = BatchCollator(cfg.data, max_instances=max_instances, with_gt=True, stats=stats)
    return _loader(ds, _KeyedBatches(sampler), collator, cfg, seed, pin_memory, pin_memory_device)


def build_eval_loader(
    dataset: CocoInstances,
    cfg: Config,
    *,
    rank: int = 0,
    world_size: int = 1,
    with_gt: bool = False,
    pin_memory: bool | None = None,
    pin_memory_device: str = "",
) -> Loader:
    """Every image once across ranks, unaugmented; short batches are filled with ``image_ids == -1``.

    ``with_gt=False`` (evaluation against ``dataset.coco``) skips mask decoding and yields ``gt=None``.
    ``pin_memory`` and ``pin_memory_device`` as for :func:`build_train_loader`.
    """
    dataset.check_num_classes(cfg.model.head.num_classes)
    sampler = EvalBatchSampler(
        dataset.image_sizes(),
        cfg.data.canvases,
        img_scale=cfg.data.eval_scale,
        batch_size=cfg.data.samples_per_device,
        rank=rank,
        world_size=world_size,
    )
    stats = LoaderStats(resolve_workers(cfg))
    collator = BatchCollator(
        cfg.data, max_instances=cfg.model.targets.max_instances, with_gt=with_gt, stats=stats
    )
    ds = _EvalSamples(dataset, cfg, with_gt)
    return _loader(ds, _KeyedBatches(sampler), collator, cfg, 0, pin_memory, pin_memory_device)
