"""Configuration files of the node's kubelet and kube-proxy (JSON, which both read as YAML).

The kubelet settings are the ones that worked on this project's machines (issue 16): cgroup v1 hosts
allowed, cgroupfs driver, no QoS cgroups or node-allocatable enforcement, swap tolerated; eviction and
image garbage collection are held off so a full disk never deletes the images the tests imported.
"""

import json
from pathlib import Path

from tests.cluster.network import Subnets


def kubelet_config(path: Path, *, subnets: Subnets, ca_cert: Path, runtime_socket: Path, port: int,
                   healthz_port: int, pod_logs: Path) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": subnets.gateway, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_cert)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [], "failSwapOn": False,
        "podLogsDir": str(pod_logs),
        "resolvConf": "/etc/resolv.conf",
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def kube_proxy_config(path: Path, *, subnets: Subnets, kubeconfig: Path, node_name: str, healthz_port: int,
                      metrics_port: int) -> Path:
    """iptables mode; it masquerades Service traffic so a pod can reach a Service backed by itself, and
    leaves the host's conntrack sysctls and localhost NodePorts alone."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "bindAddress": subnets.gateway,
        "clusterCIDR": str(subnets.pod_cidr),
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{subnets.gateway}/32"],
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    path.write_text(json.dumps(config, indent=2))
    return path
