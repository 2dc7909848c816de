"""The alert rules with the real promtool: they parse, and unit tests (alerts_test.yaml) cover each one."""

from __future__ import annotations

from pathlib import Path

import yaml

from .conftest import CHART, run

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
