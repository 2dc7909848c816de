"""The shared inference path: images prepared as the evaluation loader prepares them, detections pasted
back to the original image size, one runner for PyTorch models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from solov2.config import load_config
from solov2.data.coco import CocoInstances
from solov2.data.loader import build_eval_loader
from solov2.data.synthetic import write_synthetic_coco
from solov2.engine.inference import ImageMeta, TorchRunner, detect, load_image, prepare_image
from solov2.structures import Detections


def test_prepare_image_gives_what_the_evaluation_loader_gives(tmp_path: Path):
    # Wide, tall and square images on two canvases: each canvas is picked, the square ones shrunk to fit.
    cfg = load_config("solov2_tiny_cpu", ["data.canvases=[[128, 256], [256, 128]]", "data.workers=0"])
    sizes = [(100, 200), (300, 120), (180, 180)]
    root = write_synthetic_coco(tmp_path, train=1, val=8, seed=0, image_sizes=sizes)
    dataset = CocoInstances(root / "val2017", root / "annotations" / "instances_val2017.json", num_classes=3)
    canvases, originals = set(), []
    for batch in build_eval_loader(dataset, cfg):
        for b, image_id in enumerate(batch.image_ids.tolist()):
            if image_id == -1:
                continue
            file = dataset.coco.loadImgs(image_id)[0]["file_name"]
            image, meta = prepare_image(load_image(root / "val2017" / file), cfg.data)
            assert torch.equal(image, batch.images[b])
            assert meta == ImageMeta(
                tuple(batch.image_sizes[b].tolist()), tuple(batch.original_sizes[b].tolist())
            )
            canvases.add(tuple(image.shape[-2:]))
            originals.append(meta.original_size)
    assert canvases == {(128, 256), (256, 128)}
    assert len(originals) == 8 and set(originals) <= set(sizes) and (180, 180) in originals


def test_load_image_applies_exif_orientation(tmp_path: Path):
    pixels = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    pixels.save(tmp_path / "photo.jpg", exif=exif)
    assert load_image(tmp_path / "photo.jpg").shape == (3, 40, 20)


class _OneBox(torch.nn.Module):
    """One detection: a block in the mask grid (rows 4..8, cols 0..8) with label 2, plus a weak one."""

    def forward(self, images):
        b, _, h, w = images.shape
        masks = torch.zeros(b, 2, h // 4, w // 4)
        masks[:, 0, 4:8, 0:8] = 1.0
        masks[:, 1, 0:2, 0:2] = 1.0
        return Detections(
            scores=torch.tensor([[0.8, 0.2]]).expand(b, 2),
            labels=torch.tensor([[2, 1]]).expand(b, 2),
            masks=masks,
            valid=torch.ones(b, 2, dtype=torch.bool),
        )


def test_detect_pastes_back_skips_padding_and_restores_train_mode():
    model = _OneBox().train()
    runner = TorchRunner(model, "cpu")
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    # The image is 32x64 at the canvas's top-left, stored at 16x32: mask rows 16..32 of 64 -> 8..16 of 16.
    meta = ImageMeta(image_size=(32, 64), original_size=(16, 32))
    first, padding = detect(runner, images, [meta, None], mask_thr=0.5, score_thr=0.5)
    assert model.training and padding is None
    assert first.labels.tolist() == [2] and first.scores.tolist() == pytest.approx([0.8])
    assert first.masks.shape == (1, 16, 32)
    rows = first.masks[0].any(dim=1).nonzero().flatten().tolist()
    cols = first.masks[0].any(dim=0).nonzero().flatten().tolist()
    assert rows == list(range(8, 16)) and cols == list(range(0, 16))
