"""deploy/manifests/base (kubectl apply -k) holds exactly what the chart renders with default values."""

from tests.deploy.render import by_kind_name, helm_template, kustomize


def normalize_cel(obj: dict) -> dict:
    """kustomize (kyaml) re-folds `>-` scalars whose lines are indented further and adds a blank line
    inside them; whitespace means nothing to CEL, so policy expressions are compared without it."""
    if obj["kind"] == "ValidatingAdmissionPolicy":
        for item in obj["spec"].get("variables", []) + obj["spec"].get("validations", []):
            item["expression"] = " ".join(item["expression"].split())
    return obj


def test_kustomize_base_equals_helm_template(helm, kubectl):
    chart = by_kind_name(normalize_cel(o) for o in helm_template(helm))
    base = by_kind_name(normalize_cel(o) for o in kustomize(kubectl))
    assert sorted(base) == sorted(chart), "objects differ: run deploy/render-manifests.sh"
    for key, obj in chart.items():
        assert base[key] == obj, f"{key} differs from the chart's: run deploy/render-manifests.sh"
