"""Checkpoints: plain dicts written atomically, found again for ``--resume``, weights for ``--load-from``.

A checkpoint holds the model, optimizer, scheduler and loss-scaler states, the position in training
(epoch, global iteration, batch within the epoch), every RNG state and the config. It is written to a
temporary file in the same directory, flushed to disk and renamed over the target, so a crash never
leaves a truncated checkpoint; ``last_checkpoint`` (a one-line text file, replaced the same way)
names the newest one. :func:`prune_checkpoints` keeps the disk use bounded: the newest K
iteration checkpoints, and the epoch checkpoints of every N-th epoch.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomically
from ..errors import WeightsError
from ..model.state_dicts import compare_state_dicts
from .optim import load_optimizer_state

LAST = "last_checkpoint"


def rng_state() -> dict[str, Any]:
    """The random generators' states; on CUDA the current device's only, so that a run resumed with
    fewer devices per node (or on another machine) can restore it."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]  # a list of every device's state in checkpoints of earlier versions
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, list) else cuda)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``path`` and point ``last_checkpoint`` at it."""
    write_atomically(path, lambda f: torch.save(state, f))
    write_atomically(path.parent / LAST, lambda f: f.write(path.name.encode() + b"\n"))


_NUMBERED = re.compile(r"^(iter|epoch)_(\d+)\.pth$")
_PARTIAL = re.compile(r"^\.((diverged_)?(iter|epoch)_\d+\.pth|last_checkpoint)\..+\.tmp$")
"""A temporary file of :func:`~solov2.atomic.write_atomically` for a checkpoint or the marker."""


def prune_checkpoints(directory: Path, *, keep_iter: int, epoch_every: int) -> list[Path]:
    """Delete old checkpoints: iteration ones (``iter_N.pth``) beyond the newest ``keep_iter``, and
    epoch ones (``epoch_N.pth``) whose N is not a multiple of ``epoch_every``, except the newest.
    The checkpoint ``last_checkpoint`` names is always kept, and other files are never touched.
    Returns the deleted paths."""
    found: dict[str, list[tuple[int, Path]]] = {"iter": [], "epoch": []}
    for path in directory.glob("*.pth"):
        match = _NUMBERED.match(path.name)
        if match:
            found[match.group(1)].append((int(match.group(2)), path))
    marker = directory / LAST
    last = marker.read_text().strip() if marker.is_file() else None
    iters = sorted(found["iter"], reverse=True)
    epochs = sorted(found["epoch"], reverse=True)
    doomed = [p for _, p in iters[keep_iter:]]
    doomed += [p for n, p in epochs[1:] if n % epoch_every]
    deleted = []
    for path in doomed:
        if path.name != last:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (a process killed while it
    saved: each can be as large as a checkpoint). Call it only while no process of the run writes."""
    partial = [p for p in directory.glob(".*.tmp") if p.is_file() and _PARTIAL.match(p.name)]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def periodic_checkpoint_due(iteration: int, interval: int) -> bool:
    """Whether iteration ``iteration`` (1-based) gets an ``iter_N.pth`` checkpoint (``interval`` 0:
    never; the loop skips it at the end of an epoch, which writes ``epoch_N.pth``)."""
    return interval > 0 and iteration % interval == 0


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint ``last_checkpoint`` names in ``directory``, or None when there is none yet."""
    marker = directory / LAST
    if not marker.is_file():
        return None
    path = directory / marker.read_text().strip()
    if not path.is_file():
        raise WeightsError(
            f"{marker} names {path.name}, which does not exist: remove the marker to start over"
        )
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (full state, including RNG and optimizer)."""
    state = _read(path, "checkpoint")
    missing = (
        {"model", "optimizer", "epoch", "iteration"} - set(state) if isinstance(state, dict) else {"model"}
    )
    if missing:
        raise WeightsError(f"checkpoint {path}: not a solov2 training checkpoint (missing {sorted(missing)})")
    return state


_ARCHITECTURE = ("model.backbone.depth ", "model.fpn.", "model.head.")
"""Config fields that shape the model's weights; others (frozen stages, backbone weights, inference,
losses) do not make weights mismatch, and ``model.head.num_classes`` may change in fine-tuning."""


def load_weights(model: nn.Module, path: Path, config: dict[str, Any] | None = None) -> list[str]:
    """Load model weights only (``--load-from`` fine-tuning), from a training checkpoint or a state dict.

    Tensors whose shape differs from the model's (a new class count changes the category branch) are
    skipped; their names are returned so the caller can report them. Missing or unknown keys are errors,
    which name the model fields whose values differ from the current ``config`` where the checkpoint
    holds its own.
    """
    state = _read(path, "--load-from")
    weights = _model_weights(state, path, "--load-from")
    missing, unexpected, skipped = compare_state_dicts(model.state_dict(), weights)
    if missing or unexpected:
        stored = state.get("config") if isinstance(state, dict) else None
        changed = [
            d
            for d in config_differences(stored, config, "model")
            if d.startswith(_ARCHITECTURE) and not d.startswith("model.head.num_classes ")
        ]
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        what = f"; its config differs in {', '.join(changed[:3])}{more}" if changed else ""
        raise WeightsError(
            f"--load-from {path}: does not match this model (missing {missing[:5]}, unexpected {unexpected[:5]})"
            + what
        )
    model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
    return skipped


def _model_weights(state: Any, path: Path, flag: str) -> dict[str, Any]:
    """The model state dict in a training checkpoint (its ``model`` entry) or a bare state dict."""
    weights = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
    if not isinstance(weights, dict):
        raise WeightsError(f"{flag} {path}: holds no state dict")
    return weights


def _read(path: Path, flag: str) -> Any:
    if path.is_dir():  # a checkpoint directory: its newest checkpoint
        newest = latest_checkpoint(path)
        if newest is None:
            inside = path / "checkpoints"
            hint = f" (a work dir? its checkpoints are in {inside})" if (inside / LAST).is_file() else ""
            raise WeightsError(f"{flag} {path}: a directory without {LAST}{hint}")
        path = newest
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise WeightsError(f"{flag} {path}: no such file") from exc
    except Exception as exc:
        hint = " (an ONNX model: pass it with --onnx)" if path.suffix == ".onnx" else ""
        raise WeightsError(f"{flag} {path}: cannot read it ({type(exc).__name__}: {exc}){hint}") from exc


def read_config(path: Path) -> dict[str, Any]:
    """The config dict stored in a training checkpoint (for ``eval``/``predict`` without ``--config``)."""
    state = _read(path, "--checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise WeightsError(f"--checkpoint {path}: holds no config; pass --config")
    return state["config"]


def load_model_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load a checkpoint's (or a bare state dict's) weights strictly; return the checkpoint's extras."""
    state = _read(path, "--checkpoint")
    weights = _model_weights(state, path, "--checkpoint")
    missing, unexpected, reshaped = compare_state_dicts(model.state_dict(), weights)
    if missing or unexpected or reshaped:
        raise WeightsError(
            f"--checkpoint {path}: does not match the config's model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shape {reshaped[:3]}); pass the --config it was trained with"
        )
    model.load_state_dict(weights)
    return {k: v for k, v in state.items() if k not in ("model", "optimizer")} if "model" in state else {}


def config_differences(old: Any, new: Any, prefix: str) -> list[str]:
    """``"a.b (old in the checkpoint, new now)"`` for each field under ``prefix`` that differs
    between two config dicts (as :func:`to_dict` writes them)."""

    def walk(a: Any, b: Any, path: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [
                d for key in sorted(set(a) | set(b)) for d in walk(a.get(key), b.get(key), f"{path}.{key}")
            ]
        return [] if a == b else [f"{path} ({a} in the checkpoint, {b} now)"]

    for part in prefix.split("."):
        old = old.get(part) if isinstance(old, dict) else None
        new = new.get(part) if isinstance(new, dict) else None
    return walk(old, new, prefix) if isinstance(old, dict) and isinstance(new, dict) else []


def load_training_state(
    path: Path,
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: dict[str, Any],
) -> None:
    """Load a training checkpoint's model, optimizer and schedule for ``--resume``. One written with
    another config raises :class:`WeightsError` naming what differs (``config`` is the current one)."""
    missing, unexpected, reshaped = compare_state_dicts(model.state_dict(), state["model"])
    if missing or unexpected or reshaped:
        changed = config_differences(state.get("config"), config, "model")
        what = (
            f"its config differs in {', '.join(changed[:3])}"
            if changed
            else f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shape {reshaped[:3]}"
        )
        raise WeightsError(
            f"--resume: {path} was written for another model ({what}); resume with the config it was "
            f"trained with, or start over in another --work-dir (--load-from {path} fine-tunes from it)"
        )
    model.load_state_dict(state["model"])
    try:
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        changed = config_differences(state.get("config"), config, "train")
        raise WeightsError(
            f"--resume: the optimizer state in {path} does not fit this config"
            f"{' (' + ', '.join(changed[:3]) + ' changed)' if changed else ''}: {exc}"
        ) from None
