"""Helpers over the dashboard: the generator module, its panels' queries, template substitution."""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType
from typing import Any

from .conftest import CHART, ROOT

DASHBOARD = CHART / "dashboards" / "solov2.json"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "solov2_dashboard", ROOT / "dashboards" / "solov2_dashboard.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel that is not a row."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Template variable name -> the selector inside ``label_values(selector, label)``."""
    out = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
            assert match, var["query"]
            out[var["name"]] = match[1]
    return out


def substitute(expr: str, variables: dict[str, str], rate_interval: str) -> str:
    """What Grafana sends: ``$var`` replaced by the selected value, ``$__rate_interval`` by a window."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(solov2_\w+)", expr))
