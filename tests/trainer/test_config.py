"""Configs load, override and refuse bad input with messages that name the field."""

from __future__ import annotations

import json
import re

import pytest

from solov2.cli import main
from solov2.config import CONFIG_DIR, Config, ConfigError, load_config, to_dict
from solov2.config_ranges import RANGES, numeric_fields
from solov2.errors import ConfigError as BaseConfigError

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_shipped_configs_are_all_there_and_load():
    assert {
        "solov2_r50_fpn_1x_coco",
        "solov2_r50_fpn_3x_coco",
        "solov2_r101_fpn_3x_coco",
        "solov2_light_r18_fpn_3x_coco",
        "solov2_tiny_cpu",
    } <= set(SHIPPED)
    for name in SHIPPED:
        load_config(name)


def test_r50_1x_matches_the_reference_recipe():
    cfg = load_config("solov2_r50_fpn_1x_coco")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.backbone.depth, m.backbone.frozen_stages, m.backbone.norm_eval) == (50, 1, True)
    assert (m.fpn.out_channels, m.fpn.num_outs) == (256, 5)
    assert (m.head.num_classes, m.head.feat_channels, m.head.stacked_convs, m.head.norm_groups) == (
        80,
        512,
        4,
        32,
    )
    assert m.head.strides == (8, 8, 16, 32, 32)
    assert m.head.num_grids == (40, 36, 24, 16, 12) and sum(g * g for g in m.head.num_grids) == 3872
    assert m.head.scale_ranges == ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    assert m.head.pos_scale == 0.2
    assert (m.mask_feature.feat_channels, m.mask_feature.out_channels) == (128, 256)
    assert (m.mask_feature.start_level, m.mask_feature.end_level) == (0, 3)
    assert (m.loss.focal_gamma, m.loss.focal_alpha, m.loss.cls_weight, m.loss.dice_weight) == (
        2.0,
        0.25,
        1.0,
        3.0,
    )
    i = m.inference
    assert (i.score_thr, i.nms_pre, i.mask_thr, i.sigma, i.update_thr, i.max_per_img, i.kernel) == (
        0.1,
        500,
        0.5,
        2.0,
        0.05,
        100,
        "gaussian",
    )
    assert (t.base_lr, t.base_batch_size, t.momentum, t.weight_decay, t.grad_clip) == (
        0.01,
        16,
        0.9,
        1e-4,
        35.0,
    )
    assert (t.warmup_iters, t.lr_steps, t.epochs) == (500, (8, 11), 12)
    assert d.img_scale == (1333, 800) and d.flip_prob == 0.5 and d.samples_per_device == 2
    assert d.filter_empty_gt  # mmdetection's filter_cfg of its COCO recipes
    # The YAML writes every field out, so it equals the defaults of the dataclass tree.
    assert to_dict(cfg) == to_dict(load_config(None))


def test_3x_recipes_differ_from_1x_only_where_the_recipe_does():
    one, three, r101 = (
        load_config(n)
        for n in ("solov2_r50_fpn_1x_coco", "solov2_r50_fpn_3x_coco", "solov2_r101_fpn_3x_coco")
    )
    assert three.train.epochs == 36 and three.train.lr_steps == (27, 33)
    assert three.data.multiscale_short_sides == (640, 672, 704, 736, 768, 800)
    assert three.model == one.model
    assert r101.model.backbone.depth == 101 and r101.train == three.train
    assert one.data.eval_scale == three.data.eval_scale == (1333, 800)


def test_the_light_recipe_tests_at_mmdetections_scale():
    """Trained at short sides 352..512, evaluated (and exported, and predicted) at 448 as mmdetection's
    light recipe is; an image of 480x640 becomes 448x597, not 512x683."""
    from solov2.data.transforms import EvalTransform, fit_size

    light = load_config("solov2_light_r18_fpn_3x_coco")
    assert light.data.img_scale == (768, 512) and light.data.eval_scale == (768, 448)
    assert EvalTransform(light.data).img_scale == (768, 448)
    assert fit_size(480, 640, light.data.eval_scale) == (448, 597)
    with pytest.raises(ConfigError, match=r"data.test_img_scale: must be \[\] \(data.img_scale\)"):
        load_config("solov2_light_r18_fpn_3x_coco", ["data.test_img_scale=[448]"])


def test_opts_override_nested_fields_with_yaml_values():
    cfg = load_config(
        "solov2_r50_fpn_1x_coco",
        [
            "model.head.num_grids=[12,10,8,6,4]",
            "train.base_lr=0.02",
            "model.inference.kernel=linear",
            "data.canvases=[[512,512]]",
        ],
    )
    assert cfg.model.head.num_grids == (12, 10, 8, 6, 4)
    assert cfg.train.base_lr == 0.02
    assert cfg.model.inference.kernel == "linear"
    assert cfg.data.canvases == ((512, 512),)


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        (["model.head.nmu_grids=[1,2]"], "model.head.nmu_grids"),
        (["model.head.num_grids=abc"], "model.head.num_grids"),
        (["model.head.num_grids=[40,36,24]"], "model.head.num_grids"),
        (["model.head.strides=[8,-8,16,32,32]"], "model.head.strides"),
        (["model.head.strides=[8,8,16,32]"], "model.head.strides"),
        (
            ["model.head.scale_ranges=[[96,1],[48,192],[96,384],[192,768],[384,2048]]"],
            "model.head.scale_ranges[0]",
        ),
        (["model.backbone.depth=42"], "model.backbone.depth"),
        (["model.backbone.depth=true"], "model.backbone.depth"),
        (["model.inference.kernel=box"], "model.inference.kernel"),
        (["model.inference.score_thr=1.5"], "model.inference.score_thr"),
        (["data.canvases=[[800,1333]]"], "data.canvases[0]"),
        (["train.lr_steps=[11,8]"], "train.lr_steps"),
        (["train.base_lr=fast"], "train.base_lr"),
        (["train.optimizer=adam"], "train.optimizer"),
        (["model.head.feat_channels=500"], "model.head.feat_channels"),
        (["model=3"], "model"),
        (["noequals"], "--opts"),
    ],
)
def test_bad_values_name_the_field(opts, field):
    with pytest.raises(ConfigError) as info:
        load_config("solov2_r50_fpn_1x_coco", opts)
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_unknown_yaml_key_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  head:\n    num_clases: 3\n")
    with pytest.raises(ConfigError, match=r"^config: .*bad\.yaml: model\.head\.num_clases: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"^model\.head\.num_clases: unknown key"):  # an override's own
        load_config("solov2_tiny_cpu", ["model.head.num_clases=3"])
    with pytest.raises(ConfigError, match=r"no file 'nope\.yaml'"):
        load_config("nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML: .* \(line 2, column 1\)$") as exc:
        load_config(broken)
    assert "\n" not in str(exc.value)  # one line, as every error of the command line
    assert issubclass(ConfigError, BaseConfigError)


def test_scientific_notation_reads_as_numbers_in_opts_and_yaml(tmp_path):
    cfg = load_config(
        "solov2_tiny_cpu", ["train.base_lr=1e-3", "data.mean=[1E2,0,0]", "train.weight_decay=5e-5"]
    )
    assert (cfg.train.base_lr, cfg.data.mean, cfg.train.weight_decay) == (1e-3, (100.0, 0.0, 0.0), 5e-5)
    path = tmp_path / "sci.yaml"
    path.write_text("train:\n  base_lr: 2e-4\n  warmup_factor: -1e-3\n")
    with pytest.raises(ConfigError, match=r"^train\.warmup_factor: must lie in \(0, 1\], got -0\.001$"):
        load_config(path)
    path.write_text("train:\n  base_lr: 2e-4\n")
    assert load_config(path).train.base_lr == 2e-4
    with pytest.raises(ConfigError, match=r"^model\.backbone\.weights: expected a string, got 0\.001$"):
        load_config(None, ["model.backbone.weights=1e-3"])  # a number now, no longer the text '1e-3'


def test_off_is_a_word_and_only_true_and_false_are_booleans(tmp_path):
    """YAML 1.1 reads off, on, yes and no as booleans: ``train.amp=off`` used to be refused as False."""
    assert load_config("solov2_tiny_cpu", ["train.amp=off"]).train.amp == "off"
    path = tmp_path / "amp.yaml"
    path.write_text("train:\n  amp: off\n  sync_bn: false\n")
    cfg = load_config(path)
    assert cfg.train.amp == "off" and cfg.train.sync_bn is False
    assert load_config("solov2_tiny_cpu", ["train.sync_bn=true"]).train.sync_bn is True
    with pytest.raises(ConfigError, match=r"^train\.sync_bn: expected true or false, got 'no'$"):
        load_config("solov2_tiny_cpu", ["train.sync_bn=no"])


def _bad_values(path: str, default):
    """Values just outside ``RANGES[path]`` (both sides where bounded), shaped like the default."""
    rng = RANGES[path]
    is_int = isinstance(next(iter(_leaves(default)), 0), int) and not any(
        isinstance(v, float) for v in _leaves(default)
    )
    step = 1 if is_int else 0.5
    bad = []
    if rng.lo is not None:
        bad.append(rng.lo if rng.lo_open else rng.lo - step)
    if rng.hi is not None:
        bad.append(rng.hi if rng.hi_open else rng.hi + step)
    bad.append(float("inf"))
    return [_replace_first(default, v) for v in bad]


def _leaves(value):
    if isinstance(value, tuple | list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _replace_first(value, new):
    """``value`` with its first number replaced (a list field gets one element, if it was empty)."""
    if not isinstance(value, tuple | list):
        return new
    if not value:
        return [new]
    return [_replace_first(value[0], new), *[_plain(v) for v in value[1:]]]


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _default(path: str):
    node = load_config("solov2_tiny_cpu")
    for part in path.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("path", list(numeric_fields(Config)))
def test_every_numeric_field_has_a_range_enforced_by_the_cli(path, capsys):
    """Walks the whole config tree: a new numeric field fails here until it has a range."""
    assert path in RANGES, f"{path} has no range in solov2.config_ranges.RANGES"
    for value in _bad_values(path, _default(path)):
        text = json.dumps(value).replace("Infinity", ".inf")
        assert main(["params", "--config", "solov2_tiny_cpu", "--opts", f"{path}={text}"]) == 2, (path, text)
        err = capsys.readouterr().err.strip()
        assert re.match(rf"solov2 params: error: {re.escape(path)}(\[\d+\])*: ", err) and "\n" not in err, err


def test_repeated_opts_are_all_applied() -> None:
    """The scripts pass ``--opts train.epochs=N``; a user's own ``--opts`` must not drop it."""
    from solov2.cli_parser import build_parser

    args = build_parser().parse_args(
        [
            "train",
            "--data-path",
            "d",
            "--work-dir",
            "w",
            "--opts",
            "train.epochs=2",
            "--opts",
            "train.batch_size=3",
        ]
    )
    assert args.opts == ["train.epochs=2", "train.batch_size=3"]
