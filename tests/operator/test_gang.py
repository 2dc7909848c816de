"""The pure decision on plain dicts: what a training's pods mean for its status and its children."""

from __future__ import annotations

import datetime
import json

from solov2_operator.gang import plan, refused

TRAINING = {
    "apiVersion": "solov2.io/v1alpha1", "kind": "SOLOv2Training",
    "metadata": {"name": "t", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {"image": "x", "device": "cpu", "nodes": 2, "devicesPerNode": 1},
    "status": {"phase": "Running", "restarts": 0, "startTime": "2026-01-01T00:00:00Z",
               "conditions": [{"type": "Created", "status": "True", "reason": "GangCreated"}]},
}  # fmt: skip


def pod(
    i: int, phase: str, *, gang: int = 2, owner: str = "u1", number: int | None = None, **terminated
) -> dict:
    """Worker ``i`` of a gang of ``gang`` pods that training ``owner`` (a uid) created, at ``restarts``
    ``number`` (None: a pod without that annotation)."""
    status: dict = {"phase": phase}
    if terminated:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    labels = {
        "app.kubernetes.io/name": "solov2-training",
        "solov2.io/training": "t",
        "solov2.io/worker-index": str(i),
    }
    meta = {
        "name": f"t-worker-{i}",
        "labels": labels,
        "annotations": {"solov2.io/nodes": str(gang)}
        | ({} if number is None else {"solov2.io/gang": str(number)}),
        "ownerReferences": [{"kind": "SOLOv2Training", "name": "t", "uid": owner, "controller": True}],
    }
    return {"metadata": meta, "status": status}


def deleting(p: dict) -> dict:
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    return p


def with_spec(training: dict, **spec) -> dict:
    return {**training, "spec": {**training["spec"], **spec}}


def condition(decided, type_: str) -> dict:
    (cond,) = [c for c in decided.status["conditions"] if c["type"] == type_]
    return cond


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


def test_a_worker_whose_node_stopped_reporting_still_counts_as_running():
    decided = plan(TRAINING, [pod(0, "Running"), pod(1, "Unknown")])
    assert decided.status.get("phase", "Running") == "Running" and not decided.delete_pods
    running = _running_condition(decided)
    assert running["status"] == "True"
    assert running["message"] == "the nodes of t-worker-1 do not report (pod phase Unknown)"
    back = plan(
        {**TRAINING, "status": {**TRAINING["status"], **decided.status}},
        [pod(0, "Running"), pod(1, "Running")],
    )
    assert _running_condition(back)["message"] == ""


def test_a_long_wait_is_cut_and_many_waiting_workers_are_counted():
    training = {**TRAINING, "spec": {**TRAINING["spec"], "nodes": 4}}
    pods = []
    for i in range(4):
        pods.append(pod(i, "Pending", gang=4))
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


def test_a_running_gang_keeps_its_size_when_nodes_changes():
    for nodes in (1, 3):
        resized = with_spec(TRAINING, nodes=nodes)
        decided = plan(resized, [pod(0, "Running"), pod(1, "Running")])
        assert "phase" not in decided.status and decided.status["workers"]["total"] == 2  # still Running
        assert not decided.create and not decided.delete_pods and "restarts" not in decided.status
        done = [pod(0, "Succeeded", exitCode=0), pod(1, "Succeeded", exitCode=0)]
        assert plan(resized, done).status["phase"] == "Succeeded"


def test_the_next_gang_takes_the_new_size():
    restarting = {**with_spec(TRAINING, nodes=3), "status": {**TRAINING["status"], "phase": "Restarting",
                  "conditions": [{"type": "Created", "status": "False", "reason": "GangRestarting"}]}}  # fmt: skip
    decided = plan(restarting, [])
    assert [b["metadata"]["name"] for b in decided.create if b["kind"] == "Pod"] == [
        "t-worker-0", "t-worker-1", "t-worker-2"]  # fmt: skip
    assert all(
        b["metadata"]["annotations"]["solov2.io/nodes"] == "3" for b in decided.create if b["kind"] == "Pod"
    )


def test_a_new_gang_waits_until_the_previous_ones_pods_are_gone():
    resumed = {**TRAINING, "status": {**TRAINING["status"], "conditions": [
        {"type": "Created", "status": "False", "reason": "Suspended"},
        {"type": "Suspended", "status": "True", "reason": "Suspended", "lastTransitionTime": "2026-01-01T01:00:00Z"},
    ]}}  # fmt: skip
    stopping = [deleting(pod(0, "Running")), deleting(pod(1, "Running"))]  # deadline 00:10:00
    decided = plan(resumed, stopping, now=_at("2026-01-01T00:09:00Z"))
    assert not decided.create and "restarts" not in decided.status and decided.status["phase"] == "Pending"
    assert condition(decided, "Running")["message"] == (
        "waiting for the previous gang's pods to go away: t-worker-0, t-worker-1"
    )
    # Long past the deadline (the grace period is over): a pod on a node that stopped reporting stays.
    late = plan(resumed, stopping, now=_at("2026-01-01T00:30:00Z"))
    assert condition(late, "Running")["message"] == (
        "waiting for the previous gang's pods to go away: t-worker-0, t-worker-1; t-worker-0 is past its "
        "deletion deadline (2026-01-01T00:10:00Z): if its node is lost, kubectl delete pod t-worker-0 --force "
        "once the node is known to be down"
    )
    assert condition(decided, "Suspended")["reason"] == "Resumed"
    # An earlier training of the same name (another uid), deleted but its workers still stopping.
    fresh = {**TRAINING, "status": {}}
    decided = plan(fresh, [pod(0, "Running", owner="u0"), pod(1, "Running", owner="u0")])
    assert not decided.create and not decided.delete_pods and decided.status["phase"] == "Pending"
    assert [b["kind"] for b in plan(fresh, []).create] == ["Service", "Pod", "Pod"]


def test_a_restart_ends_the_training_when_a_stopping_worker_says_it_cannot_be_retried():
    restarting = {**TRAINING, "status": {**TRAINING["status"], "phase": "Restarting", "restarts": 1,
                  "conditions": [{"type": "Created", "status": "False", "reason": "GangRestarting"}]}}  # fmt: skip
    bad = json.dumps(
        {"error": "no such file: /data/annotations", "error_type": "DataError", "retryable": False}
    )
    decided = plan(restarting, [deleting(pod(0, "Failed", exitCode=1, message=bad)), pod(1, "Running")])
    assert decided.status["phase"] == "Failed" and condition(decided, "Failed")["reason"] == "NotRetryable"
    assert "DataError: no such file" in condition(decided, "Failed")["message"]
    retryable = json.dumps({"error": "peer closed", "error_type": "DistBackendError", "retryable": True})
    stopping = [deleting(pod(0, "Failed", exitCode=1, message=retryable)), pod(1, "Running")]
    decided = plan(restarting, stopping, now=_at("2026-01-01T00:09:00Z"))
    assert "phase" not in decided.status and decided.delete_pods == ["t-worker-1"]  # still Restarting
    assert condition(decided, "Running")["message"] == (
        "waiting for the previous gang's pods to go away: t-worker-0, t-worker-1"
    )


def _at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_training_that_finished_in_time_succeeds_even_if_seen_after_its_deadline():
    timed = with_spec(TRAINING, activeDeadlineSeconds=3600)
    done = [pod(0, "Succeeded", exitCode=0), pod(1, "Succeeded", exitCode=0)]
    decided = plan(timed, done, now=_at("2026-01-01T01:00:05Z"))
    assert decided.status["phase"] == "Succeeded"
    decided = plan(timed, [pod(0, "Running"), pod(1, "Running")], now=_at("2026-01-01T01:00:05Z"))
    assert (
        decided.status["phase"] == "Failed" and condition(decided, "Failed")["reason"] == "DeadlineExceeded"
    )


def test_only_suspensions_after_the_first_start_extend_the_deadline_and_each_counts_once():
    suspended = {"type": "Suspended", "status": "True", "reason": "Suspended",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    never_started = {**TRAINING, "status": {"phase": "Suspended", "conditions": [suspended]}}
    decided = plan(never_started, [], now=_at("2026-01-01T01:00:00Z"))
    assert not decided.annotations  # an hour suspended before the first start: nothing to exclude
    started = {**TRAINING, "status": {"phase": "Suspended", "startTime": "2025-12-31T23:00:00Z",
               "conditions": [suspended]}}  # fmt: skip
    decided = plan(started, [], now=_at("2026-01-01T01:00:00Z"))
    assert decided.annotations == {
        "solov2.io/suspended-seconds": "3600", "solov2.io/suspension-counted": "2026-01-01T00:00:00Z"}  # fmt: skip
    # The status write failed and the resume runs again: the same suspension is not added twice.
    retried = {**started, "metadata": {**started["metadata"], "annotations": decided.annotations}}
    assert not plan(retried, [], now=_at("2026-01-01T01:00:10Z")).annotations


def test_a_refused_create_says_why_once():
    message = 'Pod t-worker-1: pods "t-worker-1" is forbidden: exceeded quota: compute'
    decided = refused({**TRAINING, "status": {}}, message)
    assert decided.status["phase"] == "Pending"
    created = condition(decided, "Created")
    assert (created["status"], created["reason"], created["message"]) == ("False", "CreateRefused", message)
    assert decided.events == [("Warning", "CreateRefused", message)]
    again = refused({**TRAINING, "status": decided.status}, message)
    assert not again.events and "phase" not in again.status


RESTARTING = {**TRAINING, "status": {**TRAINING["status"], "phase": "Restarting", "restarts": 1,
              "conditions": [{"type": "Created", "status": "False", "reason": "GangRestarting"}]}}  # fmt: skip


def test_while_restarting_the_pods_of_the_new_gang_stay_and_only_the_failed_gangs_go():
    # Each new gang's pods carry the restart count they were created at.
    created = [b for b in plan(RESTARTING, []).create if b["kind"] == "Pod"]
    assert [b["metadata"]["annotations"]["solov2.io/gang"] for b in created] == ["1", "1"]
    # The status write after creating the new gang failed (it is still Restarting): its pods are kept,
    # not deleted as the failed gang's (which cost a second pod start each).
    decided = plan(RESTARTING, [pod(0, "Pending", number=1), pod(1, "Pending", number=1)])
    assert not decided.delete_pods and condition(decided, "Created")["status"] == "True"
    # A quota admitted worker 0 of the new gang and refused worker 1: worker 0 stays, worker 1 is asked for
    # again (before, worker 0 was deleted and created again at every resync).
    decided = plan(RESTARTING, [pod(0, "Running", number=1)])
    assert not decided.delete_pods
    assert [b["metadata"]["name"] for b in decided.create if b["kind"] == "Pod"] == ["t-worker-1"]
    # A pod of the failed gang (number 0, or made before pods carried a number) that is still there (its
    # deletion failed after the status was written) is deleted, and the new gang waits for it.
    for old in (pod(1, "Running", number=0), pod(1, "Running")):
        decided = plan(RESTARTING, [pod(0, "Running", number=1), old])
        assert decided.delete_pods == ["t-worker-1"] and not decided.create
    # nodes changed while the half-created gang waited: its pods are of the old size, and go too.
    decided = plan(with_spec(RESTARTING, nodes=3), [pod(0, "Running", number=1)])
    assert decided.delete_pods == ["t-worker-0"] and not decided.create


def test_a_finished_training_stops_workers_that_still_run():
    failed = {**TRAINING, "status": {**TRAINING["status"], "phase": "Failed",
              "completionTime": "2026-01-01T00:10:00Z"}}  # fmt: skip
    decided = plan(failed, [pod(0, "Failed", exitCode=1), pod(1, "Running"), deleting(pod(2, "Running"))])
    assert decided.delete_pods == ["t-worker-1"] and "phase" not in decided.status


def test_success_wins_over_a_suspension_that_came_after_it():
    message = json.dumps({"segm_AP": 0.3})
    done = [pod(0, "Succeeded", exitCode=0, message=message), pod(1, "Succeeded", exitCode=0)]
    decided = plan(with_spec(TRAINING, suspend=True), done)
    assert decided.status["phase"] == "Succeeded" and decided.status["results"]["segmAP"] == 0.3
    assert not decided.delete_pods


def test_only_the_trainer_container_decides():
    sidecar_done = pod(0, "Running")
    sidecar_done["status"]["containerStatuses"] = [
        {"name": "istio-proxy", "state": {"terminated": {"exitCode": 0}}},
        {"name": "trainer", "state": {"running": {}}},
    ]
    decided = plan(TRAINING, [sidecar_done, pod(1, "Running")])
    assert "phase" not in decided.status and not decided.delete_pods  # still Running, not Succeeded
    sidecar_done["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 1}}
    assert "phase" not in plan(TRAINING, [sidecar_done, pod(1, "Running")]).status  # nor failed
    # The trainer finished, the sidecar then failed the pod: the worker finished, it did not fail.
    trainer_done = pod(1, "Failed", exitCode=0)
    trainer_done["status"]["containerStatuses"].append(
        {"name": "istio-proxy", "state": {"terminated": {"exitCode": 1}}}
    )
    decided = plan(TRAINING, [pod(0, "Running"), trainer_done])
    assert "phase" not in decided.status and not decided.delete_pods
    # A finished training stops a pod whose sidecar still runs after its trainer exited.
    failed = {**TRAINING, "status": {**TRAINING["status"], "phase": "Failed"}}
    sidecar_runs = pod(0, "Running", exitCode=0)
    assert plan(failed, [sidecar_runs]).delete_pods == ["t-worker-0"]


def test_a_drain_that_began_after_a_worker_failed_on_its_own_does_not_excuse_it():
    spent = {**TRAINING, "spec": {**TRAINING["spec"], "backoffLimit": 0}}
    oom = pod(1, "Failed", exitCode=137, reason="OOMKilled", finishedAt="2026-01-01T00:10:00Z")

    def drained(at: str) -> dict:
        p = _disrupted(pod(0, "Running"))
        p["status"]["conditions"][-1]["lastTransitionTime"] = at
        return p

    decided = plan(spent, [drained("2026-01-01T00:12:00Z"), oom])
    assert (
        decided.status["phase"] == "Failed"
        and condition(decided, "Failed")["reason"] == "BackoffLimitExceeded"
    )
    assert "OOMKilled" in condition(decided, "Failed")["message"]
    decided = plan(spent, [drained("2026-01-01T00:09:50Z"), oom])  # the drain came first: its doing
    assert decided.status["phase"] == "Restarting" and decided.status["disruptions"] == 1


def test_the_deadline_counts_from_the_first_attempt_and_leaves_out_suspended_time():
    # A gang the API server keeps refusing (a quota) is still bounded by activeDeadlineSeconds.
    fresh = {**with_spec(TRAINING, activeDeadlineSeconds=600), "status": {}}
    decided = refused(fresh, "exceeded quota")
    assert decided.status["startTime"]
    started = {**fresh, "status": {**decided.status, "startTime": "2026-01-01T00:00:00Z"}}
    decided = plan(started, [], now=_at("2026-01-01T00:10:01Z"))
    assert (
        decided.status["phase"] == "Failed" and condition(decided, "Failed")["reason"] == "DeadlineExceeded"
    )
    # 10 minutes spent suspended do not count.
    resumed = {
        **started,
        "metadata": {**started["metadata"], "annotations": {"solov2.io/suspended-seconds": "600"}},
    }
    decided = plan(resumed, [], now=_at("2026-01-01T00:19:59Z"))
    assert "phase" not in decided.status and [b["kind"] for b in decided.create] == ["Service", "Pod", "Pod"]


def test_a_worker_someone_else_deleted_is_judged_by_its_last_state():
    spent = with_spec(TRAINING, backoffLimit=0)
    # Evicted, then removed (PodGC after a lost node) before any reconcile saw its condition.
    evicted = _disrupted(pod(1, "Failed", number=0, exitCode=143, reason="Error"), reason="DeletionByPodGC")
    decided = plan(spent, [pod(0, "Running", number=0)], departed=[evicted])
    assert decided.status["phase"] == "Restarting" and decided.status["disruptions"] == 1
    assert condition(decided, "Restarting")["reason"] == "WorkerDisrupted" and not decided.vanished
    # Killed for memory, then deleted by a user: the failure it had, not "pod deleted".
    oom = pod(1, "Failed", number=0, exitCode=137, reason="OOMKilled")
    decided = plan(spent, [pod(0, "Running", number=0)], departed=[oom])
    assert condition(decided, "Failed")["message"].startswith(
        "pod t-worker-1 exited with code 137 (OOMKilled)"
    )
    # Finished, then removed (a drain deletes finished pods too): it counts as finished.
    results = json.dumps({"segm_AP": 0.3})
    finished = [pod(0, "Succeeded", number=0, exitCode=0, message=results)]
    decided = plan(spent, [pod(1, "Succeeded", number=0, exitCode=0)], departed=finished)
    assert decided.status["phase"] == "Succeeded" and decided.status["results"]["segmAP"] == 0.3
    # An earlier gang's pod of that name (it was restarted since), or an earlier training's, says nothing
    # about this gang: "pod deleted", after waiting for news (vanished).
    restarted = {**spent, "status": {**spent["status"], "restarts": 1}}
    for training, departed in (
        (restarted, evicted),
        (spent, _disrupted(pod(1, "Running", owner="u0", number=0))),
    ):
        decided = plan(
            training, [pod(0, "Running", number=training["status"]["restarts"])], departed=[departed]
        )
        assert decided.vanished == ["t-worker-1"]
        assert "(pod deleted)" in condition(decided, "Failed")["message"]


def test_a_pod_its_node_refused_before_the_trainer_ran_is_a_disruption():
    spent = with_spec(TRAINING, backoffLimit=0)
    refused_pod = pod(1, "Failed")
    refused_pod["status"].update(reason="UnexpectedAdmissionError",
                                 message="Allocate failed due to requested number of devices unavailable")  # fmt: skip
    decided = plan(spent, [pod(0, "Running"), refused_pod])
    assert decided.status["phase"] == "Restarting" and decided.status["disruptions"] == 1
    assert condition(decided, "Restarting")["message"].startswith(
        "pod t-worker-1 was refused by its node before the trainer started (UnexpectedAdmissionError: Allocate"
    )
    # A trainer that ran and failed is the training's failure, not the node's.
    decided = plan(spent, [pod(0, "Running"), pod(1, "Failed", exitCode=1, reason="Error")])
    assert decided.status["phase"] == "Failed"
