"""The pure decision on plain dicts: what a training's pods mean for its status and its children."""

from __future__ import annotations

import json

from solov2_operator.gang import plan

TRAINING = {
    "apiVersion": "solov2.io/v1alpha1", "kind": "SOLOv2Training",
    "metadata": {"name": "t", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {"image": "x", "device": "cpu", "nodes": 2, "devicesPerNode": 1},
    "status": {"phase": "Running", "restarts": 0, "startTime": "2026-01-01T00:00:00Z",
               "conditions": [{"type": "Created", "status": "True", "reason": "GangCreated"}]},
}  # fmt: skip


def pod(i: int, phase: str, **terminated) -> dict:
    status: dict = {"phase": phase}
    if terminated:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    labels = {
        "app.kubernetes.io/name": "solov2-training",
        "solov2.io/training": "t",
        "solov2.io/worker-index": str(i),
    }
    return {"metadata": {"name": f"t-worker-{i}", "labels": labels}, "status": status}


def test_the_first_worker_to_fail_is_named_as_the_cause():
    later = json.dumps({"error": "peer closed", "error_type": "DistBackendError", "retryable": True})
    first = json.dumps({"error": "out of memory", "error_type": "OutOfMemoryError", "retryable": True})
    pods = [
        pod(0, "Failed", exitCode=1, message=later, finishedAt="2026-01-01T00:10:05Z"),
        pod(1, "Failed", exitCode=1, message=first, finishedAt="2026-01-01T00:10:01Z"),
    ]
    decided = plan(TRAINING, pods)
    assert decided.status["phase"] == "Restarting" and decided.status["restarts"] == 1
    (restarting,) = [c for c in decided.status["conditions"] if c["type"] == "Restarting"]
    assert "t-worker-1" in restarting["message"] and "out of memory" in restarting["message"]
    assert sorted(decided.delete_pods) == ["t-worker-0", "t-worker-1"] and not decided.create


def test_a_new_training_gets_its_whole_gang_in_one_step():
    fresh = {**TRAINING, "status": {}}
    decided = plan(fresh, [])
    assert [b["kind"] for b in decided.create] == ["Service", "Pod", "Pod"]
    assert decided.status["phase"] == "Pending" and decided.status["startTime"]
    assert {e[1] for e in decided.events} == {"GangCreated", "WorkersPending"}


def test_a_running_gang_changes_nothing_when_nothing_changed():
    running = [pod(0, "Running"), pod(1, "Running")]
    first = plan(TRAINING, running)
    again = plan({**TRAINING, "status": {**TRAINING["status"], **first.status}}, running)
    assert not again.create and not again.delete_pods and not again.events and again.status == {}
