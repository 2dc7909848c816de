"""``solov2 eval``, ``predict`` and ``export``: a trained checkpoint (or its ONNX export) on a data set or
on image files, and the export itself."""

from __future__ import annotations

from pathlib import Path

from ..amp import amp_dtype
from ..config import Config
from ..device import setup_runtime, shutdown
from ..model import build_model
from .checkpoint import load_model_weights
from .inference import TorchRunner
from .splits import evaluate_split


def run_eval(
    cfg: Config, *, data_path: Path, checkpoint: Path, work_dir: Path | None, split: str, device: str
) -> dict[str, float]:
    """COCO segm and bbox AP of ``checkpoint`` on ``split``; rank 0 prints the table and writes files."""
    runtime = setup_runtime(device)
    try:
        model = build_model(cfg, pretrained=False).to(runtime.device)
        extras = load_model_weights(model, checkpoint)
        return evaluate_split(
            model,
            cfg,
            data_path=data_path,
            split=split,
            runtime=runtime,
            autocast_dtype=amp_dtype(runtime.kind, cfg.train.amp),
            out_dir=work_dir,
            log=print if runtime.is_main else (lambda _msg: None),
            class_names=extras.get("class_names"),
        )
    finally:
        shutdown(runtime)


def run_predict(
    cfg: Config, *, images: list[Path], checkpoint: Path, out: Path, score_thr: float, device: str
) -> list[dict]:
    """Overlay PNGs and ``predictions.json`` for image files, one image at a time."""
    from .predict import predict_images

    runtime = setup_runtime(device)
    model = build_model(cfg, pretrained=False).to(runtime.device)
    extras = load_model_weights(model, checkpoint)
    names = extras.get("class_names") or [str(i) for i in range(cfg.model.head.num_classes)]
    runner = TorchRunner(
        model, runtime.device, amp_dtype(runtime.kind, cfg.train.amp)
    )  # as evaluation runs it
    results = predict_images(runner, images, cfg=cfg, out_dir=out, class_names=names, score_thr=score_thr)
    _report_predictions(results, score_thr, out)
    return results


def _report_predictions(results: list[dict], score_thr: float, out: Path) -> None:
    found = sum(len(r["instances"]) for r in results)
    print(f"predict: {len(results)} image(s), {found} instance(s) above {score_thr}; overlays in {out}")


def run_eval_onnx(
    onnx: Path, *, opts: list[str], data_path: Path, work_dir: Path | None, split: str
) -> dict[str, float]:
    """COCO segm and bbox AP of an exported model, run in onnxruntime on the CPU (under torchrun each
    process takes its share of the images, as ``run_eval``)."""
    from ..export import OnnxRunner

    runner = OnnxRunner(onnx)
    runtime = setup_runtime("cpu")
    try:
        return evaluate_split(
            runner,
            runner.config(opts),
            data_path=data_path,
            split=split,
            runtime=runtime,
            autocast_dtype=None,
            out_dir=work_dir,
            log=print if runtime.is_main else (lambda _msg: None),
            class_names=runner.class_names or None,
        )
    finally:
        shutdown(runtime)


def run_predict_onnx(
    onnx: Path, *, opts: list[str], images: list[Path], out: Path, score_thr: float
) -> list[dict]:
    """``run_predict`` with an exported model in onnxruntime: the same preparation, pasting and overlays."""
    from ..export import OnnxRunner
    from .predict import predict_images

    runner = OnnxRunner(onnx)
    cfg = runner.config(opts)
    names = runner.class_names or [str(i) for i in range(cfg.model.head.num_classes)]
    results = predict_images(runner, images, cfg=cfg, out_dir=out, class_names=names, score_thr=score_thr)
    _report_predictions(results, score_thr, out)
    return results


def run_export(
    cfg: Config,
    *,
    checkpoint: Path,
    out: Path,
    canvas: tuple[int, int] | None,
    batch: int,
    opset: int,
    atol: float,
    check_batches: int,
) -> dict:
    """Load ``checkpoint`` on the CPU and write it as ONNX (checked in onnxruntime first)."""
    from ..export import export_onnx

    model = build_model(cfg, pretrained=False)
    extras = load_model_weights(model, checkpoint)
    names = extras.get("class_names") or [str(i) for i in range(cfg.model.head.num_classes)]
    return export_onnx(
        model,
        cfg,
        out,
        canvas=tuple(canvas) if canvas else tuple(cfg.data.canvases[0]),
        batch=batch,
        opset=opset,
        class_names=names,
        atol=atol,
        check_batches=check_batches,
    )
