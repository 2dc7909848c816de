"""The chart's RBAC grants exactly the API requests the operator makes: those recorded by the operator's
end-to-end tests in tests/operator/recorded_api_requests.json, plus what admission asks of its requests.
Both ways: every recorded request is allowed (in every watched namespace, in the namespaces mode), and
every granted verb is used."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from .conftest import ROOT, by_kind

RECORDED = ROOT / "tests" / "operator" / "recorded_api_requests.json"
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
Grant = tuple[str, str, str]  # verb, group, "resource" or "resource/subresource"
FOR_ADMISSION: set[Grant] = {("update", "solov2.io", "solov2trainings/finalizers")}
"""Never requested, but checked by the OwnerReferencesPermissionEnforcement admission plugin (on by default
in OpenShift) when the operator creates a child whose owner reference sets blockOwnerDeletion."""


def recorded() -> set[Grant]:
    requests = json.loads(RECORDED.read_text())
    assert requests, f"{RECORDED} is empty"
    return FOR_ADMISSION | {
        (r["verb"], r["group"], f"{r['resource']}/{r['subresource']}" if r["subresource"] else r["resource"])
        for r in requests
    }


def grants(roles: Iterable[dict[str, Any]]) -> set[Grant]:
    out = set()
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not rule.get("resourceNames"), rule
            out |= {(v, g, r) for v in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]}
    return out


def bound(docs, binding_kind: str, role_kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
    """Roles of ``role_kind`` bound to the operator's ServiceAccount (in ``namespace`` for RoleBindings)."""
    (sa,) = by_kind(docs, "ServiceAccount")
    names = {
        b["roleRef"]["name"]
        for b in by_kind(docs, binding_kind)
        if b["roleRef"]["kind"] == role_kind
        and (namespace is None or b["metadata"]["namespace"] == namespace)
        and {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
        in b["subjects"]
    }
    return [
        r
        for r in by_kind(docs, role_kind)
        if r["metadata"]["name"] in names and (namespace is None or r["metadata"]["namespace"] == namespace)
    ]


def _cluster_scoped(grant: Grant) -> bool:
    return (grant[1], grant[2].split("/")[0]) in CLUSTER_SCOPED


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(render):
    docs = render()
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    granted = grants(bound(docs, "ClusterRoleBinding", "ClusterRole"))
    assert sorted(recorded() - granted) == [], "recorded requests the chart does not allow"
    assert sorted(granted - recorded()) == [], "granted but never used by the operator"


@pytest.mark.parametrize("namespaces", [["team-a"], ["team-a", "team-b"]])
def test_namespaced_rbac_uses_roles_only(render, namespaces):
    docs = render("--set", "watchNamespaces={" + ",".join(namespaces) + "}")
    cluster = grants(bound(docs, "ClusterRoleBinding", "ClusterRole"))
    expected = recorded()
    assert cluster == {g for g in expected if _cluster_scoped(g)}, (
        "only cluster-scoped resources cluster-wide"
    )
    for namespace in namespaces:
        local = grants(bound(docs, "RoleBinding", "Role", namespace))
        assert local == {g for g in expected if not _cluster_scoped(g)}, namespace
    assert {r["metadata"]["namespace"] for r in by_kind(docs, "Role")} == set(namespaces)


def test_no_rbac_when_disabled(render):
    docs = render("--set", "rbac.create=false")
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}]


def test_the_recorded_requests_file_is_sorted_unique_and_well_formed():
    requests = json.loads(RECORDED.read_text())
    keys = {"verb", "group", "resource", "subresource", "namespaced"}
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    assert all(set(r) == keys and r["verb"] in verbs for r in requests), requests
    assert len({json.dumps(r, sort_keys=True) for r in requests}) == len(requests)
