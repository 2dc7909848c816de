"""Accelerator report: training and inference throughput of the real training step on synthetic,
device-resident batches (no data set, no data loading; compact ground truth as the loaders give it),
one JSON line per measurement as it goes.

    python bench/gpu_report.py                 # CUDA: R50 1x at 800x1344, what fits in --budget-s (300)
    python bench/gpu_report.py --budget-s 540 --compiled-at largest   # eager, then compiled at the largest
    python bench/gpu_report.py --quick --compile-backend aot_eager    # checks the script on a CPU (2 min)

Measured, in this order (cheap and essential first; a case that would overrun ``--budget-s`` is
reported as skipped):

- training, eager, bf16 and fp16 (dynamic loss scale), batch 2: images/s, peak memory, the time the
  device waits for the host per step (see below);
- ``torch.cuda.set_sync_debug_mode("error")`` over several non-logging steps, bf16 and fp16: pass/fail
  (fails on the first synchronising call, with its message);
- eager bf16 at the other ``--batches`` (an out-of-memory error ends them), then the largest batch
  that fits: the peak memory of the two largest batches run so far, extended on a straight line to
  ``--memory-fraction`` of the device's memory, gives a batch to try; one that runs out of memory is
  retried 10% smaller (``--no-search`` stops at ``--batches``); fp16 at the largest batch;
- inference with post-processing (forward, Matrix NMS, masks pasted back to a 480x640 original), eager;
- evaluation's per-image post-processing of 100 detections (``bench/eval_postprocess.py``: paste back,
  boxes and RLE found on the device vs from masks copied to the host), where pycocotools is installed;
- ``solov2 train`` end to end at the base batch, eager (``bench/train_e2e.py``: the real loaders
  decoding COCO-sized JPEGs with workers from the machine's CPUs, pinned memory and prefetching,
  feeding the device): images/s, and the time per step the training process waited for a batch (0
  when the loaders keep up);
- CUDA graphs (``torch.compile`` ``mode="reduce-overhead"``) bf16 at the largest batch; compiled
  (default mode) bf16 at batch 2; CUDA graphs bf16 at batch 2; compiled fp16 at batch 2 and at the
  largest batch; CUDA graphs fp16 at the largest batch; compiled inference;
- ``solov2 train`` end to end at the largest batch.

Device wait per step, two ways: ``gap_between_steps_ms`` is the mean time between the end of one
step's work on the device and the start of the next (CUDA events; a lower bound: waits inside a step
are not seen), and ``device_idle_ms_per_step`` is the wall time of a profiled window minus the union of
its kernel and copy intervals (torch.profiler; the profiler's own host overhead inflates it a little).

Every line carries ``case`` and either results or ``error``; a failing case does not stop the report.
Needs torch, torchvision, numpy and pyyaml; without pycocotools the evaluation case is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch

from machine_info import machine_info  # bench/machine_info.py, beside this script

if importlib.util.find_spec("pycocotools") is None:  # only RLE encoding needs it: the eval_postprocess case
    _stub = types.ModuleType("pycocotools")
    _stub.mask = types.ModuleType("pycocotools.mask")  # type: ignore[attr-defined]
    sys.modules.update({"pycocotools": _stub, "pycocotools.mask": _stub.mask})  # type: ignore[attr-defined]

import eval_postprocess  # bench/eval_postprocess.py, beside this script
import train_e2e  # bench/train_e2e.py, beside this script
from solov2.amp import make_scaler
from solov2.config import load_config
from solov2.data.synthetic import synthetic_batch
from solov2.engine.counters import StepCounters
from solov2.engine.optim import build_optimizer, describe_optimizer, init_state
from solov2.engine.step import TrainStep
from solov2.model import build_model
from solov2.postprocess import paste_masks
from solov2.targets import compact_ground_truth

HAVE_PYCOCOTOOLS = hasattr(sys.modules["pycocotools.mask"], "encode")  # not the stub above
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
ORIGINAL_SIZE = (480, 640)  # a typical COCO image, for pasting masks back


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """Model, synthetic batches and the real training step for one (dtype, compile mode, batch)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        overrides = [f"data.canvases=[[{args.canvas[0]},{args.canvas[1]}]]"]
        self.cfg = load_config(args.config, overrides)
        images, gt = synthetic_batch(
            2, tuple(args.canvas), max_instances=self.cfg.model.targets.max_instances, instance_counts=[7, 7]
        )
        self.images, self.gt = images.to(device), compact_ground_truth(gt).to(device)  # as loaders give

    def batch(self, size: int):
        """``size`` images: the two synthetic ones repeated."""
        reps = -(-size // 2)
        gt = type(self.gt)(*(t.repeat(reps, *[1] * (t.dim() - 1))[:size] for t in self.gt))
        return self.images.repeat(reps, 1, 1, 1)[:size], gt

    def model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(self.cfg).to(self.device)

    def compile(self, model: torch.nn.Module, compile_mode: str) -> Any:
        """``torch.compile`` with ``--compile-backend`` (a mode is an inductor option)."""
        backend = self.args.compile_backend
        if backend != "inductor":
            return torch.compile(model, dynamic=False, fullgraph=True, backend=backend)
        mode = None if compile_mode == "default" else compile_mode
        return torch.compile(model, dynamic=False, fullgraph=True, mode=mode)

    def train_step(self, amp: str, compile_mode: str | None) -> tuple[TrainStep, str]:
        model = self.model().train()
        params = [p for p in model.parameters() if p.requires_grad]
        kind = self.device.type
        optimizer = build_optimizer(
            params, self.cfg.train, 1e-3, device_kind=kind, tensor_lr=bool(compile_mode)
        )
        init_state(optimizer)
        dtype = DTYPES[amp]
        forward = model
        if compile_mode:
            forward = self.compile(model, compile_mode)
        step = TrainStep(
            forward,
            optimizer,
            params,
            device_kind=kind,
            dtype=dtype,
            scaler=make_scaler(kind, dtype, 0.0) if kind != "cpu" else None,
            grad_clip=self.cfg.train.grad_clip,
            counters=StepCounters(self.device),
            compile_update=bool(compile_mode),
        )
        return step, describe_optimizer(optimizer)


def _busy_us(prof: Any) -> float | None:
    """Union of device kernel and copy intervals of a profile, in microseconds."""
    intervals = []
    for event in prof.profiler.kineto_results.events():
        if event.device_type() == torch.autograd.DeviceType.CUDA:
            start = event.start_ns() / 1000
            intervals.append((start, start + event.duration_ns() / 1000))
    if not intervals:
        return None
    intervals.sort()
    busy, (cur_start, cur_end) = 0.0, intervals[0]
    for start, end in intervals[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return busy + cur_end - cur_start


def timed_steps(run: Callable[[int], None], device: torch.device, steps: int) -> dict[str, float | None]:
    """Wall time per step with no synchronisation between steps, and the device's waits."""
    use_events = device.type == "cuda"
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)] if use_events else []
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)] if use_events else []
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        if use_events:
            starts[i].record()
        run(i)
        if use_events:
            ends[i].record()
    sync(device)
    wall = (time.perf_counter() - t0) / steps
    out: dict[str, float | None] = {"seconds_per_step": round(wall, 5), "gap_between_steps_ms": None}
    if use_events:
        gaps = [ends[i - 1].elapsed_time(starts[i]) for i in range(1, steps)]
        busy = [starts[i].elapsed_time(ends[i]) for i in range(steps)]
        out["gap_between_steps_ms"] = round(sum(gaps) / max(len(gaps), 1), 3)
        out["event_ms_per_step"] = round(sum(busy) / steps, 3)
    return out


def profiled_idle(run: Callable[[int], None], device: torch.device, steps: int = 3) -> float | None:
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            run(i)
        sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    busy = _busy_us(prof)
    return None if busy is None else round((wall_us - busy) / steps / 1000, 3)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def train_case(setup: Setup, amp: str, batch: int, compile_mode: str | None) -> dict[str, Any]:
    args, device = setup.args, setup.device
    reset_memory(device)
    step, optimizer_name = setup.train_step(amp, compile_mode)
    images, gt = setup.batch(batch)
    t0 = time.perf_counter()
    step(images, gt, 1)
    sync(device)
    first = time.perf_counter() - t0
    for i in range(args.warmup):
        step(images, gt, 2 + i)
    timing = timed_steps(lambda i: step(images, gt, 100 + i), device, args.steps)
    idle = None
    with contextlib.suppress(Exception):
        idle = profiled_idle(lambda i: step(images, gt, 1000 + i), device)
    counts = step.counters.read()
    return {
        "images_per_second": round(batch / timing["seconds_per_step"], 2),
        **timing,
        "device_idle_ms_per_step": idle,
        "peak_memory_gib": peak_memory_gib(device),
        "first_step_seconds": round(first, 2),
        "optimizer": optimizer_name,
        "nonfinite_steps": counts.nonfinite,
    }


def sync_check_case(setup: Setup, amp: str, batch: int) -> dict[str, Any]:
    """Non-logging steps under ``set_sync_debug_mode("error")``: any synchronising call raises."""
    device = setup.device
    step, _ = setup.train_step(amp, None)
    images, gt = setup.batch(batch)
    step(images, gt, 1)  # first step: lazy initialisations (cuBLAS handles, scaler state)
    sync(device)
    if device.type != "cuda":
        return {"sync_debug": "not applicable (no CUDA)"}
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(5):
            step(images, gt, 2 + i)
        result: dict[str, Any] = {"sync_debug": "pass", "steps": 5}
    except RuntimeError as exc:
        result = {"sync_debug": "fail", "message": str(exc)[:600], "where": traceback.format_exc()[-1500:]}
    finally:
        torch.cuda.set_sync_debug_mode(0)
    sync(device)
    return result


def inference_case(setup: Setup, amp: str, batch: int, compile_mode: str | None) -> dict[str, Any]:
    args, device = setup.args, setup.device
    reset_memory(device)
    model = setup.model().eval()
    forward = model if not compile_mode else setup.compile(model, compile_mode)
    images, _ = setup.batch(batch)
    canvas = tuple(args.canvas)
    scale = min(canvas[0] / ORIGINAL_SIZE[0], canvas[1] / ORIGINAL_SIZE[1])
    image_size = (int(ORIGINAL_SIZE[0] * scale + 0.5), int(ORIGINAL_SIZE[1] * scale + 0.5))
    dtype = DTYPES[amp]

    def run(_i: int) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            det = forward(images)
            for b in range(batch):
                paste_masks(
                    det.masks[b],
                    image_size=image_size,
                    canvas_size=canvas,
                    original_size=ORIGINAL_SIZE,
                    mask_thr=setup.cfg.model.inference.mask_thr,
                )

    t0 = time.perf_counter()
    run(0)
    sync(device)
    first = time.perf_counter() - t0
    for i in range(args.warmup):
        run(i)
    timing = timed_steps(run, device, args.steps)
    return {
        "images_per_second": round(batch / timing["seconds_per_step"], 2),
        **timing,
        "peak_memory_gib": peak_memory_gib(device),
        "first_call_seconds": round(first, 2),
    }


def predict_largest(points: list[tuple[int, float]], capacity_gib: float) -> int | None:
    """The batch at which peak memory reaches ``capacity_gib`` on the line through the two largest
    measured ``(batch, peak GiB)`` points; None without two points or a rising line."""
    if len(points) < 2:
        return None
    (b0, m0), (b1, m1) = sorted(points)[-2:]
    if b1 == b0 or m1 <= m0:
        return None
    per_image = (m1 - m0) / (b1 - b0)
    return int(b1 + (capacity_gib - m1) / per_image)


def compiled_cases(
    amp: tuple[str, ...], base: int, top: int, *, cuda: bool, at: str
) -> list[tuple[str, int, str]]:
    """(amp, batch, compile mode) in the order run: the headline first (CUDA graphs at the largest
    batch), then batch ``base``, then the rest; ``at`` is ``both``, ``base`` or ``largest``."""
    graphs = ["reduce-overhead"] if cuda else []
    wanted = {"both": (top, base), "base": (base,), "largest": (top,)}[at]
    order = [(amp[0], top, m) for m in graphs]
    order += [(amp[0], base, m) for m in ["default", *graphs]]
    order += [(a, base, "default") for a in amp[1:]]
    order += [(amp[0], top, "default")] + [(a, top, m) for a in amp[1:] for m in ["default", *graphs]]
    out: list[tuple[str, int, str]] = []
    for case in order:
        if case[1] in wanted and case not in out:
            out.append(case)
    return out


def e2e_case(args: argparse.Namespace, amp: str, batch: int, device: torch.device) -> dict[str, Any]:
    """``solov2 train`` with its loaders on COCO-sized JPEGs written for it (``bench/train_e2e.py``)."""
    steps, warmup, interval = (10, 4, 2) if args.quick else (30, 10, 5)
    with tempfile.TemporaryDirectory() as tmp:
        data = train_e2e.write_data(Path(tmp) / "data", (warmup + steps) * batch)
        return train_e2e.train_e2e(
            data, Path(tmp) / "work", config=args.config, batch=batch, amp="off" if amp == "fp32" else amp,
            device=device.type, interval=interval, warmup=warmup,
        )  # fmt: skip


def forget_compiled(device: torch.device) -> None:
    """Drop compiled graphs (and CUDA graph memory pools) of the case that ended."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory(result: dict[str, Any] | None) -> bool:
    return result is not None and "OutOfMemoryError" in str(result.get("error", ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="solov2_r50_fpn_1x_coco")
    parser.add_argument("--canvas", nargs=2, type=int, default=[800, 1344], metavar=("H", "W"))
    parser.add_argument(
        "--batches", nargs="+", type=int, default=[2, 8, 16], help="the first is the base batch"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip cases that would end later")
    parser.add_argument("--no-compile", action="store_true", help="eager cases only")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend; aot_eager checks the compiled path quickly on a CPU (no code generation)",
    )
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.9,
        help="share of the device's memory the largest-batch search aims at (default 0.9)",
    )
    parser.add_argument("--no-search", action="store_true", help="largest batch: only among --batches")
    parser.add_argument(
        "--compiled-at",
        choices=("both", "base", "largest"),
        default="both",
        help="batches of the compiled cases: the first of --batches, the largest found, or both",
    )
    parser.add_argument("--quick", action="store_true", help="tiny config, 128x128, batches 2 4, 2 steps")
    args = parser.parse_args()
    if args.quick:
        args.config, args.canvas, args.batches, args.steps, args.warmup = (
            "solov2_tiny_cpu",
            [128, 128],
            [2, 4],
            2,
            1,
        )
    device = torch.device(args.device)
    started = time.perf_counter()
    emit(
        {
            "case": "machine",
            **machine_info(device, cuda=torch.version.cuda),
            "config": args.config,
            "canvas": args.canvas,
        }
    )
    amp = ("bf16", "fp16") if device.type == "cuda" else ("fp32",)
    base = args.batches[0]
    largest = {"batch": base}
    setup = Setup(args, device)

    def run_case(
        name: str, estimate_s: float, fn: Callable[[], dict[str, Any]], **labels: Any
    ) -> dict | None:
        elapsed = time.perf_counter() - started
        if elapsed + estimate_s > args.budget_s:
            emit(
                {
                    "case": name,
                    **labels,
                    "skipped": f"time budget ({elapsed:.0f} s spent, ~{estimate_s:.0f} s needed)",
                }
            )
            return None
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # record and go on: one failing measurement must not end the report
            result = {"error": f"{type(exc).__name__}: {str(exc)[:800]}"}
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.empty_cache()
        result["case_seconds"] = round(time.perf_counter() - t0, 1)
        emit({"case": name, **labels, **result})
        return result

    fitted: list[int] = []  # batches of the eager bf16 runs that fitted
    measured: list[tuple[int, float]] = []  # and their peak memory (GiB), where the device reports it

    def eager(a: str, b: int) -> dict | None:
        result = run_case("train", 30, lambda: train_case(setup, a, b, None), amp=a, batch=b, mode="eager")
        if a == amp[0] and result is not None and "error" not in result:
            largest["batch"] = max(largest["batch"], b)
            fitted.append(b)
            if result.get("peak_memory_gib") is not None:
                measured.append((b, result["peak_memory_gib"]))
        return result

    for a in amp:
        eager(a, base)
    for a in amp:
        run_case("sync_debug", 10, lambda a=a: sync_check_case(setup, a, base), amp=a, batch=base)
    all_fitted = True
    for b in args.batches[1:]:
        result = eager(amp[0], b)
        if result is None or "error" in result:
            all_fitted = False
            break
    if device.type == "cuda" and all_fitted and not args.no_search:
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        guess = predict_largest(measured, total_gib * args.memory_fraction)
        for _ in range(3):
            if guess is None or guess <= largest["batch"]:
                break
            if not out_of_memory(eager(amp[0], guess)):
                break
            guess = int(guess * 0.9)
    top = largest["batch"]
    if top != base:
        for a in amp[1:]:
            eager(a, top)
    emit({"case": "largest_batch", "batch": top, "fitted": sorted(fitted)})
    run_case(
        "inference",
        15,
        lambda: inference_case(setup, amp[0], base, None),
        amp=amp[0],
        batch=base,
        mode="eager",
    )

    if HAVE_PYCOCOTOOLS:
        k, repeats = (20, 1) if args.quick else (100, 10)
        run_case("eval_postprocess", 5, lambda: eval_postprocess.measure(device, k, repeats))
    else:
        emit({"case": "eval_postprocess", "skipped": "pycocotools is not installed"})

    def e2e(b: int) -> None:
        run_case(
            "train_e2e", 60, lambda: e2e_case(args, amp[0], b, device), amp=amp[0], batch=b, mode="eager"
        )

    e2e(base)
    if not args.no_compile:
        compile_s = 10 if args.quick else 90
        cases = compiled_cases(amp, base, top, cuda=device.type == "cuda", at=args.compiled_at)
        for i, (a, b, mode) in enumerate(cases):
            name = "cuda-graphs" if mode == "reduce-overhead" else "compiled"
            result = run_case("train", compile_s, lambda a=a, b=b, mode=mode: train_case(setup, a, b, mode),
                              amp=a, batch=b, mode=name)  # fmt: skip
            if i == 0 and result is not None and "error" not in result:
                compile_s = max(compile_s / 3, result["case_seconds"] * 1.1)  # later ones take about as long
            forget_compiled(device)
        run_case("inference", compile_s * 0.6, lambda: inference_case(setup, amp[0], base, "default"),
                 amp=amp[0], batch=base, mode="compiled")  # fmt: skip
    if top != base:
        e2e(top)
    emit({"case": "done", "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
