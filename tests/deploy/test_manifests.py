"""deploy/manifests/base and deploy/manifests/cluster (kubectl apply -k) hold exactly what the chart renders
with default values, and deploy/manifests/monitoring what it renders for the Prometheus Operator."""

from tests.deploy.render import BASE, CLUSTER, by_kind_name, helm_template, kustomize

MONITORING = BASE.parent / "monitoring"
MONITOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
# Helm keeps the cluster-wide policy when a release is uninstalled; kubectl never deletes it with the base,
# since it lives in deploy/manifests/cluster, so the annotation is the chart's alone there.
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def normalize_cel(obj: dict) -> dict:
    """kustomize (kyaml) re-folds `>-` scalars whose lines are indented further and adds a blank line
    inside them; whitespace means nothing to CEL, so policy expressions are compared without it."""
    if obj["kind"] == "ValidatingAdmissionPolicy":
        for item in obj["spec"].get("variables", []) + obj["spec"].get("validations", []):
            item["expression"] = " ".join(item["expression"].split())
    return obj


def without_helm_annotations(obj: dict) -> dict:
    if obj["kind"] in POLICY_KINDS:
        annotations = obj["metadata"].get("annotations") or {}
        annotations.pop("helm.sh/resource-policy", None)
        if "annotations" in obj["metadata"] and not annotations:
            del obj["metadata"]["annotations"]
    return obj


def test_kustomize_base_equals_helm_template(helm, kubectl):
    chart = by_kind_name(normalize_cel(without_helm_annotations(o)) for o in helm_template(helm))
    base = by_kind_name(normalize_cel(o) for o in kustomize(kubectl) + kustomize(kubectl, CLUSTER))
    assert sorted(base) == sorted(chart), "objects differ: run deploy/render-manifests.sh"
    for key, obj in chart.items():
        assert base[key] == obj, f"{key} differs from the chart's: run deploy/render-manifests.sh"


def test_kustomize_monitoring_equals_helm_template(helm, kubectl):
    chart = by_kind_name(o for o in helm_template(helm, "--set", "monitoring.skipCRDCheck=true")
                         if o["kind"] in MONITOR_KINDS)
    assert len(chart) == 3
    assert by_kind_name(kustomize(kubectl, MONITORING)) == chart, "run deploy/render-manifests.sh"
