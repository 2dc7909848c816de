"""Compare an exported graph in onnxruntime with the PyTorch model it came from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.synthetic import draw_instances
from .deps import ExportError, require

__all__ = ["check_onnx", "compare_outputs", "session_from"]


def session_from(model: bytes | str, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for a serialised model or a file path."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_images(batch: int, canvas: tuple[int, int], seed: int, fill: Sequence[int]) -> Tensor:
    """``[batch, 3, H, W]`` uint8 images of random shapes (the synthetic data set's), some on a smaller
    image padded into the canvas with the colour ``fill`` (``data.pad_value``) as real inputs are."""
    generator = torch.Generator().manual_seed(seed)
    height, width = canvas
    images = torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1).repeat(batch, 1, height, width)
    for b in range(batch):
        h, w = (height, width) if b % 2 == 0 else (height * 3 // 4, width // 2)
        image, _, _ = draw_instances(h, w, 1 + b % 6, generator)
        images[b, :, :h, :w] = image
    return images


def compare_outputs(expected: tuple[Tensor, ...], actual: tuple[np.ndarray, ...]) -> dict[str, float | int]:
    """Differences between PyTorch's ``(scores, labels, masks, valid)`` and onnxruntime's."""
    scores, labels, masks, valid = (t.detach().cpu() for t in expected)
    o_scores, o_labels, o_masks, o_valid = (torch.from_numpy(np.asarray(a)) for a in actual)
    both = valid & o_valid.bool()
    return {
        "detections": int(valid.sum()),
        "valid_differ": int((valid != o_valid.bool()).sum()),
        "labels_differ": int(((labels != o_labels) & both).sum()),
        "max_score_diff": float((scores.float() - o_scores.float()).abs().max()) if scores.numel() else 0.0,
        "max_mask_diff": float((masks.float() - o_masks.float()).abs().max()) if masks.numel() else 0.0,
    }


def check_onnx(
    model: bytes | str,
    graph: nn.Module,
    *,
    canvas: tuple[int, int],
    batch: int,
    batches: int,
    atol: float,
    fill: Sequence[int],
) -> dict[str, Any]:
    """Run ``batches`` batches of generated images (padded with ``fill``) through onnxruntime and through
    ``graph`` (PyTorch).

    Returns:
        ``{"ok", "images", "detections", "valid_differ", "labels_differ", "max_score_diff",
        "max_mask_diff", "atol", "summary"}``: ``ok`` when no validity or label differs and no score or
        mask value differs by more than ``atol``; ``summary`` is a line for the user.
    """
    try:
        session = session_from(model)
    except Exception as exc:  # e.g. an opset newer than the installed onnxruntime runs
        raise ExportError(
            f"onnxruntime cannot load the exported graph ({type(exc).__name__}: {exc})"
        ) from exc
    totals: dict[str, Any] = {"detections": 0, "valid_differ": 0, "labels_differ": 0}
    totals.update(max_score_diff=0.0, max_mask_diff=0.0)
    for index in range(max(1, batches)):
        images = check_images(batch, canvas, seed=index, fill=fill)
        with torch.no_grad():
            expected = graph(images)
        actual = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        diff = compare_outputs(expected, tuple(actual))
        for key in ("detections", "valid_differ", "labels_differ"):
            totals[key] += diff[key]
        for key in ("max_score_diff", "max_mask_diff"):
            totals[key] = max(totals[key], diff[key])
    ok = (
        totals["valid_differ"] == 0
        and totals["labels_differ"] == 0
        and totals["max_score_diff"] <= atol
        and totals["max_mask_diff"] <= atol
    )
    images = max(1, batches) * batch
    summary = (
        f"onnxruntime check on {images} generated images ({canvas[0]}x{canvas[1]}), {totals['detections']} "
        f"detections: valid slots differing {totals['valid_differ']}, labels differing {totals['labels_differ']}, "
        f"max |score diff| {totals['max_score_diff']:.2e}, max |mask diff| {totals['max_mask_diff']:.2e} "
        f"(tolerance {atol:.0e}): {'ok' if ok else 'FAILED'}"
    )
    return {"ok": ok, "images": images, **totals, "atol": atol, "summary": summary}
