"""Both bundles installed into a real kube-apiserver (tests/envtest), in namespaces that enforce the
restricted Pod Security Standard: every object admitted, with no warning.

No controller-manager runs, so Deployments make no Pods; the tests create a Pod from each Deployment's
template themselves, which is where Pod Security admission enforces."""

import json
import uuid
from pathlib import Path

import pytest
import yaml

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.deploy.render import BASE, CHART, CLUSTER, objects, run
from tests.envtest.clients import token_client
from tests.k8s.kube import wait_for

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
CRDS = Path(__file__).with_name("monitoring-crds.yaml")


@pytest.fixture(scope="module")
def k(kubectl, control_plane):
    def kube(*args: str, stdin: str | None = None, check: bool = True):
        p = run([kubectl, "--kubeconfig", str(control_plane.kubeconfig), *args], input=stdin)
        if check:
            assert p.returncode == 0, f"kubectl {' '.join(args)}:\n{p.stdout}{p.stderr}"
            assert "Warning" not in p.stderr, f"kubectl {' '.join(args)} warned:\n{p.stderr}"
        return p
    return kube


def restricted_namespace(k, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    k("create", "namespace", name)
    k("label", "namespace", name, *[f"{key}={value}" for key, value in RESTRICTED.items()])
    return name


def assert_pods_admitted(k, namespace: str, objs: list[dict]) -> None:
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    assert deployments
    for d in deployments:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": d["metadata"]["name"] + "-probe", "labels": d["spec"]["template"]["metadata"]["labels"]},
               "spec": d["spec"]["template"]["spec"]}
        k("create", "-n", namespace, "-f", "-", stdin=json.dumps(pod))


def assert_restricted_enforced(k, namespace: str) -> None:
    """The label really enforces: a Pod with no security settings is turned away."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
           "spec": {"containers": [{"name": "c", "image": "kvmemo:test"}]}}
    p = k("create", "-n", namespace, "-f", "-", stdin=json.dumps(pod), check=False)
    assert p.returncode != 0 and "violates PodSecurity" in p.stderr, p.stderr


def assert_all_exist(k, namespace: str, objs: list[dict]) -> None:
    got = k("get", "-n", namespace, "-f", "-", "-o", "name", stdin=yaml.safe_dump_all(objs))
    assert len(got.stdout.split()) == len(objs), got.stdout


def test_server_dry_run_admits_both_bundles(k, helm, control_plane):
    namespace = restricted_namespace(k, "dry-run")
    rendered = run([helm, "template", "kvmemo", str(CHART), "--namespace", namespace])
    assert rendered.returncode == 0, rendered.stderr
    chart = k("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=rendered.stdout)
    base = k("apply", "--dry-run=server", "-n", namespace, "-k", str(BASE))
    cluster = k("apply", "--dry-run=server", "-k", str(CLUSTER))
    count = len(objects(rendered.stdout))
    assert chart.stdout.count("(server dry run)") == count, chart.stdout
    assert (base.stdout + cluster.stdout).count("(server dry run)") == count, base.stdout + cluster.stdout


def test_kubectl_apply_k(k, control_plane):
    namespace = restricted_namespace(k, "kustomize")
    k("apply", "-n", namespace, "-k", str(BASE))
    objs = objects(k("kustomize", str(BASE)).stdout)
    assert_all_exist(k, namespace, objs)
    assert_pods_admitted(k, namespace, objs)
    assert_restricted_enforced(k, namespace)
    deleted = k("delete", "-n", namespace, "-k", str(BASE), "--wait", check=False)
    assert deleted.returncode == 0, deleted.stderr


def test_helm_install_with_monitors(k, helm, control_plane):
    k("apply", "-f", str(CRDS))
    k("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    namespace = restricted_namespace(k, "helm")
    kubeconfig = ["--kubeconfig", str(control_plane.kubeconfig)]
    p = run([helm, "install", "kvmemo", str(CHART), "--namespace", namespace, *kubeconfig])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Warning" not in p.stderr and "warning" not in p.stderr, p.stderr
    assert "kvmemo generate" in p.stdout  # NOTES.txt
    manifest = run([helm, "get", "manifest", "kvmemo", "--namespace", namespace, *kubeconfig])
    objs = objects(manifest.stdout)
    kinds = {o["kind"] for o in objs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ValidatingAdmissionPolicy"} <= kinds, kinds
    assert_all_exist(k, namespace, objs)
    assert_pods_admitted(k, namespace, objs)
    assert_restricted_enforced(k, namespace)


def test_helm_install_with_the_extension_points(k, helm, control_plane):
    """ci/production-values.yaml (a download into a claim the chart makes, a headless Service, an HPA,
    NetworkPolicies, extra env/volumes, placement, probe timings) installed for real, every pod template
    admitted under the restricted standard; then `helm uninstall` keeps the plans ConfigMap and the model
    claim (helm.sh/resource-policy: keep). GRPCRoute and KEDA's ScaledObject need CRDs this control plane
    does not have; tests/deploy/test_chart.py checks what they render."""
    namespace = restricted_namespace(k, "extend")
    kubeconfig = ["--kubeconfig", str(control_plane.kubeconfig)]
    values = ["-f", str(CHART / "ci" / "production-values.yaml"), "--set", "admissionPolicy.create=false"]
    p = run([helm, "install", "kvmemo", str(CHART), "--namespace", namespace, *values, *kubeconfig])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Warning" not in p.stderr and "warning" not in p.stderr, p.stderr
    assert "round_robin" in p.stdout  # NOTES.txt says how to balance over the headless Service
    objs = objects(run([helm, "get", "manifest", "kvmemo", "--namespace", namespace, *kubeconfig]).stdout)
    kinds = {o["kind"] for o in objs}
    assert {"HorizontalPodAutoscaler", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget"} <= kinds
    assert_all_exist(k, namespace, objs)
    assert_pods_admitted(k, namespace, objs)
    p = run([helm, "uninstall", "kvmemo", "--namespace", namespace, "--wait", *kubeconfig])
    assert p.returncode == 0, p.stdout + p.stderr
    left = k("get", "-n", namespace, "configmap,pvc", "-o", "name").stdout.split()
    assert {"configmap/kvmemo", "persistentvolumeclaim/kvmemo-model"} <= set(left), left
    assert "deployment.apps/kvmemo" not in k("get", "-n", namespace, "deployments", "-o", "name").stdout


@pytest.mark.parametrize("mount", ["copy", "volume"])
def test_oci_model_pods_admitted(k, helm, control_plane, mount):
    """The model in its own image, copied by an init container or mounted as an image volume: the pod
    templates pass the apiserver's validation and the restricted standard."""
    namespace = restricted_namespace(k, f"oci-{mount}")
    rendered = run([helm, "template", "kvmemo", str(CHART), "--namespace", namespace, "--set", "model.source=oci",
                    "--set", "model.oci.image=registry.example.com/models/m:v1", "--set", f"model.oci.mount={mount}",
                    "--show-only", "templates/deployment.yaml"])
    assert rendered.returncode == 0, rendered.stderr
    objs = objects(rendered.stdout)
    k("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=rendered.stdout)
    assert_pods_admitted(k, namespace, objs)


def test_gpu_values_pods_admitted_with_their_runtime_class(k, helm, control_plane):
    """ci/gpu-values.yaml names RuntimeClass nvidia (as the GPU Operator makes it): with that RuntimeClass
    present the GPU pod template is admitted; the apiserver itself refuses a pod whose RuntimeClass is
    missing, which is why the chart's default leaves runtimeClassName empty."""
    runtime_class = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                     "handler": "nvidia"}
    k("apply", "-f", "-", stdin=json.dumps(runtime_class))
    namespace = restricted_namespace(k, "gpu")
    rendered = run([helm, "template", "kvmemo", str(CHART), "--namespace", namespace, "-f",
                    str(CHART / "ci" / "gpu-values.yaml"), "--show-only", "templates/deployment.yaml"])
    assert rendered.returncode == 0, rendered.stderr
    k("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=rendered.stdout)
    assert_pods_admitted(k, namespace, objects(rendered.stdout))
    spec = objects(rendered.stdout)[0]["spec"]["template"]["spec"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "missing-runtime"},
           "spec": {**spec, "runtimeClassName": "no-such-runtime"}}
    p = k("create", "-n", namespace, "-f", "-", stdin=json.dumps(pod), check=False)
    assert p.returncode != 0 and "no-such-runtime" in p.stderr, p.stderr


POLICY = "kvmemo-configmap-guard"
PLAN = {"data": {"kv-cache-plan.abcdef012345": "{}"}}


def pod_writes(control_plane, namespace: str, body: dict) -> str:
    """'allowed' or 'denied': a patch of the ConfigMap kvmemo with the pods' own ServiceAccount token."""
    with token_client(control_plane, namespace, "kvmemo") as pod:
        try:
            client.CoreV1Api(pod).patch_namespaced_config_map(
                "kvmemo", namespace, body, _content_type="application/merge-patch+json")
            return "allowed"
        except ApiException as exc:
            assert exc.status in (403, 422) and POLICY in (exc.body or ""), exc.body
            return "denied"


def assert_guarded(k, control_plane, namespace: str) -> None:
    """The policy object exists and turns the pods' plan write away (waiting only for a new policy to load),
    while their report write goes through: the denial is the policy's, not RBAC's."""
    k("get", f"validatingadmissionpolicy/{POLICY}", f"validatingadmissionpolicybinding/{POLICY}")
    wait_for(lambda: pod_writes(control_plane, namespace, PLAN) == "denied", what=f"the policy guarding {namespace}")
    report = {"metadata": {"annotations": {"kvmemo.io/report.abcdef012345": "{}"}}}
    assert pod_writes(control_plane, namespace, report) == "allowed"


def remove_policy(k) -> None:
    k("delete", "validatingadmissionpolicybinding", POLICY, "--ignore-not-found")
    k("delete", "validatingadmissionpolicy", POLICY, "--ignore-not-found")


def test_kubectl_delete_in_one_namespace_leaves_the_other_guarded(k, control_plane):
    """Issue 14 item 10: `kubectl delete -k deploy/manifests/base -n A` deleted the cluster-wide policy, and
    in namespace B the pods' token could then write plans. The policy now lives in deploy/manifests/cluster."""
    remove_policy(k)  # an earlier test's Helm release may have installed it
    k("apply", "-k", str(CLUSTER))
    a, b = restricted_namespace(k, "kust-a"), restricted_namespace(k, "kust-b")
    for namespace in (a, b):
        k("apply", "-n", namespace, "-k", str(BASE))
    assert_guarded(k, control_plane, b)
    k("delete", "-n", a, "-k", str(BASE), "--wait")
    assert_guarded(k, control_plane, b)


def test_helm_second_namespace_installs_and_uninstall_leaves_it_guarded(k, helm, control_plane):
    """Issue 13 item 8: a second release with default values failed on the policy's ownership, and `helm
    uninstall` of the first deleted the policy that guarded the second."""
    remove_policy(k)
    kubeconfig = ["--kubeconfig", str(control_plane.kubeconfig)]
    a, b = restricted_namespace(k, "helm-a"), restricted_namespace(k, "helm-b")
    for namespace in (a, b):
        p = run([helm, "install", "kvmemo", str(CHART), "--namespace", namespace, *kubeconfig])
        assert p.returncode == 0, p.stdout + p.stderr
    owner = json.loads(k("get", "validatingadmissionpolicy", POLICY, "-o", "json").stdout)["metadata"]["annotations"]
    assert owner["meta.helm.sh/release-namespace"] == a and owner["helm.sh/resource-policy"] == "keep"
    p = run([helm, "upgrade", "kvmemo", str(CHART), "--namespace", a, *kubeconfig])  # the owner still updates it
    assert p.returncode == 0, p.stdout + p.stderr
    assert_guarded(k, control_plane, b)
    p = run([helm, "uninstall", "kvmemo", "--namespace", a, "--wait", *kubeconfig])
    assert p.returncode == 0, p.stdout + p.stderr
    assert_guarded(k, control_plane, b)
