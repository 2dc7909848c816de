"""Real tools for the delivery tests: helm, kubectl, prometheus and promtool from ``tools/install.sh``
(cached in ``.tools/``; installed on first use), kubernetes-validate and hadolint from the dev extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "solov2-operator"
TOOLS = Path(os.environ.get("TOOLS_DIR", ROOT / ".tools")) / "bin"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """Path of a cached binary (helm, kubectl, prometheus, promtool); installs them when missing."""
    if not all((TOOLS / name).exists() for name in ("helm", "kubectl", "prometheus", "promtool")):
        subprocess.run(["bash", str(ROOT / "tools" / "install.sh")], check=True)

    def path(name: str) -> str:
        return str(TOOLS / name)

    return path


def venv_tool(name: str) -> str:
    """A console script of this Python environment (kubernetes-validate, hadolint)."""
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def run(*cmd: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def render(tool) -> Callable[..., list[dict[str, Any]]]:
    """``render(*helm_args)``: the chart's manifests from ``helm template`` as a list of objects."""

    def _render(*args: str) -> list[dict[str, Any]]:
        out = run(
            tool("helm"), "template", "solov2", str(CHART), "--namespace", "solov2-system", *args
        ).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
