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
