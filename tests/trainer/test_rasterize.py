"""Decoding straight to the training size: polygons rasterised at the resized size, RLE resized as
bitmaps, boxes and flips as the resize/flip transforms give them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from solov2.data.coco import CocoInstances, read_rgb
from solov2.data.transforms import hflip_sample, resize_sample
from tests.trainer.test_coco import H, W, square, write_set

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SIZE = (100, 150)  # 2.5x the 40x60 stored images


@pytest.fixture
def dataset(tmp_path) -> CocoInstances:
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((9, 13), np.uint8), ((20, 11), (30, 17)))))
    rle["counts"] = rle["counts"].decode()
    image_dir, ann_file = write_set(
        tmp_path,
        [{"id": 1}],
        [
            {"image_id": 1, "segmentation": [square(4, 6, 12)]},
            {"image_id": 1, "segmentation": [[40, 2, 58, 2, 49, 18]]},  # a triangle
            {"image_id": 1, "segmentation": rle},
        ],
    )
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_dir / "1.png")
    return CocoInstances(image_dir, ann_file)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.bool() & b.bool()).sum() / (a.bool() | b.bool()).sum())


@pytest.mark.parametrize("flip", [False, True])
def test_load_resized_agrees_with_resize_and_flip_of_the_stored_size(dataset, flip):
    direct = dataset.load_resized(0, SIZE, flip=flip)
    stepwise = resize_sample(dataset[0], SIZE)
    if flip:
        stepwise = hflip_sample(stepwise)
    assert direct.image.shape == (3, *SIZE) and direct.image_size == SIZE and direct.original_size == (H, W)
    assert direct.masks.shape == (3, *SIZE) and direct.masks.dtype == torch.uint8
    torch.testing.assert_close(direct.boxes, stepwise.boxes)
    assert torch.equal(direct.labels, stepwise.labels)
    # Pixels: the same OpenCV resize (and mirror) either way, so evaluation sees what training sees.
    assert torch.equal(direct.image, stepwise.image)
    # Polygons: rasterised at the new size, close to the enlarged bitmap but not the same pixels.
    for n in (0, 1):
        assert _iou(direct.masks[n], stepwise.masks[n]) > 0.9
    # RLE: a bilinear bitmap resize too (OpenCV rounds exact ties, frequent at a 2.5x scale, differently).
    assert _iou(direct.masks[2], stepwise.masks[2]) > 0.95


def test_polygons_are_scaled_then_rasterised(dataset):
    masks = dataset.load_resized(0, SIZE).masks
    sy, sx = SIZE[0] / H, SIZE[1] / W
    scaled = [4 * sx, 6 * sy, 16 * sx, 6 * sy, 16 * sx, 18 * sy, 4 * sx, 18 * sy]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([scaled], *SIZE)))
    assert torch.equal(masks[0], torch.from_numpy(expected))
    # The enlarged square covers 2.5 x 2.5 times the area of the stored one, to the pixel row.
    assert abs(int(masks[0].sum()) - (12 * sx) * (12 * sy)) < 2 * 12 * (sx + sy)


def test_flipped_masks_mirror_the_unflipped_ones(dataset):
    plain, flipped = dataset.load_resized(0, SIZE), dataset.load_resized(0, SIZE, flip=True)
    assert torch.equal(plain.image.flip(-1), flipped.image)
    for n in range(3):
        assert _iou(plain.masks[n].flip(-1), flipped.masks[n]) > 0.95
    width = SIZE[1]
    torch.testing.assert_close(flipped.boxes[:, 0], width - plain.boxes[:, 2])
    torch.testing.assert_close(flipped.boxes[:, 2], width - plain.boxes[:, 0])


def test_shrinking_averages_instead_of_dropping_pixels(dataset):
    small = dataset.load_resized(0, (20, 30)).image.float()
    stored = dataset[0].image.float()
    # Area averaging of 2x2 blocks: the mean colour is kept.
    assert (small.mean((1, 2)) - stored.mean((1, 2))).abs().max() < 1.0


def test_decoding_keeps_the_stored_orientation_that_annotations_refer_to(tmp_path):
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[:5, :10] = (250, 10, 10)  # a red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    rgb = read_rgb(tmp_path / "rotated.jpg")
    assert rgb.shape == (H, W, 3)
    assert rgb[2, 5, 0] > 200 and rgb[2, 5, 1] < 60
