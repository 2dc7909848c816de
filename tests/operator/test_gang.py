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


def _running_condition(decided) -> dict:
    (running,) = [c for c in decided.status["conditions"] if c["type"] == "Running"]
    return running


def test_a_pending_gang_says_why_its_workers_wait():
    pulling = pod(0, "Pending")
    pulling["status"]["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry/solov2:typo"'}}}]  # fmt: skip
    unscheduled = pod(1, "Pending")
    unscheduled["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient huawei.com/Ascend910."}]  # fmt: skip
    decided = plan(TRAINING, [pulling, unscheduled])
    assert decided.status["phase"] == "Pending"
    running = _running_condition(decided)
    assert running["status"] == "False" and running["reason"] == "WorkersPending"
    assert running["message"] == (
        '0/2 workers run; t-worker-0: ImagePullBackOff: Back-off pulling image "registry/solov2:typo"; '
        "t-worker-1: Unschedulable: 0/4 nodes are available: 4 Insufficient huawei.com/Ascend910."
    )


def test_workers_on_their_way_are_not_reported_as_waiting():
    creating = pod(0, "Pending")
    creating["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
    ]
    creating["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    decided = plan(TRAINING, [creating, pod(1, "Running")])
    assert _running_condition(decided)["message"] == "1/2 workers run"


def test_a_long_wait_is_cut_and_many_waiting_workers_are_counted():
    training = {**TRAINING, "spec": {**TRAINING["spec"], "nodes": 4}}
    pods = []
    for i in range(4):
        pods.append(pod(i, "Pending"))
        pods[-1]["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "x" * 1000}
        ]
    message = _running_condition(plan(training, pods))["message"]
    first, second, third, rest = message.split("; ")
    assert first == "0/4 workers run" and rest == "and 2 more pods waiting"
    assert (
        second.startswith("t-worker-0: Unschedulable: xxx") and len(second) < 300 and second.endswith("...")
    )
    assert third.startswith("t-worker-1: ")


def _disrupted(p: dict, reason: str = "EvictionByEvictionAPI") -> dict:
    p["status"].setdefault("conditions", []).append(
        {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "Eviction API: evicting"}
    )
    return p


def test_a_worker_evicted_by_a_drain_restarts_the_gang_outside_the_backoff_limit():
    spent = {**TRAINING, "spec": {**TRAINING["spec"], "backoffLimit": 1},
             "status": {**TRAINING["status"], "restarts": 1}}  # fmt: skip
    draining = _disrupted(pod(1, "Running"))
    draining["metadata"]["deletionTimestamp"] = "2026-01-01T00:10:00Z"  # being deleted by the eviction
    decided = plan(spent, [pod(0, "Running"), draining])
    assert decided.status["phase"] == "Restarting"
    assert decided.status["restarts"] == 2 and decided.status["disruptions"] == 1
    (restarting,) = [c for c in decided.status["conditions"] if c["type"] == "Restarting"]
    assert restarting["reason"] == "WorkerDisrupted"
    assert restarting["message"] == (
        "pod t-worker-1 was disrupted (EvictionByEvictionAPI: Eviction API: evicting); "
        "not counted against backoffLimit"
    )
    assert decided.delete_pods == ["t-worker-0"]  # the other is already going


def test_only_failures_that_are_no_disruption_spend_the_backoff_limit():
    spec = {**TRAINING["spec"], "backoffLimit": 1}
    failed = [pod(0, "Failed", exitCode=1, reason="Error"), pod(1, "Running")]
    after_disruptions = {
        **TRAINING,
        "spec": spec,
        "status": {**TRAINING["status"], "restarts": 3, "disruptions": 3},
    }
    decided = plan(after_disruptions, failed)
    assert decided.status["phase"] == "Restarting" and decided.status["restarts"] == 4
    assert "disruptions" not in decided.status  # unchanged
    after_a_failure = {**after_disruptions, "status": {**after_disruptions["status"], "restarts": 4}}
    decided = plan(after_a_failure, failed)
    assert decided.status["phase"] == "Failed"
    (cond,) = [c for c in decided.status["conditions"] if c["type"] == "Failed"]
    assert cond["reason"] == "BackoffLimitExceeded"
