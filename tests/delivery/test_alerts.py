"""The alert rules with the real promtool: they parse, and unit tests (alerts_test.yaml) cover each one."""

from __future__ import annotations

from pathlib import Path

import yaml

from .conftest import CHART, by_kind, run

RULES = CHART / "rules" / "alerts.yaml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yaml")


def test_promtool_checks_the_rules(tool):
    out = run(tool("promtool"), "check", "rules", str(RULES)).stdout
    assert "SUCCESS: 6 rules found" in out, out


def test_promtool_rule_unit_tests_pass(tool):
    out = run(tool("promtool"), "test", "rules", str(RULE_TESTS), cwd=RULE_TESTS.parent).stdout
    assert "SUCCESS" in out, out


def test_every_alert_is_tested_firing_and_quiet():
    alerts = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    assert alerts == {"SOLOv2TrainingStalled", "SOLOv2LossNotFinite", "SOLOv2ImagesPerSecondDropped",
                      "SOLOv2TrainingFailed", "SOLOv2GangRestartsRepeated", "SOLOv2OperatorDown"}  # fmt: skip
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == alerts and quiet == alerts


def test_promtool_test_fails_when_an_alert_misbehaves(tool, tmp_path):
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(RULES)]
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "warning"}}]
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(tests))
    assert run(tool("promtool"), "test", "rules", str(broken), check=False).returncode != 0


def test_the_charts_operator_down_alert_watches_its_own_release(tool, tmp_path):
    """Two operators in two namespaces: the chart's rule fires when its own release's operator goes,
    named by namespace, and stays quiet when only the other one goes."""
    out = run(tool("helm"), "template", "solov2", str(CHART), "-n", "team-a",
              "--set", "monitoring.prometheusRule.enabled=true").stdout  # fmt: skip
    (rule,) = by_kind([d for d in yaml.safe_load_all(out) if d], "PrometheusRule")
    (down,) = [
        r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "SOLOv2OperatorDown"
    ]
    rules = tmp_path / "rendered.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    fired = {
        "exp_labels": {"severity": "critical", "namespace": "team-a"},
        "exp_annotations": {
            **down["annotations"],
            "summary": "The SOLOv2 operator in team-a serves no metrics",
        },
    }

    def case(gone: str) -> dict:
        series = [
            {"series": f'solov2_operator_info{{namespace="{ns}", version="0.1.0"}}',
             "values": "1x5 _x10" if ns == gone else "1x15"}
            for ns in ("team-a", "team-b")
        ]  # fmt: skip
        check = {"eval_time": "16m", "alertname": "SOLOv2OperatorDown"}
        check["exp_alerts"] = [fired] if gone == "team-a" else []
        return {"interval": "1m", "input_series": series, "alert_rule_test": [check]}

    tests = tmp_path / "test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": [case("team-a"), case("team-b")]}))
    out = run(tool("promtool"), "test", "rules", str(tests), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
