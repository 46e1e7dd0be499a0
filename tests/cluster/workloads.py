"""What the kvmemo tests on the cluster ask of it: pods by label, their logs and metrics, how long a pod took
to become Ready, and waiting for conditions the API shows."""

import json
import urllib.request
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from tests.k8s import kube

SERVER = "app.kubernetes.io/component=server"
CONTROLLER = "app.kubernetes.io/component=controller"


def wait_for(predicate, what: str, timeout: float = 900.0):
    """tests/k8s's wait_for, polling once a second: a pod's first boot on 2 loaded cores takes minutes."""
    return kube.wait_for(predicate, timeout=timeout, interval=1.0, what=what)


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def ready_pods(cluster, namespace: str, selector: str, count: int) -> list[dict]:
    """Wait until exactly `count` pods match and all are Ready; return them."""
    def all_ready():
        found = pods(cluster, namespace, selector)
        return found if len(found) == count and all(ready(p) for p in found) else None
    return wait_for(all_ready, f"{count} Ready pods with {selector} in {namespace}")


def seconds_to_ready(pod: dict) -> float:
    """From the pod's start on the node to its Ready condition (the API's timestamps have 1 s resolution)."""
    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    return (parse(condition["lastTransitionTime"]) - parse(pod["status"]["startTime"])).total_seconds()


def log(cluster, namespace: str, pod: dict) -> str:
    return cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout


def samples(pod: dict, port: int, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of metric `name` on the pod's /metrics, at the pod's own address."""
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [(s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def configmap(cluster, namespace: str, name: str = "kvmemo") -> dict:
    return json.loads(cluster.kubectl("get", "configmap", name, "-n", namespace, "-o", "json").stdout)


def plans(cluster, namespace: str) -> dict[str, dict]:
    data = configmap(cluster, namespace).get("data") or {}
    return {key.split(".", 1)[1]: json.loads(value) for key, value in data.items()
            if key.startswith("kv-cache-plan.")}


def fingerprint(pod_log: str) -> str:
    """The fp12 a pod logged at boot ("fingerprint <fp12> (...)")."""
    return pod_log.split("fingerprint ", 1)[1].split()[0]
