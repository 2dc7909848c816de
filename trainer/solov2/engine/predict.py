"""``solov2 predict``'s engine: image files through the shared inference path, to overlays and JSON.

:func:`predict_images` decodes each file (EXIF orientation applied), prepares it as evaluation does, runs
it (a PyTorch model or an ONNX runner), brings the detections back to the image's size and writes, per
image, an overlay ``<stem>.png`` and, for all of them, ``predictions.json``::

    [{"file": "in/cat.jpg", "overlay": "cat.png", "width": 640, "height": 480,
      "instances": [{"label": 0, "class": "cat", "score": 0.93, "bbox": [x, y, w, h],
                     "segmentation": {"size": [480, 640], "counts": "..."}}]}]

Sizes, boxes and run-length-encoded masks refer to the image as loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..errors import DataError
from ..visualize import draw_overlay
from .inference import Runner, TorchRunner, detect_image, instance_records, load_image

__all__ = ["check_image_paths", "predict_images"]


def check_image_paths(paths: Sequence[str | Path]) -> None:
    """Refuse a missing path or a directory before anything is loaded.

    Raises:
        DataError: naming the first such path (and, for a directory, how to pass its images).
    """
    for path in map(Path, paths):
        if path.is_dir():
            raise DataError(f"IMAGE {path}: a directory (pass image files, e.g. {path}/*.jpg)")
        if not path.is_file():
            raise DataError(f"IMAGE {path}: no such file")


def _overlay_name(file: str, used: set[str], out_dir: Path) -> str:
    """``<stem>.png``, made unique among ``used`` and never the input file itself."""
    stem = Path(file).stem or "image"
    source = Path(file).resolve()
    name, n = f"{stem}.png", 1
    while name in used or (out_dir / name).resolve() == source:
        name, n = f"{stem}_{n}.png", n + 1
    used.add(name)
    return name


def predict_images(
    model: nn.Module | Runner,
    paths: Sequence[str | Path],
    *,
    cfg: Config,
    out_dir: Path,
    class_names: Sequence[str],
    score_thr: float = 0.3,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Segment image files and write overlays and ``predictions.json`` to ``out_dir``.

    Each image goes through :func:`~solov2.engine.inference.detect_image` with ``cfg.data`` (resized to fit
    ``eval_scale``, on the canvas evaluation would pick, padded bottom-right, run alone) and ``model``:
    a PyTorch model (run on ``device`` in eval mode, its train/eval state restored) or a runner such as
    ``solov2.engine.inference.TorchRunner`` (with autocast) or ``solov2.export.OnnxRunner``. Detections
    scoring at least ``score_thr`` are pasted back to the original size and thresholded at
    ``cfg.model.inference.mask_thr``.

    Raises:
        DataError: a file cannot be read as an image (named; the others are predicted and written first).

    Returns:
        The records written to ``predictions.json`` (see the module docstring).
    """
    runner = TorchRunner(model, device) if isinstance(model, nn.Module) else model
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    records: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for path in paths:
        try:
            image = load_image(Path(path))
        except DataError as exc:
            unreadable.append(str(exc))
            continue
        found = detect_image(
            runner, image, cfg.data, mask_thr=cfg.model.inference.mask_thr, score_thr=score_thr
        )
        name = _overlay_name(str(path), used, out_dir)
        draw_overlay(image, found.masks, found.labels, found.scores, class_names).save(out_dir / name)
        instances = [
            {
                "label": r["label"],
                "class": class_names[r["label"]] if 0 <= r["label"] < len(class_names) else str(r["label"]),
                "score": round(r["score"], 4),
                "bbox": r["bbox"],
                "segmentation": r["segmentation"],
            }
            for r in instance_records(found)
        ]
        height, width = image.shape[-2:]
        records.append(
            {
                "file": str(path),
                "overlay": name,
                "width": int(width),
                "height": int(height),
                "instances": instances,
            }
        )
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=1) + "\n")
    if unreadable:
        raise DataError(
            f"{len(unreadable)} of {len(paths)} images could not be read ({'; '.join(unreadable[:3])}"
            + ("; ..." if len(unreadable) > 3 else "")
            + f"); the predictions of the others are in {out_dir / 'predictions.json'}"
        )
    return records
