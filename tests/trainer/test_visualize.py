"""Prediction overlays, canvas choice and ``predict_images`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from solov2.config import load_config
from solov2.data.transforms import fit_size
from solov2.engine.predict import predict_images
from solov2.model import build_model
from solov2.structures import Detections
from solov2.visualize import draw_overlay


def test_draw_overlay_colours_masks_only():
    image = torch.full((3, 80, 160), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 80, 160, dtype=torch.bool)
    masks[0, 40:70, 60:140] = True
    masks[1, 0:5, 0:5] = False  # an empty mask draws nothing
    out = draw_overlay(image, masks, [0, 1], [0.93, 0.5], ["cat", "dog"], alpha=0.5)
    assert out.size == (160, 80) and out.mode == "RGB"
    pixels = np.asarray(out).astype(int)
    inside = pixels[60, 100]  # inside the mask, clear of its outline and label
    assert (inside != 100).any()
    assert (pixels[40, 120] != 100).any()  # the outline
    assert (pixels[:40] == 100).all() and (pixels[70:] == 100).all()  # above and below the mask
    assert (pixels[:, :60] == 100).all() and (pixels[:, 140:] == 100).all()  # left and right of it

    same = draw_overlay(
        Image.fromarray(image.permute(1, 2, 0).numpy()), masks.numpy(), [0, 1], [0.93, 0.5], []
    )
    assert (np.asarray(same)[:40] == 100).all()  # a PIL input and unnamed classes work too
    assert (np.asarray(same)[60, 100] == inside).all()


def test_draw_overlay_checks_shapes():
    with pytest.raises(ValueError, match="do not match"):
        draw_overlay(
            torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(1, 4, 4, dtype=torch.bool), [0], [1.0], []
        )
    with pytest.raises(ValueError, match="labels"):
        draw_overlay(
            torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.bool), [], [1.0], []
        )


def _write_image(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def test_predict_images_with_the_tiny_model(tmp_path: Path):
    cfg = load_config("solov2_tiny_cpu")
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.nn.init.constant_(model.head.conv_cls.bias, -1.0)  # untrained, yet detects: scores of ~0.27
    model.train()
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_image(inputs / "wide.jpg", 100, 150, 0)
    _write_image(inputs / "tall.png", 300, 200, 1)  # larger than the 256x256 canvas
    out = tmp_path / "out"
    records = predict_images(
        model,
        [inputs / "wide.jpg", str(inputs / "tall.png")],
        cfg=cfg,
        device="cpu",
        out_dir=out,
        class_names=["rectangle", "ellipse", "triangle"],
        score_thr=0.0,
    )
    assert model.training  # restored
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "tall.png", "wide.png"]
    saved = json.loads((out / "predictions.json").read_text())
    assert saved == records
    assert [(r["file"], r["width"], r["height"]) for r in saved] == [
        (str(inputs / "wide.jpg"), 150, 100),
        (str(inputs / "tall.png"), 200, 300),
    ]
    assert Image.open(out / "tall.png").size == (200, 300)
    assert all(record["instances"] for record in saved)  # score_thr 0: something to check below
    for record in saved:
        for inst in record["instances"]:
            assert inst["segmentation"]["size"] == [record["height"], record["width"]]


class BoxModel(nn.Module):
    """Detects one fixed rectangle (stride-4 grid rows 16..32, cols 8..40) with label 1."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.inputs: list[Tensor] = []

    def forward(self, images: Tensor) -> Detections:
        self.inputs.append(images)
        b, _, h, w = images.shape
        masks = torch.zeros(b, 3, h // 4, w // 4)
        masks[:, 0, 16:32, 8:40] = 1.0
        masks[:, 1, 0:4, 0:4] = 1.0  # scored below the threshold
        return Detections(
            scores=torch.tensor([[0.9, 0.1, 0.0]]).expand(b, 3),
            labels=torch.tensor([[1, 0, 0]]).expand(b, 3),
            masks=masks,
            valid=torch.tensor([[True, True, False]]).expand(b, 3),
        )


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode
def test_predict_images_pastes_masks_back_to_the_original_size(tmp_path: Path):
    cfg = load_config("solov2_tiny_cpu")
    _write_image(tmp_path / "img.png", 64, 128, 2)
    model = BoxModel()
    (record,) = predict_images(
        model, [tmp_path / "img.png"], cfg=cfg, device="cpu", out_dir=tmp_path, class_names=["a", "b", "c"]
    )
    # 64x128 -> fit_size -> 128x256 on the 256x256 canvas (top-left), scale 2.
    size = fit_size(64, 128, cfg.data.img_scale)
    assert size == (128, 256)
    (images,) = model.inputs
    assert images.shape == (1, 3, 256, 256) and images.dtype == torch.uint8
    fill = torch.tensor(cfg.data.pad_value, dtype=torch.uint8).view(3, 1, 1)
    assert images[0, :, 128:].eq(fill).all()  # padding below the image, in the mean colour
    assert record["overlay"] == "img_1.png"  # never overwrites the input
    assert (record["width"], record["height"]) == (128, 64)
    (inst,) = record["instances"]
    assert inst["label"] == 1 and inst["class"] == "b" and inst["score"] == pytest.approx(0.9)
    # Grid rows 16..32, cols 8..40 -> canvas 64..128, 32..160 -> original (/2) 32..64, 16..80.
    x, y, w, h = inst["bbox"]
    assert abs(x - 16) <= 1 and abs(y - 32) <= 1 and abs(w - 64) <= 2 and abs(h - 32) <= 2
    mask = mask_util.decode([inst["segmentation"]])[:, :, 0]
    assert mask.shape == (64, 128) and mask[48, 48] == 1 and mask[10, 10] == 0


def test_predict_images_shrinks_an_image_no_canvas_holds(tmp_path: Path):
    cfg = load_config("solov2_tiny_cpu", ["data.canvases=[[128, 256], [256, 128]]"])
    _write_image(tmp_path / "square.png", 100, 100, 3)
    model = BoxModel()
    (record,) = predict_images(
        model, [tmp_path / "square.png"], cfg=cfg, device="cpu", out_dir=tmp_path / "out", class_names=[]
    )
    # fit_size gives 256x256; neither canvas holds it; both need x0.5, the first wins: 128x128 on 128x256.
    (images,) = model.inputs
    assert images.shape == (1, 3, 128, 256)
    fill = torch.tensor(cfg.data.pad_value, dtype=torch.uint8).view(3, 1, 1)
    assert images[0, :, :, 128:].eq(fill).all() and not images[0, :, :, :128].eq(fill).all(0).any()
    assert (record["width"], record["height"], record["overlay"]) == (100, 100, "square.png")
    (inst,) = record["instances"]
    assert inst["class"] == "1" and inst["segmentation"]["size"] == [100, 100]


def test_an_unreadable_image_among_several_is_named_after_the_others_are_written(tmp_path: Path):
    from solov2.engine.predict import check_image_paths
    from solov2.errors import DataError

    cfg = load_config("solov2_tiny_cpu")
    good = tmp_path / "good.png"
    _write_image(good, 64, 64, 0)
    notes = tmp_path / "annotations.json"
    notes.write_text("{}")
    out = tmp_path / "out"
    with pytest.raises(
        DataError, match=r"1 of 2 images could not be read \(.*annotations\.json.*\); the pred"
    ):
        predict_images(BoxModel(), [notes, good], cfg=cfg, out_dir=out, class_names=["a", "b"])
    (record,) = json.loads((out / "predictions.json").read_text())
    assert record["file"] == str(good) and (out / "good.png").is_file()
    # Paths that are no files at all are refused before a model is loaded.
    with pytest.raises(DataError, match=r"IMAGE .*: a directory \(pass image files, e\.g\. .*/\*\.jpg\)"):
        check_image_paths([good, tmp_path])
    with pytest.raises(DataError, match=r"IMAGE .*gone\.jpg: no such file"):
        check_image_paths([tmp_path / "gone.jpg"])
