"""Helpers for tests against the envtest control plane."""

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import yaml
from kubernetes import client, utils

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "manifests" / "base"
CLUSTER_MANIFESTS = REPO / "deploy" / "manifests" / "cluster"
PART_OF = {"app.kubernetes.io/part-of": "kvmemo"}


def load_manifest(name: str, where: Path = MANIFESTS) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((where / name).read_text()) if doc]


def apply(api: client.ApiClient, docs: list[dict], namespace: str | None = None) -> None:
    for doc in docs:
        utils.create_from_dict(api, doc, namespace=namespace)


def new_namespace(api: client.ApiClient, prefix: str = "t") -> str:
    """A fresh namespace with the RBAC manifest and an empty kvmemo ConfigMap. Nothing deletes
    namespaces here (no namespace controller runs), so each test gets its own."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    apply(api, load_manifest("rbac.yaml"), namespace=name)
    create_configmap(api, name)
    return name


def create_configmap(api: client.ApiClient, namespace: str, name: str = "kvmemo") -> None:
    client.CoreV1Api(api).create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=dict(PART_OF))))


def get_configmap(api: client.ApiClient, namespace: str, name: str = "kvmemo") -> dict:
    obj = client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    return api.sanitize_for_serialization(obj)


def annotate(api: client.ApiClient, namespace: str, annotations: dict, name: str = "kvmemo") -> None:
    body = {"metadata": {"annotations": {k: v if isinstance(v, str) or v is None else json.dumps(v)
                                         for k, v in annotations.items()}}}
    client.CoreV1Api(api).patch_namespaced_config_map(name, namespace, body,
                                                      _content_type="application/merge-patch+json")


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.05, what: str = "condition"):
    """Until predicate() is truthy. The timeout only bounds a failing test: a loaded machine may take long."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


def events(api: client.ApiClient, namespace: str) -> list:
    return client.CoreV1Api(api).list_namespaced_event(namespace).items


def ready(port: int) -> bool:
    """/readyz of a controller answers 200."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def scrape(port: int, name: str, labels: dict | None = None) -> float | None:
    """One sample from a /metrics page, or None when absent."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in (labels or {}).items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return None


def start_controller(kubeconfig: Path, namespace: str, port: int, log: Path, *extra: str,
                     env: dict | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "service.cli", "controller", "--kubeconfig", str(kubeconfig),
            "--namespace", namespace, "--http-address", "127.0.0.1", "--http-port", str(port),
            "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5", *extra]
    return subprocess.Popen(argv, cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
