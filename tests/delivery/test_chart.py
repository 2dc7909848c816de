"""The chart with the real helm: lint, render with every values file, validate every manifest offline
against the Kubernetes schemas of the oldest and newest supported versions, and check what the operator's
pod, monitors and dashboard ConfigMap look like."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .conftest import CHART, CI_VALUES, ROOT, by_kind, run, venv_tool

KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]  # oldest (CEL validation rules GA) and newest supported
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # no schema offline: checked below
VALUES_FILES = [None, *CI_VALUES]


def _values_args(path: Path | None) -> list[str]:
    return [] if path is None else ["-f", str(path)]


def _id(path: Path | None) -> str:
    return "default" if path is None else path.stem


@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_helm_lint_strict(tool, values):
    run(tool("helm"), "lint", "--strict", str(CHART), *_values_args(values))


@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_rendered_manifests_validate_strictly(tool, tmp_path, values):
    out = run(tool("helm"), "template", "solov2", str(CHART), "--include-crds", "-n", "solov2-system",
              *_values_args(values)).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    builtin = [d for d in docs if d["kind"] not in MONITORING_KINDS]
    assert {"CustomResourceDefinition", "Deployment", "Service", "ConfigMap"} & {d["kind"] for d in builtin}
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    for version in KUBERNETES_VERSIONS:
        proc = run(
            venv_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(manifest), check=False
        )
        assert proc.returncode == 0, f"Kubernetes {version}:\n{proc.stdout}{proc.stderr}"


def test_kubernetes_validate_refuses_a_broken_manifest(tmp_path, render):
    (deployment,) = by_kind(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    proc = run(venv_tool("kubernetes-validate"), "--strict", "-k", "1.37.0", str(manifest), check=False)
    assert proc.returncode != 0 and "pathh" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "operator.verbos=true"], "additional properties 'verbos' not allowed"),
        (["--set", "operator.metricsPort=70000"], "maximum"),
        (["--set", "monitoring.podMonitor.interval=often"], "does not match pattern"),
        (["--set", "watchNamespaces[0]=Team_A"], "does not match pattern"),
        (["--set", "image.pullPolicy=Sometimes"], "must be one of"),
        (
            ["--set", "operator.livenessPort=8000"],
            "operator.metricsPort and operator.livenessPort must differ",
        ),
    ],
)
def test_values_schema_refuses_unknown_keys_and_bad_values(tool, args, message):
    proc = run(tool("helm"), "template", "solov2", str(CHART), *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_every_value_is_documented():
    """Every leaf of values.yaml (a free-form map or list counts as a leaf) has a comment right above it."""
    undocumented, stack = [], []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z]\w*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        stack = [(n, k) for n, k in stack if n < indent] + [(indent, key)]
        if "resources" in [k for _, k in stack[:-1]]:
            continue  # the resources block is one documented value
        if (rest or key == "resources") and not lines[i - 1].strip().startswith("#"):
            undocumented.append(".".join(k for _, k in stack))
    assert not undocumented, f"values without a comment above them: {undocumented}"


def test_operator_deployment_is_locked_down(render):
    (deployment,) = by_kind(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["command"] == ["solov2-operator"]
    assert container["args"] == ["--all-namespaces", "--metrics-port=8000", "--liveness-port=8080"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8000, "healthz": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert pod["serviceAccountName"] == "solov2-solov2-operator"


def test_watched_namespaces_become_operator_flags(render):
    (deployment,) = by_kind(render("--set", "watchNamespaces={team-a,team-b}", "--set", "operator.verbose=true"),
                            "Deployment")  # fmt: skip
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--namespace=team-a", "--namespace=team-b", "--metrics-port=8000", "--liveness-port=8080",
                    "--verbose"]  # fmt: skip


def test_metrics_service_and_service_monitor_reach_the_operator(render):
    docs = render("--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.release=kps")
    (deployment,) = by_kind(docs, "Deployment")
    (service,) = by_kind(docs, "Service")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # keeps the trainings' namespace label
    assert monitor["metadata"]["labels"]["release"] == "kps"


def test_pod_monitor_selects_rank_0_of_every_training(render):
    (monitor,) = by_kind(render("--set", "monitoring.podMonitor.enabled=true"), "PodMonitor")
    rank0_labels = {"app.kubernetes.io/name": "solov2-training", "solov2.io/training": "t",
                    "solov2.io/worker-index": "0", "solov2.io/metrics": "true"}  # fmt: skip
    other_labels = {**rank0_labels, "solov2.io/worker-index": "1"}
    del other_labels["solov2.io/metrics"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= rank0_labels.items() and not selector.items() <= other_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_solov2_io_training"],
        "targetLabel": "training",
    } in (endpoint["relabelings"])
    (namespaced,) = by_kind(render("-f", str(CHART / "ci" / "namespaces-values.yaml")), "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_prometheus_rule_carries_the_alerts_file(render):
    (rule,) = by_kind(render("--set", "monitoring.prometheusRule.enabled=true"), "PrometheusRule")
    alerts = (CHART / "rules" / "alerts.yaml").read_text()
    scoped = alerts.replace(
        "absent(solov2_operator_info)", 'absent(solov2_operator_info{namespace="solov2-system"})'
    )
    assert scoped != alerts and rule["spec"] == yaml.safe_load(scoped)
    assert "release" not in rule["metadata"]["labels"]


def test_dashboard_config_map_label_folder_and_content(render):
    (default,) = by_kind(render(), "ConfigMap")
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert default["metadata"]["annotations"] == {"grafana_folder": "SOLOv2"}
    assert json.loads(default["data"]["solov2.json"]) == json.loads(
        (CHART / "dashboards" / "solov2.json").read_text()
    )
    (custom,) = by_kind(render("--set", "dashboard.label=dash", "--set", "dashboard.labelValue=yes",
                               "--set", "dashboard.folderAnnotation=k8s-sidecar-target-directory",
                               "--set", "dashboard.folder=/tmp/dashboards/ml"), "ConfigMap")  # fmt: skip
    assert (
        custom["metadata"]["labels"]["dash"] == "yes"
        and "grafana_dashboard" not in custom["metadata"]["labels"]
    )
    assert custom["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "/tmp/dashboards/ml"}
    assert not by_kind(render("--set", "dashboard.enabled=false"), "ConfigMap")


def test_helm_test_hook_checks_the_operator_answers(render):
    docs = render()
    (test_pod,) = [
        d for d in by_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    (service,) = by_kind(docs, "Service")
    script = test_pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/metrics" in script
    assert "solov2_operator_info" in script


def test_notes_print_the_next_commands(tool):
    out = run(tool("helm"), "install", "solov2", str(CHART), "--dry-run=client", "-n", "ml",
              "--set", "watchNamespaces={team-a}").stdout  # fmt: skip
    notes = out[out.index("NOTES:") :]
    for command in ("kubectl -n ml rollout status deployment/solov2-solov2-operator", "helm test solov2 -n ml",
                    "kubectl get s2t -w", "kubectl apply --server-side"):  # fmt: skip
        assert command in notes, notes
    assert "namespaces team-a" in notes


def test_notes_warn_when_alerts_come_without_a_scrape_of_the_operator(tool):
    def notes(*sets: str) -> str:
        args = [a for s in sets for a in ("--set", s)]
        out = run(tool("helm"), "install", "r", str(CHART), "--dry-run=client", *args).stdout
        return out[out.index("NOTES:") :]

    assert "SOLOv2OperatorDown" in notes("monitoring.prometheusRule.enabled=true")
    assert "SOLOv2OperatorDown" not in notes(
        "monitoring.prometheusRule.enabled=true", "monitoring.serviceMonitor.enabled=true"
    )


def test_every_name_stays_a_dns_label_with_the_longest_release_name(tool):
    release = "r" * 53  # Helm's limit
    out = run(tool("helm"), "template", release, str(CHART), "--set", "monitoring.podMonitor.enabled=true",
              "--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
              "--show-only", "templates/service.yaml", "--show-only", "templates/podmonitor.yaml",
              "--show-only", "templates/dashboard-configmap.yaml", "--show-only", "templates/deployment.yaml",
              "--show-only", "templates/tests/test-metrics.yaml").stdout  # fmt: skip
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(out) if doc]
    assert len(names) == 5 and all(len(n) <= 63 for n in names), names


def test_chart_readme_commands_match_the_chart():
    readme = (ROOT / "README.md").read_text()
    assert "helm install solov2-operator charts/solov2-operator" in readme
    assert "helm show crds charts/solov2-operator | kubectl apply --server-side -f -" in readme


def test_chart_refuses_kubernetes_older_than_1_29(tool):
    old = run(tool("helm"), "template", "t", str(CHART), "--kube-version", "1.28.0", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr
    run(tool("helm"), "template", "t", str(CHART), "--kube-version", "1.29.0")


def test_packaged_chart_carries_the_dashboard_and_the_alerts(tool, tmp_path):
    run(tool("helm"), "package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("solov2-operator-*.tgz")
    out = run(
        tool("helm"), "template", "t", str(package), "--set", "monitoring.prometheusRule.enabled=true"
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (config_map,) = by_kind(docs, "ConfigMap")
    (rule,) = by_kind(docs, "PrometheusRule")
    assert json.loads(config_map["data"]["solov2.json"])["uid"] == "solov2-training"
    assert len(rule["spec"]["groups"]) == 2
