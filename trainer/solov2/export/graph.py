"""Export a SOLOv2 model, from uint8 pixels to fixed-size detections, as one ONNX graph.

The graph has one input and four outputs (``N`` images, canvas ``H x W``, ``K = max_per_img`` slots):

- ``images``: ``[N, 3, H, W]`` uint8 RGB, the image at the top-left of the canvas, the rest in the
  padding colour ``solov2.pad_value`` (the config's mean rounded; normalisation happens inside, as in
  training);
- ``scores``: ``[N, K]`` float32, mask scores after Matrix NMS, decreasing, 0 where invalid;
- ``labels``: ``[N, K]`` int64 contiguous class ids;
- ``masks``: ``[N, K, H/4, W/4]`` float32 soft masks (sigmoid) at the mask stride;
- ``valid``: ``[N, K]`` bool.

The model's metadata (``metadata_props``, keys below) holds what a consumer needs to prepare images and
read the outputs: class names, canvas, batch, mask stride, the resize scale and the thresholds, and the
whole config as JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..atomic import write_atomically
from ..config import Config, to_dict
from ..model.solov2 import MASK_STRIDE
from .check import check_onnx
from .deps import ExportError, require

__all__ = ["INPUT_NAME", "MIN_OPSET", "OUTPUT_NAMES", "DetectionGraph", "export_onnx", "metadata"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "labels", "masks", "valid")
MIN_OPSET = 18
"""torch's ONNX exporter (``dynamo=True``) writes opset 18 and later."""


class DetectionGraph(nn.Module):
    """``images [N, 3, H, W]`` uint8 -> ``(scores, labels, masks, valid)``: a SOLOv2 model in eval mode,
    its :class:`~solov2.structures.Detections` as a plain tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        det = self.model(images)
        return det.scores, det.labels, det.masks, det.valid


def metadata(
    cfg: Config, *, canvas: tuple[int, int], batch: int, class_names: Sequence[str]
) -> dict[str, str]:
    """The model's metadata: string keys and values (numbers and lists as JSON)."""
    infer = cfg.model.inference
    return {
        "solov2.class_names": json.dumps(list(class_names)),
        "solov2.canvas": json.dumps(list(canvas)),
        "solov2.batch": str(batch),
        "solov2.mask_stride": str(MASK_STRIDE),
        "solov2.img_scale": json.dumps(list(cfg.data.eval_scale)),
        "solov2.pad_value": json.dumps(list(cfg.data.pad_value)),
        "solov2.score_thr": str(infer.score_thr),
        "solov2.mask_thr": str(infer.mask_thr),
        "solov2.update_thr": str(infer.update_thr),
        "solov2.nms_pre": str(infer.nms_pre),
        "solov2.max_per_img": str(infer.max_per_img),
        "solov2.config": json.dumps(to_dict(cfg)),
        "solov2.inputs": "images: [N, 3, H, W] uint8 RGB, image at the top-left of the canvas, the rest "
        "in the RGB colour solov2.pad_value",
        "solov2.outputs": "scores [N, K] float32, labels [N, K] int64, masks [N, K, H/4, W/4] float32 "
        "soft masks, valid [N, K] bool; slots sorted by decreasing score",
    }


def check_options(cfg: Config, *, canvas: tuple[int, int], batch: int, opset: int) -> None:
    """Refuse a canvas, batch or opset the graph cannot have, naming the option."""
    stride = max(cfg.model.head.strides)
    height, width = canvas
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise ExportError(
            f"--canvas {height} {width}: both sides must be positive multiples of {stride}, the model's "
            f"largest stride (e.g. {max(stride, height // stride * stride)} {max(stride, width // stride * stride)})"
        )
    if batch < 1:
        raise ExportError(f"--batch {batch}: must be at least 1")
    onnx = require("onnx")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"--opset {opset}: unsupported; torch's exporter writes opsets {MIN_OPSET} to {newest} "
            f"(the newest the installed onnx {onnx.__version__} knows)"
        )


def _export_proto(graph: DetectionGraph, images: Tensor, opset: int):
    """The ONNX ModelProto of ``graph`` traced on ``images`` (the exporter's chatter is captured)."""
    require("onnxscript")
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (images,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                optimize=True,
                verify=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {type(exc).__name__}: {exc}") from exc
    return program.model_proto


def export_onnx(
    model: nn.Module,
    cfg: Config,
    out: Path,
    *,
    canvas: tuple[int, int],
    batch: int = 1,
    opset: int = MIN_OPSET,
    class_names: Sequence[str] = (),
    atol: float = 1e-4,
    check_batches: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, float | int | bool]:
    """Export ``model`` (a SOLOv2; moved to the CPU and put in eval mode) to ``out`` after checking it in
    onnxruntime.

    The graph takes ``batch`` images on a ``canvas = (H, W)`` (sides multiples of the largest stride).
    Before anything is written, ``check_batches`` batches of generated shape images run through
    onnxruntime and PyTorch; the comparison is logged and, if it fails (a validity or label differs, or a
    score or mask value differs by more than ``atol``), no file is written and :class:`ExportError` is
    raised. The file is written to a temporary name and renamed.

    Returns:
        The comparison (see :func:`~solov2.export.check.check_onnx`) plus ``export_seconds``.
    """
    canvas = (int(canvas[0]), int(canvas[1]))
    check_options(cfg, canvas=canvas, batch=batch, opset=opset)
    onnx = require("onnx")
    model = model.cpu().eval()
    graph = DetectionGraph(model).eval()
    start = time.perf_counter()
    proto = _export_proto(graph, torch.zeros(batch, 3, *canvas, dtype=torch.uint8), opset)
    onnx.helper.set_model_props(proto, metadata(cfg, canvas=canvas, batch=batch, class_names=class_names))
    data = proto.SerializeToString()
    seconds = time.perf_counter() - start
    where = f"opset {opset}, batch {batch}, canvas {canvas[0]}x{canvas[1]}"
    log(f"export: traced and translated in {seconds:.1f} s ({where})")
    report = check_onnx(
        data, graph, canvas=canvas, batch=batch, batches=check_batches, atol=atol, fill=cfg.data.pad_value
    )
    log(report.pop("summary"))  # type: ignore[arg-type]
    if not report["ok"]:
        raise ExportError(
            f"{out}: not written: onnxruntime's outputs differ from PyTorch's beyond the tolerance"
        )
    out = Path(out)
    write_atomically(out, lambda f: f.write(data))
    log(f"export: wrote {out} ({len(data) / 2**20:.1f} MiB)")
    return {**report, "export_seconds": seconds}
