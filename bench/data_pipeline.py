"""Training data pipeline throughput: JPEG decode + annotations -> image and masks at the training size
(resize and flip folded in) -> collate (stride-4 masks, centres of mass, pixel counts).

    python bench/data_pipeline.py                    # 64 COCO-sized images, R50 1x data config
    python bench/data_pipeline.py --images 128 --workers 0 2 4 --config solov2_r50_fpn_3x_coco

Writes COCO-sized JPEGs (75% 640x480, 25% 480x640, 5..9 polygon/RLE shape instances each, like COCO's
~7 per image) to a temporary directory, then measures on one thread (a data-loading worker is
single-threaded) the milliseconds per image of each stage, the bytes of one batch (what crosses from a
worker to the training process and then to the device), and the images/s of whole DataLoaders with
``--workers`` worker processes (second epoch, workers already started) with the memory of each worker
(RSS, PSS and USS from ``/proc/PID/smaps_rollup``). Prints one JSON object, with the machine's load
average at the end (other work on the machine slows every figure here).

The need: R50-FPN at 1333x800 trains a batch of 2 per device in about 0.25 s on a fast GPU, i.e. ~8
images/s per device; ``workers_needed`` is 8 / (1-worker loader images/s), rounded up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

import torch
import torchvision

from machine_info import machine_info  # bench/machine_info.py, beside this script
from solov2.config import load_config
from solov2.data.buckets import assign_canvases
from solov2.data.coco import CocoInstances, read_rgb
from solov2.data.loader import build_train_loader, collate
from solov2.data.synthetic import write_synthetic_coco
from solov2.data.transforms import TrainTransform

NEED_IMAGES_PER_S = 8.0


def batch_bytes(batch) -> dict[str, int]:
    """Bytes of a batch's tensors: images, ground truth, total."""
    gt = sum(t.nbytes for t in batch.gt if t is not None) if batch.gt is not None else 0
    rest = sum(t.nbytes for t in (batch.image_ids, batch.image_sizes, batch.original_sizes))
    return {"images": batch.images.nbytes, "ground_truth": gt, "total": batch.images.nbytes + gt + rest}


def process_memory_mb(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private pages) of a process, in MB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {k: round(v / 1024, 1) for k, v in (("rss", fields["Rss"]), ("pss", fields["Pss"]), ("uss", uss))}


def per_image_ms(fn, items: list, repeat: int = 1) -> float:
    fn(items[0])
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return 1000 * (time.perf_counter() - start) / (repeat * len(items))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="solov2_r50_fpn_1x_coco")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-instances", type=int, nargs="+", default=None, help="default: the config's")
    args = parser.parse_args()

    cfg = load_config(args.config, ["model.head.num_classes=3"])
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [(480, 640)] * 3 + [(640, 480)]
        root = write_synthetic_coco(
            tmp, train=args.images, val=0, seed=0, image_sizes=sizes, instances=(5, 9)
        )
        ds = CocoInstances(root / "train2017", root / "annotations" / "instances_train2017.json")
        files = [ds.image_dir / ds.coco.imgs[i]["file_name"] for i in ds.image_ids]
        canvas_of = assign_canvases(ds.image_sizes(), cfg.data.canvases, img_scale=cfg.data.img_scale)
        transform = TrainTransform(cfg.data)
        indices = list(range(len(ds)))
        canvases = [tuple(c) for c in cfg.data.canvases]

        def load(i: int):
            size, flip = transform.plan(ds.original_size(i), canvas=canvases[canvas_of[i]], seed=i)
            return ds.load_resized(i, size, flip=flip)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        samples = [ds[i] for i in indices]
        stages = {
            "decode_jpeg": per_image_ms(read_rgb, files),
            "decode_resize_flip_masks": per_image_ms(load, indices),
        }
        out_samples = [load(i) for i in indices]
        pairs = [[out_samples[i] for i in indices if canvas_of[i] == k] for k in range(len(canvases))]
        pairs = [(k, group[j : j + 2]) for k, group in enumerate(pairs) for j in range(0, len(group) - 1, 2)]
        max_instances_list = args.max_instances or [cfg.model.targets.max_instances]
        collate_ms = {}
        for n in max_instances_list:
            per_batch = per_image_ms(
                lambda p, n=n: collate(p[1], canvas=canvases[p[0]], max_instances=n, fill=cfg.data.pad_value),
                pairs,
            )
            collate_ms[str(n)] = round(per_batch / 2, 2)
        stages = {k: round(v, 2) for k, v in stages.items()}
        default_collate = collate_ms[str(max_instances_list[0])]
        pipeline_ms = stages["decode_resize_flip_masks"] + default_collate
        k, group = pairs[0]
        bytes_per_batch = batch_bytes(
            collate(group, canvas=canvases[k], max_instances=max_instances_list[0], fill=cfg.data.pad_value)
        )
        torch.set_num_threads(threads)

        loaders, worker_memory = {}, {}
        for workers in args.workers:
            wcfg = load_config(args.config, ["model.head.num_classes=3", f"data.workers={workers}"])
            loader = build_train_loader(ds, wcfg, epoch=0)
            list(loader)  # first epoch starts the workers
            loader.set_epoch(1)
            start = time.perf_counter()
            count = 0
            for b in loader:
                count += int((b.image_ids >= 0).sum())
                if workers and str(workers) not in worker_memory:
                    pids = [w.pid for w in loader._iterator._workers]
                    worker_memory[str(workers)] = [process_memory_mb(pid) for pid in pids]
            loaders[str(workers)] = round(count / (time.perf_counter() - start), 2)
            del loader

    per_worker = loaders.get("1", 1000 / pipeline_ms)
    print(
        json.dumps(
            {
                "machine": machine_info(torchvision=torchvision.__version__, cuda=torch.cuda.is_available()),
                "data": {
                    "config": args.config,
                    "images": args.images,
                    "image_sizes": "75% 640x480, 25% 480x640",
                    "instances_per_image": round(sum(len(s.labels) for s in samples) / len(samples), 2),
                    "img_scale": list(cfg.data.img_scale),
                    "multiscale_short_sides": list(cfg.data.multiscale_short_sides),
                    "canvases": [list(c) for c in canvases],
                    "batch": cfg.data.samples_per_device,
                },
                "ms_per_image_one_thread": {**stages, "collate_main_process_by_max_instances": collate_ms},
                "bytes_per_batch": bytes_per_batch,
                "main_process_memory_mb": process_memory_mb(os.getpid()),
                "worker_memory_mb_by_workers": worker_memory,
                "images_per_s_one_thread_sum_of_stages": round(1000 / pipeline_ms, 2),
                "images_per_s_one_worker": per_worker,
                "loader_images_per_s_by_workers": loaders,
                "need_images_per_s_per_device": NEED_IMAGES_PER_S,
                "workers_needed": math.ceil(NEED_IMAGES_PER_S / per_worker),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
