"""RBAC (deploy/manifests/base/rbac.yaml) and the admission policy (admission-policy.yaml), each allowed
and each denied case, acted out against the real apiserver as the service accounts."""

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.envtest.clients import impersonating_client, service_account_user, token_client
from tests.k8s.kube import create_configmap

MERGE = "application/merge-patch+json"


def attempt(call) -> str:
    """'allowed', 'rbac' (403 from the authorizer) or 'policy' (the admission policy's denial)."""
    try:
        call()
        return "allowed"
    except ApiException as exc:
        if exc.status == 403 and "ValidatingAdmissionPolicy" in (exc.body or ""):
            return "policy"
        if exc.status == 403:
            return "rbac"
        if exc.status == 422 and "kvmemo-configmap-guard" in (exc.body or ""):
            return "policy"
        raise


def patch(api, ns, body, name="kvmemo"):
    return lambda: client.CoreV1Api(api).patch_namespaced_config_map(name, ns, body, _content_type=MERGE)


def annotation(key, value):
    return {"metadata": {"annotations": {key: value}}}


@pytest.fixture
def as_pod(control_plane, namespace):
    with impersonating_client(control_plane, service_account_user(namespace, "kvmemo")) as api:
        yield api


@pytest.fixture
def as_controller(control_plane, namespace):
    with impersonating_client(control_plane, service_account_user(namespace, "kvmemo-controller")) as api:
        yield api


def test_service_account_allowed(as_pod, namespace):
    core = client.CoreV1Api(as_pod)
    assert attempt(lambda: core.read_namespaced_config_map("kvmemo", namespace)) == "allowed"
    report = {"metadata": {"annotations": {"kvmemo.io/report.abcdef012345": "{}"}}}
    assert attempt(patch(as_pod, namespace, report)) == "allowed"
    oom = {"metadata": {"annotations": {"kvmemo.io/oom.abcdef012345": "{}"}}}
    assert attempt(patch(as_pod, namespace, oom)) == "allowed"
    removal = {"metadata": {"annotations": {"kvmemo.io/oom.abcdef012345": None}}}
    assert attempt(patch(as_pod, namespace, removal)) == "allowed"


def test_service_account_denied_by_rbac(admin, as_pod, namespace):
    core = client.CoreV1Api(as_pod)
    create_configmap(admin, namespace, "other")
    cases = {
        "list configmaps": lambda: core.list_namespaced_config_map(namespace),
        "get another configmap": lambda: core.read_namespaced_config_map("other", namespace),
        "patch another configmap": patch(as_pod, namespace, {"data": {"x": "1"}}, name="other"),
        "create a configmap": lambda: core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="mine"))),
        "delete its configmap": lambda: core.delete_namespaced_config_map("kvmemo", namespace),
        "replace its configmap": lambda: core.replace_namespaced_config_map(
            "kvmemo", namespace, core.api_client.sanitize_for_serialization(
                client.CoreV1Api(admin).read_namespaced_config_map("kvmemo", namespace))),
        "read secrets": lambda: core.list_namespaced_secret(namespace),
        "create events": lambda: core.create_namespaced_event(namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="x."), involved_object=client.V1ObjectReference(
                kind="ConfigMap", name="kvmemo", namespace=namespace), reason="X", message="x")),
        "get leases": lambda: client.CoordinationV1Api(as_pod).read_namespaced_lease("kvmemo-controller", namespace),
    }
    assert {name: attempt(call) for name, call in cases.items()} == {name: "rbac" for name in cases}


def test_service_account_denied_by_policy(as_pod, namespace):
    cases = {
        "write a plan": {"data": {"kv-cache-plan.abcdef012345": "{}"}},
        "write other data": {"data": {"notes": "x"}},
        "write another annotation": annotation("example.com/x", "1"),
        "change labels": {"metadata": {"labels": {"app.kubernetes.io/part-of": None}}},
        "add a label": {"metadata": {"labels": {"team": "x"}}},
    }
    outcomes = {name: attempt(patch(as_pod, namespace, body)) for name, body in cases.items()}
    assert outcomes == {name: "policy" for name in cases}


def test_controller_allowed(as_controller, namespace):
    core = client.CoreV1Api(as_controller)
    leases = client.CoordinationV1Api(as_controller)
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name="kvmemo-controller"),
                           spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=5))
    cases = [
        ("get", lambda: core.read_namespaced_config_map("kvmemo", namespace)),
        ("list", lambda: core.list_namespaced_config_map(namespace)),
        ("watch", lambda: core.list_namespaced_config_map(namespace, watch=True, timeout_seconds=1,
                                                          _preload_content=False).read()),
        ("write a plan", patch(as_controller, namespace, {"data": {"kv-cache-plan.abcdef012345": "{}"}})),
        ("remove a plan", patch(as_controller, namespace, {"data": {"kv-cache-plan.abcdef012345": None}})),
        ("prune a report", patch(as_controller, namespace, annotation("kvmemo.io/report.abcdef012345", None))),
        ("create its lease", lambda: leases.create_namespaced_lease(namespace, lease)),
        ("renew its lease", lambda: leases.replace_namespaced_lease(
            "kvmemo-controller", namespace, leases.read_namespaced_lease("kvmemo-controller", namespace))),
        ("post an event", lambda: core.create_namespaced_event(namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="kvmemo."), involved_object=client.V1ObjectReference(
                kind="ConfigMap", name="kvmemo", namespace=namespace), reason="Test", message="m", type="Normal"))),
    ]
    assert {name: attempt(call) for name, call in cases} == {name: "allowed" for name, _ in cases}


def test_controller_denied(admin, as_controller, namespace):
    core = client.CoreV1Api(as_controller)
    leases = client.CoordinationV1Api(as_controller)
    other = client.V1Lease(metadata=client.V1ObjectMeta(name="someone-else"), spec=client.V1LeaseSpec())
    client.CoordinationV1Api(admin).create_namespaced_lease(namespace, other)
    cases = {
        "delete the configmap": lambda: core.delete_namespaced_config_map("kvmemo", namespace),
        "create a configmap": lambda: core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))),
        "read secrets": lambda: core.list_namespaced_secret(namespace),
        "get another lease": lambda: leases.read_namespaced_lease("someone-else", namespace),
        "delete its lease": lambda: leases.delete_namespaced_lease("kvmemo-controller", namespace),
        "list configmaps elsewhere": lambda: core.list_namespaced_config_map("default"),
    }
    assert {name: attempt(call) for name, call in cases.items()} == {name: "rbac" for name in cases}


def test_nobody_else_writes_plans(admin, control_plane, namespace):
    """system:masters skips RBAC but not admission: only the controller's ServiceAccount writes plans,
    and the controller of another namespace is someone else."""
    plan = {"data": {"kv-cache-plan.abcdef012345": "{}"}}
    assert attempt(patch(admin, namespace, plan)) == "policy"
    assert attempt(patch(admin, namespace, {"data": {"notes": "admins may"}})) == "allowed"
    with impersonating_client(control_plane, service_account_user("elsewhere", "kvmemo-controller"),
                              "system:masters") as stranger:
        assert attempt(patch(stranger, namespace, plan)) == "policy"


def test_real_service_account_tokens(control_plane, namespace):
    """The same rules through TokenRequest tokens, as a pod and the controller would authenticate."""
    with token_client(control_plane, namespace, "kvmemo") as pod:
        assert attempt(patch(pod, namespace, annotation("kvmemo.io/report.abcdef012345", "{}"))) == "allowed"
        assert attempt(patch(pod, namespace, {"data": {"kv-cache-plan.abcdef012345": "{}"}})) == "policy"
        assert attempt(lambda: client.CoreV1Api(pod).list_namespaced_config_map(namespace)) == "rbac"
    with token_client(control_plane, namespace, "kvmemo-controller") as ctl:
        assert attempt(patch(ctl, namespace, {"data": {"kv-cache-plan.abcdef012345": "{}"}})) == "allowed"


def plan_by_controller(control_plane, namespace, fp="abcdef012345"):
    with token_client(control_plane, namespace, "kvmemo-controller") as ctl:
        client.CoreV1Api(ctl).patch_namespaced_config_map(
            "kvmemo", namespace, {"data": {f"kv-cache-plan.{fp}": "{}"}}, field_manager="kvmemo-controller",
            _content_type=MERGE)


def test_pod_changes_nothing_but_its_annotations(admin, control_plane, namespace):
    """Issue 14 item 10: finalizers, ownerReferences and `immutable` (which froze every plan for good) were
    open to the pod's token; now every field but its own annotations is closed, through every patch type."""
    uid = client.CoreV1Api(admin).read_namespaced_config_map("kvmemo", namespace).metadata.uid
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "kvmemo", "uid": uid}
    cases = {
        "set immutable": ({"immutable": True}, MERGE),
        "set immutable by JSON patch": ([{"op": "add", "path": "/immutable", "value": True}],
                                        "application/json-patch+json"),
        "add a finalizer": ({"metadata": {"finalizers": ["example.com/hold"]}}, MERGE),
        "add an ownerReference": ({"metadata": {"ownerReferences": [owner]}}, MERGE),
        "write binaryData": ({"binaryData": {"x": "AAAA"}}, MERGE),
        "write data by strategic merge": ({"data": {"notes": "x"}}, "application/strategic-merge-patch+json"),
        "add a label": ({"metadata": {"labels": {"team": "x"}}}, MERGE),
        "write another annotation": (annotation("kvmemo.io/other", "1"), MERGE),
    }
    with token_client(control_plane, namespace, "kvmemo") as pod:
        core = client.CoreV1Api(pod)
        outcomes = {name: attempt(lambda: core.patch_namespaced_config_map(
            "kvmemo", namespace, body, _content_type=kind)) for name, (body, kind) in cases.items()}
    assert outcomes == {name: "policy" for name in cases}
    cm = client.CoreV1Api(admin).read_namespaced_config_map("kvmemo", namespace)
    assert not cm.immutable and not cm.metadata.finalizers and not cm.metadata.owner_references


def test_plans_guarded_whatever_the_labels(admin, control_plane, namespace):
    """Issue 14 item 10: with the part-of label removed, the pod's token and admins wrote plans. The policy
    no longer looks at labels, and the label of a ConfigMap with plans is the controller's to change."""
    plan = {"data": {"kv-cache-plan.0123456789ab": "{}"}}
    plan_by_controller(control_plane, namespace)
    assert attempt(patch(admin, namespace, {"metadata": {"labels": {"app.kubernetes.io/part-of": None}}})) == "policy"
    assert attempt(patch(admin, namespace, {"metadata": {"labels": {"app.kubernetes.io/version": "0.2.0"}}})) \
        == "allowed"  # a helm upgrade relabels

    create_configmap(admin, namespace, "unlabelled")
    client.CoreV1Api(admin).patch_namespaced_config_map(
        "unlabelled", namespace, {"metadata": {"labels": None}}, _content_type=MERGE)
    assert attempt(patch(admin, namespace, plan, name="unlabelled")) == "policy"
    with token_client(control_plane, namespace, "kvmemo") as pod:
        assert attempt(patch(pod, namespace, {"metadata": {"labels": None}})) == "policy"
    # The pods' Role names one ConfigMap; an admin who widens it still cannot let them write plans.
    client.RbacAuthorizationV1Api(admin).patch_namespaced_role("kvmemo", namespace, {"rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]})
    with token_client(control_plane, namespace, "kvmemo") as pod:
        assert attempt(patch(pod, namespace, plan, name="unlabelled")) == "policy"


def test_nobody_else_writes_as_the_controller(admin, control_plane, namespace):
    """read_plan trusts a plan that the field manager kvmemo-controller owns; only the controller may use it."""
    report = annotation("kvmemo.io/report.abcdef012345", "{}")
    with token_client(control_plane, namespace, "kvmemo") as pod:
        forged = lambda: client.CoreV1Api(pod).patch_namespaced_config_map(  # noqa: E731
            "kvmemo", namespace, report, field_manager="kvmemo-controller", _content_type=MERGE)
        assert attempt(forged) == "policy"
    assert attempt(lambda: client.CoreV1Api(admin).patch_namespaced_config_map(
        "kvmemo", namespace, {"data": {"notes": "x"}}, field_manager="kvmemo-controller", _content_type=MERGE)) \
        == "policy"
    # The controller's own entry is untouched by the pods' writes, so they go on as before.
    plan_by_controller(control_plane, namespace)
    with token_client(control_plane, namespace, "kvmemo") as pod:
        assert attempt(patch(pod, namespace, report)) == "allowed"
        assert attempt(patch(pod, namespace, annotation("kvmemo.io/report.abcdef012345", None))) == "allowed"


def test_pods_cannot_take_the_whole_annotation_budget(control_plane, namespace):
    """Issue 14 item 10: one pod could fill the 256 KiB every annotation shares ("metadata.annotations: Too
    long"). Each value is at most 8 KiB, each kind at most 128 keys, all of them at most 192 KiB."""
    with token_client(control_plane, namespace, "kvmemo") as pod:
        too_long = annotation("kvmemo.io/report.abcdef012345", "x" * 8193)
        assert attempt(patch(pod, namespace, too_long)) == "policy"
        many = {"metadata": {"annotations": {f"kvmemo.io/oom.{i:012x}": "{}" for i in range(129)}}}
        assert attempt(patch(pod, namespace, many)) == "policy"
        big = {f"kvmemo.io/report.{i:012x}": "x" * 8000 for i in range(24)}  # 192,696 bytes with the keys
        assert attempt(patch(pod, namespace, {"metadata": {"annotations": big}})) == "allowed"
        one_more = annotation("kvmemo.io/report.ffffffffffff", "x" * 8000)
        assert attempt(patch(pod, namespace, one_more)) == "policy"
        # At the limit, a pod may still rewrite smaller and remove: the limit only stops growth.
        assert attempt(patch(pod, namespace, annotation("kvmemo.io/report.000000000000", "{}"))) == "allowed"
        assert attempt(patch(pod, namespace, annotation("kvmemo.io/report.000000000001", None))) == "allowed"
