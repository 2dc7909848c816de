"""``bench/gpu_report.py --quick`` runs every case on the CPU: a GPU lent for minutes is not spent on a
broken report (each case is the report's real code path, with the tiny config and aot_eager)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.compile]

REPORT = Path(__file__).resolve().parents[2] / "bench" / "gpu_report.py"


def test_every_case_of_the_quick_report_gives_figures():
    run = subprocess.run(
        [sys.executable, str(REPORT), "--quick", "--compile-backend", "aot_eager", "--budget-s", "600"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    failed = [line for line in lines if "error" in line or "skipped" in line]
    assert failed == []
    by_case: dict[str, list[dict]] = {}
    for line in lines:
        by_case.setdefault(line["case"], []).append(line)
    assert {
        "machine", "train", "sync_debug", "largest_batch", "inference", "eval_postprocess", "train_e2e", "done"
    } <= set(by_case)  # fmt: skip
    (post,) = by_case["eval_postprocess"]
    assert post["identical_results"] is True and post["per_image"]["records_ms"] > 0
    assert {line["mode"] for line in by_case["train"]} == {"eager", "compiled"}
    assert all(line["images_per_second"] > 0 for line in by_case["train"] + by_case["inference"])
    e2e = by_case["train_e2e"]
    assert [line["batch"] for line in e2e] == [2, 4]  # the base and the largest batch
    assert all(line["images_per_second"] > 0 and line["windows_kept"] >= 1 for line in e2e)
    assert all(line["data_wait_s"]["max"] >= line["data_wait_s"]["mean"] >= 0 for line in e2e)
