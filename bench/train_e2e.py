"""End-to-end training throughput: ``solov2 train`` as a user runs it, the real loaders (worker count
from the CPUs, pinned memory, prefetching) feeding the device, on COCO-sized JPEGs.

    python bench/train_e2e.py                              # R50 1x, batch 2, AMP auto, 30 steps
    python bench/train_e2e.py --batch 16 --steps 40
    python bench/train_e2e.py --quick                      # tiny config on the CPU (about a minute)

Writes ``(warmup + steps) * batch`` JPEGs like ``bench/data_pipeline.py`` (75% 640x480, 25% 480x640,
5 to 9 shapes each, 3 categories), runs one epoch of ``solov2 train --no-eval`` in a subprocess with a
progress line every ``--interval`` iterations, drops the first ``warmup`` iterations' lines (worker
start-up, cuDNN autotuning) and reports, over the rest: the median images/s, the mean and largest time
per step the training process waited for a batch (``data_wait_s``: 0 when the loaders keep up), and
the step time; with the run's own images/s from its termination message. The head has 3 categories
instead of COCO's 80 (the data set's): its last category convolution is smaller, a negligible part of
the step. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch

from machine_info import machine_info  # bench/machine_info.py, beside this script
from solov2.data.synthetic import write_synthetic_coco

COCO_SIZES = [(480, 640)] * 3 + [(640, 480)]
PROGRESS = re.compile(
    r" iter (?P<iteration>\d+)/\d+ .* (?P<ips>[\d.]+) img/s data (?P<data>[\d.]+)s step (?P<step>[\d.]+)s"
)


def write_data(root: Path, images: int) -> Path:
    return write_synthetic_coco(root, train=images, val=0, seed=0, image_sizes=COCO_SIZES, instances=(5, 9))


def train_e2e(
    data: Path,
    work: Path,
    *,
    config: str,
    batch: int,
    amp: str,
    device: str,
    interval: int,
    warmup: int,
    extra_opts: tuple[str, ...] = (),
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """One epoch of ``solov2 train`` over ``data``; figures from its progress lines after ``warmup``
    iterations. Raises RuntimeError with the log's tail when the run fails."""
    log = work.with_suffix(".termination-log")
    command = [
        sys.executable, "-m", "solov2.cli", "train", "--config", config, "--data-path", str(data),
        "--work-dir", str(work), "--device", device, "--no-eval", "--termination-log", str(log),
        "--opts", "train.epochs=1", f"data.samples_per_device={batch}", f"train.amp={amp}",
        "model.head.num_classes=3", f"train.log_interval={interval}", *extra_opts,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "trainer")}
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"solov2 train exited {run.returncode}: {(run.stdout + run.stderr)[-1500:]}")
    windows = [m.groupdict() for m in map(PROGRESS.search, run.stdout.splitlines()) if m]
    kept = [w for w in windows if int(w["iteration"]) > warmup + interval - 1] or windows[-1:]
    results = json.loads(log.read_text())
    data_lines = [line for line in run.stdout.splitlines() if line.startswith("data: ")]
    return {
        "images_per_second": statistics.median(float(w["ips"]) for w in kept),
        "data_wait_s": {
            "mean": round(statistics.fmean(float(w["data"]) for w in kept), 3),
            "max": max(float(w["data"]) for w in kept),
        },
        "step_s": statistics.median(float(w["step"]) for w in kept),
        "windows_kept": len(kept),
        "run_images_per_second": results.get("images_per_second"),
        "loader": data_lines[0].removeprefix("data: ") if data_lines else None,
        "run_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="solov2_r50_fpn_1x_coco")
    parser.add_argument("--batch", type=int, default=2, help="images per step (data.samples_per_device)")
    parser.add_argument(
        "--amp", default="auto", help="train.amp (auto: bf16 on CUDA, fp16 on NPU, fp32 on CPU)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30, help="timed iterations, after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="iterations left out of the figures")
    parser.add_argument("--interval", type=int, default=5, help="iterations per progress line")
    parser.add_argument("--quick", action="store_true", help="tiny config, 10 timed steps after 4")
    parser.add_argument("--opts", nargs="*", default=[], help="more config overrides, e.g. data.workers=4")
    args = parser.parse_args()
    if args.quick:
        args.config, args.steps, args.warmup, args.interval = "solov2_tiny_cpu", 10, 4, 2
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    images = (args.warmup + args.steps) * args.batch
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = write_data(Path(tmp) / "data", images)
        written = time.perf_counter() - t0
        figures = train_e2e(
            data, Path(tmp) / "work", config=args.config, batch=args.batch, amp=args.amp, device=args.device,
            interval=args.interval, warmup=args.warmup, extra_opts=tuple(args.opts),
        )  # fmt: skip
    machine = machine_info("cuda" if cuda else "cpu")
    setting = {"config": args.config, "batch": args.batch, "amp": args.amp, "opts": args.opts, "images": images,
               "image_sizes": "75% 640x480, 25% 480x640", "seconds_to_write_images": round(written, 1)}  # fmt: skip
    print(json.dumps({"machine": machine, "setting": setting, **figures}, indent=1))


if __name__ == "__main__":
    main()
