"""Run an exported SOLOv2 graph in onnxruntime as a runner of the shared inference path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config, config_from_dict
from ..structures import Detections
from .check import session_from
from .deps import ExportError

__all__ = ["OnnxRunner"]


class OnnxRunner:
    """``images [B, 3, H, W]`` uint8 -> :class:`Detections`, through an exported graph in onnxruntime (CPU).

    The graph's batch ``N`` is fixed: a batch is run ``N`` images at a time, the last chunk padded with
    black images whose outputs are dropped. Its canvas is fixed too: :meth:`config` gives the config stored
    in the file with ``data.canvases`` set to it, so images are prepared for that canvas.
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"--onnx {self.path}: no such file")
        try:
            self.session = session_from(str(self.path), threads=threads)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"--onnx {self.path}: onnxruntime cannot load it ({exc})") from exc
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if "solov2.config" not in self.metadata:
            raise ExportError(f"--onnx {self.path}: not a model written by solov2 export (no solov2.config)")
        self.input_name = self.session.get_inputs()[0].name
        self.batch, _, height, width = self.session.get_inputs()[0].shape
        self.canvas = (int(height), int(width))
        self.class_names: list[str] = json.loads(self.metadata.get("solov2.class_names", "[]"))

    def config(self, opts: tuple[str, ...] | list[str] = ()) -> Config:
        """The config stored in the file (with ``opts`` overrides), its canvases set to the graph's canvas.

        Inference thresholds are part of the graph; overriding them here changes only host-side steps
        (``mask_thr`` when pasting masks back)."""
        cfg = config_from_dict(json.loads(self.metadata["solov2.config"]), opts)
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, canvases=(self.canvas,)))

    def run(self, images: np.ndarray) -> list[Any]:
        """The raw outputs ``[scores, labels, masks, valid]`` for exactly ``N`` images (numpy uint8)."""
        return self.session.run(None, {self.input_name: images})

    def __call__(self, images: Tensor) -> Detections:
        if tuple(images.shape[-2:]) != self.canvas or images.dtype != torch.uint8:
            raise ValueError(
                f"OnnxRunner: {self.path} takes uint8 images on a {self.canvas[0]}x{self.canvas[1]} canvas, "
                f"got {images.dtype} {list(images.shape)}"
            )
        pixels = images.cpu().contiguous().numpy()
        count = pixels.shape[0]
        chunks = []
        for start in range(0, count, self.batch):
            chunk = pixels[start : start + self.batch]
            short = self.batch - chunk.shape[0]
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), dtype=np.uint8)])
            chunks.append([out[: self.batch - short] for out in self.run(chunk)])
        scores, labels, masks, valid = (
            torch.from_numpy(np.concatenate(parts)) for parts in zip(*chunks, strict=True)
        )
        return Detections(scores=scores, labels=labels, masks=masks, valid=valid.bool())
