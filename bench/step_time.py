"""Seconds per training step (forward, targets, losses, backward, the config's optimiser), eager and compiled,
on the compact ground truth the loaders hand over (stride-4 masks, centres and counts).

    python bench/step_time.py                       # tiny config and R50 1x at 256x256, on CPU
    python bench/step_time.py --configs solov2_r50_fpn_1x_coco --canvas 800 1344 --device cuda --amp bf16

Prints one JSON object per configuration and mode, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch

from machine_info import machine_info  # bench/machine_info.py, beside this script
from solov2.config import load_config
from solov2.data.synthetic import synthetic_batch
from solov2.engine.optim import build_optimizer
from solov2.model import build_model, total_loss
from solov2.targets import compact_ground_truth


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    config: str,
    canvas: tuple[int, int],
    batch: int,
    device: str,
    compiled: bool,
    steps: int,
    warmup: int,
    amp: str | None,
) -> dict:
    cfg = load_config(config, [f"data.canvases=[[{canvas[0]},{canvas[1]}]]"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    # The config's own optimiser (sgd or adamw), in the implementation training picks for the device.
    optimizer = build_optimizer(params, cfg.train, 1e-3, device_kind=device.split(":")[0])
    images, gt = synthetic_batch(batch, canvas, max_instances=cfg.model.targets.max_instances, seed=0)
    images, gt = images.to(device), compact_ground_truth(gt).to(device)  # what the loaders hand over
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def forward():
        ctx = torch.autocast(device.split(":")[0], dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            return total_loss(model(images, gt))

    fn = torch.compile(forward, fullgraph=True, dynamic=False) if compiled else forward
    times = []
    compile_s = None
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        loss = fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        optimizer.step()
        _sync(device)
        elapsed = time.perf_counter() - start
        if i == 0 and compiled:
            compile_s = elapsed
        if i >= warmup:
            times.append(elapsed)
    return {
        "config": config,
        "canvas": list(canvas),
        "batch": batch,
        "mode": "compiled" if compiled else "eager",
        "amp": amp or "fp32",
        "seconds_per_step_median": round(statistics.median(times), 4),
        "seconds_per_step_min": round(min(times), 4),
        "images_per_second": round(batch / statistics.median(times), 3),
        "first_step_seconds_incl_compile": round(compile_s, 2) if compile_s else None,
        "steps_timed": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["solov2_tiny_cpu", "solov2_r50_fpn_1x_coco"])
    parser.add_argument("--canvas", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (GPU/NPU only)")
    args = parser.parse_args()
    machine = {"machine": machine_info(args.device)}
    for config in args.configs:
        for mode in args.modes:
            result = measure(
                config,
                tuple(args.canvas),
                args.batch,
                args.device,
                mode == "compiled",
                args.steps,
                args.warmup,
                args.amp,
            )
            print(json.dumps({**result, **machine}), flush=True)


if __name__ == "__main__":
    main()
