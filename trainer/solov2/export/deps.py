"""Lazy imports of the ``export`` extra, with one clear error when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

INSTALL_HINT = "pip install 'solov2-operator[export]'"


class ExportError(UserError, RuntimeError):
    """An export that cannot be made or checked: bad options, a missing package, outputs that differ."""


def require(module: str) -> ModuleType:
    """Import ``module`` (onnx, onnxruntime, onnxscript) or raise :class:`ExportError` saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"{module} is not installed ({exc}); ONNX needs the export extra: {INSTALL_HINT}"
        ) from exc
