"""The SOLOv2Training CRD (crds/solov2trainings.yaml) is structural, documented and self-consistent, and
the examples validate against it.

Kubernetes validates custom resources with the CRD's OpenAPI v3 schema; here the schema is converted to
JSON Schema and checked with jsonschema: ``x-kubernetes-*`` keys are dropped, an object with explicit
properties accepts no others (Kubernetes prunes or, with strict field validation, rejects unknown
fields) unless it has ``x-kubernetes-preserve-unknown-fields``. CEL rules (``x-kubernetes-validations``)
are evaluated with cel-python, a CEL interpreter (Kubernetes' own CEL library extensions are not used
by these rules).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "solov2trainings.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("solov2-*.yaml"))

Schema = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Helpers


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def storage_version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version


def openapi_schema(crd: dict[str, Any] | None = None) -> Schema:
    return storage_version(crd or load_crd())["schema"]["openAPIV3Schema"]


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node reachable through properties, items and additionalProperties, with its path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def to_json_schema(node: Schema, path: str = "") -> Schema:
    """The OpenAPI v3 (Kubernetes structural) schema as JSON Schema, with Kubernetes' pruning as
    ``additionalProperties: false`` (except for the root's metadata, which the CRD only restricts)."""
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and path != ".metadata"
    ):
        out["additionalProperties"] = False
    return out


def _field(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<root>"


def field_errors(obj: Any, schema: Schema | None = None) -> list[str]:
    """Validation errors, each starting with the offending field, like the API server's messages."""
    validator = jsonschema.Draft202012Validator(to_json_schema(schema or openapi_schema()))
    messages = []
    for error in validator.iter_errors(obj):
        where = _field(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            for name in sorted(set(error.instance) - set(known)):
                messages.append(f"{_field([*error.absolute_path, name])}: unknown field")
        elif error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    messages.append(f"{_field([*error.absolute_path, name])}: Required value")
        else:
            messages.append(f"{where}: {error.message}")
    return sorted(messages)


def apply_defaults(obj: Any, schema: Schema) -> Any:
    """Fill in defaults the way the API server does (for absent fields of present objects)."""
    obj = copy.deepcopy(obj)
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        obj = [apply_defaults(item, schema["items"]) for item in obj]
    return obj


def load_example(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one document"
    return docs[0]


def _snake_to_camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _cel_program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def cel_violations(obj: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules that a (defaulted) object breaks, each evaluated by a CEL interpreter
    (cel-python) with ``self`` bound to the object the rule sits on, as the API server binds it."""
    out = []
    for path, node in walk(openapi_schema()):
        target: Any = obj
        for part in path.split(".")[1:]:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        for rule in node.get("x-kubernetes-validations", []):
            holds = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(target)})
            if not isinstance(holds, celpy.celtypes.BoolType):
                raise AssertionError(f"{path}: rule {rule['rule']!r} gave {holds!r}, not a bool")
            if not holds:
                out.append(f"{path.lstrip('.') or '<root>'}: {rule['message']}")
    return out


# ---------------------------------------------------------------------------------------------
# The CRD itself


def test_names_group_versions_and_subresources_are_consistent():
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    names = spec["names"]
    assert spec["group"] == "solov2.io"
    assert crd["metadata"]["name"] == f"{names['plural']}.{spec['group']}"
    assert names["kind"] == "SOLOv2Training"
    assert names["plural"] == "solov2trainings"
    assert names["singular"] == names["kind"].lower()
    assert names["listKind"] == names["kind"] + "List"
    assert "s2t" in names["shortNames"]
    assert spec["scope"] == "Namespaced"
    versions = spec["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    assert sum(bool(v.get("storage")) for v in versions) == 1
    for version in versions:
        assert version["served"] is True
        assert version["subresources"] == {"status": {}}, "status must be a subresource"
        assert version["schema"]["openAPIV3Schema"]["type"] == "object"


def test_every_node_is_structural():
    offenders = []
    for path, node in walk(openapi_schema()):
        if not (
            "type" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or node.get("x-kubernetes-int-or-string")
        ):
            offenders.append(f"{path}: no type")
        if node.get("x-kubernetes-int-or-string"):
            if node.get("anyOf") != [{"type": "integer"}, {"type": "string"}]:
                offenders.append(f"{path}: int-or-string needs anyOf [integer, string]")
        elif "anyOf" in node or "oneOf" in node or "allOf" in node:
            offenders.append(f"{path}: anyOf/oneOf/allOf are only used for int-or-string here")
        if node.get("type") == "object" and "properties" in node and "additionalProperties" in node:
            offenders.append(f"{path}: properties and additionalProperties are mutually exclusive")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            offenders.append(f"{path}: array without items")
        if node.get("x-kubernetes-list-type") == "map":
            required = set(node["items"].get("required", []))
            for key in node.get("x-kubernetes-list-map-keys", []):
                if key not in required:
                    offenders.append(f"{path}: list-map key {key!r} must be required")
    assert offenders == [], "\n".join(offenders)


def test_every_field_is_described():
    offenders = [
        path or "<root>"
        for path, node in walk(openapi_schema())
        if not (isinstance(node.get("description"), str) and node["description"].strip())
    ]
    assert offenders == [], f"fields without a description (kubectl explain shows nothing): {offenders}"


def test_defaults_and_enums_are_valid_against_their_own_schema():
    offenders = []
    for path, node in walk(openapi_schema()):
        plain = {k: v for k, v in node.items() if k != "default"}
        if "default" in node:
            for error in jsonschema.Draft202012Validator(to_json_schema(plain)).iter_errors(node["default"]):
                offenders.append(f"{path}: default {node['default']!r}: {error.message}")
        for value in node.get("enum", []):
            typed = {k: v for k, v in plain.items() if k != "enum"}
            for error in jsonschema.Draft202012Validator(to_json_schema(typed)).iter_errors(value):
                offenders.append(f"{path}: enum value {value!r}: {error.message}")
    assert offenders == [], "\n".join(offenders)


def test_the_documented_defaults():
    spec = openapi_schema()["properties"]["spec"]["properties"]
    defaults = {name: sub.get("default") for name, sub in spec.items()}
    assert defaults["config"] == "solov2_r50_fpn_1x_coco"
    assert defaults["device"] == "npu"
    assert spec["device"]["enum"] == ["npu", "gpu", "cpu"]
    assert defaults["nodes"] == 1
    assert (
        defaults["devicesPerNode"],
        spec["devicesPerNode"]["minimum"],
        spec["devicesPerNode"]["maximum"],
    ) == (
        8,
        1,
        16,
    )
    assert defaults["backoffLimit"] == 3
    assert defaults["masterPort"] == 29500
    assert defaults["metricsPort"] == 9400
    assert defaults["shmSize"] == "8Gi"
    assert defaults["evaluate"] is True
    assert defaults["compile"] is False
    assert defaults["suspend"] is False
    assert (defaults["stopTimeoutSeconds"], defaults["rendezvousTimeoutSeconds"]) == (25, 1800)
    assert openapi_schema()["properties"]["spec"]["required"] == ["image"]


def test_cel_rules_have_messages_refer_to_existing_fields_and_are_mirrored():
    seen = set()
    for path, node in walk(openapi_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            text = rule["rule"]
            seen.add(text)
            assert rule.get("message", "").strip(), f"{path}: rule without a message"
            props = node.get("properties", {})
            for first, second in re.findall(r"self\.(\w+)(?:\.(\w+))?", text):
                assert first in props, f"{path}: rule refers to unknown field {first!r}"
                if second and "properties" in props[first]:
                    assert second in props[first]["properties"], f"{path}: unknown {first}.{second}"
    assert len(seen) == 4
    for text in seen:
        _cel_program(text)  # compiles


def test_status_is_a_full_schema_that_keeps_kopf_storage():
    status = openapi_schema()["properties"]["status"]
    assert not status.get("x-kubernetes-preserve-unknown-fields"), "a full status schema, not a free-for-all"
    props = status["properties"]
    assert props["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["phase"]["enum"] == ["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
    condition = props["conditions"]["items"]["properties"]
    assert set(condition) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert condition["status"]["enum"] == ["True", "False", "Unknown"]
    for name in ("startTime", "completionTime"):
        assert props[name]["format"] == "date-time"
    floats = ["imagesPerSecond", "loss", "lossCls", "lossMask", "learningRate", "etaSeconds", "percent"]
    for name in floats:
        assert props["progress"]["properties"][name]["type"] == "number", name
    assert set(props["workers"]["properties"]) == {"ready", "total"}


def test_results_mirror_the_termination_message_keys():
    results = openapi_schema()["properties"]["status"]["properties"]["results"]["properties"]
    for iou in ("segm", "bbox"):
        for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert results[f"{iou}{metric}"]["type"] == "number"
    for name, node in results.items():
        if name == "raw":
            assert node["type"] == "string" and node["maxLength"] == 4096
            continue
        keys = re.findall(r"\((\w+)\)\.?$", node["description"])
        assert keys and _snake_to_camel(keys[0]) == name, (
            f"results.{name}: description must end with (json_key)"
        )


def test_metric_names_in_descriptions_are_those_the_trainer_exports():
    readme = (ROOT / "README.md").read_text()
    text = CRD_PATH.read_text()
    names = set(re.findall(r"solov2_(?:train|eval)_[a-z_]+[a-z]", text))
    assert names, "progress fields should name the metrics they come from"
    missing = sorted(n for n in names if n not in readme)
    assert missing == [], f"metrics not in the README's table: {missing}"


def test_the_api_doc_names_every_spec_and_status_field():
    doc = (ROOT / "docs" / "api.md").read_text()
    schema = openapi_schema()
    missing = []
    for part in ("spec", "status"):
        for path, _node in walk(schema["properties"][part]):
            if "[]" in path or "{}" in path:
                continue  # EnvVar, Toleration, condition and map entries are described as a whole
            leaf = path.rsplit(".", 1)[-1]
            dotted = path.lstrip(".")
            named = (f"`{dotted}`", f"`{leaf}`", f"`{dotted}.", f"`{leaf}.", f"`{leaf}[]")
            if leaf and not any(n in doc for n in named):
                missing.append(f"{part}{path}")
    assert missing == [], f"docs/api.md does not mention: {missing}"


def _schema_at(json_path: str) -> Schema | None:
    node: Schema | None = openapi_schema()
    for part in json_path.lstrip(".").split("."):
        node = (node or {}).get("properties", {}).get(part)
    return node


def test_printer_columns_point_at_typed_fields():
    columns = storage_version(load_crd())["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    for wanted in ("Phase", "Epoch", "Progress", "Images/s", "Mask AP", "Age"):
        assert wanted in names
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = _schema_at(column["jsonPath"])
        assert node is not None, f"column {column['name']}: {column['jsonPath']} is not in the schema"
        assert node["type"] == column["type"], f"column {column['name']}: {node['type']} != {column['type']}"


# ---------------------------------------------------------------------------------------------
# The examples


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"solov2-8p.yaml", "solov2-cpu-tiny.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    crd = load_crd()
    obj = load_example(path)
    assert obj["apiVersion"] == f"{crd['spec']['group']}/{storage_version(crd)['name']}"
    assert obj["kind"] == crd["spec"]["names"]["kind"]
    assert field_errors(obj) == []
    defaulted = apply_defaults(obj, openapi_schema())
    assert field_errors(defaulted) == []
    assert cel_violations(defaulted) == []


def test_the_8p_example_is_eight_npus_on_one_node_with_volcano():
    spec = apply_defaults(load_example(ROOT / "examples" / "solov2-8p.yaml"), openapi_schema())["spec"]
    assert (spec["device"], spec["nodes"], spec["devicesPerNode"]) == ("npu", 1, 8)
    assert spec["config"] == "solov2_r50_fpn_1x_coco"
    assert spec["schedulerName"] == "volcano" and "gangScheduling" in spec
    assert "claimName" in spec["dataVolume"] and "claimName" in spec["checkpointVolume"]


def test_the_cpu_example_is_two_tiny_workers_on_synthetic_data():
    spec = apply_defaults(load_example(ROOT / "examples" / "solov2-cpu-tiny.yaml"), openapi_schema())["spec"]
    assert (spec["device"], spec["nodes"] * spec["devicesPerNode"]) == ("cpu", 2)
    assert spec["config"] == "solov2_tiny_cpu"
    assert spec["dataPath"].startswith(spec["dataVolume"]["mountPath"])
    assert "make-synthetic" in (ROOT / "examples" / "solov2-cpu-tiny.yaml").read_text()


def test_a_minimal_resource_gets_the_defaults():
    obj = {"apiVersion": "solov2.io/v1alpha1", "kind": "SOLOv2Training", "metadata": {"name": "m"}}
    obj["spec"] = {"image": "solov2-trainer:npu"}
    defaulted = apply_defaults(obj, openapi_schema())
    assert field_errors(defaulted) == [] and cel_violations(defaulted) == []
    spec = defaulted["spec"]
    assert (spec["device"], spec["nodes"], spec["devicesPerNode"], spec["backoffLimit"]) == ("npu", 1, 8, 3)
    assert (spec["dataPath"], spec["masterPort"], spec["metricsPort"], spec["shmSize"]) == (
        "/data",
        29500,
        9400,
        "8Gi",
    )
    assert "dataVolume" not in spec, "objects that are absent get no defaults"


def _set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[leaf] = value


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("spec.devicesPerNod", 8, "spec.devicesPerNod: unknown field"),
        ("spec.device", "tpu", "spec.device: 'tpu' is not one of"),
        ("spec.nodes", 0, "spec.nodes: 0 is less than the minimum of 1"),
        ("spec.devicesPerNode", 17, "spec.devicesPerNode: 17 is greater than the maximum of 16"),
        ("spec.opts", ["train.epochs 24"], "spec.opts[0]: 'train.epochs 24' does not match"),
        ("spec.metricsPort", 70000, "spec.metricsPort:"),
        ("spec.shmSize", "8 GB", "spec.shmSize: '8 GB' does not match"),
        ("spec.dataVolume.claimNme", "coco", "spec.dataVolume.claimNme: unknown field"),
        (
            "spec.checkpointVolume",
            {"mountPath": "/output"},
            "spec.checkpointVolume.claimName: Required value",
        ),
        ("spec.env", [{"value": "1"}], "spec.env[0].name: Required value"),
        ("spec.tolerations", [{"operator": "Maybe"}], "spec.tolerations[0].operator: 'Maybe' is not one of"),
        (
            "spec.volumeMounts",
            [{"name": "driver", "mountPath": "/d", "readonly": True}],
            "spec.volumeMounts[0].readonly",
        ),
        (
            "spec.rendezvousTimeoutSeconds",
            10,
            "spec.rendezvousTimeoutSeconds: 10 is less than the minimum of 60",
        ),
        ("spec.evaluate", "yes", "spec.evaluate: 'yes' is not of type 'boolean'"),
        ("metadata.name", "a" * 51, "metadata.name: 'aaaa"),
        ("metadata.name", "my.training", "metadata.name: 'my.training' does not match"),
        ("status.phase", "Done", "status.phase: 'Done' is not one of"),
        ("status.progress.epochs", 3, "status.progress.epochs: unknown field"),
    ],
)
def test_a_bad_field_is_rejected_with_its_name(field, value, expected):
    obj = load_example(ROOT / "examples" / "solov2-8p.yaml")
    _set(obj, field, value)
    errors = field_errors(obj)
    assert any(e.startswith(expected) for e in errors), errors


def test_metadata_other_than_the_name_is_not_restricted():
    obj = load_example(ROOT / "examples" / "solov2-8p.yaml")
    obj["metadata"].update(namespace="vision", labels={"team": "vision"}, annotations={"a": "b"}, uid="u")
    assert field_errors(obj) == []


def test_a_missing_image_is_rejected_with_its_name():
    obj = load_example(ROOT / "examples" / "solov2-cpu-tiny.yaml")
    del obj["spec"]["image"]
    assert field_errors(obj) == ["spec.image: Required value"]


def test_free_form_fields_accept_anything():
    obj = load_example(ROOT / "examples" / "solov2-cpu-tiny.yaml")
    obj["spec"]["dataVolume"] = {"volume": {"nfs": {"server": "nfs.example", "path": "/coco"}}}
    obj["spec"]["env"] = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    obj["spec"]["volumes"] = [{"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}}]
    obj["spec"]["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    obj["status"] = {"kopf": {"progress": {"create_fn": {"started": "2024-01-01T00:00:00Z", "retries": 1}}}}
    assert field_errors(obj) == []
    assert cel_violations(apply_defaults(obj, openapi_schema())) == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("spec.dataVolume", {"mountPath": "/data"}, "spec.dataVolume: dataVolume must set exactly one"),
        ("spec.dataVolume", {"claimName": "a", "volume": {"emptyDir": {}}}, "spec.dataVolume: dataVolume"),
        ("spec.gangScheduling", {"minAvailable": 3}, "spec: gangScheduling.minAvailable must not exceed"),
        ("spec.resourceName", "huawei.com/Ascend910", "spec: resourceName applies"),
    ],
)
def test_the_cel_rules_reject_what_they_are_for(field, value, expected):
    obj = load_example(ROOT / "examples" / "solov2-cpu-tiny.yaml")
    _set(obj, field, value)
    errors = cel_violations(apply_defaults(obj, openapi_schema()))
    assert any(e.startswith(expected) for e in errors), errors


def test_one_priority_class_is_set_for_the_pods_not_two():
    obj = load_example(ROOT / "examples" / "solov2-cpu-tiny.yaml")
    obj["spec"]["priorityClassName"] = "high"
    assert cel_violations(apply_defaults(obj, openapi_schema())) == []
    obj["spec"]["gangScheduling"] = {"priorityClassName": "low"}
    assert cel_violations(apply_defaults(obj, openapi_schema())) == [
        "spec: set priorityClassName or gangScheduling.priorityClassName, not both"
    ]


def test_the_api_doc_names_every_phase_and_condition_reason():
    from solov2_operator.status import Phase, Reason

    doc = (ROOT / "docs" / "api.md").read_text()
    names = [v for cls in (Phase, Reason) for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)]
    assert len(names) > 20
    assert [n for n in names if f"`{n}`" not in doc] == []
