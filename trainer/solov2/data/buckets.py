"""Aspect-ratio buckets: each image goes to one fixed canvas, and batches never mix canvases.

An image's canvas depends only on its stored size, ``img_scale`` and the canvas list, so it is known
from the annotation file before any image is decoded. Samplers work on *global* batches of
``batch_size * world_size`` images from one canvas, which rank ``r`` slices at ``[r * batch_size,
(r + 1) * batch_size)``: at every step all ranks get the same canvas (equal step times, same compiled
graph), disjoint images, and the same number of batches (no rank waits forever in a collective).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .transforms import fit_size

__all__ = ["BucketBatchSampler", "EvalBatchSampler", "assign_canvases", "choose_canvas", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``(seed, epoch, index)``; the same in every process."""
    state = np.random.SeedSequence([v & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def choose_canvas(height: int, width: int, canvases: Sequence[tuple[int, int]]) -> int:
    """Index of the canvas for a *resized* ``height x width`` image.

    Rule: among the canvases that hold the image (``h <= ch`` and ``w <= cw``), the one with the smallest
    area, i.e. the least padding; ties go to the first listed. If none holds it, the one that needs the
    least shrinking (largest ``min(ch / h, cw / w)``), ties to the smaller area; the transforms then scale
    the image down to fit it.
    """
    holding = [k for k, (ch, cw) in enumerate(canvases) if height <= ch and width <= cw]
    if holding:
        return min(holding, key=lambda k: (canvases[k][0] * canvases[k][1], k))
    return min(
        range(len(canvases)),
        key=lambda k: (
            -min(canvases[k][0] / height, canvases[k][1] / width),
            canvases[k][0] * canvases[k][1],
            k,
        ),
    )


def assign_canvases(
    sizes: Sequence[tuple[int, int]], canvases: Sequence[tuple[int, int]], *, img_scale: Sequence[int]
) -> list[int]:
    """Canvas index of every image, from its stored ``(h, w)`` rescaled to fit ``img_scale``.

    The canvas is chosen for the nominal scale: with multi-scale training an image rescaled below it
    still fits (with more padding) and one rescaled above it is shrunk to fit.
    """
    return [choose_canvas(*fit_size(h, w, img_scale), canvases) for h, w in sizes]


class _Buckets(Sampler[list[int]]):
    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        canvases: Sequence[tuple[int, int]],
        *,
        img_scale: Sequence[int],
        batch_size: int,
        rank: int,
        world_size: int,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.canvases = [tuple(c) for c in canvases]
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.canvas_of = assign_canvases(sizes, self.canvases, img_scale=img_scale)
        self.buckets = [[i for i, c in enumerate(self.canvas_of) if c == k] for k in range(len(canvases))]

    def _global_batches(self) -> list[tuple[int, list[int]]]:
        raise NotImplementedError

    def iter_batches(self) -> Iterator[tuple[int, list[int]]]:
        """This rank's batches as ``(canvas index, dataset indices)``."""
        lo = self.rank * self.batch_size
        for canvas, indices in self._global_batches():
            yield canvas, indices[lo : lo + self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for _, indices in self.iter_batches():
            yield indices


class BucketBatchSampler(_Buckets):
    """Training batches of ``batch_size`` indices from one canvas, for one rank.

    Per epoch, each bucket is shuffled (a generator seeded from ``(seed, epoch)``), cut into global
    batches, and the global batches of all buckets are shuffled together. With ``drop_last`` the fewer
    than ``batch_size * world_size`` images left in a bucket sit out this epoch (others the next), so
    a bucket smaller than one global batch is never sampled (:meth:`untrained` lists them); without it
    the last global batch of a bucket is completed with images from the same bucket.
    ``set_epoch(epoch, start_batch=k)`` skips this rank's first ``k`` batches of the epoch (resume);
    ``len()`` is the number of batches the next iteration yields.
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        canvases: Sequence[tuple[int, int]],
        *,
        img_scale: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            sizes, canvases, img_scale=img_scale, batch_size=batch_size, rank=rank, world_size=world_size
        )
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's sequence; ``start_batch`` batches of it are skipped (0 for a fresh epoch)."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be non-negative, got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch (the same on every rank and every epoch)."""
        g = self.batch_size * self.world_size
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(len(b) / g) for b in self.buckets)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def untrained(self) -> dict[int, int]:
        """Images that no epoch ever samples, by canvas index: with ``drop_last``, those of a bucket with
        fewer images than one global batch of ``batch_size * world_size``."""
        if not self.drop_last:
            return {}
        g = self.batch_size * self.world_size
        return {k: len(b) for k, b in enumerate(self.buckets) if 0 < len(b) < g}

    def _global_batches(self) -> list[tuple[int, list[int]]]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        g = self.batch_size * self.world_size
        batches: list[tuple[int, list[int]]] = []
        for canvas, bucket in enumerate(self.buckets):
            order = bucket
            if self.shuffle:
                order = [bucket[j] for j in torch.randperm(len(bucket), generator=generator).tolist()]
            if self.drop_last:
                order = order[: len(order) // g * g]
            elif len(order) % g:
                missing = g - len(order) % g
                order = order + (order * math.ceil(missing / len(order)))[:missing]
            batches += [(canvas, order[s : s + g]) for s in range(0, len(order), g)]
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
        return batches[self.start_batch :]


class EvalBatchSampler(_Buckets):
    """Evaluation batches: every image exactly once across ranks, in bucket then index order, never
    shuffled; a bucket's last global batch is filled with ``-1`` (padding entries, ``image_ids == -1``)
    so shapes stay static and all ranks run the same number of batches."""

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        return sum(math.ceil(len(b) / g) for b in self.buckets)

    def _global_batches(self) -> list[tuple[int, list[int]]]:
        g = self.batch_size * self.world_size
        batches: list[tuple[int, list[int]]] = []
        for canvas, bucket in enumerate(self.buckets):
            for s in range(0, len(bucket), g):
                chunk = bucket[s : s + g]
                batches.append((canvas, chunk + [-1] * (g - len(chunk))))
        return batches
