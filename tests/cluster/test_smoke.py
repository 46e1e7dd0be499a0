"""The cluster itself: a Deployment of an image built here becomes Ready, a Service on the node reaches
it, and the pod reaches the API server through the `kubernetes` Service; the cluster's iptables rules send traffic only to addresses the cluster created."""

import ipaddress
import json
import re
import subprocess
import time
import urllib.request

from tests.cluster.local_images import echo_image

RESTRICTED = {
    "runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def _echo_manifests(namespace: str) -> str:
    labels = {"app": "echo"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{
                "name": "echo", "image": echo_image().ref, "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                "securityContext": RESTRICTED,
            }]},
        }},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deployment, service]})


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return None


def test_deployment_becomes_ready_and_its_service_answers(kube_cluster, cluster_namespace):
    subprocess.run(["kubectl", f"--kubeconfig={kube_cluster.kubeconfig}", "apply", "-f", "-"],
                   input=_echo_manifests(cluster_namespace), text=True, check=True, capture_output=True)
    kube_cluster.kubectl("rollout", "status", "deployment/echo", "-n", cluster_namespace, "--timeout=180s")

    service_ip = kube_cluster.kubectl("get", "service", "echo", "-n", cluster_namespace,
                                      "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ipaddress.ip_address(service_ip) in ipaddress.ip_network(kube_cluster.service_cidr)
    pod = kube_cluster.kubectl("get", "pods", "-n", cluster_namespace, "-l", "app=echo",
                               "-o", "jsonpath={.items[0].metadata.name}").stdout
    # kube-proxy programs the Service's rules once the ready pod is in its EndpointSlice: wait for the answer.
    deadline = time.monotonic() + 120
    answer = None
    while answer is None and time.monotonic() < deadline:
        answer = _get(f"http://{service_ip}/")
        time.sleep(0.2 if answer is None else 0)
    assert answer == f"kvmemo-cluster-echo {pod}\n"

    # The pod, as any in-cluster client, reaches kube-apiserver through the `kubernetes` Service.
    version = json.loads(_get(f"http://{service_ip}/kubernetes") or "{}")
    assert version.get("gitVersion") == "v1.37.2", version


def test_service_rules_lead_only_to_the_clusters_own_addresses(kube_cluster):
    """Every DNAT kube-proxy wrote goes to the node's bridge address or a pod on the cluster's subnet."""
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"--to-destination ([\d.]+):\d+", rules)
    assert targets, "kube-proxy wrote no DNAT rule, not even for the kubernetes Service"
    pods = ipaddress.ip_network(kube_cluster.pod_cidr)
    assert all(ipaddress.ip_address(t) in pods for t in targets), (targets, pods)
