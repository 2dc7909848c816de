"""Operations one training step dispatches, by phase: what bounds an eager step when the host's kernel
launches, not the device's arithmetic, set the pace (small batches on GPUs and NPUs).

    python bench/step_ops.py                                  # R50 1x and tiny, one process and DDP over 2
    python bench/step_ops.py --configs solov2_r50_fpn_1x_coco --device cuda --amp bf16

Counts the aten operators (and c10d collectives) of one steady-state step of the real training step
(``solov2.engine.step.TrainStep``: forward, targets, losses, backward, clipping, the config's optimiser
in the implementation training picks for the device), recorded by the dispatch mode the tests count
with (``DispatchedOps`` in ``tests/trainer/host_reads.py``). Views and ``detach`` are left out: they
launch nothing. Each counted operator is about one kernel launch on a GPU or NPU (a fused optimiser's
one operator launches a few). The counts do not depend on the canvas, so a small one is used. With
``--processes 2`` (the default also runs it) two gloo processes on the CPU run the step under
DistributedDataParallel as training does (``engine.parallel.replicate``), and rank 0's counts are
reported. Phases: ``input`` (normalising the images, and what DDP dispatches
before the model's forward), the model's parts, ``targets``, ``losses``, ``backward`` (with DDP's
gradient all-reduce), ``update`` (unscaling, clipping, the finiteness check, the optimiser).

Prints one JSON line per configuration and process count, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.trainer.host_reads
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.trainer.host_reads import DispatchedOps

import solov2.model.solov2 as solov2_model
from machine_info import machine_info  # bench/machine_info.py, beside this script
from solov2.amp import make_scaler
from solov2.config import load_config
from solov2.data.synthetic import synthetic_batch
from solov2.device import Runtime
from solov2.engine.counters import StepCounters
from solov2.engine.optim import build_optimizer, describe_optimizer, init_state
from solov2.engine.parallel import replicate
from solov2.engine.step import TrainStep
from solov2.model import build_model
from solov2.targets import compact_ground_truth

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}
MODEL_PARTS = ("backbone", "fpn", "head", "mask_feature")


def count_step(config: str, *, batch: int, canvas: tuple[int, int], device: str, amp: str | None,
               runtime: Runtime) -> dict[str, Any]:  # fmt: skip
    cfg = load_config(config, [f"data.canvases=[[{canvas[0]},{canvas[1]}]]"])
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).to(device).train()
    counter = DispatchedOps()  # counts only while its mode is entered; the marks run every step
    for part in MODEL_PARTS:
        getattr(model, part).register_forward_pre_hook(lambda _m, _i, part=part: counter.mark(part))
    build_targets = solov2_model.build_targets

    def marked_targets(*args: Any, **kwargs: Any) -> Any:
        counter.mark("targets")
        targets = build_targets(*args, **kwargs)
        counter.mark("losses")
        return targets

    def marked_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
        counter.mark("backward")
        return solov2_model.total_loss(out)

    params = [p for p in model.parameters() if p.requires_grad]
    kind = device.split(":")[0]
    optimizer = build_optimizer(params, cfg.train, 1e-3, device_kind=kind)
    init_state(optimizer)
    dtype = DTYPES[amp]
    step = TrainStep(
        replicate(model, runtime), optimizer, params, device_kind=kind, dtype=dtype,
        scaler=make_scaler(kind, dtype, cfg.train.loss_scale), grad_clip=cfg.train.grad_clip,
        counters=StepCounters(torch.device(device)), loss_fn=marked_loss, distributed=runtime.distributed,
    )  # fmt: skip
    update = step.update

    def marked_update(*args: Any) -> torch.Tensor:
        counter.mark("update")
        return update(*args)

    step.update = marked_update  # type: ignore[method-assign]
    images, gt = synthetic_batch(batch, canvas, max_instances=cfg.model.targets.max_instances, seed=0)
    images, gt = images.to(device), compact_ground_truth(gt).to(device)
    solov2_model.build_targets = marked_targets  # type: ignore[assignment]
    try:
        for iteration in (1, 2, 3):  # DDP rebuilds its buckets once, in the second step
            step(images, gt, iteration)
        counter.mark("input")
        with counter:
            step(images, gt, 4)
    finally:
        solov2_model.build_targets = build_targets  # type: ignore[assignment]
    phases = counter.by_phase
    order = ["input", *MODEL_PARTS, "targets", "losses", "backward", "update"]
    return {
        "config": config,
        "processes": runtime.world_size,
        "batch": batch,
        "device": device,
        "amp": amp or "fp32",
        "optimizer": describe_optimizer(optimizer),
        "ops_per_step": counter.total,
        "by_phase": {p: phases[p] for p in order if phases[p]},
        "most_frequent": dict(counter.counts.most_common(6)),
    }


def _distributed_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        runtime = Runtime(device=torch.device("cpu"), kind="cpu", rank=rank, world_size=world)
        results = [
            count_step(
                c, batch=args.batch, canvas=tuple(args.canvas), device="cpu", amp=None, runtime=runtime
            )
            for c in args.configs
        ]
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["solov2_r50_fpn_1x_coco", "solov2_tiny_cpu"])
    parser.add_argument("--canvas", nargs=2, type=int, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (GPU/NPU)")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2],
        help="1: one process on --device; 2 or more: gloo processes on the CPU under DDP",
    )  # fmt: skip
    args = parser.parse_args()
    machine = machine_info(args.device)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    for processes in args.processes:
        if processes == 1:
            single = Runtime(device=torch.device(args.device), kind=args.device.split(":")[0])
            results = [
                count_step(c, batch=args.batch, canvas=tuple(args.canvas), device=args.device, amp=args.amp,
                           runtime=single)
                for c in args.configs
            ]  # fmt: skip
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            out = Path(os.environ.get("TMPDIR", "/tmp")) / f"step_ops_{os.getpid()}.json"
            mp.start_processes(_distributed_worker, args=(processes, port, args, str(out)), nprocs=processes,
                               start_method="spawn")  # fmt: skip
            results = json.loads(out.read_text())
            out.unlink()
        for result in results:
            print(json.dumps({**result, **machine}), flush=True)


if __name__ == "__main__":
    main()
