"""CocoInstances on hand-written annotation files: every segmentation format, crowd, empty images,
image modes, id mappings and the errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from solov2.data.coco import CocoInstances
from solov2.data.synthetic import _uncompressed_rle
from solov2.errors import DataError, UserError

H, W = 40, 60
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def square(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def write_set(
    root: Path,
    images: list[dict],
    anns: list[dict],
    categories: list[int] = (1,),
    mode: str = "RGB",
) -> tuple[Path, Path]:
    """Images (written as PNG unless present) and an annotation file; returns (image_dir, ann_file)."""
    image_dir = root / "images"
    image_dir.mkdir(exist_ok=True)
    for info in images:
        info.setdefault("file_name", f"{info['id']}.png")
        info.setdefault("height", H)
        info.setdefault("width", W)
        path = image_dir / info["file_name"]
        if not path.exists():
            Image.new(mode, (info["width"], info["height"])).save(path)
    for i, ann in enumerate(anns):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", categories[0])
        if "bbox" not in ann:
            rle = _rle_of(ann["segmentation"], H, W)
            ann["bbox"] = mask_utils.toBbox(rle).tolist()
            ann["area"] = float(mask_utils.area(rle))
    ann_file = root / "ann.json"
    cats = [{"id": c, "name": f"c{c}"} for c in categories]
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return image_dir, ann_file


def _rle_of(segm, h: int, w: int) -> dict:
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    return mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm


def test_polygon_with_several_parts_is_one_instance(tmp_path):
    segm = [square(2, 2, 10), square(30, 20, 8)]
    ds = CocoInstances(*write_set(tmp_path, [{"id": 1}], [{"image_id": 1, "segmentation": segm}]))
    s = ds[0]
    assert s.masks.shape == (1, H, W) and s.masks.dtype == torch.uint8
    expected = mask_utils.decode(_rle_of(segm, H, W))
    assert (s.masks[0].numpy() == expected).all()
    assert s.masks[0, 5, 5] == 1 and s.masks[0, 24, 34] == 1 and s.masks[0, 18, 20] == 0
    x, y, w, h = ds.coco.anns[1]["bbox"]
    assert s.boxes.tolist() == [[x, y, x + w, y + h]] and s.labels.tolist() == [0]


def test_compressed_and_uncompressed_rle(tmp_path):
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:15, 10:30] = 1
    mask[20:22, 40:50] = 1
    compressed = mask_utils.encode(np.asfortranarray(mask))
    compressed = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    uncompressed = _uncompressed_rle(mask.astype(bool))
    anns = [{"image_id": 1, "segmentation": compressed}, {"image_id": 1, "segmentation": uncompressed}]
    s = CocoInstances(*write_set(tmp_path, [{"id": 1}], anns))[0]
    assert s.masks.shape[0] == 2
    assert (s.masks[0].numpy() == mask).all() and (s.masks[1].numpy() == mask).all()


def test_crowd_is_not_an_instance_but_stays_in_coco(tmp_path):
    anns = [
        {"image_id": 1, "segmentation": [square(2, 2, 10)]},
        {"image_id": 1, "segmentation": [square(20, 20, 10)], "iscrowd": 1},
    ]
    ds = CocoInstances(*write_set(tmp_path, [{"id": 1}], anns))
    assert ds[0].masks.shape[0] == 1
    assert ds.instance_counts() == [1]
    assert [a["iscrowd"] for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))] == [0, 1]


def test_degenerate_and_empty_annotations_are_dropped(tmp_path):
    anns = [
        {"image_id": 1, "segmentation": [square(2, 2, 10)]},
        {"image_id": 1, "segmentation": [square(20, 20, 10)], "bbox": [20, 20, 0.5, 10], "area": 5.0},
        {"image_id": 1, "segmentation": [square(20, 20, 10)], "bbox": [20, 20, 10, 10], "area": 0.0},
        {"image_id": 1, "segmentation": [[1, 1, 2, 2]], "bbox": [1, 1, 1, 1], "area": 1.0},  # < 3 points
        {"image_id": 1, "segmentation": [], "bbox": [1, 1, 5, 5], "area": 25.0},
    ]
    s = CocoInstances(*write_set(tmp_path, [{"id": 1}], anns))[0]
    assert s.masks.shape[0] == s.boxes.shape[0] == s.labels.shape[0] == 1


def test_annotations_whose_mask_has_no_pixel_are_counted_as_dropped(tmp_path):
    """Annotations that pass every check on their numbers yet rasterise to no pixel are dropped, and
    counted; a polygon with one sub-pixel part and one real part stays an instance."""
    sliver = [10, 10, 10.001, 10, 10, 10.1]  # 3 points, area 0.00005
    speck = [5.1, 5.1, 5.4, 5.1, 5.1, 5.4]  # a triangle inside one pixel
    zeros = mask_utils.encode(np.asfortranarray(np.zeros((H, W), dtype=np.uint8)))
    anns = [
        {"image_id": 1, "segmentation": [square(20, 5, 10)]},
        {"image_id": 1, "segmentation": [sliver], "bbox": [10, 10, 1, 1], "area": 0.001},
        {"image_id": 1, "segmentation": [speck], "bbox": [5, 5, 1, 1], "area": 0.05},
        {"image_id": 1, "segmentation": [speck, square(40, 20, 6)], "bbox": [5, 5, 41, 21], "area": 36.0},
        {
            "image_id": 2,
            "segmentation": {"size": [H, W], "counts": zeros["counts"].decode("ascii")},
            "bbox": [0, 0, 2, 2],
            "area": 4.0,
        },
    ]
    ds = CocoInstances(*write_set(tmp_path, [{"id": 1}, {"id": 2}], anns))
    assert ds.annotation_counts() == {"dropped_annotations": 3, "degenerate_polygons": 0, "clamped_boxes": 0}
    assert ds[0].masks.shape[0] == 2 and ds[1].masks.shape[0] == 0
    assert ds.load_resized(0, (H, W)).masks.shape[0] == 2


def test_image_without_annotations_is_background(tmp_path):
    ds = CocoInstances(*write_set(tmp_path, [{"id": 1}], []))
    s = ds[0]
    assert s.masks.shape == (0, H, W) and s.boxes.shape == (0, 4) and s.labels.shape == (0,)
    assert s.image.shape == (3, H, W) and s.original_size == (H, W)


def test_filter_empty_gt_leaves_out_background_and_tiny_images_as_mmdetection_does(tmp_path):
    """Kept: an image with an instance, one with only a crowd region (mmdetection's rule looks at any
    annotation of a known category); left out: one without annotations, one under 32 pixels."""
    images = [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4, "height": 31, "width": 64}]
    anns = [
        {"image_id": 1, "segmentation": [square(2, 2, 10)]},
        {"image_id": 2, "segmentation": [square(2, 2, 10)], "iscrowd": 1},
        {"image_id": 4, "segmentation": [square(2, 2, 10)]},
    ]
    paths = write_set(tmp_path, images, anns)
    ds = CocoInstances(*paths, filter_empty_gt=True)
    assert ds.image_ids == [1, 2] and len(ds) == 2 and ds.filtered_images == 2
    assert [ds[i].image_id for i in range(2)] == [1, 2] and ds.instance_counts() == [1, 0]
    everything = CocoInstances(*paths)
    assert everything.image_ids == [1, 2, 3, 4] and everything.filtered_images == 0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_image_modes_become_rgb(tmp_path, mode):
    image_dir, ann_file = write_set(
        tmp_path, [{"id": 1, "file_name": "1.jpg" if mode == "CMYK" else "1.png"}], []
    )
    if mode != "CMYK":
        Image.new(mode, (W, H), color=200 if mode in ("L", "P") else (10, 20, 30, 40)).save(
            image_dir / "1.png"
        )
    else:
        Image.new("CMYK", (W, H), color=(0, 255, 255, 0)).save(image_dir / "1.jpg")
    image = CocoInstances(image_dir, ann_file)[0].image
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    if mode == "RGBA":
        assert image[:, 0, 0].tolist() == [10, 20, 30]


def test_non_contiguous_categories_and_sparse_image_ids(tmp_path):
    images = [{"id": 1000}, {"id": 7}, {"id": 42}]
    anns = [
        {"image_id": 42, "segmentation": [square(2, 2, 10)], "category_id": 9},
        {"image_id": 42, "segmentation": [square(20, 2, 10)], "category_id": 2},
        {"image_id": 1000, "segmentation": [square(2, 20, 10)], "category_id": 5},
    ]
    ds = CocoInstances(*write_set(tmp_path, images, anns, categories=[5, 2, 9]))
    assert ds.image_ids == [7, 42, 1000] and len(ds) == 3
    assert ds.label_to_category == [2, 5, 9] and ds.category_to_label == {2: 0, 5: 1, 9: 2}
    assert ds.class_names == ["c2", "c5", "c9"] and ds.num_classes == 3
    assert [ds[i].image_id for i in range(3)] == [7, 42, 1000]
    assert ds[1].labels.tolist() == [2, 0] and ds[2].labels.tolist() == [1]


def test_num_classes_mismatch_names_both_numbers_and_the_field(tmp_path):
    paths = write_set(tmp_path, [{"id": 1}], [], categories=[1, 3, 7])
    assert CocoInstances(*paths, num_classes=3).num_classes == 3
    with pytest.raises(DataError, match=r"model\.head\.num_classes: is 80 .* defines 3 categories"):
        CocoInstances(*paths, num_classes=80)


def test_missing_paths_are_named(tmp_path):
    image_dir, ann_file = write_set(tmp_path, [{"id": 1}], [])
    with pytest.raises(DataError, match=r"nope\.json"):
        CocoInstances(image_dir, tmp_path / "nope.json")
    with pytest.raises(UserError, match="no_images"):
        CocoInstances(tmp_path / "no_images", ann_file)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json"):
        CocoInstances(image_dir, tmp_path / "bad.json")


def test_a_missing_annotation_file_lists_the_splits_that_are_there(tmp_path):
    """``solov2 eval --split train`` on a COCO 2017 layout: the error names the files that exist."""
    (tmp_path / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text("{}")
    with pytest.raises(DataError) as error:
        CocoInstances(tmp_path / "train", tmp_path / "annotations" / "instances_train.json")
    assert str(error.value).endswith(
        "instances_train.json: annotation file not found (the folder has instances_train2017.json, "
        "instances_val2017.json)"
    )


def test_sizes_come_from_the_annotation_file_without_opening_images(tmp_path):
    image_dir, ann_file = write_set(tmp_path, [{"id": 2, "height": 30, "width": 50}, {"id": 1}], [])
    for f in image_dir.iterdir():
        f.unlink()
    assert CocoInstances(image_dir, ann_file).image_sizes() == [(H, W), (30, 50)]


def test_missing_corrupt_or_wrongly_sized_image_names_the_file(tmp_path):
    images = [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4, "file_name": "4.jpg"}]
    image_dir, ann_file = write_set(tmp_path, images, [{"image_id": 1, "segmentation": [square(2, 2, 5)]}])
    (image_dir / "1.png").unlink()
    (image_dir / "2.png").write_bytes(b"this is not a png")
    Image.new("RGB", (W + 1, H)).save(image_dir / "3.png")
    Image.new("RGB", (W, H), color=(200, 10, 10)).save(image_dir / "4.jpg")
    (image_dir / "4.jpg").write_bytes((image_dir / "4.jpg").read_bytes()[:200])  # truncated JPEG
    ds = CocoInstances(image_dir, ann_file, bad_image_hint=" (what to do)")
    for index, pattern in enumerate(
        ["1.png: image file not found", "2.png: cannot decode", "3.png: image is", "4.jpg"]
    ):
        with pytest.raises(DataError, match=pattern + r".* \(what to do\)$"):
            ds[index]


def test_skip_bad_images_returns_none_and_counts_distinct_images(tmp_path):
    image_dir, ann_file = write_set(tmp_path, [{"id": 1}, {"id": 2}, {"id": 3}], [])
    (image_dir / "1.png").unlink()
    (image_dir / "3.png").write_bytes(b"garbage")
    ds = CocoInstances(image_dir, ann_file, skip_bad_images=True)
    assert ds.skipped == 0
    assert ds[0] is None and ds[0] is None and ds[1] is not None and ds[2] is None
    assert ds.skipped == 2


def test_bad_images_of_an_earlier_run_count_and_are_named_again_when_met(tmp_path, caplog):
    image_dir, ann_file = write_set(tmp_path, [{"id": 1}, {"id": 2}, {"id": 3}], [])
    (image_dir / "3.png").write_bytes(b"garbage")
    ds = CocoInstances(image_dir, ann_file, skip_bad_images=True)
    assert ds.mark_bad([3, 99]) == 1  # from a checkpoint; 99 is not in this data set
    assert ds.skipped == 1 and ds.bad_images().tolist() == [0, 0, 1]
    with caplog.at_level("WARNING"):
        assert ds[2] is None and ds[2] is None
    named = [r.getMessage() for r in caplog.records if "skipping bad image" in r.getMessage()]
    assert len(named) == 1 and str(image_dir / "3.png") in named[0]  # the new run's log names it, once
    assert ds.skipped == 1


def test_degenerate_annotations_are_counted(tmp_path):
    anns = [
        {"image_id": 1, "segmentation": [square(5, 5, 10)]},
        {"image_id": 1, "segmentation": [[1, 1, 4, 4]]},  # a polygon of 2 points: no instance
        {
            "image_id": 1,
            "segmentation": [square(20, 5, 10), [1, 1, 2, 2]],
            "bbox": [20, 5, 10, 10],
            "area": 100,
        },
        {
            "image_id": 2,
            "segmentation": [square(50, 30, 9)],
            "bbox": [50, 30, 20, 20],
            "area": 81,
        },  # box outside
    ]
    anns[1].update(bbox=[1, 1, 3, 3], area=4)
    image_dir, ann_file = write_set(tmp_path, [{"id": 1}, {"id": 2}], anns)
    ds = CocoInstances(image_dir, ann_file)
    assert ds.annotation_counts() == {"dropped_annotations": 1, "degenerate_polygons": 2, "clamped_boxes": 1}
    assert ds[0].masks.shape[0] == 2 and ds[1].boxes.tolist() == [[50.0, 30.0, 60.0, 40.0]]
