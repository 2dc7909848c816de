"""How the operator reads the API server's refusals of the children it creates, and how it brings an
existing PodGroup to the spec."""

from __future__ import annotations

import json

import jsonpatch
import pytest
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from solov2_operator.kube import Kube, Refused, Rejected, podgroup_spec_patch
from solov2_operator.manifests import build_service
from solov2_operator.spec import read_spec


def _error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="refused")
    exc.body = json.dumps({"message": message})
    return exc


def _kube(create_status: int | None, patch_status: int | None) -> tuple[Kube, list[str]]:
    kube = Kube(ApiClient(Configuration(host="http://127.0.0.1:9")))
    calls: list[str] = []

    def create(namespace, body, **_):
        calls.append("create")
        if create_status is not None:
            raise _error(create_status, 'services "t" already exists')

    def patch(name, namespace, body, **_):
        calls.append("patch")
        if patch_status is not None:
            raise _error(patch_status, 'spec.clusterIP: Invalid value: "None": field is immutable')

    kube.core.create_namespaced_service = create  # type: ignore[method-assign]
    kube.core.patch_namespaced_service = patch  # type: ignore[method-assign]
    return kube, calls


SERVICE = build_service("t", "ns", read_spec("t", {"image": "x", "device": "cpu"}))


@pytest.mark.asyncio
async def test_an_existing_service_is_brought_to_the_spec():
    kube, calls = _kube(409, None)
    assert await kube.create(SERVICE) is False and calls == ["create", "patch"]


@pytest.mark.asyncio
async def test_a_service_of_that_name_that_cannot_become_ours_fails_the_spec():
    kube, _ = _kube(409, 422)  # a user's own Service, not headless: its clusterIP cannot change
    with pytest.raises(Rejected, match=r"Service t: spec\.clusterIP: Invalid value"):
        await kube.create(SERVICE)


@pytest.mark.asyncio
async def test_a_forbidden_create_is_a_refusal_that_may_pass():
    kube, _ = _kube(403, None)
    with pytest.raises(Refused, match="Service t: "):
        await kube.create(SERVICE)


@pytest.mark.parametrize(
    ("existing", "wanted", "expected"),
    [
        pytest.param(  # a resource the spec drops leaves, one it adds comes
            {"minMember": 2, "minResources": {"cpu": "4", "huawei.com/Ascend910": "16"}, "queue": "q"},
            {"minMember": 3, "minResources": {"cpu": "6", "memory": "12Gi"}},
            {"minMember": 3, "minResources": {"cpu": "6", "memory": "12Gi"}, "queue": "q"},
            id="replaced-whole",
        ),
        pytest.param(  # requests dropped from the spec altogether
            {"minMember": 2, "minResources": {"cpu": "4"}, "queue": "default"},
            {"minMember": 2},
            {"minMember": 2, "queue": "default"},
            id="removed",
        ),
        pytest.param(  # and a PodGroup that never had any
            {"minMember": 2, "queue": "default"},
            {"minMember": 4, "queue": "big"},
            {"minMember": 4, "queue": "big"},
            id="absent-stays-absent",
        ),
    ],
)
def test_a_podgroup_spec_update_replaces_min_resources_in_one_patch(existing, wanted, expected):
    podgroup = {"metadata": {"name": "t"}, "spec": existing}
    assert jsonpatch.apply_patch(podgroup, podgroup_spec_patch(wanted))["spec"] == expected
