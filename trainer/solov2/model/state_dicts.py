"""Comparing a state dict with a model's, for every place that loads weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor


class Mismatch(NamedTuple):
    """Sorted key names: in the model only, in the loaded dict only, and in both with another shape."""

    missing: list[str]
    unexpected: list[str]
    reshaped: list[str]


def compare_state_dicts(own: Mapping[str, Tensor], loaded: Mapping[str, Tensor]) -> Mismatch:
    """How ``loaded`` differs from the model's ``own`` state dict."""
    return Mismatch(
        missing=sorted(set(own) - set(loaded)),
        unexpected=sorted(set(loaded) - set(own)),
        reshaped=sorted(k for k in set(own) & set(loaded) if own[k].shape != loaded[k].shape),
    )
