"""Prediction overlays: coloured translucent masks with outlines and ``class score`` labels.

Drawing only: the detections come from the shared inference path (:mod:`solov2.engine.inference`), and
``solov2 predict`` (:mod:`solov2.engine.predict`) writes the overlays this module draws.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["draw_overlay"]


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
