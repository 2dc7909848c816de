"""docs/api.md's contract tables say what solov2_contract (the code both sides import) says."""

from __future__ import annotations

import re
from pathlib import Path

import solov2_contract as contract

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def table_after(heading_text: str) -> list[list[str]]:
    """Rows (cells as text) of the first Markdown table after the line that contains ``heading_text``."""
    lines = API_DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if heading_text in line)
    rows: list[list[str]] = []
    for line in lines[start if lines[start].startswith("|") else start + 1 :]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if not all(set(c) <= {"-", " ", ":"} for c in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_progress_table_matches_the_metric_names():
    documented: dict[str, str] = {}
    for field_cell, metric_cell in table_after("**Progress**"):
        fields = ticked(field_cell)
        metrics = ticked(metric_cell)
        if "percent" in fields or "updatedAt" in fields:
            continue
        if metrics and metrics[0].startswith("solov2_train_loss{"):
            labels = re.findall(r'"(\w+)"', metric_cell)
            assert len(labels) == len(fields), field_cell
            for f, label in zip(fields, labels, strict=True):
                documented[f] = f'{contract.Metrics.LOSS}{{component="{label}"}}'
            continue
        assert len(fields) == len(metrics), (field_cell, metric_cell)
        documented.update(zip(fields, metrics, strict=True))
    expected = {
        f: metric + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for f, (metric, labels) in contract.PROGRESS_METRICS.items()
    }
    assert documented == expected


def test_results_table_matches_the_termination_message_keys():
    documented: dict[str, str] = {}
    for key_cell, status_cell in table_after("termination message key"):
        keys, fields = ticked(key_cell), ticked(status_cell)
        assert len(keys) == len(fields), key_cell
        documented.update(zip(keys, fields, strict=True))
    assert documented == contract.RESULT_KEYS


def test_failure_message_keys_and_user_errors_are_documented():
    text = API_DOC.read_text()
    failure = next(p for p in text.split("\n\n") if p.startswith("**Failures**"))
    for key in (contract.ERROR, contract.ERROR_TYPE, contract.RETRYABLE):
        assert f'"{key}"' in failure
    assert f"at most {contract.ERROR_CHARS} characters" in failure
    for name in contract.USER_ERROR_TYPES:
        assert f"`{name}`" in failure
    assert f'"error_type": "{contract.TERMINATED_ERROR_TYPE}"' in text


def test_command_line_and_defaults_are_documented():
    text = API_DOC.read_text()
    command = text[text.index("torchrun --nnodes") : text.index("```", text.index("torchrun --nnodes"))]
    flags = contract.TrainFlags
    for flag in (
        flags.CONFIG, flags.DATA_PATH, flags.WORK_DIR, flags.DEVICE, flags.RESUME, flags.METRICS_PORT,
        flags.TERMINATION_LOG, flags.COMPILE, flags.NO_EVAL, flags.LOAD_FROM, flags.OPTS, flags.STOP_TIMEOUT,
    ):  # fmt: skip
        assert re.search(rf"{re.escape(flag)}\b", command), flag
    assert f"-m {flags.MODULE} {flags.COMMAND}" in command
    assert f"{flags.TERMINATION_LOG} {contract.TERMINATION_LOG}" in command
    assert f"| `masterPort` | port | `{contract.DEFAULT_MASTER_PORT}` |" in text
    assert f"| `metricsPort` | port | `{contract.DEFAULT_METRICS_PORT}` |" in text


def test_the_trainer_publishes_the_contract_names():
    """The trainer's exporter registers every metric the operator reads (no torch needed)."""
    from solov2 import metrics

    exporter = metrics.TrainingMetrics()
    names = {m.name for m in exporter.registry.collect()}
    for metric, _ in contract.PROGRESS_METRICS.values():
        assert metric in names
