"""write_synthetic_coco writes a COCO data set whose files, masks and annotations agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from solov2.data.coco import CocoInstances
from solov2.data.synthetic import _BASE_COLOURS, CATEGORY_IDS, CLASSES, write_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_coco(tmp_path_factory.mktemp("shapes"), train=14, val=6, seed=1)


def load(root, split: str) -> CocoInstances:
    return CocoInstances(
        root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json", num_classes=3
    )


def test_layout_ids_and_categories(root):
    for split, count, offset in (("train", 14, 3), ("val", 6, 5)):
        ds = load(root, split)
        assert len(ds) == count and len(list((root / f"{split}2017").glob("*.jpg"))) == count
        assert ds.image_ids == [7 * k + offset for k in range(count)]
        assert ds.label_to_category == list(CATEGORY_IDS) and ds.class_names == list(CLASSES)
        sizes = ds.image_sizes()
        assert all(160 <= s <= 320 for hw in sizes for s in hw) and len(set(sizes)) > 3
        counts = ds.instance_counts()
        assert counts[4] == 0 and all(1 <= c <= 6 for k, c in enumerate(counts) if k % 9 != 4)


def test_masks_agree_with_polygons_rle_area_bbox_and_colours(root):
    ds = load(root, "train")
    formats = set()
    for index, image_id in enumerate(ds.image_ids):
        sample = ds[index]
        anns = [a for a in ds.coco.imgToAnns[image_id] if not a["iscrowd"]]
        assert sample.masks.shape[0] == len(anns)
        for mask, label, box, ann in zip(sample.masks, sample.labels, sample.boxes, anns, strict=True):
            m = mask.numpy()
            assert m.sum() == ann["area"] >= 32
            ys, xs = np.nonzero(m)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert min(ann["bbox"][2:]) >= 5
            if isinstance(ann["segmentation"], list):
                formats.add("polygon")
                h, w = m.shape
                poly = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w))[..., 0]
                assert (poly == m).all()
            else:
                formats.add("rle")
            colour = sample.image.permute(1, 2, 0)[mask.bool()].float().median(0).values
            assert (colour - _BASE_COLOURS[label]).abs().max() < 70
            assert CATEGORY_IDS[int(label)] == ann["category_id"]
    assert formats == {"polygon", "rle"}


def test_val_has_one_crowd_region_that_is_not_an_instance(root):
    ds = load(root, "val")
    crowd = [a for a in ds.coco.anns.values() if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)
    index = ds.image_ids.index(crowd[0]["image_id"])
    assert ds[index].masks.shape[0] == len(ds.coco.imgToAnns[crowd[0]["image_id"]]) - 1
    rle = mask_utils.frPyObjects(crowd[0]["segmentation"], *crowd[0]["segmentation"]["size"])
    assert mask_utils.area(rle) == crowd[0]["area"] > 0


def test_same_seed_same_annotations(root, tmp_path):
    again = write_synthetic_coco(tmp_path, train=14, val=6, seed=1)
    name = "annotations/instances_train2017.json"
    assert json.loads((root / name).read_text()) == json.loads((again / name).read_text())
    a = load(root, "train")[0].image
    b = load(again, "train")[0].image
    assert torch.equal(a, b)
