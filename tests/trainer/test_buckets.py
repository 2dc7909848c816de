"""Bucket batch samplers: one canvas per batch, deterministic epochs, equal and disjoint ranks, resume,
and an evaluation order that sees every image once."""

from __future__ import annotations

import random

import pytest

from solov2.data.buckets import BucketBatchSampler, EvalBatchSampler, assign_canvases, choose_canvas

CANVASES = [(800, 1344), (1344, 800), (1088, 1088)]
SCALE = (1333, 800)


def coco_like_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [rng.choice([(480, 640), (640, 480), (427, 640), (640, 640), (360, 640)]) for _ in range(n)]


def test_choose_canvas_picks_the_least_padding_and_falls_back_to_least_shrinking():
    assert choose_canvas(800, 1067, CANVASES) == 0
    assert choose_canvas(1067, 800, CANVASES) == 1
    assert choose_canvas(800, 800, CANVASES) == 0  # fits all three: (800, 1344) has the smallest area
    assert choose_canvas(800, 800, [(1088, 1088), (1344, 800)]) == 1
    assert choose_canvas(1000, 1000, CANVASES) == 2
    assert choose_canvas(64, 64, [(64, 64), (64, 64)]) == 0  # ties: first listed
    assert choose_canvas(2000, 1000, CANVASES) == 1  # fits none: (1344, 800) shrinks it least
    assert assign_canvases([(480, 640), (640, 480)], CANVASES, img_scale=SCALE) == [0, 1]


def make(sizes, **kw) -> BucketBatchSampler:
    args = {"img_scale": SCALE, "batch_size": 2, "shuffle": True, "seed": 3} | kw
    return BucketBatchSampler(sizes, CANVASES, **args)


def test_batches_never_mix_canvases_and_len_is_exact():
    sizes = coco_like_sizes(101)
    sampler = make(sizes)
    canvas_of = assign_canvases(sizes, CANVASES, img_scale=SCALE)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sampler.batches_per_epoch
    assert all(len(b) == 2 and len({canvas_of[i] for i in b}) == 1 for b in batches)
    assert [c for c, _ in sampler.iter_batches()] == [canvas_of[b[0]] for b in batches]
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and len(flat) >= len(sizes) - 2 * len(CANVASES)


def test_epochs_are_deterministic_and_differ():
    sizes = coco_like_sizes(60)
    a, b = make(sizes), make(sizes)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(make(sizes, seed=4)) != list(make(sizes, seed=3))
    unshuffled = make(sizes, shuffle=False)
    first = list(unshuffled)
    unshuffled.set_epoch(9)
    assert list(unshuffled) == first


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_equal_numbers_of_disjoint_batches_on_the_same_canvas(drop_last):
    sizes = coco_like_sizes(97)
    world = 3
    ranks = [make(sizes, rank=r, world_size=world, drop_last=drop_last) for r in range(world)]
    for s in ranks:
        s.set_epoch(2)
    runs = [list(s.iter_batches()) for s in ranks]
    assert len({len(r) for r in runs}) == 1 and all(
        len(r) == len(s) for r, s in zip(runs, ranks, strict=True)
    )
    for step in zip(*runs, strict=True):
        assert len({canvas for canvas, _ in step}) == 1  # the same canvas on every rank at every step
    seen = [i for r in runs for _, b in r for i in b]
    if drop_last:
        assert len(seen) == len(set(seen))
    else:
        assert set(seen) == set(range(len(sizes)))  # every image, a few twice to complete batches


def test_a_bucket_smaller_than_one_global_batch_is_listed_as_never_trained():
    """8 ranks x 2 images: the 3 portrait images never fill a global batch of 16, so no epoch samples them."""
    sizes = [(480, 640)] * 97 + [(640, 480)] * 3
    ranks = [make(sizes, rank=r, world_size=8) for r in range(8)]
    assert ranks[0].untrained() == {1: 3}
    seen = set()
    for epoch in range(4):
        for s in ranks:
            s.set_epoch(epoch)
            seen.update(i for b in s for i in b)
    assert seen.isdisjoint({97, 98, 99})
    assert make(sizes, world_size=8, drop_last=False).untrained() == {}
    assert make(sizes, world_size=1).untrained() == {}  # a batch of 2 fills


def test_resume_mid_epoch_reproduces_the_remaining_batches():
    sizes = coco_like_sizes(80)
    full = make(sizes, rank=1, world_size=2)
    full.set_epoch(3)
    expected = list(full)
    resumed = make(sizes, rank=1, world_size=2)
    resumed.set_epoch(3, start_batch=5)
    assert len(resumed) == len(expected) - 5 and list(resumed) == expected[5:]
    resumed.set_epoch(4)  # the next epoch starts at its beginning again
    assert len(resumed) == len(expected)
    resumed.set_epoch(3, start_batch=10**6)
    assert len(resumed) == 0 and list(resumed) == []


@pytest.mark.parametrize(("n", "world", "batch"), [(23, 3, 2), (5, 4, 2), (16, 2, 4), (1, 2, 1)])
def test_eval_sees_every_image_once_with_minus_one_padding(n, world, batch):
    sizes = coco_like_sizes(n, seed=n)
    canvas_of = assign_canvases(sizes, CANVASES, img_scale=SCALE)
    runs = [
        list(
            EvalBatchSampler(
                sizes, CANVASES, img_scale=SCALE, batch_size=batch, rank=r, world_size=world
            ).iter_batches()
        )
        for r in range(world)
    ]
    assert len({len(r) for r in runs}) == 1
    real = sorted(i for r in runs for _, b in r for i in b if i >= 0)
    assert real == list(range(n))
    for r in runs:
        for canvas, b in r:
            assert len(b) == batch and all(canvas_of[i] == canvas for i in b if i >= 0)
    padding = sum(i == -1 for r in runs for _, b in r for i in b)
    assert padding == len(runs[0]) * world * batch - n
