"""What the kvmemo tests on the cluster ask of it: pods by label, their logs and metrics, how long a pod took
to become Ready, and waiting for conditions the API shows."""

import json
import subprocess
import urllib.request
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from tests.k8s import kube
from tests.tools import helm as helm_binary

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


def helm(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm_binary()), f"--kubeconfig={cluster.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def image_values(images) -> list[str]:
    """`--set`s that point the chart at the images imported into the cluster, never pulled."""
    values = []
    for prefix, ref in (("image", images.service.ref), ("controller.image", images.controller.ref)):
        repository, tag = ref.rsplit(":", 1)
        values += ["--set", f"{prefix}.repository={repository}", "--set", f"{prefix}.tag={tag}",
                   "--set", f"{prefix}.pullPolicy=Never"]
    return values


def create_namespace(cluster, name: str) -> None:
    """A namespace that enforces the restricted Pod Security Standard, with its default ServiceAccount."""
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=120s")


def follow_log(cluster, namespace: str, pod_name: str) -> subprocess.Popen:
    """`kubectl logs -f`: the pod's log as it is written (read it with log_until, kill it when done)."""
    return subprocess.Popen(["kubectl", f"--kubeconfig={cluster.kubeconfig}", "logs", "-f", "-n", namespace,
                             pod_name], stdout=subprocess.PIPE, text=True)


def log_until(follow: subprocess.Popen, text: str) -> list[str]:
    """The followed log's lines up to and including the first that contains `text`."""
    lines = []
    for line in follow.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the pod's log ended before {text!r}:\n" + "".join(lines[-30:]))


def restart_count(pod: dict) -> int:
    return sum(s.get("restartCount", 0) for s in pod.get("status", {}).get("containerStatuses", []))


def pod(cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
