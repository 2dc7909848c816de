"""The operator in-process against the emulated API server: children, status, failures, suspend,
deadlines, TTL, restarts of the operator itself. The tests play the kubelet by patching pod status."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi

from .conftest import Cluster, run_operator
from .emulator import serve

CPU_2 = {"image": "solov2:cpu", "device": "cpu", "nodes": 2, "devicesPerNode": 1, "backoffLimit": 2}
RESULTS = {
    "segm_AP": 0.41,
    "segm_AP50": 0.62,
    "bbox_AP": None,
    "epochs": 3,
    "iterations": 120,
    "checkpoint": "/o/x",
}
pytestmark = pytest.mark.asyncio


async def all_running(cluster: Cluster, name: str, n: int = 2) -> None:
    await cluster.wait(lambda: len(cluster.pods(name)) == n, message=f"{n} pods")
    for pod in sorted(cluster.pods(name)):
        await cluster.set_pod(pod, "Running")
    await cluster.wait(lambda: cluster.phase(name) == "Running", message="Running")


async def test_a_training_gets_a_service_and_owned_worker_pods(cluster: Cluster):
    await cluster.create("tiny", CPU_2, labels={"team": "vision"})
    pods = await cluster.wait(lambda: len(cluster.pods("tiny")) == 2 and cluster.pods("tiny"))
    training = cluster.training("tiny")
    uid = training["metadata"]["uid"]
    for pod in pods.values():
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["kind"] == "SOLOv2Training" and owner["controller"] is True
        # blockOwnerDeletion: why the chart grants update on solov2trainings/finalizers
        assert owner["blockOwnerDeletion"] is True
        assert pod["metadata"]["labels"]["team"] == "vision"  # the training's labels reach its pods
    from .emulator import SERVICES, objects_of

    service = objects_of(cluster.emulator, SERVICES)["tiny"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["ownerReferences"][0]["uid"] == uid
    await cluster.wait(lambda: cluster.phase("tiny") == "Pending")
    status = cluster.training("tiny")["status"]
    assert status["workers"]["total"] == 2 and status["startTime"]
    assert cluster.condition("tiny", "Created")["reason"] == "GangCreated"
    await all_running(cluster, "tiny")
    assert cluster.condition("tiny", "Running")["status"] == "True"
    await cluster.wait(lambda: cluster.training("tiny")["status"]["workers"]["ready"] == 2)


async def test_a_pending_training_says_why_its_worker_waits(cluster: Cluster):
    await cluster.create("pull", CPU_2)
    await cluster.wait(lambda: len(cluster.pods("pull")) == 2, message="2 pods")
    await cluster.set_pod("pull-worker-0", "Running")
    pull_error = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "solov2:typo"'}
    await cluster.set_pod("pull-worker-1", "Pending", waiting=pull_error)
    running = await cluster.wait(
        lambda: (
            "ImagePullBackOff" in cluster.condition("pull", "Running").get("message", "")
            and cluster.condition("pull", "Running")
        ),
        message="the wait's reason in the Running condition",
    )
    assert (
        running["message"]
        == '1/2 workers run; pull-worker-1: ImagePullBackOff: Back-off pulling image "solov2:typo"'
    )
    assert cluster.phase("pull") == "Pending"
    await cluster.set_pod("pull-worker-1", "Running")
    await cluster.wait(lambda: cluster.phase("pull") == "Running", message="Running once the image is pulled")


async def test_success_copies_worker_0s_results_into_status(cluster: Cluster):
    await cluster.create("ok", CPU_2)
    await all_running(cluster, "ok")
    message = json.dumps(RESULTS)
    await cluster.set_pod("ok-worker-1", "Succeeded", exitCode=0, reason="Completed")
    await cluster.set_pod("ok-worker-0", "Succeeded", exitCode=0, reason="Completed", message=message)
    await cluster.wait(lambda: cluster.phase("ok") == "Succeeded")
    results = cluster.training("ok")["status"]["results"]
    assert results["segmAP"] == 0.41 and results["segmAP50"] == 0.62 and results["epochs"] == 3
    assert "bboxAP" not in results and results["raw"] == message
    assert cluster.condition("ok", "Succeeded")["reason"] == "TrainingSucceeded"
    assert cluster.training("ok")["status"]["completionTime"]
    await cluster.wait(lambda: "TrainingSucceeded" in cluster.events("ok"), message="event")

    def ap(metric: str) -> float | None:  # the final AP stays on the operator's /metrics
        labels = {"namespace": "default", "training": "ok", "iou_type": "segm", "metric": metric}
        return cluster.config.metrics.registry.get_sample_value("solov2_operator_training_ap", labels)

    await cluster.wait(lambda: ap("AP50") == 0.62 and ap("AP") == 0.41, message="AP exported")
    await cluster.delete("ok")
    await cluster.wait(lambda: ap("AP50") is None, message="a deleted training's AP is gone")


async def test_a_failed_worker_restarts_the_whole_gang(cluster: Cluster):
    await cluster.create("flaky", CPU_2)
    await all_running(cluster, "flaky")
    old = {n: p["metadata"]["uid"] for n, p in cluster.pods("flaky").items()}
    failure = {"error": "connection reset by peer", "error_type": "RuntimeError", "retryable": True}
    await cluster.set_pod("flaky-worker-1", "Failed", exitCode=1, reason="Error", message=json.dumps(failure))
    await cluster.wait(lambda: cluster.training("flaky")["status"].get("restarts") == 1)
    new = await cluster.wait(
        lambda: (
            len(cluster.pods("flaky")) == 2
            and all(p["metadata"]["uid"] not in old.values() for p in cluster.pods("flaky").values())
            and cluster.pods("flaky")
        ),
        message="a new gang",
    )
    assert set(new) == set(old)
    restarting = cluster.condition("flaky", "Restarting")
    assert "flaky-worker-1" in restarting["message"] and "connection reset" in restarting["message"]
    assert "WorkerFailed" in cluster.events("flaky")
    await all_running(cluster, "flaky")
    assert cluster.training("flaky")["status"]["restarts"] == 1


async def test_a_users_mistake_fails_at_once_without_restarts(cluster: Cluster):
    await cluster.create("badcfg", CPU_2)
    await all_running(cluster, "badcfg")
    failure = {"error": "train.epochs: must be >= 1", "error_type": "ConfigError", "retryable": False}
    await cluster.set_pod(
        "badcfg-worker-0", "Failed", exitCode=1, reason="Error", message=json.dumps(failure)
    )
    await cluster.wait(lambda: cluster.phase("badcfg") == "Failed")
    failed = cluster.condition("badcfg", "Failed")
    assert (
        failed["reason"] == "NotRetryable" and "ConfigError: train.epochs: must be >= 1" in failed["message"]
    )
    await cluster.reconciled("badcfg")  # nothing is re-created
    assert cluster.training("badcfg")["status"].get("restarts", 0) == 0
    assert "badcfg-worker-1" not in cluster.pods("badcfg")  # the running worker was stopped


async def test_backoff_limit_zero_fails_on_the_first_failure(cluster: Cluster):
    await cluster.create("once", {**CPU_2, "backoffLimit": 0})
    await all_running(cluster, "once")
    await cluster.set_pod("once-worker-0", "Failed", exitCode=137, reason="OOMKilled")
    await cluster.wait(lambda: cluster.phase("once") == "Failed")
    failed = cluster.condition("once", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "OOMKilled" in failed["message"]
    assert cluster.training("once")["status"].get("restarts", 0) == 0


async def test_a_preempted_worker_restarts_the_gang_without_spending_the_backoff_limit(cluster: Cluster):
    await cluster.create("shared", {**CPU_2, "backoffLimit": 0})
    await all_running(cluster, "shared")
    stopped = json.dumps(
        {"error": "terminated by SIGTERM at iteration 40", "retryable": True, "terminated": True}
    )
    await cluster.set_pod(
        "shared-worker-1",
        "Failed",
        disruption="PreemptionByScheduler",
        exitCode=143,
        reason="Error",
        message=stopped,
    )
    await cluster.wait(lambda: cluster.training("shared")["status"].get("restarts") == 1, message="a restart")
    status = cluster.training("shared")["status"]
    assert status["disruptions"] == 1 and status["phase"] in ("Restarting", "Pending")
    (disrupted,) = await cluster.wait(
        lambda: cluster.event_messages("shared", "WorkerDisrupted"), message="event"
    )
    assert "shared-worker-1" in disrupted and "PreemptionByScheduler" in disrupted
    assert "not counted against backoffLimit" in cluster.condition("shared", "Restarting")["message"]
    await all_running(cluster, "shared")  # the new gang
    await cluster.set_pod("shared-worker-0", "Failed", exitCode=137, reason="OOMKilled")  # a real failure
    await cluster.wait(lambda: cluster.phase("shared") == "Failed", message="Failed on the first failure")
    assert cluster.condition("shared", "Failed")["reason"] == "BackoffLimitExceeded"
    restarts = cluster.config.metrics.registry.get_sample_value
    assert (
        restarts("solov2_operator_gang_restarts_total", {"namespace": "default", "cause": "disruption"}) == 1
    )
    assert restarts("solov2_operator_gang_restarts_total", {"namespace": "default", "cause": "failure"}) == 0


async def test_a_deleted_worker_fails_the_gang(cluster: Cluster):
    await cluster.create("evict", CPU_2)
    await all_running(cluster, "evict")
    await asyncio.to_thread(
        cluster.core.delete_namespaced_pod, "evict-worker-1", "default", _preload_content=False
    )
    await cluster.wait(lambda: cluster.training("evict")["status"].get("restarts") == 1)
    assert "pod deleted" in cluster.condition("evict", "Restarting")["message"]


async def test_suspend_deletes_the_workers_and_resume_recreates_them(cluster: Cluster):
    await cluster.create("pause", CPU_2)
    await all_running(cluster, "pause")
    await cluster.patch_spec("pause", {"suspend": True})
    await cluster.wait(lambda: cluster.phase("pause") == "Suspended" and not cluster.pods("pause"))
    assert cluster.condition("pause", "Suspended")["status"] == "True"
    await cluster.reconciled("pause")
    assert not cluster.pods("pause")  # stays suspended
    await cluster.patch_spec("pause", {"suspend": False})
    await cluster.wait(lambda: len(cluster.pods("pause")) == 2, message="re-created gang")
    await cluster.wait(lambda: cluster.condition("pause", "Suspended")["reason"] == "Resumed")
    assert cluster.training("pause")["status"].get("restarts", 0) == 0
    assert "solov2.io/suspended-seconds" in cluster.training("pause")["metadata"]["annotations"]


async def test_an_unbuildable_spec_fails_with_invalid_spec_and_creates_nothing(cluster: Cluster):
    await cluster.create("bad", {**CPU_2, "dataVolume": {"mountPath": "/data"}})
    await cluster.wait(lambda: cluster.phase("bad") == "Failed")
    failed = cluster.condition("bad", "Failed")
    assert failed["reason"] == "InvalidSpec" and "dataVolume" in failed["message"]
    assert not cluster.pods("bad")


async def test_the_deadline_ends_an_active_training(cluster: Cluster):
    await cluster.create("late", {**CPU_2, "activeDeadlineSeconds": 1})
    # The workers are created and stay pending: that counts as active time.
    await cluster.wait(lambda: cluster.phase("late") == "Failed", timeout=10)
    assert cluster.condition("late", "Failed")["reason"] == "DeadlineExceeded"
    await cluster.wait(lambda: not cluster.pods("late"), message="workers stopped")


async def test_a_finished_training_is_deleted_after_its_ttl(cluster: Cluster):
    await cluster.create("ttl", {**CPU_2, "nodes": 1, "ttlSecondsAfterFinished": 3})
    await cluster.wait(lambda: cluster.pods("ttl"))
    await cluster.set_pod("ttl-worker-0", "Succeeded", exitCode=0, message=json.dumps(RESULTS))
    from .emulator import TRAININGS, objects_of

    await cluster.wait(lambda: cluster.phase("ttl") == "Succeeded")
    finished = time.monotonic()
    await cluster.reconciled("ttl")  # within the TTL: kept, results readable
    assert cluster.training("ttl")["status"]["results"]["segmAP"] == 0.41
    await cluster.wait(lambda: "ttl" not in objects_of(cluster.emulator, TRAININGS), message="deleted")
    assert time.monotonic() - finished >= 1.9  # its TTL, less up to 1 s: completionTime has whole seconds


async def test_progress_is_read_from_rank_0_and_a_silent_endpoint_is_no_error(
    cluster: Cluster, unused_tcp_port
):
    # Nothing listens on the port yet: the training runs on, without progress.
    await cluster.create("prog", {**CPU_2, "nodes": 1, "metricsPort": unused_tcp_port})
    await all_running(cluster, "prog", n=1)
    await cluster.wait(
        lambda: cluster.config.metrics.progress_read_failures._value.get() >= 2, message="two failed reads"
    )
    assert "progress" not in cluster.training("prog")["status"] and cluster.phase("prog") == "Running"
    body = (
        b"solov2_train_epoch 2\nsolov2_train_total_epochs 3\nsolov2_train_iteration 50\n"
        b"solov2_train_total_iterations 200\nsolov2_train_images_per_second 12.5\n"
        b'solov2_train_loss{component="total"} 1.25\nsolov2_train_loss{component="mask"} 0.75\n'
        b"solov2_train_eta_seconds 30\n"
    )

    async def serve_metrics(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_metrics, "127.0.0.1", unused_tcp_port)
    async with server:
        progress = await cluster.wait(
            lambda: cluster.training("prog")["status"]["progress"], message="progress"
        )
    assert progress["epoch"] == 2 and progress["iteration"] == 50 and progress["percent"] == 25.0
    assert progress["loss"] == 1.25 and progress["lossMask"] == 0.75 and progress["imagesPerSecond"] == 12.5
    assert progress["updatedAt"]


async def test_a_restarted_operator_carries_on_from_the_status_without_duplicates():
    """The operator stops (a rollout, a lost node) in the middle of a gang restart, the workers start
    while none runs, and its successor takes over from the status and the pods it finds."""
    async with serve() as (emulator, url):
        api = ApiClient(Configuration(host=url))
        async with run_operator(emulator, url) as config:
            cluster = Cluster(emulator, url, config, CoreV1Api(api), CustomObjectsApi(api))
            await cluster.create("durable", CPU_2)
            await all_running(cluster, "durable")
            await cluster.set_pod("durable-worker-0", "Failed", exitCode=1, reason="Error")
            await cluster.wait(
                lambda: len(cluster.pods("durable")) == 2 and cluster.phase("durable") == "Pending"
            )
        before = {n: p["metadata"]["uid"] for n, p in cluster.pods("durable").items()}
        for pod in sorted(before):  # while no operator runs
            await cluster.set_pod(pod, "Running")
        assert cluster.phase("durable") == "Pending"
        async with run_operator(emulator, url):
            await cluster.wait(
                lambda: cluster.phase("durable") == "Running", message="the successor's reconcile"
            )
            assert {n: p["metadata"]["uid"] for n, p in cluster.pods("durable").items()} == before
            assert cluster.training("durable")["status"]["restarts"] == 1


async def test_operator_metrics_count_trainings_by_phase(cluster: Cluster):
    await cluster.create("m1", {**CPU_2, "nodes": 1})
    await cluster.create("m2", {**CPU_2, "nodes": 1, "suspend": True})
    metrics = cluster.config.metrics

    def gauge(phase):
        return metrics.registry.get_sample_value(
            "solov2_operator_trainings", {"namespace": "default", "phase": phase}
        )

    await cluster.wait(lambda: gauge("Pending") == 1 and gauge("Suspended") == 1, message="gauges")
    await cluster.delete("m2")
    await cluster.wait(lambda: gauge("Suspended") == 0, message="deleted training leaves the gauge")
    assert metrics.registry.get_sample_value("solov2_operator_info", {"version": "0.1.0"}) == 1


async def test_gang_scheduling_creates_an_owned_podgroup(cluster: Cluster):
    spec = {**CPU_2, "schedulerName": "volcano", "gangScheduling": {"minAvailable": 2, "queue": "q"}}
    await cluster.create("gang", spec)
    pods = await cluster.wait(lambda: len(cluster.pods("gang")) == 2 and cluster.pods("gang"))
    from .emulator import PODGROUPS, objects_of

    group = objects_of(cluster.emulator, PODGROUPS)["gang"]
    assert group["spec"] == {"minMember": 2, "queue": "q"}
    assert group["metadata"]["ownerReferences"][0]["uid"] == cluster.training("gang")["metadata"]["uid"]
    for pod in pods.values():
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "gang"
        assert pod["spec"]["schedulerName"] == "volcano"


async def test_a_podgroup_of_that_name_without_a_spec_becomes_the_trainings(cluster: Cluster):
    from .emulator import PODGROUPS, objects_of

    cluster.emulator.objects[PODGROUPS, "default", "bare"] = {
        "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
        "metadata": {"name": "bare", "namespace": "default", "labels": {"team": "vision"}},
    }  # fmt: skip
    spec = {**CPU_2, "schedulerName": "volcano", "gangScheduling": {"minAvailable": 2}}
    await cluster.create("bare", spec)
    await all_running(cluster, "bare")
    group = objects_of(cluster.emulator, PODGROUPS)["bare"]
    assert group["spec"] == {"minMember": 2}
    assert group["metadata"]["labels"]["team"] == "vision"  # labels are merged in, not replaced
    assert group["metadata"]["ownerReferences"][0]["uid"] == cluster.training("bare")["metadata"]["uid"]


async def test_a_pod_the_api_server_rejects_fails_the_training_and_leaves_no_half_gang(cluster: Cluster):
    cluster.emulator.reject["half-worker-1"] = (
        422,
        'Pod "half-worker-1" is invalid: spec.nodeSelector: bad label',
    )
    await cluster.create("half", CPU_2)
    await cluster.wait(lambda: cluster.phase("half") == "Failed")
    failed = cluster.condition("half", "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.nodeSelector: bad label" in failed["message"]
    await cluster.wait(lambda: not cluster.pods("half"), message="worker 0 deleted again")
    await cluster.reconciled("half")
    assert not cluster.pods("half")


async def _linger(cluster: Cluster, name: str) -> None:
    """Play a kubelet's graceful stop: the workers of ``name``, once deleted, stay until :func:`_release`."""
    for pod in cluster.pods(name):
        await asyncio.to_thread(
            cluster.core.patch_namespaced_pod, pod, "default", {"metadata": {"finalizers": ["test/stopping"]}}
        )


async def _release(cluster: Cluster, name: str) -> None:
    for pod in cluster.pods(name):
        await asyncio.to_thread(
            cluster.core.patch_namespaced_pod, pod, "default", {"metadata": {"finalizers": None}}
        )


async def test_a_resume_waits_for_the_suspended_workers_to_stop(cluster: Cluster):
    await cluster.create("nap", {**CPU_2, "backoffLimit": 0})
    await all_running(cluster, "nap")
    old = {p["metadata"]["uid"] for p in cluster.pods("nap").values()}
    await _linger(cluster, "nap")
    await cluster.patch_spec("nap", {"suspend": True})
    await cluster.wait(
        lambda: all(p["metadata"].get("deletionTimestamp") for p in cluster.pods("nap").values())
    )
    await cluster.patch_spec("nap", {"suspend": False})  # while the workers still save their checkpoint
    await cluster.wait(
        lambda: "previous gang" in cluster.condition("nap", "Running")["message"], message="wait"
    )
    await cluster.reconciled("nap")
    assert {p["metadata"]["uid"] for p in cluster.pods("nap").values()} == old and cluster.phase(
        "nap"
    ) == "Pending"
    await _release(cluster, "nap")
    await cluster.wait(
        lambda: (
            len(cluster.pods("nap")) == 2
            and not old & {p["metadata"]["uid"] for p in cluster.pods("nap").values()}
        ),
        message="the new gang",
    )
    await all_running(cluster, "nap")
    assert cluster.training("nap")["status"].get("restarts", 0) == 0


async def test_a_training_created_again_under_its_name_waits_for_the_old_workers(cluster: Cluster):
    from .emulator import SERVICES, objects_of

    await cluster.create("again", CPU_2)
    await all_running(cluster, "again")
    await _linger(cluster, "again")
    await cluster.delete("again")
    for pod in cluster.pods("again"):  # what the garbage collector does to the workers of a deleted owner
        await asyncio.to_thread(cluster.core.delete_namespaced_pod, pod, "default", _preload_content=False)
    await cluster.create("again", {**CPU_2, "backoffLimit": 0})
    await cluster.wait(lambda: "previous gang" in cluster.condition("again", "Running")["message"])
    uid = cluster.training("again")["metadata"]["uid"]
    await _release(cluster, "again")
    pods = await cluster.wait(
        lambda: (
            len(cluster.pods("again")) == 2
            and all(p["metadata"]["ownerReferences"][0]["uid"] == uid for p in cluster.pods("again").values())
            and cluster.pods("again")
        ),
        message="the new training's own workers",
    )
    await all_running(cluster, "again")
    assert set(pods) == {"again-worker-0", "again-worker-1"}
    # The old Service (the garbage collector had not deleted it yet) is adopted, so it is not deleted later.
    (service_owner,) = objects_of(cluster.emulator, SERVICES)["again"]["metadata"]["ownerReferences"]
    assert service_owner["uid"] == uid
    assert cluster.training("again")["status"].get("restarts", 0) == 0


async def test_a_create_the_cluster_refuses_is_reported_and_tried_again(cluster: Cluster):
    quota = 'pods "quota-worker-1" is forbidden: exceeded quota: team, requested: cpu=8, limited: cpu=4'
    cluster.emulator.reject["quota-worker-1"] = (403, quota)
    await cluster.create("quota", CPU_2)
    created = await cluster.wait(
        lambda: (
            cluster.condition("quota", "Created")["reason"] == "CreateRefused"
            and cluster.condition("quota", "Created")
        ),
        message="the refusal in the Created condition",
    )
    assert (
        created["status"] == "False" and quota in created["message"] and cluster.phase("quota") == "Pending"
    )
    await cluster.reconciled("quota")  # each tries again: one event for one refusal
    assert len(cluster.event_messages("quota", "CreateRefused")) == 1
    del cluster.emulator.reject["quota-worker-1"]  # the quota was raised
    await all_running(cluster, "quota")
    assert cluster.condition("quota", "Created")["reason"] == "GangCreated"


async def test_a_restart_the_quota_admits_only_in_part_keeps_the_admitted_worker(cluster: Cluster):
    await cluster.create("part", CPU_2)
    await all_running(cluster, "part")
    first = cluster.pods("part")["part-worker-0"]["metadata"]["uid"]
    cluster.emulator.reject["part-worker-1"] = (403, 'pods "part-worker-1" is forbidden: exceeded quota')
    await cluster.set_pod("part-worker-1", "Failed", exitCode=1, reason="Error")
    await cluster.wait(lambda: cluster.emulator.refused["part-worker-1"] >= 3, message="resyncs try again")
    new = cluster.pods("part")["part-worker-0"]["metadata"]["uid"]
    assert new != first and cluster.phase("part") == "Restarting"
    await cluster.wait(lambda: cluster.emulator.refused["part-worker-1"] >= 6, message="more resyncs")
    # The new gang's worker 0 stays; it is not deleted and created again at every resync.
    assert cluster.pods("part")["part-worker-0"]["metadata"]["uid"] == new
    del cluster.emulator.reject["part-worker-1"]
    await all_running(cluster, "part")
    assert cluster.pods("part")["part-worker-0"]["metadata"]["uid"] == new
    assert cluster.training("part")["status"]["restarts"] == 1


async def test_a_worker_evicted_and_removed_at_once_is_a_disruption_not_a_failure(cluster: Cluster):
    """The condition and the deletion come within kopf's batching window: the operator only ever sees
    the pod's DELETED event, whose last state says it was disrupted."""
    await cluster.create("gone", {**CPU_2, "backoffLimit": 0})
    await all_running(cluster, "gone")
    await cluster.set_pod(
        "gone-worker-1", "Failed", disruption="DeletionByPodGC", exitCode=143, reason="Error"
    )
    await asyncio.to_thread(cluster.core.delete_namespaced_pod, "gone-worker-1", "default")
    await cluster.wait(lambda: cluster.training("gone")["status"].get("restarts") == 1, message="a restart")
    status = cluster.training("gone")["status"]
    assert status["disruptions"] == 1 and status["phase"] != "Failed"
    assert (
        "gone-worker-1 was disrupted (DeletionByPodGC)" in cluster.condition("gone", "Restarting")["message"]
    )


async def test_a_new_gang_brings_the_podgroup_and_the_service_to_the_spec(cluster: Cluster):
    from .emulator import PODGROUPS, SERVICES, objects_of, versions_of

    spec = {**CPU_2, "schedulerName": "volcano", "gangScheduling": {"queue": "q"},
            "resources": {"cpu": "2", "memory": "4Gi"}}  # fmt: skip
    await cluster.create("grow", spec)
    await all_running(cluster, "grow")
    assert objects_of(cluster.emulator, PODGROUPS)["grow"]["spec"]["minResources"] == {
        "cpu": "4",
        "memory": "8Gi",
    }
    # A request the spec drops leaves the PodGroup too (a merge patch alone would keep it); Volcano
    # never sees the PodGroup without minResources on the way.
    await cluster.patch_spec("grow", {"nodes": 3, "metricsPort": 9500, "resources": {"memory": None}})
    await cluster.reconciled("grow")
    assert cluster.phase("grow") == "Running" and len(cluster.pods("grow")) == 2  # the running gang stays
    await cluster.set_pod("grow-worker-1", "Failed", exitCode=1, reason="Error")
    await cluster.wait(lambda: len(cluster.pods("grow")) == 3, message="a gang of 3")
    assert objects_of(cluster.emulator, PODGROUPS)["grow"]["spec"]["minMember"] == 3
    assert objects_of(cluster.emulator, PODGROUPS)["grow"]["spec"]["minResources"] == {"cpu": "6"}
    seen = [v["spec"].get("minResources") for v in versions_of(cluster.emulator, PODGROUPS, "grow") if v]
    assert None not in seen and seen[-1] == {"cpu": "6"}, seen
    ports = objects_of(cluster.emulator, SERVICES)["grow"]["spec"]["ports"]
    assert [p["port"] for p in ports] == [29500, 9500]
    await all_running(cluster, "grow", n=3)
    assert cluster.training("grow")["status"]["workers"]["total"] == 3
