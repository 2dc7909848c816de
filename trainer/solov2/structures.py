"""Static-shape containers passed between data, model, targets, losses and post-processing.

Every field has a fixed shape for a given (batch size, canvas, ``max_instances``) so that a training
step compiles to one graph. Padding entries are marked invalid instead of being removed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .errors import GroundTruthError

MASK_STRIDE = 4
"""Stride of the mask features (P2), where mask targets live; :class:`CompactGroundTruth` masks use it."""


class GroundTruth(NamedTuple):
    """Ground truth of a batch, padded to ``max_instances`` (N) per image.

    - ``boxes``:  ``[B, N, 4]`` float, ``x1, y1, x2, y2`` in canvas pixels (after resize and padding).
    - ``labels``: ``[B, N]`` int64, contiguous class ids in ``[0, num_classes)``.
    - ``masks``:  ``[B, N, H, W]`` uint8 (0/1) at the padded canvas size ``H x W``.
    - ``valid``:  ``[B, N]`` bool, False for padding entries.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    valid: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GroundTruth:
        return GroundTruth(*(t.to(device, non_blocking=non_blocking) for t in self))

    def validate(self, num_classes: int, image_size: tuple[int, int] | None = None) -> None:
        """Check shapes, dtypes and ranges; raise :class:`GroundTruthError` naming the bad field.

        This synchronises with the tensors' device, so it belongs to data loading, never to the
        compiled training step.
        """
        self._validate(num_classes, image_size, mask_stride=1)

    def _validate(self, num_classes: int, image_size: tuple[int, int] | None, *, mask_stride: int) -> None:
        boxes, labels, masks, valid = self
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise GroundTruthError(f"gt.boxes: expected shape [B, N, 4], got {list(boxes.shape)}")
        b, n = boxes.shape[:2]
        for name, t, dims in (("labels", labels, 2), ("valid", valid, 2), ("masks", masks, 4)):
            if t.dim() != dims or tuple(t.shape[:2]) != (b, n):
                raise GroundTruthError(
                    f"gt.{name}: expected leading shape [B={b}, N={n}] and {dims} dims, got {list(t.shape)}"
                )
        if not boxes.is_floating_point():
            raise GroundTruthError(f"gt.boxes: expected a floating-point tensor, got {boxes.dtype}")
        if labels.dtype != torch.int64:
            raise GroundTruthError(f"gt.labels: expected int64, got {labels.dtype}")
        if valid.dtype != torch.bool:
            raise GroundTruthError(f"gt.valid: expected bool, got {valid.dtype}")
        if masks.dtype not in (torch.uint8, torch.bool):
            raise GroundTruthError(f"gt.masks: expected uint8 or bool, got {masks.dtype}")
        height, width = masks.shape[-2] * mask_stride, masks.shape[-1] * mask_stride
        if image_size is not None and (height, width) != tuple(image_size):
            raise GroundTruthError(
                f"gt.masks: expected the canvas size {tuple(image_size)}, got {(height, width)}"
                + (
                    f" (masks of {tuple(masks.shape[-2:])} at stride {mask_stride})"
                    if mask_stride > 1
                    else ""
                )
            )
        if masks.numel() and masks.dtype == torch.uint8 and int(masks.max()) > 1:
            raise GroundTruthError(f"gt.masks: values must be 0 or 1, found {int(masks.max())}")
        vb = boxes[valid]
        if vb.numel():
            if not torch.isfinite(vb).all():
                raise GroundTruthError("gt.boxes: non-finite coordinates in a valid instance")
            if (vb[:, 2] < vb[:, 0]).any() or (vb[:, 3] < vb[:, 1]).any():
                raise GroundTruthError("gt.boxes: x2 < x1 or y2 < y1 in a valid instance")
            bad = (vb[:, 0] < 0) | (vb[:, 1] < 0) | (vb[:, 2] > width) | (vb[:, 3] > height)
            if bad.any():
                first = vb[bad][0].tolist()
                raise GroundTruthError(
                    f"gt.boxes: {int(bad.sum())} valid box(es) outside the {width}x{height} canvas, "
                    f"first {[round(v, 1) for v in first]}"
                )
        vl = labels[valid]
        if vl.numel() and ((vl < 0).any() or (vl >= num_classes).any()):
            raise GroundTruthError(
                f"gt.labels: values must lie in [0, {num_classes}), got min {int(vl.min())} max {int(vl.max())}"
            )


class CompactGroundTruth(NamedTuple):
    """What the data loaders hand over: :class:`GroundTruth` with masks at the stride they are used at.

    - ``boxes``, ``labels``, ``valid``: as in :class:`GroundTruth`.
    - ``masks``:   ``[B, N, H/4, W/4]`` uint8 (0/1): the canvas-size masks through
      :func:`~solov2.targets.downsample_masks`.
    - ``centers``: ``[B, N, 2]`` float32 centre of mass ``(h, w)`` of each canvas-size mask, in canvas pixels.
    - ``counts``:  ``[B, N]`` int64 pixels of each canvas-size mask.

    :func:`~solov2.targets.compact_ground_truth` makes it from a :class:`GroundTruth`, and
    :func:`~solov2.targets.build_targets` gives the same targets for both; the compact form carries
    16 times fewer mask bytes between processes and to the device.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    valid: Tensor
    centers: Tensor
    counts: Tensor

    @property
    def canvas_size(self) -> tuple[int, int]:
        """``(H, W)`` of the padded canvas."""
        return int(self.masks.shape[-2]) * MASK_STRIDE, int(self.masks.shape[-1]) * MASK_STRIDE

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CompactGroundTruth:
        return CompactGroundTruth(*(t.to(device, non_blocking=non_blocking) for t in self))

    def validate(self, num_classes: int, image_size: tuple[int, int] | None = None) -> None:
        """Check shapes, dtypes and ranges (see :meth:`GroundTruth.validate`); ``image_size`` is the canvas."""
        b, n = self.boxes.shape[:2] if self.boxes.dim() == 3 else (-1, -1)
        if tuple(self.centers.shape) != (b, n, 2) or self.centers.dtype != torch.float32:
            raise GroundTruthError(
                f"gt.centers: expected float32 [B={b}, N={n}, 2], got {self.centers.dtype} {list(self.centers.shape)}"
            )
        if tuple(self.counts.shape) != (b, n) or self.counts.dtype != torch.int64:
            raise GroundTruthError(
                f"gt.counts: expected int64 [B={b}, N={n}], got {self.counts.dtype} {list(self.counts.shape)}"
            )
        GroundTruth(*self[:4])._validate(num_classes, image_size, mask_stride=MASK_STRIDE)
        if (self.counts[self.valid] < 1).any():
            raise GroundTruthError("gt.counts: a valid instance has an empty mask")


class Detections(NamedTuple):
    """Fixed-size inference output per image: ``K = max_per_img`` slots, padding marked invalid.

    - ``scores``: ``[B, K]`` float, mask scores after Matrix NMS (0 for invalid slots).
    - ``labels``: ``[B, K]`` int64 class ids.
    - ``masks``:  ``[B, K, H/4, W/4]`` float, soft masks (sigmoid) at the mask-feature stride.
    - ``valid``:  ``[B, K]`` bool.
    """

    scores: Tensor
    labels: Tensor
    masks: Tensor
    valid: Tensor


class Batch(NamedTuple):
    """What a data loader yields: images padded to one canvas, their ground truth and metadata.

    - ``images``:         ``[B, 3, H, W]`` uint8 RGB (normalised inside the model, on the device).
    - ``gt``:             :class:`CompactGroundTruth` from the loaders (``None`` for inference-only
      loaders); the model also takes a full-resolution :class:`GroundTruth`.
    - ``image_ids``:      ``[B]`` int64 COCO image ids; ``-1`` marks a padding image that fills a short
      last batch (its detections are ignored).
    - ``image_sizes``:    ``[B, 2]`` int64 ``(h, w)`` of the resized image at the canvas's top-left.
    - ``original_sizes``: ``[B, 2]`` int64 ``(h, w)`` of the image as stored on disk.
    """

    images: Tensor
    gt: CompactGroundTruth | GroundTruth | None
    image_ids: Tensor
    image_sizes: Tensor
    original_sizes: Tensor
