"""``solov2 eval`` and ``solov2 predict``: a trained checkpoint on a data set or on image files."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..device import amp_dtype, setup_runtime, shutdown
from ..model.solov2 import SOLOv2
from .checkpoint import load_model_weights
from .splits import evaluate_split


def run_eval(
    cfg: Config, *, data_path: Path, checkpoint: Path, work_dir: Path | None, split: str, device: str
) -> dict[str, float]:
    """COCO segm and bbox AP of ``checkpoint`` on ``split``; rank 0 prints the table and writes files."""
    runtime = setup_runtime(device)
    try:
        model = SOLOv2(cfg).to(runtime.device)
        load_model_weights(model, checkpoint)
        return evaluate_split(
            model,
            cfg,
            data_path=data_path,
            split=split,
            runtime=runtime,
            autocast_dtype=amp_dtype(runtime.kind, cfg.train.amp),
            out_dir=work_dir,
            log=print if runtime.is_main else (lambda _msg: None),
        )
    finally:
        shutdown(runtime)


def run_predict(
    cfg: Config, *, images: list[Path], checkpoint: Path, out: Path, score_thr: float, device: str
) -> list[dict]:
    """Overlay PNGs and ``predictions.json`` for image files, one image at a time."""
    from ..visualize import predict_images

    runtime = setup_runtime(device)
    model = SOLOv2(cfg).to(runtime.device)
    extras = load_model_weights(model, checkpoint)
    names = extras.get("class_names") or [str(i) for i in range(cfg.model.head.num_classes)]
    results = predict_images(model, images, cfg=cfg, device=runtime.device, out_dir=out, class_names=names,
                             score_thr=score_thr)  # fmt: skip
    found = sum(len(r["instances"]) for r in results)
    print(f"predict: {len(results)} image(s), {found} instance(s) above {score_thr}; overlays in {out}")
    return results
