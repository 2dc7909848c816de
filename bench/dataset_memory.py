"""Memory a data-loading worker adds by reading a COCO-sized annotation index.

    python bench/dataset_memory.py                       # 20,000 images x 7 polygon instances
    python bench/dataset_memory.py --images 118287      # COCO train2017's image count

Writes an annotation file shaped like COCO's (polygons of 40 points, ~7 per image; no image files are
needed), then forks one child per variant that reads every image's annotations, as a worker does over
an epoch, and reports the child's private dirty memory (pages it had to copy) from
``/proc/self/smaps_rollup``:

- ``pycocotools_index``: the child reads ``coco.imgToAnns`` (what the dataset did before); touching
  millions of Python objects (their reference counts) copies the pages that hold them;
- ``dataset_records``: the child reads ``CocoInstances``' pickled records, one shared byte buffer.

Also reports the parent's resident memory after building each. Prints one JSON object. Linux only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from machine_info import machine_info  # bench/machine_info.py, beside this script
from solov2.data.coco import CocoInstances, _load_coco


def _private_dirty_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_annotations(path: Path, images: int, per_image: int, points: int, seed: int) -> None:
    rng = random.Random(seed)
    imgs, anns = [], []
    for i in range(1, images + 1):
        imgs.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640})
        for _ in range(per_image):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            poly = [round(v + rng.uniform(0, 120), 2) for _ in range(points) for v in (x, y)]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": rng.randint(1, 80),
                         "segmentation": [poly], "area": 5000.0, "bbox": [x, y, 120.0, 120.0],
                         "iscrowd": 0})  # fmt: skip
    cats = [{"id": c, "name": str(c)} for c in range(1, 81)]
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))


def _child_growth(read_all) -> float:
    """Private dirty MiB a forked child adds while calling ``read_all()``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        before = _private_dirty_mib()
        read_all()
        gc.collect()  # a worker's garbage collector walks the inherited objects too
        os.write(write_fd, json.dumps(_private_dirty_mib() - before).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return round(float(data), 1)


def _measure_index(ann: Path) -> dict:
    base = _rss_mib()
    by_image = _load_coco(ann).imgToAnns
    grown = round(_rss_mib() - base, 1)
    copied = _child_growth(lambda: [len(a["segmentation"][0]) for i in sorted(by_image) for a in by_image[i]])
    return {"pycocotools_index_parent_rss_mib": grown, "pycocotools_index_child_copied_mib": copied}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--per-image", type=int, default=7)
    parser.add_argument("--points", type=int, default=40, help="polygon points per instance")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ann = Path(tmp) / "instances_train2017.json"
        write_annotations(ann, args.images, args.per_image, args.points, seed=0)
        result: dict = {"images": args.images, "instances": args.images * args.per_image,
                        "annotation_file_mib": round(ann.stat().st_size / 2**20, 1)}  # fmt: skip

        result.update(_measure_index(ann))
        gc.collect()

        base = _rss_mib()
        dataset = CocoInstances(tmp, ann)
        result["dataset_records_parent_rss_mib"] = round(_rss_mib() - base, 1)
        result["dataset_records_buffer_mib"] = round(dataset._blob.nbytes / 2**20, 1)
        result["dataset_records_child_copied_mib"] = _child_growth(
            lambda: [len(a["segmentation"][0]) for i in range(len(dataset)) for a in dataset._record(i)[1]]
        )
    result["machine"] = machine_info()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
