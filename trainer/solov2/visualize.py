"""Prediction overlays: coloured translucent masks with outlines and ``class score`` labels.

:func:`predict_images` is ``solov2 predict``'s engine: it loads image files, resizes and pads each to a
configured canvas as training does, runs the model one image at a time and writes, per image, an
overlay ``<stem>.png`` and, for all of them, ``predictions.json``::

    [{"file": "in/cat.jpg", "overlay": "cat.png", "width": 640, "height": 480,
      "instances": [{"label": 0, "class": "cat", "score": 0.93, "bbox": [x, y, w, h],
                     "segmentation": {"size": [480, 640], "counts": "..."}}]}]

Sizes, boxes and run-length-encoded masks refer to the image as loaded (EXIF orientation applied).
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

from .config import Config
from .errors import UserError
from .postprocess import encode_rle, masks_to_boxes_xywh, paste_masks
from .structures import Detections

__all__ = ["Prediction", "draw_overlay", "predict_images", "save_predictions"]


def _colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per instance index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((0.07 + index * 0.618034) % 1.0, 0.8, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


def _as_rgb_array(image: Image.Image | Tensor | np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 from a PIL image, a ``[3, H, W]`` uint8 tensor or an ``[H, W, 3]`` array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"draw_overlay: expected an image tensor [3, H, W], got {list(image.shape)}")
        return image.detach().to("cpu", torch.uint8).permute(1, 2, 0).contiguous().numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"draw_overlay: expected an image array [H, W, 3], got {list(array.shape)}")
    return array.astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def draw_overlay(
    image: Image.Image | Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    labels: Sequence[int] | Tensor,
    scores: Sequence[float] | Tensor,
    class_names: Sequence[str],
    *,
    alpha: float = 0.5,
) -> Image.Image:
    """Draw instances over an image.

    Args:
        image: RGB, as a PIL image, a ``[3, H, W]`` uint8 tensor or an ``[H, W, 3]`` uint8 array.
        masks: ``[K, H, W]`` bool, at the image's size.
        labels: ``K`` class ids (named by ``class_names``; ``class <id>`` when out of range).
        scores: ``K`` scores.
        class_names: name of each class id.
        alpha: opacity of the mask colour.

    Returns:
        A new RGB PIL image: each mask blended with its colour, outlined in it, and labelled
        ``"name 0.93"`` at the top-left of its extent (PIL's default font).
    """
    base = _as_rgb_array(image)
    masks = np.asarray(masks.detach().cpu() if isinstance(masks, Tensor) else masks).astype(bool)
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]
    scores = [float(v) for v in (scores.tolist() if isinstance(scores, Tensor) else scores)]
    if masks.ndim != 3 or masks.shape[1:] != base.shape[:2]:
        raise ValueError(f"draw_overlay: masks {list(masks.shape)} do not match the image {list(base.shape)}")
    if not len(labels) == len(scores) == masks.shape[0]:
        raise ValueError(
            f"draw_overlay: {masks.shape[0]} masks, {len(labels)} labels and {len(scores)} scores"
        )
    out = base.astype(np.float32)
    colours = [_colour(k) for k in range(masks.shape[0])]
    for mask, colour in zip(masks, colours, strict=True):
        out[mask] = out[mask] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
        out[_outline(mask)] = colour
    result = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    font = ImageFont.load_default()
    for mask, label, score, colour in zip(masks, labels, scores, colours, strict=True):
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            continue
        name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = max(0, min(int(xs.min()), result.width - (right - left) - 2))
        y = int(ys.min())
        draw.rectangle((x, y, x + right - left + 2, y + bottom - top + 2), fill=colour)
        ink = (0, 0, 0) if sum(colour) > 450 else (255, 255, 255)
        draw.text((x + 1 - left, y + 1 - top), text, fill=ink, font=font)
    return result


class Prediction(NamedTuple):
    """One image's detections at its original size, for :func:`save_predictions`."""

    file: str
    """The input image's path (or any name); the overlay is ``<stem>.png``."""
    image: Image.Image
    """The RGB image the masks refer to."""
    masks: Tensor
    """``[K, H, W]`` bool."""
    labels: Tensor
    """``[K]`` class ids."""
    scores: Tensor
    """``[K]`` scores."""


def _overlay_name(file: str, used: set[str], out_dir: Path) -> str:
    """``<stem>.png``, made unique among ``used`` and never the input file itself."""
    stem = Path(file).stem or "image"
    source = Path(file).resolve()
    name, n = f"{stem}.png", 1
    while name in used or (out_dir / name).resolve() == source:
        name, n = f"{stem}_{n}.png", n + 1
    used.add(name)
    return name


def save_predictions(
    predictions: Iterable[Prediction],
    out_dir: Path,
    *,
    class_names: Sequence[str],
    alpha: float = 0.5,
) -> list[dict[str, Any]]:
    """Write an overlay PNG per prediction (as they come) and ``predictions.json``; return its list."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    records: list[dict[str, Any]] = []
    for pred in predictions:
        masks = pred.masks.cpu().bool()
        name = _overlay_name(pred.file, used, out_dir)
        draw_overlay(pred.image, masks, pred.labels, pred.scores, class_names, alpha=alpha).save(
            out_dir / name
        )
        boxes = masks_to_boxes_xywh(masks).tolist()
        instances = []
        for label, score, box, rle in zip(
            pred.labels.tolist(), pred.scores.tolist(), boxes, encode_rle(masks), strict=True
        ):
            label = int(label)
            instances.append(
                {
                    "label": label,
                    "class": class_names[label] if 0 <= label < len(class_names) else str(label),
                    "score": round(float(score), 4),
                    "bbox": box,
                    "segmentation": rle,
                }
            )
        records.append(
            {
                "file": str(pred.file),
                "overlay": name,
                "width": pred.image.width,
                "height": pred.image.height,
                "instances": instances,
            }
        )
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=1) + "\n")
    return records


def _load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{path}: cannot read the image: {exc}") from exc


def _to_canvas(image: Image.Image, size: tuple[int, int], canvas: tuple[int, int]) -> Tensor:
    """``[1, 3, H, W]`` uint8: ``image`` resized to ``size`` at the canvas's top-left, zero padding.

    Resized as the evaluation transform does: bilinear and antialiased on the uint8 pixels.
    """
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    if tuple(size) != (image.height, image.width):
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = torch.zeros(1, 3, *canvas, dtype=torch.uint8)
    out[:, :, : size[0], : size[1]] = pixels
    return out


@torch.no_grad()
def _predict_one(
    model: nn.Module, path: Path, *, cfg: Config, device: torch.device, score_thr: float
) -> Prediction:
    # The data pipeline owns the resize and canvas rules; evaluation and prediction must agree.
    from .data.buckets import choose_canvas
    from .data.transforms import fit_into, fit_size

    image = _load_rgb(path)
    original = (image.height, image.width)
    fitted = fit_size(*original, cfg.data.img_scale)
    ch, cw = cfg.data.canvases[choose_canvas(*fitted, cfg.data.canvases)]
    canvas = (ch, cw)
    size = fit_into(fitted, canvas)
    det = model(_to_canvas(image, size, canvas).to(device))
    if not isinstance(det, Detections):
        det = Detections(*det)
    keep = (det.valid[0] & (det.scores[0] >= score_thr)).nonzero().flatten()
    masks = paste_masks(
        det.masks[0, keep],
        image_size=size,
        canvas_size=canvas,
        original_size=original,
        mask_thr=cfg.model.inference.mask_thr,
    ).cpu()
    nonempty = masks.flatten(1).any(dim=1)
    keep = keep.cpu()[nonempty]
    return Prediction(
        file=str(path),
        image=image,
        masks=masks[nonempty],
        labels=det.labels[0].cpu()[keep],
        scores=det.scores[0].float().cpu()[keep],
    )


def predict_images(
    model: nn.Module,
    paths: Sequence[str | Path],
    *,
    cfg: Config,
    device: torch.device | str,
    out_dir: Path,
    class_names: Sequence[str],
    score_thr: float = 0.3,
) -> list[dict[str, Any]]:
    """Segment image files and write overlays and ``predictions.json`` to ``out_dir``.

    Each image is loaded as RGB (EXIF orientation applied) and prepared as the evaluation loader
    prepares images: resized with ``fit_size(h, w, cfg.data.img_scale)``, put on the canvas that
    ``solov2.data.buckets.choose_canvas`` picks (the smallest holding it; if none does, the image is
    shrunk with ``fit_into`` to fit the canvas needing the least shrinking), zero-padded at the
    bottom-right, and run through ``model`` (eval mode, batch 1; its train/eval state is restored
    afterwards).
    Detections scoring at least ``score_thr`` are pasted back to the original size.

    Raises:
        UserError: a file cannot be read as an image.

    Returns:
        The records written to ``predictions.json`` (see the module docstring).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        predictions = (
            _predict_one(model, Path(p), cfg=cfg, device=device, score_thr=score_thr) for p in paths
        )
        return save_predictions(predictions, Path(out_dir), class_names=class_names)
    finally:
        model.train(was_training)
