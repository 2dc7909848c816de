"""``solov2 export`` and the ONNX runner: one graph from uint8 pixels to detections, equal to PyTorch in
onnxruntime, evaluated and drawn through the same path as the checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import onnx  # the export extra, which `make setup` installs: missing, these tests fail rather than skip
import pytest
import torch

from solov2.cli import main
from solov2.cli_parser import build_parser
from solov2.config import config_from_dict, load_config, to_dict
from solov2.data.synthetic import write_synthetic_coco
from solov2.engine.inference import TorchRunner
from solov2.export import OnnxRunner
from solov2.export.check import check_images
from solov2.model import SOLOv2

CLASSES = ["rectangle", "ellipse", "triangle"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny model, untrained but with its category bias raised so that it detects shapes."""
    cfg = load_config("solov2_tiny_cpu", ["data.workers=0"])
    torch.manual_seed(0)
    model = SOLOv2(cfg)
    torch.nn.init.constant_(model.head.conv_cls.bias, -1.0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "class_names": CLASSES}, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--batch", "2",
                     "--check-batches", "1"])  # fmt: skip
    assert code == 0
    return out, printed.getvalue()


def _model(checkpoint: Path) -> SOLOv2:
    state = torch.load(checkpoint, weights_only=False)
    model = SOLOv2(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()


@pytest.mark.slow
def test_export_writes_named_graph_with_metadata_and_prints_the_check(exported):
    path, printed = exported
    assert "onnxruntime check on 2 generated images" in printed and ": ok" in printed
    assert " 0 detections" not in printed  # the check compared real detections
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["solov2.class_names"]) == CLASSES
    assert json.loads(meta["solov2.canvas"]) == [256, 256]
    assert meta["solov2.mask_stride"] == "4" and meta["solov2.batch"] == "2"
    assert float(meta["solov2.score_thr"]) == 0.1 and float(meta["solov2.mask_thr"]) == 0.5
    assert json.loads(meta["solov2.pad_value"]) == [124, 116, 104]  # what a consumer pads canvases with

    def shape(value):
        return [d.dim_value for d in value.type.tensor_type.shape.dim], value.type.tensor_type.elem_type

    graph = model.graph
    k = json.loads(meta["solov2.config"])["model"]["inference"]["max_per_img"]
    assert {i.name: shape(i) for i in graph.input} == {"images": ([2, 3, 256, 256], onnx.TensorProto.UINT8)}
    assert {o.name: shape(o) for o in graph.output} == {
        "scores": ([2, k], onnx.TensorProto.FLOAT),
        "labels": ([2, k], onnx.TensorProto.INT64),
        "masks": ([2, k, 64, 64], onnx.TensorProto.FLOAT),
        "valid": ([2, k], onnx.TensorProto.BOOL),
    }


@pytest.mark.slow
def test_onnxruntime_outputs_equal_pytorch_on_new_images(exported, checkpoint):
    path, _ = exported
    runner = OnnxRunner(path)
    images = check_images(
        3, (256, 256), seed=11, fill=(124, 116, 104)
    )  # 3 images: two runs of the batch-2 graph, one padded
    got = runner(images)
    want = TorchRunner(_model(checkpoint), "cpu")(images)
    assert got.valid.shape == want.valid.shape == (3, runner.config().model.inference.max_per_img)
    assert int(want.valid.sum()) > 10
    assert torch.equal(got.valid, want.valid) and torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-3, rtol=0)
    torch.testing.assert_close(got.masks, want.masks, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_eval_and_predict_on_onnx_match_the_checkpoint(exported, checkpoint, tmp_path, capsys):
    path, _ = exported
    data = write_synthetic_coco(tmp_path / "data", train=1, val=6, seed=5)
    metrics = {}
    for source in ("--checkpoint", "--onnx"):
        work = tmp_path / source.strip("-")
        model = str(checkpoint if source == "--checkpoint" else path)
        assert main(["eval", "--data-path", str(data), source, model, "--work-dir", str(work), "--device", "cpu",
                     "--opts", "data.workers=0"]) == 0  # fmt: skip
        metrics[source] = json.loads((work / "metrics.json").read_text())
        images = sorted((data / "val2017").iterdir())[:2]
        out = tmp_path / f"pred{source}"
        assert main(["predict", *map(str, images), source, model, "--out", str(out), "--score-thr", "0.2",
                     "--device", "cpu"]) == 0  # fmt: skip
        metrics[f"predict{source}"] = json.loads((out / "predictions.json").read_text())
    torch_ap, onnx_ap = metrics["--checkpoint"], metrics["--onnx"]
    assert torch_ap["detections"] > 0 and torch_ap["images"] == onnx_ap["images"] == 6
    assert onnx_ap == pytest.approx(torch_ap, abs=1e-4)
    torch_pred, onnx_pred = metrics["predict--checkpoint"], metrics["predict--onnx"]
    assert sum(len(r["instances"]) for r in torch_pred) > 0
    for a, b in zip(torch_pred, onnx_pred, strict=True):
        assert (a["file"], a["overlay"], a["width"], a["height"]) == (
            b["file"],
            b["overlay"],
            b["width"],
            b["height"],
        )
        assert [i["class"] for i in a["instances"]] == [i["class"] for i in b["instances"]]
        assert [i["score"] for i in a["instances"]] == pytest.approx(
            [i["score"] for i in b["instances"]], abs=1e-3
        )
    assert "segm" in capsys.readouterr().out


@pytest.mark.slow
def test_export_refuses_outputs_beyond_the_tolerance(checkpoint, tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    code = main(
        ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--atol", "0", "--check-batches", "1"]
    )
    captured = capsys.readouterr()
    assert code == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert "FAILED" in captured.out and "not written" in captured.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--canvas", "250", "256"], "--canvas 250 256: both sides must be positive multiples of 32"),
        (["--opset", "11"], "--opset 11: unsupported; torch's exporter writes opsets 18 to"),
        (["--batch", "0"], "--batch 0: must be at least 1"),
    ],
)
def test_export_rejects_bad_options_in_one_line(checkpoint, tmp_path, capsys, flags, message):
    out = tmp_path / "bad.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("solov2 export: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_onnx_runner_refuses_a_file_that_is_not_a_solov2_export(tmp_path):
    bad = tmp_path / "other.onnx"
    bad.write_bytes(b"not a model")
    assert main(["predict", str(bad), "--onnx", str(bad), "--out", str(tmp_path / "out")]) == 2


def test_eval_and_predict_take_a_checkpoint_or_an_onnx_model_and_export_a_checkpoint(tmp_path, capsys):
    cases = [
        (
            ["predict", "a.png", "--out", str(tmp_path)],
            "one of the arguments --checkpoint --onnx is required",
        ),
        (
            ["eval", "--data-path", "d", "--onnx", "a", "--checkpoint", "b"],
            "not allowed with argument --onnx",
        ),
        (["export", "--out", str(tmp_path / "x.onnx")], "the following arguments are required: --checkpoint"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert (
        main(["predict", "a.png", "--onnx", "a", "--config", "solov2_tiny_cpu", "--out", str(tmp_path)]) == 2
    )
    assert "--config: not used with --onnx" in capsys.readouterr().err
    # Images after --opts are images (an override has an '='), in their order: looked for, and missing.
    opts = ["--opts", "model.inference.mask_thr=0.4"]
    argv = ["predict", "--onnx", "a", "--out", str(tmp_path), "z.png", *opts, "a.png"]
    assert main(argv) == 2 and "IMAGE z.png: no such file" in capsys.readouterr().err
    assert [str(p) for p in build_parser().parse_args(argv).images] == ["z.png", "a.png"]
    assert main(["predict", "a.png", "--onnx", "a", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda: not used with --onnx (onnxruntime runs it on the CPU)" in capsys.readouterr().err
