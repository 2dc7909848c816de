"""The one path from images to detections in original image coordinates.

Evaluation, ``solov2 predict`` and the ONNX runner all go through it:

1. :func:`prepare_image` resizes a decoded ``[3, H, W]`` uint8 image and pads it to a canvas exactly as the
   evaluation loader does (the same :class:`~solov2.data.transforms.EvalTransform` and canvas rule);
2. a *runner* turns a uint8 batch ``[B, 3, H, W]`` into fixed-size :class:`~solov2.structures.Detections`:
   :class:`TorchRunner` wraps a PyTorch model, ``solov2.export.OnnxRunner`` an onnxruntime session;
3. :func:`to_instances` pastes one image's valid slots back to its original size, thresholds them and
   drops empty masks; :func:`instance_records` gives each instance's box and run-length encoding.

:func:`detect` chains 2 and 3 for a prepared batch (evaluation, whose loader prepares the images), and
:func:`detect_image` all three for one decoded image (``solov2 predict``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config import DataConfig
from ..data.buckets import choose_canvas
from ..data.coco import Sample, read_image
from ..data.transforms import EvalTransform, fit_size
from ..postprocess import encode_rle, masks_to_boxes_xywh, paste_masks
from ..structures import Detections

__all__ = [
    "ImageMeta",
    "Instances",
    "Runner",
    "TorchRunner",
    "detect",
    "detect_image",
    "instance_records",
    "load_image",
    "prepare_image",
    "to_instances",
]

Runner = Callable[[Tensor], Detections]
"""``images [B, 3, H, W]`` uint8 (one canvas) -> :class:`Detections` with ``B`` rows."""


class ImageMeta(NamedTuple):
    """Where an image sits on its canvas: sizes are ``(h, w)``."""

    image_size: tuple[int, int]
    """The resized image at the canvas's top-left."""
    original_size: tuple[int, int]
    """The image as decoded."""


class Instances(NamedTuple):
    """One image's detections at its original size, in decreasing score order."""

    masks: Tensor
    """``[K, H0, W0]`` bool, none empty, where the runner's output is (:func:`instance_records` boxes and
    encodes an accelerator's masks there; evaluation never copies them to the host whole)."""
    labels: Tensor
    """``[K]`` int64 contiguous class ids."""
    scores: Tensor
    """``[K]`` float32."""


def load_image(path: Path) -> Tensor:
    """Decode an image file to ``[3, H, W]`` uint8 RGB with its EXIF orientation applied.

    Raises:
        DataError: the file is missing or cannot be decoded (the message names it).
    """
    return read_image(Path(path), exif_transpose=True)


def prepare_image(image: Tensor, data: DataConfig) -> tuple[Tensor, ImageMeta]:
    """Resize and pad one ``[3, H, W]`` uint8 image as the evaluation loader does.

    The image is scaled to fit ``data.eval_scale`` (``fit_size``), put on the canvas of ``data.canvases``
    that ``choose_canvas`` picks (the smallest holding it; if none does, it is shrunk to fit the one needing
    the least shrinking) and padded at the bottom-right with ``data.pad_value``, by the loader's own
    ``EvalTransform``.

    Returns:
        ``[3, Hc, Wc]`` uint8 on the chosen canvas and the image's :class:`ImageMeta`.
    """
    original = (int(image.shape[-2]), int(image.shape[-1]))
    canvases = [(int(h), int(w)) for h, w in data.canvases]
    canvas = canvases[choose_canvas(*fit_size(*original, data.eval_scale), canvases)]
    sample = Sample(
        image=image,
        masks=torch.zeros(0, *original, dtype=torch.uint8),
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.int64),
        image_id=-1,
        original_size=original,
        image_size=original,
    )
    out = EvalTransform(data)(sample, canvas=canvas)
    return out.image, ImageMeta(
        image_size=(int(out.image_size[0]), int(out.image_size[1])), original_size=original
    )


class TorchRunner:
    """A PyTorch SOLOv2 model as a :data:`Runner`: eval mode (its train/eval state is restored after each
    call), no gradients, images moved to ``device``, optionally under ``torch.autocast``."""

    def __init__(
        self, model: nn.Module, device: torch.device | str, autocast_dtype: torch.dtype | None = None
    ) -> None:
        self.model, self.device, self.autocast_dtype = model, torch.device(device), autocast_dtype

    def __call__(self, images: Tensor) -> Detections:
        was_training = self.model.training
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        self.model.eval()
        try:
            with torch.no_grad(), autocast:
                det = self.model(images.to(self.device, non_blocking=True))
        finally:
            self.model.train(was_training)
        return det if isinstance(det, Detections) else Detections(*det)


def to_instances(
    det: Detections,
    index: int,
    meta: ImageMeta,
    *,
    canvas_size: tuple[int, int],
    mask_thr: float,
    score_thr: float | None = None,
) -> Instances:
    """Image ``index`` of a batch's detections at its original size.

    Keeps the valid slots (scoring at least ``score_thr`` if given), pastes their soft masks back with
    :func:`~solov2.postprocess.paste_masks`, thresholds them at ``mask_thr`` and drops the empty ones.
    """
    keep = det.valid[index]
    if score_thr is not None:
        keep = keep & (det.scores[index] >= score_thr)
    slots = keep.nonzero().flatten()
    masks = paste_masks(
        det.masks[index, slots],
        image_size=meta.image_size,
        canvas_size=canvas_size,
        original_size=meta.original_size,
        mask_thr=mask_thr,
    )
    nonempty = masks.flatten(1).any(dim=1)
    slots = slots[nonempty]
    return Instances(
        masks=masks[nonempty],
        labels=det.labels[index, slots].cpu(),
        scores=det.scores[index, slots].float().cpu(),
    )


def detect(
    runner: Runner,
    images: Tensor,
    metas: Sequence[ImageMeta | None],
    *,
    mask_thr: float,
    score_thr: float | None = None,
) -> Iterator[Instances | None]:
    """Run a batch ``images [B, 3, H, W]`` (uint8, one canvas) and bring each image's detections back
    to its original size, one image at a time as they are taken (a consumer that is done with each image
    before taking the next keeps about one image's full-size masks, not the batch's); ``None`` for
    images whose meta is ``None`` (padding in a short batch)."""
    det = runner(images)
    canvas = (int(images.shape[-2]), int(images.shape[-1]))
    for b, meta in enumerate(metas):
        if meta is None:
            yield None
        else:
            yield to_instances(det, b, meta, canvas_size=canvas, mask_thr=mask_thr, score_thr=score_thr)


def detect_image(
    runner: Runner, image: Tensor, data: DataConfig, *, mask_thr: float, score_thr: float | None = None
) -> Instances:
    """One decoded ``[3, H, W]`` uint8 image to its detections at its own size: :func:`prepare_image`, then
    :func:`detect` as a batch of one."""
    canvas, meta = prepare_image(image, data)
    (found,) = detect(runner, canvas[None], [meta], mask_thr=mask_thr, score_thr=score_thr)
    assert found is not None
    return found


def instance_records(instances: Instances) -> list[dict[str, Any]]:
    """Per instance ``{"label": int, "score": float, "bbox": [x, y, w, h], "segmentation": RLE}``: the box
    is the mask's pixel extent, the RLE is COCO's with ``str`` counts (both computed where the masks are,
    see :func:`~solov2.postprocess.encode_rle`)."""
    boxes = masks_to_boxes_xywh(instances.masks).tolist()
    return [
        {"label": int(label), "score": float(score), "bbox": box, "segmentation": rle}
        for label, score, box, rle in zip(
            instances.labels.tolist(),
            instances.scores.tolist(),
            boxes,
            encode_rle(instances.masks),
            strict=True,
        )
    ]
