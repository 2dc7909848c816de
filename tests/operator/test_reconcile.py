"""The reconciler's own steps, against an in-memory API: what happens when a deletion fails after the
status was written, and how a worker that went away is remembered (:mod:`solov2_operator.departures`)."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from solov2_operator import reconcile as reconcile_module
from solov2_operator.departures import Departures
from solov2_operator.metrics import OperatorMetrics
from solov2_operator.reconcile import Reconciler


class MemoryKube:
    """The few API calls the reconciler makes, on one training and its pods in memory."""

    def __init__(self, nodes: int = 2, backoff: int = 2) -> None:
        self.training: dict[str, Any] = {
            "apiVersion": "solov2.io/v1alpha1", "kind": "SOLOv2Training",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"image": "x", "device": "cpu", "nodes": nodes, "devicesPerNode": 1, "backoffLimit": backoff},
        }  # fmt: skip
        self.pods: dict[str, dict[str, Any]] = {}
        self.failing_deletes = 0
        self._uids = itertools.count(1)

    async def get_training(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.training)

    async def list_workers(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values()]

    async def create(self, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if body["kind"] == "Pod":
            if name in self.pods:
                return False
            self.pods[name] = {**copy.deepcopy(body), "status": {"phase": "Pending"}}
            self.pods[name]["metadata"]["uid"] = f"pod-{next(self._uids)}"
        return True

    async def delete_pod(self, namespace: str, name: str) -> None:
        if self.failing_deletes:
            self.failing_deletes -= 1
            raise ApiException(status=500, reason="etcdserver: request timed out")
        self.pods.pop(name, None)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.training.setdefault("status", {}).update(status)

    async def patch_annotations(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.training["metadata"].setdefault("annotations", {}).update(annotations)

    def run(self, name: str) -> None:
        self.pods[name]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}

    def fail(self, name: str, **terminated: Any) -> None:
        self.pods[name]["status"] = {
            "phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]
        }  # fmt: skip


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, str]]:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        reconcile_module.kopf, "event", lambda body, type, reason, message: posted.append((type, reason))
    )
    return posted


async def _running(kube: MemoryKube, reconciler: Reconciler) -> None:
    await reconciler("ns", "t")
    for name in list(kube.pods):
        kube.run(name)
    await reconciler("ns", "t")


@pytest.mark.asyncio
async def test_a_failed_deletion_after_the_status_loses_neither_the_restart_nor_its_event(events):
    kube = MemoryKube()
    reconciler = Reconciler(kube, OperatorMetrics())  # type: ignore[arg-type]
    await _running(kube, reconciler)
    kube.fail("t-worker-1", exitCode=1, reason="Error")
    kube.failing_deletes = 1
    with pytest.raises(ApiException):
        await reconciler("ns", "t")
    assert kube.training["status"]["phase"] == "Restarting" and kube.training["status"]["restarts"] == 1
    restarts = reconciler.metrics.gang_restarts.labels(namespace="ns", cause="failure")
    assert restarts._value.get() == 1 and ("Warning", "WorkerFailed") in events
    # The first delete failed, the second (worker 1) was still tried; the next reconcile finishes the job.
    assert list(kube.pods) == ["t-worker-0"]
    await reconciler("ns", "t")  # deletes worker 1 of the failed gang
    assert not kube.pods
    await reconciler("ns", "t")  # creates the next gang
    assert restarts._value.get() == 1 and events.count(("Warning", "WorkerFailed")) == 1
    assert {n: p["metadata"]["annotations"]["solov2.io/gang"] for n, p in kube.pods.items()} == {
        "t-worker-0": "1", "t-worker-1": "1"}  # fmt: skip


@pytest.mark.asyncio
async def test_a_worker_gone_without_a_trace_is_judged_after_a_short_wait(events):
    kube = MemoryKube(backoff=0)
    reconciler = Reconciler(kube, OperatorMetrics(), departure_wait=0.3)  # type: ignore[arg-type]
    await _running(kube, reconciler)
    del kube.pods["t-worker-1"]  # its DELETED event never comes (it was deleted while no operator ran)
    assert await reconciler("ns", "t") == "Running"  # not yet: the event may be on its way
    assert "t-worker-0" in kube.pods
    for _ in range(50):  # the reconcile it scheduled for itself decides
        await asyncio.sleep(0.05)
        if kube.training["status"]["phase"] == "Failed":
            break
    conditions = {c["type"]: c for c in kube.training["status"]["conditions"]}
    assert "t-worker-1 (pod deleted)" in conditions["Failed"]["message"]
    await reconciler.close()


def test_departures_remember_what_others_deleted_until_the_name_is_reused():
    now = [0.0]
    departures = Departures(wait=1.0, clock=lambda: now[0])
    key = ("ns", "t")
    ours = {"metadata": {"name": "t-worker-0", "uid": "a"}}
    theirs = {"metadata": {"name": "t-worker-1", "uid": "b"}, "status": {"phase": "Failed"}}
    departures.deleting("a")
    departures.gone(key, ours)
    departures.gone(key, theirs)
    assert departures.last_states(key, ["t-worker-0"]) == [theirs]
    assert departures.last_states(key, ["t-worker-1"]) == []  # listed again: it is not gone
    departures.created(key, "t-worker-1")
    assert departures.last_states(key, []) == []
    # The wait for news of a vanished worker, counted from the first reconcile that saw it vanished.
    assert departures.seconds_to_wait(key, vanished=True) == 1.0
    now[0] = 0.75
    assert departures.seconds_to_wait(key, vanished=True) == 0.25
    now[0] = 1.5
    assert departures.seconds_to_wait(key, vanished=True) == 0.0
    # The operator's own deletions whose events never came are not kept for ever.
    departures.deleting("c")
    now[0] = 700.0
    departures.deleting(None)
    departures.gone(key, {"metadata": {"name": "t-worker-2", "uid": "c"}})
    assert [p["metadata"]["uid"] for p in departures.last_states(key, [])] == ["c"]
