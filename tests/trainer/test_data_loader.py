"""collate and the train/eval loaders: static shapes, valid ground truth, truncation counts,
reproducible and resumable epochs (with and without worker processes), bad-image handling."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings

import pytest
import torch

from solov2.config import load_config
from solov2.data.buckets import assign_canvases
from solov2.data.coco import CocoInstances, Sample
from solov2.data.loader import LoaderStats, build_eval_loader, build_train_loader, collate
from solov2.data.synthetic import write_synthetic_coco
from solov2.errors import DataError
from solov2.structures import Batch, GroundTruth
from solov2.targets import compact_ground_truth

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
CANVASES = [(192, 256), (256, 192), (224, 224)]


def config(*opts: str):
    return load_config(
        "solov2_tiny_cpu",
        ["data.img_scale=[256,192]", f"data.canvases={[list(c) for c in CANVASES]}", "data.workers=0", *opts],
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_coco(tmp_path_factory.mktemp("shapes"), train=24, val=7, seed=2)


def dataset(root, split="train", **kw) -> CocoInstances:
    return CocoInstances(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json", **kw)


def square_sample(n: int, size=(20, 30), image_id: int = 5) -> Sample:
    h, w = size
    masks = torch.zeros(n, h, w, dtype=torch.uint8)
    for i in range(n):
        masks[i, : 1 + i % h, : 1 + i] = 1  # areas grow with i
    boxes = torch.tensor([[0.0, 0.0, 1 + i, 1 + i % h] for i in range(n)]).reshape(-1, 4)
    image = torch.full((3, h, w), 7, dtype=torch.uint8)
    return Sample(image, masks, boxes, torch.arange(n) % 3, image_id, (2 * h, 2 * w), (h, w))


def test_collate_pads_instances_and_images_and_counts_truncation():
    stats = LoaderStats()
    batch = collate(
        [square_sample(3), None, square_sample(6, image_id=9)], canvas=(32, 32), max_instances=4, stats=stats,
        fill=(124, 116, 104),
    )  # fmt: skip
    assert isinstance(batch, Batch)
    gt = batch.gt
    # Masks at stride 4, with centres and pixel counts from the canvas-size masks.
    assert batch.images.shape == (3, 3, 32, 32) and gt.masks.shape == (3, 4, 8, 8)
    assert gt.centers.shape == (3, 4, 2) and gt.counts.shape == (3, 4)
    assert gt.boxes.shape == (3, 4, 4) and gt.labels.shape == gt.valid.shape == (3, 4)
    assert batch.image_ids.tolist() == [5, -1, 9]
    assert batch.image_sizes.tolist() == [[20, 30], [0, 0], [20, 30]]
    assert batch.original_sizes.tolist() == [[40, 60], [0, 0], [40, 60]]
    assert gt.valid.sum(1).tolist() == [3, 0, 4]
    colour = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1, 1)
    assert batch.images[1].eq(colour).all()  # a padding image is all padding colour
    assert batch.images[0, :, 20:].eq(colour).all() and batch.images[0, :, :20, 30:].eq(colour).all()
    assert batch.images[0, :, :20, :30].eq(7).all()
    assert gt.labels[2].tolist() == [2, 0, 1, 2]  # the 4 largest of 6 (indices 2..5), in order
    assert not gt.masks[0, 3:].any() and not gt.masks[1].any()
    gt.validate(num_classes=3, image_size=(32, 32))
    # Exactly what the full-resolution ground truth padded to the canvas gives.
    full = torch.zeros(3, 4, 32, 32, dtype=torch.uint8)
    full[0, :3, :20, :30] = square_sample(3).masks
    full[2, :, :20, :30] = square_sample(6).masks[2:]
    expected = compact_ground_truth(GroundTruth(gt.boxes, gt.labels, full, gt.valid))
    assert all(torch.equal(a, b) for a, b in zip(gt, expected, strict=True))
    assert gt.counts[2].tolist() == [int(m.sum()) for m in square_sample(6).masks[2:]]
    assert stats.as_dict() == {
        "images": 2,
        "padding_images": 1,
        "instances": 7,
        "truncated_images": 1,
        "truncated_instances": 2,
        "replaced": 0,
    }


def test_train_loader_yields_valid_static_batches(root):
    cfg = config()
    ds = dataset(root)
    loader = build_train_loader(ds, cfg, seed=0)
    canvas_of = assign_canvases(ds.image_sizes(), CANVASES, img_scale=(256, 192))
    id_to_index = {image_id: i for i, image_id in enumerate(ds.image_ids)}
    batches = list(loader)
    fill = torch.tensor(cfg.data.pad_value, dtype=torch.uint8).view(3, 1, 1)
    assert len(batches) == len(loader) > 0
    for batch in batches:
        canvas = tuple(batch.images.shape[-2:])
        small = (canvas[0] // 4, canvas[1] // 4)
        assert batch.images.shape == (2, 3, *canvas) and batch.gt.masks.shape == (2, 16, *small)
        assert {CANVASES[canvas_of[id_to_index[int(i)]]] for i in batch.image_ids} == {canvas}
        batch.gt.validate(num_classes=3, image_size=canvas)
        for b in range(2):
            h, w = batch.image_sizes[b].tolist()
            assert batch.images[b, :, h:].eq(fill).all() and batch.images[b, :, :h, w:].eq(fill).all()
            assert not batch.gt.masks[b, :, :, (w + 3) // 4 :].any()
            assert (batch.gt.counts[b][batch.gt.valid[b]] > 0).all()
    assert loader.stats()["images"] == 2 * len(batches)


def test_an_npu_loader_pins_without_a_deprecation_warning(root):
    """An NPU run's loader pins its batches; torch >= 2.9 pins for the current accelerator by itself
    and warns that DataLoader's pin_memory_device is deprecated, so it is only named for older torch."""
    from solov2.data.loader import build_eval_loader, pin_options

    assert pin_options("npu") == {"pin_memory": True, "pin_memory_device": "npu"}
    assert pin_options("cuda")["pin_memory"] and not pin_options("cpu")["pin_memory"]
    loader = build_train_loader(dataset(root), config(), **pin_options("npu"))
    assert loader.pin_memory
    assert build_eval_loader(dataset(root), config(), **pin_options("npu")).pin_memory  # evaluation too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        next(iter(loader))
    assert not [w for w in caught if "pin_memory_device" in str(w.message)]


def same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and all(torch.equal(u, v) for u, v in zip(x.gt, y.gt, strict=True))
        for x, y in zip(a, b, strict=True)
    )


def test_epochs_reproduce_with_workers_and_resume_mid_epoch(root):
    ds = dataset(root)
    cfg = config("data.multiscale_short_sides=[128,160,192]")
    reference = build_train_loader(ds, cfg, epoch=1, seed=5)
    epoch1 = list(reference)
    reference.set_epoch(2)
    epoch2 = list(reference)
    assert not same(epoch1, epoch2)
    with_workers = build_train_loader(
        ds, config("data.multiscale_short_sides=[128,160,192]", "data.workers=2"), epoch=1, seed=5
    )
    assert same(list(with_workers), epoch1)
    resumed = build_train_loader(ds, cfg, epoch=1, start_batch=3, seed=5)
    assert len(resumed) == len(epoch1) - 3 and same(list(resumed), epoch1[3:])
    resumed.set_epoch(2)
    assert same(list(resumed), epoch2)


def test_ranks_are_disjoint_and_equal(root):
    ds, cfg = dataset(root), config()
    runs = [list(build_train_loader(ds, cfg, rank=r, world_size=2)) for r in range(2)]
    assert len(runs[0]) == len(runs[1]) > 0
    ids = [int(i) for run in runs for b in run for i in b.image_ids]
    assert len(ids) == len(set(ids))


def test_eval_loader_sees_each_image_once_with_padding(root):
    ds, cfg = dataset(root, "val"), config()
    runs = [list(build_eval_loader(ds, cfg, rank=r, world_size=2)) for r in range(2)]
    assert len(runs[0]) == len(runs[1])
    ids = [int(i) for run in runs for b in run for i in b.image_ids]
    assert sorted(i for i in ids if i >= 0) == ds.image_ids and -1 in ids
    assert all(b.gt is None for run in runs for b in run)
    with_gt = list(build_eval_loader(ds, cfg, with_gt=True))
    for b in with_gt:
        b.gt.validate(num_classes=3, image_size=tuple(b.images.shape[-2:]))
        assert not b.gt.valid[b.image_ids < 0].any()


def test_bad_images_are_replaced_in_training_and_padded_in_evaluation(root, tmp_path):
    shutil.copytree(root, tmp_path / "copy")
    copy = tmp_path / "copy"
    ds = dataset(copy, skip_bad_images=True)
    bad = copy / "train2017" / ds.coco.imgs[ds.image_ids[0]]["file_name"]
    bad.write_bytes(b"broken")
    loader = build_train_loader(ds, config("data.workers=2"))
    ids = [int(i) for b in loader for i in b.image_ids]
    assert -1 not in ids and ds.image_ids[0] not in ids
    assert ds.skipped == 1 and loader.stats()["replaced"] >= 1
    with pytest.raises(DataError, match=re.escape(bad.name)):
        list(build_train_loader(dataset(copy), config()))
    val = dataset(copy, "val", skip_bad_images=True)
    (copy / "val2017" / val.coco.imgs[val.image_ids[1]]["file_name"]).write_bytes(b"broken")
    ids = [int(i) for b in build_eval_loader(val, config()) for i in b.image_ids]
    assert val.image_ids[1] not in ids and sorted(i for i in ids if i >= 0) == sorted(
        set(val.image_ids) - {val.image_ids[1]}
    )


def test_a_bad_image_in_a_worker_raises_the_workers_one_line_error(tmp_path):
    """With worker processes the error is the one a worker raised (type and message), not torch's copy
    carrying the worker's traceback, in training and in evaluation."""
    root = write_synthetic_coco(tmp_path, train=4, val=2, image_sizes=[(48, 64)], instances=(1, 2))
    for split in ("train", "val"):
        ds = dataset(root, split)
        bad = root / f"{split}2017" / ds.coco.imgs[ds.image_ids[1]]["file_name"]
        bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
        with pytest.raises(DataError) as direct:
            ds.load(1)
        build = build_train_loader if split == "train" else build_eval_loader
        with pytest.raises(DataError) as raised:
            list(build(ds, config("data.workers=1")))
        assert type(raised.value) is DataError
        assert str(raised.value) == str(direct.value) and str(raised.value).startswith(f"{bad}: ")


def test_images_of_a_canvas_smaller_than_one_global_batch_are_named_in_a_warning(tmp_path, caplog):
    """8 ranks x 2 images, 97 landscape and 3 portrait images (no image file is read): the 3 never train."""
    images = [
        {"id": i, "file_name": f"{i}.jpg", "height": 640 if i < 3 else 480, "width": 480 if i < 3 else 640}
        for i in range(100)
    ]
    ann_file = tmp_path / "instances.json"
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    ann_file.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    ds = CocoInstances(tmp_path, ann_file)
    with caplog.at_level(logging.WARNING, logger="solov2.data.loader"):
        build_train_loader(ds, config(), rank=0, world_size=8)
    [warning] = [r.getMessage() for r in caplog.records if "never train" in r.getMessage()]
    assert warning.startswith("3 images never train (3 on the 256x192 canvas)")
    assert "data.samples_per_device=2 x 8 ranks" in warning
    caplog.clear()
    build_train_loader(ds, config(), rank=0, world_size=1)
    assert not [r for r in caplog.records if "never train" in r.getMessage()]


def test_loader_checks_num_classes(root):
    with pytest.raises(DataError, match=r"model\.head\.num_classes: is 5 .* defines 3"):
        build_train_loader(dataset(root), config("model.head.num_classes=5"))


@pytest.mark.parametrize(
    "name",
    ["solov2_r50_fpn_1x_coco", "solov2_r50_fpn_3x_coco", "solov2_light_r18_fpn_3x_coco", "solov2_tiny_cpu"],
)
def test_padding_normalises_to_mmdetections_zero(name):
    """mmdetection pads after normalising, with 0; the uint8 canvases here are padded with the mean colour,
    which the model's normalisation turns into less than half a grey level from 0."""
    data = load_config(name).data
    padded = (torch.tensor(data.pad_value, dtype=torch.float32) - torch.tensor(data.mean)) / torch.tensor(
        data.std
    )
    assert padded.abs().max() < 0.5 / min(data.std)
    assert data.pad_value == (124, 116, 104)
