"""Resize, flip and pad keep images, masks and boxes consistent and inside the canvas."""

from __future__ import annotations

import random

import pytest
import torch

from solov2.config import DataConfig
from solov2.data.coco import Sample
from solov2.data.synthetic import boxes_from_masks, draw_instances
from solov2.data.transforms import (
    TRAIN_AUGMENTATIONS,
    EvalTransform,
    TrainTransform,
    fit_into,
    fit_size,
    hflip_sample,
    pad_to_canvas,
    resize_sample,
)


def make_sample(height: int, width: int, num: int = 4, seed: int = 0) -> Sample:
    image, masks, labels = draw_instances(height, width, num, torch.Generator().manual_seed(seed), min_size=6)
    keep = masks.flatten(1).any(1).bool()
    masks, labels = masks[keep], labels[keep]
    return Sample(image, masks, boxes_from_masks(masks), labels, 1, (height, width), (height, width))


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((480, 640), (1333, 800), (800, 1067)),
        ((640, 480), (1333, 800), (1067, 800)),
        ((640, 480), (800, 1333), (1067, 800)),  # either order
        ((427, 640), (1333, 800), (800, 1199)),
        ((360, 640), (1333, 800), (750, 1333)),  # the long side caps
        ((1000, 1000), (1333, 800), (800, 800)),
        ((480, 640), (1333, 640), (640, 853)),
        ((100, 1000), (256, 256), (26, 256)),
    ],
)
def test_fit_size_hand_values(size, scale, expected):
    assert fit_size(*size, scale) == expected


def test_fit_into_shrinks_only_when_needed():
    assert fit_into((800, 1067), (800, 1344)) == (800, 1067)
    assert fit_into((800, 1067), (800, 800)) == (600, 800)
    assert fit_into((1333, 750), (1088, 1088)) == (1088, 612)


def test_resize_scales_boxes_and_masks_consistently():
    s = make_sample(60, 80)
    r = resize_sample(s, (120, 160))
    assert r.image.shape == (3, 120, 160) and r.masks.shape == (s.masks.shape[0], 120, 160)
    assert r.image_size == (120, 160) and r.masks.dtype == torch.uint8
    assert torch.allclose(r.boxes, s.boxes * 2)
    assert (boxes_from_masks(r.masks) - r.boxes).abs().max() <= 1.0
    area_ratio = r.masks.flatten(1).sum(1).float() / s.masks.flatten(1).sum(1).float()
    assert ((area_ratio - 4).abs() < 0.6).all()


def test_resize_drops_instances_that_vanish():
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    masks = torch.zeros(2, 100, 100, dtype=torch.uint8)
    masks[0, 10:60, 10:60] = 1
    masks[1, 80, 80] = 1  # one pixel: gone at 1/10 scale
    boxes = torch.tensor([[10.0, 10, 60, 60], [80, 80, 81, 81]])
    s = Sample(image, masks, boxes, torch.tensor([0, 1]), 1, (100, 100), (100, 100))
    r = resize_sample(s, (10, 10))
    assert r.labels.tolist() == [0] and r.masks.shape == (1, 10, 10) and r.boxes.shape == (1, 4)


def test_flip_flips_boxes_and_masks_consistently():
    s = make_sample(50, 70)
    f = hflip_sample(s)
    assert torch.equal(f.image, s.image.flip(-1)) and torch.equal(f.masks, s.masks.flip(-1))
    assert torch.equal(boxes_from_masks(f.masks), f.boxes)
    assert torch.equal(hflip_sample(f).boxes, s.boxes)
    with pytest.raises(ValueError, match="before padding"):
        hflip_sample(pad_to_canvas(s, (64, 96), (0, 0, 0)))


def test_pad_keeps_the_image_top_left():
    s = make_sample(50, 70)
    p = pad_to_canvas(s, (64, 96), (124, 116, 104))
    assert p.image.shape == (3, 64, 96) and p.masks.shape[-2:] == (64, 96)
    colour = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(p.image[:, :50, :70], s.image)
    assert p.image[:, 50:].eq(colour).all() and p.image[:, :, 70:].eq(colour).all()
    assert torch.equal(p.masks[:, :50, :70], s.masks) and not p.masks[:, 50:].any()
    assert torch.equal(p.boxes, s.boxes) and p.image_size == (50, 70)
    with pytest.raises(ValueError, match="does not fit"):
        pad_to_canvas(s, (32, 96), (0, 0, 0))


@pytest.mark.parametrize("short_sides", [(), (96, 112, 128)])
def test_train_samples_always_fit_their_canvas_with_valid_boxes(short_sides):
    cfg = DataConfig(
        img_scale=(160, 128), multiscale_short_sides=short_sides, canvases=((128, 160), (160, 128))
    )
    transform = TrainTransform(cfg)
    sizes = set()
    for i in range(30):
        rng = random.Random(i)
        h, w = rng.randint(20, 120), rng.randint(20, 120)
        canvas = random.Random(-i).choice([(128, 160), (160, 128), (64, 64)])  # (64, 64): must shrink more
        out = transform(make_sample(h, w, seed=i), canvas=canvas, seed=i)
        ih, iw = out.image_size
        assert out.image.shape[-2:] == canvas and ih <= canvas[0] and iw <= canvas[1]
        fill = torch.tensor(cfg.pad_value, dtype=torch.uint8).view(3, 1, 1)  # the mean colour
        assert out.image[:, ih:].eq(fill).all() and out.image[:, :ih, iw:].eq(fill).all()
        assert not out.masks[:, ih:].any() and not out.masks[:, :, iw:].any()
        b = out.boxes
        assert (
            (b[:, 0] >= 0).all() and (b[:, 2] <= iw).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= ih).all()
        )
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        sizes.add(min(ih, iw) if canvas != (64, 64) else None)
    if short_sides:
        assert len(sizes) > 3  # several scales were drawn


def test_train_transform_is_reproducible_from_its_rng():
    cfg = DataConfig(
        img_scale=(160, 128), multiscale_short_sides=(96, 128), flip_prob=0.5, canvases=((128, 160),)
    )
    transform, s = TrainTransform(cfg), make_sample(60, 90)
    a = transform(s, canvas=(128, 160), seed=7)
    b = transform(s, canvas=(128, 160), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4], strict=True)) and a.image_size == b.image_size
    cfg = DataConfig(img_scale=(160, 128), flip_prob=0.5, canvases=((128, 160),))
    reference = resize_sample(s, (107, 160))
    flipped = [
        torch.equal(
            TrainTransform(cfg)(s, canvas=(128, 160), seed=k).boxes,
            hflip_sample(reference).boxes,
        )
        for k in range(20)
    ]
    assert 0 < sum(flipped) < 20


def test_eval_transform_is_deterministic_and_unflipped():
    cfg = DataConfig(img_scale=(160, 128), flip_prob=1.0, canvases=((128, 160),))
    s = make_sample(60, 90)
    out = EvalTransform(cfg)(s, canvas=(128, 160))
    again = EvalTransform(cfg)(s, canvas=(128, 160))
    assert torch.equal(out.image, again.image) and torch.equal(out.boxes, again.boxes)
    assert out.image_size == (107, 160)
    assert torch.allclose(out.boxes, s.boxes * torch.tensor([160 / 90, 107 / 60, 160 / 90, 107 / 60]))


def test_a_new_augmentation_leaves_the_draws_of_the_others_alone():
    cfg = DataConfig(
        img_scale=(160, 128), multiscale_short_sides=(96, 112, 128), flip_prob=0.5, canvases=((128, 160),)
    )
    seen: list[float] = []

    def jitter(plan, image, rng, cfg):  # draws twice, changes nothing
        seen.append(rng.random() + rng.random())
        return plan

    plain, extended = TrainTransform(cfg), TrainTransform(cfg, [jitter, *TRAIN_AUGMENTATIONS])
    plans = [plain.plan((60, 90), canvas=(128, 160), seed=k) for k in range(40)]
    assert [extended.plan((60, 90), canvas=(128, 160), seed=k) for k in range(40)] == plans
    assert len({p.size for p in plans}) > 1 and 0 < sum(p.flip for p in plans) < 40
    for k, plan in enumerate(plans):  # scale then flip, from the image's own stream, as always
        stream = random.Random(k)
        short = (96, 112, 128)[int(stream.random() * 3)]
        assert plan == (fit_into(fit_size(60, 90, (160, short)), (128, 160)), stream.random() < 0.5)
    # The new augmentation has its own stream, reproducible from the image's seed.
    assert len(set(seen)) == 40
    assert extended.plan((60, 90), canvas=(128, 160), seed=3) == plans[3] and seen[-1] == seen[3]
