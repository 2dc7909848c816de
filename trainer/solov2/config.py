"""Typed, documented configuration: a frozen dataclass tree loaded from YAML, overridable from the CLI.

``load_config("solov2_r50_fpn_1x_coco", ["model.head.num_grids=[12,10,8,6,4]"])`` reads a YAML file
(a path, or the name of a config shipped in ``solov2/configs``), applies ``key=value`` overrides
(values parsed as YAML) and checks every key, type and range. Errors raise :class:`ConfigError` with
the dotted name of the offending field. Fields not given in the YAML keep the defaults below, which
are the REFERENCE R50-FPN 1x recipe.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_ranges import check_ranges
from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


class _YamlLoader(yaml.SafeLoader):
    """YAML as people write it: ``1e-3`` and ``1E5`` are floats (YAML 1.1 wants ``1.0e-3``), and only
    ``true`` and ``false`` are booleans (YAML 1.2), so that ``train.amp=off`` stays the string ``off``
    (YAML 1.1 also reads yes, no, on and off as booleans)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _YamlLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads scientific notation without a dot as numbers."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: no arbitrary objects


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet"
    """Backbone architecture, built by name (``solov2.model.backbone.BACKBONES``): ``resnet`` (torchvision)."""
    depth: int = 50
    """ResNet depth: 18, 34, 50 or 101 (torchvision architectures)."""
    frozen_stages: int = 1
    """Frozen stages: -1 = none, 0 = stem, 1 = stem + layer1 (the reference), up to 4."""
    norm_eval: bool = True
    """Keep BatchNorm statistics fixed while training (affine still trains outside frozen stages)."""
    weights: str = ""
    """Path to torchvision-format ImageNet weights (e.g. resnet50.pth); empty = random init. Never downloaded."""


@dataclass(frozen=True)
class FPNConfig:
    out_channels: int = 256
    """Channels of every FPN output."""
    num_outs: int = 5
    """Outputs P2..P6; P6 is a stride-2 max-pool of P5."""


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int = 80
    """Foreground classes (COCO: 80)."""
    feat_channels: int = 512
    """Channels of the category and kernel branches' stacked convolutions."""
    stacked_convs: int = 4
    """3x3 conv + GroupNorm + ReLU layers in each branch."""
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)
    """Nominal stride of each level; at inference a mask must cover more pixels than its level's stride."""
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    """S x S grid cells per level."""
    scale_ranges: tuple[tuple[float, float], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    """Per level, the range of sqrt(box w * box h) (canvas pixels) of the instances it learns; ranges overlap."""
    pos_scale: float = 0.2
    """Positive cells lie within pos_scale/2 of the box size around the mask's centre of mass."""
    norm_groups: int = 32
    """GroupNorm groups in the head and mask-feature branch."""
    prior_prob: float = 0.01
    """Initial foreground probability of the category branch (bias init)."""


@dataclass(frozen=True)
class MaskFeatureConfig:
    feat_channels: int = 128
    """Channels inside the unified mask-feature branch."""
    out_channels: int = 256
    """Mask-feature channels E; also the length of each dynamic 1x1 kernel."""
    start_level: int = 0
    """First FPN level fused into the mask features (0 = P2)."""
    end_level: int = 3
    """Last FPN level fused into the mask features (3 = P5); it also gets CoordConv."""


@dataclass(frozen=True)
class TargetConfig:
    max_instances: int = 100
    """Ground truth is padded (or truncated, counted) to this many instances per image."""
    max_positives: int = 256
    """Fixed buffer of (instance, cell) positive pairs per image; pairs beyond it are dropped and counted."""


@dataclass(frozen=True)
class LossConfig:
    focal_alpha: float = 0.25
    """Focal loss alpha of the category branch."""
    focal_gamma: float = 2.0
    """Focal loss gamma."""
    cls_weight: float = 1.0
    """Weight of the category (focal) loss; normalised by positive cells + 1."""
    dice_weight: float = 3.0
    """Weight of the mask (dice) loss; averaged over positive cells."""
    dice_eps: float = 0.001
    """Added to each squared sum in the dice denominator."""


@dataclass(frozen=True)
class InferenceConfig:
    score_thr: float = 0.1
    """Category score threshold (applied as a mask on the top-k)."""
    nms_pre: int = 500
    """Candidates kept (top-k by category score) before Matrix NMS."""
    mask_thr: float = 0.5
    """Soft-mask threshold giving the binary mask."""
    update_thr: float = 0.05
    """Detections whose score Matrix NMS decays below this are dropped."""
    kernel: Literal["gaussian", "linear"] = "gaussian"
    """Matrix NMS decay kernel."""
    sigma: float = 2.0
    """Gaussian kernel sigma."""
    max_per_img: int = 100
    """Fixed number of output slots per image."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    mask_feature: MaskFeatureConfig = field(default_factory=MaskFeatureConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass(frozen=True)
class DataConfig:
    img_scale: tuple[int, int] = (1333, 800)
    """Images are resized to fit inside (long side, short side) keeping their aspect ratio."""
    multiscale_short_sides: tuple[int, ...] = ()
    """If set, training picks a random short side from this list (3x recipe: 640..800)."""
    test_img_scale: tuple[int, ...] = ()
    """(long side, short side) evaluation and predict resize to; empty: img_scale (the light recipe
    trains at short sides 352..512 and tests at 448, as mmdetection's does)."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip in training."""
    filter_empty_gt: bool = True
    """Training leaves out images without any annotation (a crowd region counts) and images under 32
    pixels on a side, as mmdetection's COCO recipes do (its filter_empty_gt and min_size 32)."""
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    """RGB pixel mean subtracted before the backbone."""
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    """RGB pixel standard deviation."""
    size_divisor: int = 32
    """Canvas sides are multiples of this (the FPN's coarsest stride)."""
    canvases: tuple[tuple[int, int], ...] = ((800, 1088), (800, 1344), (1088, 800), (1344, 800))
    """Fixed (height, width) canvases images are padded to; each image takes the smallest that holds it, and a
    batch never mixes canvases. The default wastes ~7% of pixels on COCO-like sizes (bench/padding_waste.py)."""
    samples_per_device: int = 2
    """Images per device per step."""
    workers: int = -1
    """Data-loading worker processes per device; -1 derives them from the CPUs this process may use (cgroup
    quota and CPU affinity) shared among the node's processes (LOCAL_WORLD_SIZE), one left for the main
    process, at most 8."""
    prefetch_factor: int = 4
    """Batches each data-loading worker prepares ahead."""

    @property
    def eval_scale(self) -> tuple[int, ...]:
        """What evaluation and predict resize to: ``test_img_scale``, else ``img_scale``."""
        return tuple(self.test_img_scale) or tuple(self.img_scale)

    @property
    def pad_value(self) -> tuple[int, int, int]:
        """The uint8 RGB colour canvases are padded with: ``mean`` rounded, which normalises to within
        half a grey level of 0 (mmdetection pads with 0 after normalising)."""
        r, g, b = (min(255, max(0, round(m))) for m in self.mean)
        return r, g, b


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    """Training epochs."""
    max_iters: int = 0
    """Stop after this many iterations in all (0 = train every epoch), for trial and performance runs:
    the schedule (warm-up, lr_steps) stays that of train.epochs, a checkpoint is written where it stops,
    and a resume with a higher value goes on from there."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (momentum, the reference recipe) or adamw (for short from-scratch runs such as the tiny config)."""
    base_lr: float = 0.01
    """Learning rate for base_batch_size images per step; scaled linearly with the real total batch."""
    base_batch_size: int = 16
    """Total batch the base_lr was tuned for (8 devices x 2 images)."""
    momentum: float = 0.9
    """SGD momentum (unused by adamw)."""
    weight_decay: float = 0.0001
    """Weight decay (adamw: decoupled, multiplied by the learning rate)."""
    grad_clip: float = 35.0
    """Gradient clipping max-norm (0 disables)."""
    warmup_iters: int = 500
    """Linear warm-up iterations."""
    warmup_factor: float = 0.01
    """Learning-rate factor at iteration 0 of the warm-up."""
    lr_steps: tuple[float, ...] = (8, 11)
    """Epochs after which the learning rate is multiplied by lr_gamma (fractions allowed, e.g. 0.75)."""
    lr_gamma: float = 0.1
    """Step-decay factor."""
    seed: int = 0
    """Random seed (data order, augmentation and initialisation derive from it)."""
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    """Mixed precision: auto = bf16 on CUDA, fp16 on NPU, off (fp32) on CPU."""
    loss_scale: float = 0.0
    """fp16 loss scale: 0 = dynamic (GradScaler); a positive value is a fixed scale (the ModelZoo used 128)."""
    checkpoint_interval: int = 0
    """Also checkpoint every this many iterations (0 = only at the end of each epoch)."""
    keep_iter_checkpoints: int = 2
    """Iteration checkpoints (iter_N.pth) kept: the newest this many; older ones are deleted."""
    epoch_checkpoint_every: int = 1
    """Epoch checkpoints (epoch_N.pth) kept: those of every this-many-th epoch, and the newest (1 = all)."""
    log_interval: int = 20
    """Iterations between progress lines."""
    max_nonfinite: int = 20
    """Stop training after this many consecutive steps with a non-finite loss or gradient."""
    sync_bn: bool = True
    """Use SyncBatchNorm for trainable BatchNorm layers in distributed runs where the backend supports it."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def num_levels(self) -> int:
        return len(self.model.head.num_grids)


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_config_path(name: str | Path) -> Path:
    """A path to a YAML file, or the name (with or without .yaml) of a config shipped with solov2."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config: no file {str(name)!r} and no shipped config of that name (shipped: {known})")


def load_config(name: str | Path | None = None, opts: Sequence[str] = ()) -> Config:
    """Load a config file (or the defaults when ``name`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if name is not None:
        path = resolve_config_path(name)
        try:
            loaded = parse_yaml(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config: {path} is not valid YAML: {problem}{where}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config: {path} must hold a mapping at the top level")
        raw = loaded or {}
        try:  # a key or type the file itself gets wrong is the file's, not an override's
            _build(Config, yaml.safe_load(yaml.safe_dump(raw)), "")
        except ConfigError as exc:
            raise ConfigError(f"config: {path}: {exc}") from exc
    return config_from_dict(raw, opts)


def config_from_dict(raw: dict[str, Any], opts: Sequence[str] = ()) -> Config:
    """A config from a plain dict (as :func:`to_dict` writes into checkpoints), with overrides."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy, tuples as lists
    for opt in opts:
        apply_override(raw, opt)
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def apply_override(raw: dict[str, Any], opt: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in the nested dict ``raw``."""
    key, sep, text = opt.partition("=")
    if not sep or not key:
        raise ConfigError(f"--opts: expected key=value, got {opt!r}")
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {exc}") from exc
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section")
        node = child
    node[parts[-1]] = value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), e.g. to save next to a checkpoint."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return {k: (to_dict(v) if dataclasses.is_dataclass(v) else plain(v)) for k, v in vars(cfg).items()}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (valid keys here: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported config type {hint!r}")  # a bug in this module, not user input


# ---------------------------------------------------------------------------------------------
# Validation: every rule names the field it checks.


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def validate(cfg: Config) -> None:
    """Range checks (:data:`solov2.config_ranges.RANGES`), then the rules no single-field range can state.

    The ranges run first, so the rules below may assume every number is finite and in its range (no
    division by a zero ``norm_groups``, no negative level); they raise :class:`ConfigError` naming the
    first bad field.
    """
    check_ranges(cfg)
    m = cfg.model
    _require(m.backbone.depth in (18, 34, 50, 101), "model.backbone.depth", "must be 18, 34, 50 or 101")

    h = m.head
    levels = len(h.num_grids)
    _require(
        levels == m.fpn.num_outs,
        "model.head.num_grids",
        f"has {levels} levels but the FPN has {m.fpn.num_outs} outputs (model.fpn.num_outs)",
    )
    _require(
        len(h.strides) == levels,
        "model.head.strides",
        f"has {len(h.strides)} entries but model.head.num_grids has {levels} levels",
    )
    _require(
        len(h.scale_ranges) == levels,
        "model.head.scale_ranges",
        f"has {len(h.scale_ranges)} entries but model.head.num_grids has {levels} levels",
    )
    for i, (lo, hi) in enumerate(h.scale_ranges):
        _require(lo < hi, f"model.head.scale_ranges[{i}]", f"needs 0 <= low < high, got ({lo}, {hi})")
    _require(
        h.feat_channels % h.norm_groups == 0,
        "model.head.feat_channels",
        f"must be divisible by model.head.norm_groups ({h.norm_groups})",
    )

    mf = m.mask_feature
    _require(
        mf.start_level == 0,
        "model.mask_feature.start_level",
        "must be 0: mask features live at stride 4 (P2), where the targets are built",
    )
    _require(
        mf.start_level <= mf.end_level < m.fpn.num_outs,
        "model.mask_feature.end_level",
        f"needs 0 <= start_level <= end_level < model.fpn.num_outs ({m.fpn.num_outs})",
    )
    for name in ("feat_channels", "out_channels"):
        _require(
            getattr(mf, name) % h.norm_groups == 0,
            f"model.mask_feature.{name}",
            f"must be a positive multiple of model.head.norm_groups ({h.norm_groups})",
        )

    infer = m.inference
    _require(
        infer.nms_pre >= infer.max_per_img,
        "model.inference.nms_pre",
        f"must be at least model.inference.max_per_img ({infer.max_per_img})",
    )

    d = cfg.data
    _require(
        d.size_divisor % 32 == 0,
        "data.size_divisor",
        "must be a positive multiple of 32 (the FPN's coarsest stride)",
    )
    _require(
        len(d.test_img_scale) in (0, 2),
        "data.test_img_scale",
        "must be [] (data.img_scale) or (long side, short side)",
    )
    _require(len(d.canvases) >= 1, "data.canvases", "needs at least one (height, width)")
    for i, (ch, cw) in enumerate(d.canvases):
        _require(
            ch % d.size_divisor == 0 and cw % d.size_divisor == 0,
            f"data.canvases[{i}]",
            f"sides must be positive multiples of data.size_divisor ({d.size_divisor})",
        )

    t = cfg.train
    _require(list(t.lr_steps) == sorted(t.lr_steps), "train.lr_steps", "must be increasing positive epochs")
