"""COCO-format instance segmentation data: images and their instance masks, boxes and labels.

``CocoInstances(image_dir, ann_file)`` reads a COCO annotation file (``instances_*.json``) once and
decodes one image and its annotations per ``__getitem__``:

- every image entry of the file is a sample, also the ones without annotations (pure background),
  unless ``filter_empty_gt`` leaves out those and the ones under 32 pixels on a side, as
  mmdetection's COCO recipes do for training (``filtered_images`` counts them);
- ``iscrowd=1`` regions are not returned as instances (they stay in ``coco`` for evaluation), nor are
  annotations with a zero area, a box thinner than one pixel, no segmentation or an empty mask
  (``annotation_counts`` counts them, the polygon parts of fewer than 3 points, and the boxes clamped
  to their image);
- repeated image or annotation ids and a ``bbox`` that is not 4 numbers are :class:`DataError`;
- polygons (one or several parts), uncompressed and compressed RLE all decode through pycocotools;
- COCO category ids (possibly non-contiguous) map to contiguous labels ``0..num_classes-1`` in
  increasing category id order.

Bad images. Without ``skip_bad_images`` a missing, undecodable or wrongly sized image raises
:class:`DataError` naming the file. With it, ``__getitem__`` returns ``None`` instead, logs a warning and
marks the image in a flag vector kept in shared memory, so ``skipped`` counts the distinct bad images seen
by every data-loading worker. The loaders in :mod:`.loader` replace a ``None`` with another image of the
same canvas (training) or a padding entry (evaluation), so batch shapes stay static. Images are checked
lazily, when first read: verifying 118k COCO files up front would decode every image once more (minutes
of CPU) before the first step, and a file can still break later.

Memory. pycocotools' index of COCO train2017 is millions of small Python objects; every data-loading
worker that reads them (even just their reference counts) copies the pages it touches, so with 8 ranks
x several workers the index alone could exhaust a node's memory. The dataset therefore keeps what
samples need as one pickled byte buffer per split (a few numpy arrays, never written after
``__init__``) and drops the index; ``coco`` builds it again on first use (evaluation, inspection).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .rasterize import instance_masks, resize_image

__all__ = ["CocoInstances", "Sample", "read_image", "read_rgb"]

_log = logging.getLogger(__name__)


class Sample(NamedTuple):
    """One image and its instances. Sizes are ``(h, w)``.

    - ``image``:         ``[3, H, W]`` uint8 RGB (after padding ``H x W`` is the canvas).
    - ``masks``:         ``[n, H, W]`` uint8 (0/1), one per instance.
    - ``boxes``:         ``[n, 4]`` float32 ``x1, y1, x2, y2`` in pixels of ``image``.
    - ``labels``:        ``[n]`` int64 contiguous class ids.
    - ``image_id``:      COCO image id.
    - ``original_size``: size of the image as stored on disk.
    - ``image_size``:    size of the image content at the top-left of ``image`` (differs from
      ``image.shape[-2:]`` only after padding).
    """

    image: Tensor
    masks: Tensor
    boxes: Tensor
    labels: Tensor
    image_id: int
    original_size: tuple[int, int]
    image_size: tuple[int, int]


def read_rgb(path: Path, *, exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file to ``[H, W, 3]`` uint8 RGB; grey, RGBA, CMYK and palette images are
    converted. Raises :class:`DataError` naming the file if it is missing or corrupt.

    OpenCV decodes (a third faster than PIL on COCO's JPEGs, ``bench/decode_resize.py``), keeping the
    stored pixel orientation (data sets' annotations refer to it, so EXIF rotation is ignored); what it
    cannot decode goes to PIL, which either reads it or says what is wrong with the file.
    ``exif_transpose`` applies the file's EXIF orientation instead (prediction on photos; PIL decodes)."""
    if exif_transpose:
        return _read_rgb_pil(path, exif_transpose=True)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if bgr is not None and bgr.dtype == np.uint8 and bgr.ndim == 3:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _read_rgb_pil(path)


def _read_rgb_pil(path: Path, *, exif_transpose: bool = False) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            if img.mode in ("P", "PA", "LA"):
                img = img.convert("RGBA")  # palette transparency, then drop alpha below
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc


def read_image(path: Path, *, exif_transpose: bool = False) -> Tensor:
    """:func:`read_rgb` as ``[3, H, W]`` uint8 (a channels-last view)."""
    return torch.from_numpy(read_rgb(path, exif_transpose=exif_transpose)).permute(2, 0, 1)


def _load_coco(ann_file: Path) -> COCO:
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{ann_file}: cannot read the annotation file as JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{ann_file}: not a COCO annotation file (no 'images' list)")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DataError(f"{ann_file}: no 'categories' in the annotation file")
    for section in ("images", "annotations"):
        _check_unique_ids(data.get(section) or [], section, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _check_unique_ids(entries: list[Any], section: str, ann_file: Path) -> None:
    """Every entry of ``section`` has an ``id``, and no two the same (pycocotools would silently keep
    the last one, and the masks of one image would be decoded at another's size)."""
    seen: dict[Any, int] = {}
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(f"{ann_file}: an entry of '{section}' has no 'id'")
        seen[entry["id"]] = seen.get(entry["id"], 0) + 1
    repeated = [k for k, n in seen.items() if n > 1]
    if repeated:
        raise DataError(
            f"{ann_file}: {section[:-1]} id {repeated[0]} appears {seen[repeated[0]]} times in '{section}' "
            f"({len(repeated)} repeated id(s) in all); ids must be unique"
        )


def _check_bbox(ann: dict[str, Any], ann_file: Path) -> None:
    bbox = ann.get("bbox")
    if bbox is None:
        return
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        raise DataError(
            f"{ann_file}: annotation {ann.get('id')} has bbox {bbox!r}; expected [x, y, width, height]"
        )


def _degenerate_parts(ann: dict[str, Any]) -> int:
    """Polygon parts with fewer than 3 points (they are dropped)."""
    segm = ann.get("segmentation")
    return sum(1 for p in segm if len(p) < 6) if isinstance(segm, list) else 0


def _outside(ann: dict[str, Any], height: int, width: int) -> bool:
    """A box reaching outside its image (it is clamped to the image)."""
    x, y, w, h = ann["bbox"]
    return x < 0 or y < 0 or x + w > width or y + h > height


_ANN_KEYS = ("id", "category_id", "bbox", "segmentation")  # what a sample needs of an annotation


def _usable(ann: dict[str, Any]) -> bool:
    """An annotation that becomes a training instance (before its mask is decoded)."""
    if ann.get("iscrowd", 0) or not ann.get("segmentation"):
        return False
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    return ann.get("area", 1) > 0 and bbox[2] >= 1 and bbox[3] >= 1


def _to_rle(ann: dict[str, Any], height: int, width: int, ann_file: Path) -> dict[str, Any] | None:
    """A compressed RLE of the annotation's segmentation at ``height x width``; None if it has no area."""
    segm = _segmentation(ann, height, width, ann_file)
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    return segm


def _segmentation(
    ann: dict[str, Any], height: int, width: int, ann_file: Path
) -> list[list[float]] | dict[str, Any] | None:
    """The annotation's polygon parts (those with at least 3 points), or its RLE (compressed), checked
    against the image size ``height x width``; None if no polygon part is usable."""
    segm = ann["segmentation"]
    if isinstance(segm, list):  # polygons: one or more parts of one object
        return [p for p in segm if len(p) >= 6] or None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(v) for v in segm["size"]] != [height, width]:
            raise DataError(
                f"{ann_file}: annotation {ann.get('id')} has an RLE of size {segm['size']} "
                f"but its image is {height}x{width}"
            )
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(segm, height, width)
        return segm
    raise DataError(f"{ann_file}: annotation {ann.get('id')} has an unknown segmentation format")


MIN_IMAGE_SIZE = 32
"""With ``filter_empty_gt``, images with a shorter side are left out (mmdetection's ``min_size``)."""


def _trainable(coco: COCO, image_id: int) -> bool:
    """mmdetection's ``filter_empty_gt`` for its COCO recipes: the image has an annotation (a crowd
    region counts) and both sides of at least :data:`MIN_IMAGE_SIZE` pixels."""
    info = coco.imgs[image_id]
    return (
        bool(coco.imgToAnns.get(image_id)) and min(int(info["height"]), int(info["width"])) >= MIN_IMAGE_SIZE
    )


def _empty_masks(anns: list[dict[str, Any]], height: int, width: int, ann_file: Path) -> int:
    """How many of one ``height x width`` image's usable annotations have a mask without a pixel at that
    size (a sliver or a sub-pixel polygon), so that loading drops them. Every polygon part of the image
    is rasterised in one pycocotools call; an annotation's mask is empty when all its parts are."""
    parts: list[list[float]] = []
    owners: list[int] = []
    empty = 0
    for k, ann in enumerate(anns):
        segm = _segmentation(ann, height, width, ann_file)
        if isinstance(segm, list):
            parts += segm
            owners += [k] * len(segm)
        elif segm is not None:
            empty += int(mask_utils.area(segm)) == 0
    if parts:
        filled = (mask_utils.area(mask_utils.frPyObjects(parts, height, width)) > 0).tolist()
        drawn = {k for k, f in zip(owners, filled, strict=True) if f}
        empty += len(set(owners) - drawn)
    return empty


def _xyxy(bboxes: list[list[float]], height: int, width: int) -> Tensor:
    """COCO ``x, y, w, h`` boxes -> ``[n, 4]`` float32 ``x1, y1, x2, y2`` clipped to the image."""
    boxes = torch.tensor(bboxes, dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


_BAD_NOW, _BAD_BEFORE = 1, 2
"""Values of an image's bad flag: met by this process's run (warned about), or known from a checkpoint."""


class CocoInstances(Dataset):
    """COCO instances; ``dataset[i]`` is a :class:`Sample` at the stored image size (or None, see above)."""

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        *,
        num_classes: int | None = None,
        skip_bad_images: bool = False,
        filter_empty_gt: bool = False,
        bad_image_hint: str = "",
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            present = sorted(f.name for f in self.ann_file.parent.glob("instances_*.json"))
            raise DataError(
                f"{self.ann_file}: annotation file not found"
                + (f" (the folder has {', '.join(present)})" if present else "")
            )
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image directory not found")
        coco = _load_coco(self.ann_file)
        self.label_to_category: list[int] = sorted(coco.cats)
        self.category_to_label: dict[int, int] = {c: i for i, c in enumerate(self.label_to_category)}
        self.class_names: list[str] = [str(coco.cats[c].get("name", c)) for c in self.label_to_category]
        self.num_classes: int = len(self.label_to_category)
        if num_classes is not None:
            self.check_num_classes(num_classes)
        self.image_ids: list[int] = sorted(coco.imgs)
        for image_id in self.image_ids:
            info = coco.imgs[image_id]
            if not all(k in info for k in ("file_name", "height", "width")):
                raise DataError(f"{self.ann_file}: image {image_id} lacks file_name, height or width")
        self.filtered_images = 0
        if filter_empty_gt:
            kept = [i for i in self.image_ids if _trainable(coco, i)]
            self.filtered_images = len(self.image_ids) - len(kept)
            self.image_ids = kept
        for ann in coco.anns.values():
            if ann.get("category_id") not in self.category_to_label:
                raise DataError(
                    f"{self.ann_file}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                    "which is not in 'categories'"
                )
            _check_bbox(ann, self.ann_file)
        self._annotation_counts = self._count_degenerate(coco, self.ann_file)
        self.skip_bad_images = skip_bad_images
        self.bad_image_hint = bad_image_hint  # appended to a bad image's error (what the command offers)
        # One flag per image in shared memory: data-loading workers mark the bad images they meet.
        self._bad = torch.zeros(len(self.image_ids), dtype=torch.uint8).share_memory_()
        records = [
            (
                str(coco.imgs[i]["file_name"]),
                [{k: a.get(k) for k in _ANN_KEYS} for a in coco.imgToAnns.get(i, []) if _usable(a)],
            )
            for i in self.image_ids
        ]
        self._sizes = np.array(
            [(int(coco.imgs[i]["height"]), int(coco.imgs[i]["width"])) for i in self.image_ids],
            dtype=np.int64,
        ).reshape(-1, 2)
        self._counts = np.array([len(anns) for _, anns in records], dtype=np.int64)
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._coco: COCO | None = None  # dropped: rebuilt on demand, see ``coco``

    def check_num_classes(self, num_classes: int) -> None:
        """Raise :class:`DataError` unless the model's ``num_classes`` is this data set's category count."""
        if num_classes != self.num_classes:
            raise DataError(
                f"model.head.num_classes: is {num_classes} but {self.ann_file} defines {self.num_classes} "
                f"categories (set model.head.num_classes={self.num_classes})"
            )

    @staticmethod
    def _count_degenerate(coco: COCO, ann_file: Path) -> dict[str, int]:
        dropped = degenerate = clamped = 0
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in coco.anns.values():
            if ann.get("iscrowd", 0):
                continue
            degenerate += _degenerate_parts(ann)
            usable = _usable(ann) and (_degenerate_parts(ann) < len(ann["segmentation"]) or
                                       not isinstance(ann["segmentation"], list))  # fmt: skip
            if not usable:
                dropped += 1
                continue
            info = coco.imgs.get(ann.get("image_id"), {})
            clamped += _outside(ann, int(info.get("height", 0)), int(info.get("width", 0)))
            by_image.setdefault(ann.get("image_id"), []).append(ann)
        for image_id, anns in by_image.items():
            if image_id in coco.imgs:  # annotations of images not in the file are never loaded
                info = coco.imgs[image_id]
                dropped += _empty_masks(anns, int(info["height"]), int(info["width"]), ann_file)
        return {"dropped_annotations": dropped, "degenerate_polygons": degenerate, "clamped_boxes": clamped}

    def annotation_counts(self) -> dict[str, int]:
        """Annotations that do not train as they are written: ``dropped_annotations`` (not crowd, yet no
        instance: zero area, a box thinner than a pixel, no segmentation, only polygons with fewer than 3
        points, or a mask without a pixel at the stored image size), ``degenerate_polygons`` (polygon parts
        with fewer than 3 points, dropped) and ``clamped_boxes`` (boxes reaching outside their image,
        clamped to it)."""
        return dict(self._annotation_counts)

    @property
    def coco(self) -> COCO:
        """pycocotools' index of the annotation file (crowd regions included), built on first use."""
        if self._coco is None:
            self._coco = _load_coco(self.ann_file)
        return self._coco

    def _record(self, index: int) -> tuple[str, list[dict[str, Any]]]:
        """``(file_name, usable annotations)`` of image ``index``, unpickled from the shared buffer."""
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(self._blob[start : int(self._ends[index])].tobytes())

    @property
    def skipped(self) -> int:
        """Distinct bad images met so far (only with ``skip_bad_images``), across all workers."""
        return int(self.bad_images().sum())

    def bad_images(self) -> Tensor:
        """``[len(self)]`` uint8: 1 for each image found bad so far (only with ``skip_bad_images``), across
        all workers of this process."""
        return (self._bad > 0).to(torch.uint8)

    def mark_bad(self, image_ids: Iterable[int]) -> int:
        """Flag the images of these COCO ids as bad (met by an earlier run, before a resume), so that
        :meth:`bad_images` counts them; ids not in this data set are ignored. Returns how many were
        flagged."""
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        found = [position[i] for i in image_ids if i in position]
        self._bad[found] = _BAD_BEFORE  # counted; still warned about when met again in this run
        return len(found)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(h, w)`` of every image, in dataset order, from the annotation file (no image is opened)."""
        return [(int(h), int(w)) for h, w in self._sizes]

    def instance_counts(self) -> list[int]:
        """Annotations per image that may become instances (before masks are decoded), in dataset order."""
        return self._counts.tolist()

    def __getitem__(self, index: int) -> Sample | None:
        return self.load(index)

    def original_size(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of image ``index`` as stored, from the annotation file."""
        return int(self._sizes[index, 0]), int(self._sizes[index, 1])

    def _read(self, index: int, file_name: str) -> np.ndarray | None:
        """The image's ``[H, W, 3]`` pixels, checked against the annotated size; None for a bad image
        with ``skip_bad_images`` (else :class:`DataError`)."""
        path = self.image_dir / file_name
        expected = self.original_size(index)
        try:
            rgb = read_rgb(path)
            if tuple(rgb.shape[:2]) != expected:
                raise DataError(
                    f"{path}: image is {rgb.shape[0]}x{rgb.shape[1]} but {self.ann_file} says "
                    f"{expected[0]}x{expected[1]}"
                )
        except DataError as exc:
            if not self.skip_bad_images:
                raise DataError(f"{exc}{self.bad_image_hint}") from exc
            if self._bad[index] != _BAD_NOW:
                self._bad[index] = _BAD_NOW
                _log.warning("skipping bad image: %s", exc)
            return None
        return rgb

    def load_resized(self, index: int, size: tuple[int, int], *, flip: bool = False) -> Sample | None:
        """Image ``index`` and its instances directly at ``size = (h, w)``, mirrored if ``flip``: what
        :func:`~.transforms.resize_sample` and :func:`~.transforms.hflip_sample` make of :meth:`load`,
        with polygons rasterised at ``size`` (:mod:`.rasterize`). Unpadded; None like :meth:`load`."""
        file_name, usable = self._record(index)
        rgb = self._read(index, file_name)
        if rgb is None:
            return None
        (h0, w0), (height, width) = self.original_size(index), size
        segms, kept = [], []
        for ann in usable:
            segm = _segmentation(ann, h0, w0, self.ann_file)
            if segm is not None:
                segms.append(segm)
                kept.append(ann)
        masks = instance_masks(segms, (h0, w0), size, flip=flip)
        boxes = _xyxy([a["bbox"] for a in kept], h0, w0)
        boxes = boxes * torch.tensor([width / w0, height / h0, width / w0, height / h0])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        if flip:
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        labels = torch.tensor([self.category_to_label[a["category_id"]] for a in kept], dtype=torch.int64)
        nonempty = masks.flatten(1).any(1).bool()
        if not bool(nonempty.all()):
            masks, boxes, labels = masks[nonempty], boxes[nonempty], labels[nonempty]
        image = resize_image(rgb, size, flip=flip)
        return Sample(image, masks, boxes, labels, int(self.image_ids[index]), (h0, w0), (height, width))

    def load(self, index: int, *, annotations: bool = True) -> Sample | None:
        """Decode image ``index``; with ``annotations=False`` the instance fields are empty (n = 0)."""
        image_id = self.image_ids[index]
        file_name, usable = self._record(index)
        expected = self.original_size(index)
        rgb = self._read(index, file_name)
        if rgb is None:
            return None
        image = torch.from_numpy(rgb).permute(2, 0, 1)
        height, width = expected
        anns = usable if annotations else []
        rles, kept = [], []
        for ann in anns:
            rle = _to_rle(ann, height, width, self.ann_file)
            if rle is not None:
                rles.append(rle)
                kept.append(ann)
        if rles:
            with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = mask_utils.decode(rles)
            masks = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))
        else:
            masks = torch.zeros(0, height, width, dtype=torch.uint8)
        boxes = _xyxy([a["bbox"] for a in kept], height, width)
        labels = torch.tensor([self.category_to_label[a["category_id"]] for a in kept], dtype=torch.int64)
        nonempty = masks.flatten(1).any(1).bool()
        if not bool(nonempty.all()):
            masks, boxes, labels = masks[nonempty], boxes[nonempty], labels[nonempty]
        return Sample(image, masks, boxes, labels, int(image_id), expected, expected)
