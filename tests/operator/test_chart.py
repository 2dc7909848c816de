"""The chart ships the one CRD source unchanged and refuses values it does not know."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "solov2-operator"


def test_chart_crds_are_a_byte_for_byte_copy_of_crds():
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copied = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source == copied and source
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name


def test_chart_metadata_and_values_schema():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "solov2-operator"
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    with pytest.raises(jsonschema.ValidationError) as unknown:  # a key the chart does not know
        jsonschema.validate({**values, "replicas": 2}, schema)
    assert unknown.value.validator == "additionalProperties" and "'replicas'" in unknown.value.message
