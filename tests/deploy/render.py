"""Render the chart and the kustomize base into lists of objects."""

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kvmemo"
BASE = ROOT / "deploy" / "manifests" / "base"
CLUSTER = ROOT / "deploy" / "manifests" / "cluster"  # the cluster-scoped admission policy, installed once
MONITOR_APIS = [f"monitoring.coreos.com/v1/{kind}" for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def objects(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def helm_template(helm: str, *args: str, release: str = "kvmemo") -> list[dict]:
    p = run([helm, "template", release, str(CHART), *args])
    assert p.returncode == 0, f"helm template {' '.join(args)} failed:\n{p.stderr}"
    return objects(p.stdout)


def kustomize(kubectl: str, folder: Path = BASE) -> list[dict]:
    p = run([kubectl, "kustomize", str(folder)])
    assert p.returncode == 0, f"kubectl kustomize {folder} failed:\n{p.stderr}"
    return objects(p.stdout)


def by_kind_name(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def pod_specs(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"}
