"""ONNX export: time to export, and inference images/s in onnxruntime vs PyTorch eager, on the CPU.

    python bench/export.py                                   # tiny at 256x256 and R50 1x at 800x1088
    python bench/export.py --configs solov2_tiny_cpu --runs 20 --threads 2

Each configuration's model (random weights: the graph and its cost do not depend on them) is exported with
``solov2.export.export_onnx`` (its onnxruntime check included), then the same uint8 batch runs through the
graph in onnxruntime and through the model in eager PyTorch (no autocast, ``torch.no_grad``), both with
``--threads`` threads, after one warm-up run each, alternating run by run so that both see the same load;
figures are medians. One thread by default: on a machine shared with other jobs, torch's OpenMP threads
wait on each other (a second thread made eager inference 10-20x slower on a loaded 2-core machine) while a
single thread per engine compares the engines, not the scheduler. Prints one JSON object per configuration, with the
machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch

from machine_info import machine_info  # bench/machine_info.py, beside this script
from solov2.config import load_config
from solov2.engine.inference import TorchRunner
from solov2.export import OnnxRunner, export_onnx
from solov2.export.check import check_images
from solov2.model import build_model

DEFAULTS = {"solov2_tiny_cpu": (256, 256), "solov2_r50_fpn_1x_coco": (800, 1088)}


def _interleaved_seconds(runners: dict, images: torch.Tensor, runs: int) -> dict[str, list[float]]:
    """Seconds per run of each runner, alternating runners so that both see the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(images)  # warm-up
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run(images)
            times[name].append(time.perf_counter() - start)
    return times


def measure(config: str, canvas: tuple[int, int], *, batch: int, runs: int, threads: int, opset: int) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        report = export_onnx(
            model, cfg, path, canvas=canvas, batch=batch, opset=opset, check_batches=1, log=lambda _: None
        )
        total_export = time.perf_counter() - start
        size_mib = path.stat().st_size / 2**20
        runners = {"onnxruntime": OnnxRunner(path, threads=threads), "eager": TorchRunner(model, "cpu")}
        times = _interleaved_seconds(
            runners, check_images(batch, canvas, seed=1, fill=cfg.data.pad_value), runs
        )
    ort_s, eager_s = statistics.median(times["onnxruntime"]), statistics.median(times["eager"])
    return {
        "config": config,
        "canvas": list(canvas),
        "batch": batch,
        "threads": threads,
        "opset": opset,
        "export_seconds": round(report["export_seconds"], 1),
        "export_and_check_seconds": round(total_export, 1),
        "onnx_mib": round(size_mib, 1),
        "check_max_score_diff": report["max_score_diff"],
        "check_max_mask_diff": report["max_mask_diff"],
        "onnxruntime_images_per_second": round(batch / ort_s, 2),
        "eager_images_per_second": round(batch / eager_s, 2),
        "onnxruntime_speedup": round(eager_s / ort_s, 2),
        "runs": runs,
        "machine": machine_info(onnxruntime=__import__("onnxruntime").__version__),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULTS), help="configs (default: %(default)s)")
    parser.add_argument("--canvas", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="canvas for every config (default: tiny 256x256, R50 its first, 800x1088)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1, help="images per run (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per engine (default: %(default)s)"
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    args = parser.parse_args()
    for config in args.configs:
        canvas = tuple(args.canvas) if args.canvas else DEFAULTS.get(config, (256, 256))
        result = measure(
            config, canvas, batch=args.batch, runs=args.runs, threads=args.threads, opset=args.opset
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
