"""COCO evaluation: detections to COCO results, end-to-end scoring with a fake model, the AP table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from torch import Tensor, nn

from solov2.engine.evaluate import AP_NAMES, detections_to_coco, evaluate, format_ap_table
from solov2.postprocess import paste_masks
from solov2.structures import Batch, Detections

CANVAS = (64, 64)
GRID = (16, 16)  # mask features at stride 4
LABEL_TO_CATEGORY = [3, 7]
K = 4  # detection slots per image
# image id -> (original size, resized size inside the canvas, instances as (label, grid box y0 y1 x0 x1))
IMAGES = {
    1: ((80, 120), (32, 48), [(0, (2, 6, 4, 10)), (1, (1, 7, 1, 3))]),
    2: ((50, 50), (64, 64), [(1, (3, 12, 2, 14))]),
    3: ((64, 64), (64, 64), [(0, (0, 8, 0, 8)), (0, (9, 15, 9, 15))]),
}


def soft_mask(box: tuple[int, int, int, int]) -> Tensor:
    y0, y1, x0, x1 = box
    m = torch.zeros(GRID)
    m[y0:y1, x0:x1] = 1.0
    return m


def pasted(image_id: int, box: tuple[int, int, int, int]) -> np.ndarray:
    original, size, _ = IMAGES[image_id]
    m = paste_masks(
        soft_mask(box)[None], image_size=size, canvas_size=CANVAS, original_size=original, mask_thr=0.5
    )
    return m[0].numpy()


def make_coco(extra_image: bool = True) -> COCO:
    """Ground truth whose masks are exactly what pasting the fake model's soft masks gives."""
    images, anns = [], []
    for image_id, (original, _, instances) in IMAGES.items():
        images.append(
            {"id": image_id, "height": original[0], "width": original[1], "file_name": f"{image_id}.jpg"}
        )
        for label, box in instances:
            mask = pasted(image_id, box)
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": LABEL_TO_CATEGORY[label],
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    if extra_image:  # never evaluated: its instance must not count as missed
        images.append({"id": 99, "height": 20, "width": 20, "file_name": "99.jpg"})
        anns.append(
            {
                "id": 1000,
                "image_id": 99,
                "category_id": 3,
                "bbox": [0, 0, 10, 10],
                "area": 100.0,
                "iscrowd": 0,
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
            }
        )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
    }
    coco.createIndex()
    return coco


def make_batch(image_ids: list[int]) -> Batch:
    sizes = [IMAGES[i][1] if i != -1 else (64, 64) for i in image_ids]
    originals = [IMAGES[i][0] if i != -1 else (64, 64) for i in image_ids]
    return Batch(
        images=torch.zeros(len(image_ids), 3, *CANVAS, dtype=torch.uint8),
        gt=None,
        image_ids=torch.tensor(image_ids),
        image_sizes=torch.tensor(sizes),
        original_sizes=torch.tensor(originals),
    )


def make_detections(
    image_ids: list[int], *, score_of=lambda image_id, j: 0.9 - 0.1 * j, label_of=None
) -> Detections:
    b = len(image_ids)
    scores, labels = torch.zeros(b, K), torch.zeros(b, K, dtype=torch.long)
    masks, valid = torch.zeros(b, K, *GRID), torch.zeros(b, K, dtype=torch.bool)
    for i, image_id in enumerate(image_ids):
        instances = IMAGES[image_id][2] if image_id != -1 else [(0, (0, 16, 0, 16))]
        for j, (label, box) in enumerate(instances):
            scores[i, j] = score_of(image_id, j)
            labels[i, j] = label if label_of is None else label_of(label)
            masks[i, j] = soft_mask(box)
            valid[i, j] = True
    return Detections(scores=scores, labels=labels, masks=masks, valid=valid)


class FakeModel(nn.Module):
    """Returns prepared detections, one per call, and records its mode."""

    def __init__(self, outputs: list[Detections]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.outputs = list(outputs)
        self.modes: list[bool] = []

    def forward(self, images: Tensor) -> Detections:
        self.modes.append(self.training)
        assert torch.is_grad_enabled() is False
        return self.outputs.pop(0)


BATCHES = [[1, 2], [3, -1]]


def run(model: nn.Module, coco: COCO, **kwargs) -> dict[str, float]:
    loader = [make_batch(ids) for ids in BATCHES]
    return evaluate(
        model,
        loader,
        coco,
        label_to_category=LABEL_TO_CATEGORY,
        device="cpu",
        mask_thr=0.5,
        log=lambda s: None,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode
def test_detections_to_coco_skips_padding_invalid_and_empty_and_maps_categories():
    batch = make_batch([1, -1])
    det = make_detections([1, -1])
    det.valid[0, 1] = False  # an invalid slot is skipped even with a mask
    det.valid[0, 2] = True  # a valid slot whose mask is empty is skipped
    det.labels[0, 0] = 1
    results = detections_to_coco(det, batch, label_to_category=LABEL_TO_CATEGORY, mask_thr=0.5)
    assert len(results) == 1
    (r,) = results
    assert r["image_id"] == 1 and r["category_id"] == 7
    assert r["score"] == pytest.approx(0.9)
    assert r["segmentation"]["size"] == [80, 120]  # pasted at the original size
    # Grid rows 2..6, cols 4..10 -> canvas 8..24, 16..40 -> original (x2.5) rows 20..60, cols 40..100.
    x, y, w, h = r["bbox"]
    assert abs(x - 40) <= 2 and abs(y - 20) <= 2 and abs(w - 60) <= 3 and abs(h - 40) <= 3
    decoded = mask_util.decode([r["segmentation"]])[:, :, 0]
    assert decoded.shape == (80, 120) and decoded[40, 70] == 1 and decoded[5, 5] == 0
    json.dumps(results)  # serialisable


def test_detections_to_coco_rejects_a_label_without_category():
    det = make_detections([1])
    det.labels[0, 0] = 5
    with pytest.raises(ValueError, match="label 5"):
        detections_to_coco(det, make_batch([1]), label_to_category=LABEL_TO_CATEGORY, mask_thr=0.5)


def test_evaluate_perfect_detections_score_one_and_write_files(tmp_path: Path):
    model = FakeModel([make_detections(ids) for ids in BATCHES])
    model.train()
    metrics = run(model, make_coco(), out_dir=tmp_path / "eval")
    assert model.modes == [False, False] and model.training  # eval inside, training state restored
    assert metrics["segm_AP"] == pytest.approx(1.0) and metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["segm_AP50"] == pytest.approx(1.0) and metrics["segm_AP75"] == pytest.approx(1.0)
    assert metrics["images"] == 3 and metrics["detections"] == 5
    assert set(metrics) == {f"{t}_{n}" for t in ("segm", "bbox") for n in AP_NAMES} | {"images", "detections"}
    assert all(type(v) in (float, int) for v in metrics.values())
    saved = json.loads((tmp_path / "eval" / "detections_segm.json").read_text())
    assert len(saved) == 5 and {r["image_id"] for r in saved} == {1, 2, 3}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics


def test_an_image_skipped_as_unreadable_counts_its_ground_truth_as_missed():
    """With --skip-bad-images an unreadable image yields no detections; leaving it out of the scored
    images would drop its ground truth and raise the AP above what the model earned."""
    coco = make_coco()  # image 99 with one instance, never run: it could not be read
    perfect = run(FakeModel([make_detections(ids) for ids in BATCHES]), coco)
    assert perfect["segm_AP"] == pytest.approx(1.0) and perfect["images"] == 3
    skipped = run(FakeModel([make_detections(ids) for ids in BATCHES]), coco, inferred=lambda: [99])
    assert skipped["images"] == 4 and skipped["detections"] == 5
    assert skipped["segm_AP"] < 0.95 and skipped["bbox_AP"] < 0.95


def test_evaluate_without_detections_gives_zero_ap():
    empty = [make_detections(ids) for ids in BATCHES]
    for det in empty:
        det.valid.zero_()
    metrics = run(FakeModel(empty), make_coco())
    assert metrics["detections"] == 0 and metrics["images"] == 3
    assert all(metrics[f"{t}_{n}"] == 0.0 for t in ("segm", "bbox") for n in AP_NAMES)


def test_evaluate_wrong_categories_score_zero_and_misranked_false_positives_lower_ap():
    swapped = [make_detections(ids, label_of=lambda label: 1 - label) for ids in BATCHES]
    assert run(FakeModel(swapped), make_coco())["segm_AP"] == 0.0

    # Every true detection gets a low score and a high-scoring duplicate of the wrong class on top.
    outputs = []
    for ids in BATCHES:
        det = make_detections(ids, score_of=lambda image_id, j: 0.2)
        n = 2
        fp = make_detections(ids, label_of=lambda label: 1 - label, score_of=lambda image_id, j: 0.95)
        for field in ("scores", "labels", "masks", "valid"):
            getattr(det, field)[:, n:] = getattr(fp, field)[:, :n]
        outputs.append(det)
    metrics = run(FakeModel(outputs), make_coco())
    # In each class the false positives rank above every true positive: recall is 1, precision lower.
    assert 0.0 < metrics["segm_AP"] < 1.0
    assert metrics["detections"] == 10


def test_an_image_seen_again_on_one_rank_counts_once_with_its_first_detections(monkeypatch):
    """A padded shard may hand a rank an image twice: its second detections (here: all wrong labels) are
    neither pasted back nor scored, and the image counts once."""
    from solov2.engine import inference

    pasted: list[int] = []
    to_instances = inference.to_instances
    monkeypatch.setattr(
        inference, "to_instances", lambda det, b, *a, **k: pasted.append(b) or to_instances(det, b, *a, **k)
    )
    batches = [[1, 2], [3, 1]]
    again = make_detections([3, 1])
    again.labels[1] = 1 - again.labels[1]  # image 1's second detections: the other class
    outputs = [make_detections([1, 2]), again]
    metrics = evaluate(
        FakeModel(outputs), [make_batch(ids) for ids in batches], make_coco(),
        label_to_category=LABEL_TO_CATEGORY, device="cpu", mask_thr=0.5, log=lambda s: None,
    )  # fmt: skip
    assert metrics["images"] == 3 and metrics["detections"] == 5
    assert metrics["segm_AP"] == pytest.approx(1.0)
    assert pasted == [0, 1, 0]  # images 1 and 2, then 3: not 1 again


def test_format_ap_table_rows_columns_and_missing_values():
    metrics = {f"segm_{n}": 0.5 for n in AP_NAMES} | {f"bbox_{n}": 0.25 for n in AP_NAMES}
    metrics["segm_APs"] = -1.0
    del metrics["bbox_APl"]
    lines = format_ap_table(metrics).splitlines()
    assert lines[0].split() == ["%", *AP_NAMES]  # percent, where the files hold fractions
    assert lines[1].split() == ["segm", "50.0", "50.0", "50.0", "-", "50.0", "50.0"]
    assert lines[2].split() == ["bbox", "25.0", "25.0", "25.0", "25.0", "25.0", "-"]


def _distributed_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        shards = [[[1, 2]], [[3, -1], [1, -1]]]  # rank 1 sees image 1 again (a padded shard): counted once
        loader = [make_batch(ids) for ids in shards[rank]]
        model = FakeModel([make_detections(ids) for ids in shards[rank]])
        metrics = evaluate(
            model,
            loader,
            make_coco(),
            label_to_category=LABEL_TO_CATEGORY,
            device="cpu",
            mask_thr=0.5,
            rank=rank,
            world_size=world_size,
            log=lambda s: None,
        )
        Path(out, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_evaluate_gathers_all_ranks_on_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_distributed_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert json.loads((tmp_path / "rank1.json").read_text()) == {}
    assert rank0["images"] == 3 and rank0["detections"] == 5
    assert rank0["segm_AP"] == pytest.approx(1.0)
