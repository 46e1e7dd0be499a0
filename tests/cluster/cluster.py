"""A real single-node Kubernetes cluster for tests, on top of tests/envtest's etcd and kube-apiserver.

start() adds kube-controller-manager, kube-scheduler, a kubelet and kube-proxy (built from the Go module
that tests/envtest pins), Debian's containerd + runc + CNI bridge plugin, the pause image built here and
any image archives given, then waits until the node is Ready. stop() deletes every pod through the API
(so the kubelet tears each one down the normal way), stops everything, and removes what the cluster
added to the machine: its bridge, iptables rules and chains, network namespaces and mounts. One cluster
runs per machine at a time (kube-proxy owns the KUBE-* iptables chains); a second start waits for it.
"""

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from tests.cluster import containerd, network, node
from tests.cluster.leftovers import kill_processes_mentioning
from tests.cluster.local_images import pause_image
from tests.cluster.oci import ImageArchive
from tests.containerd import machine_lock
from tests.debian import ensure_packages
from tests.envtest import certs
from tests.envtest.build import ensure_binaries, ensure_kube_binaries, kube_binary_path
from tests.envtest.controlplane import ControlPlane, log_tail, terminate, write_kubeconfig
from tests.ports import free_port
from tests.progress import TERMINAL, say

NODE_NAME = "kvmemo-node"
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "iproute2")
COMPONENTS = ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterControlPlane(ControlPlane):
    """kube-apiserver on the bridge's address, reachable from pods through the `kubernetes` Service."""
    subnets: network.Subnets | None = None

    def serving_sans(self) -> dict:
        return {"serving_ips": (self.address, "127.0.0.1", self.subnets.kubernetes_service_ip),
                "serving_names": ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                  "kubernetes.default.svc.cluster.local")}

    def apiserver_args(self) -> list[str]:
        cert, key = certs.client_cert(self.files, self.workdir / "pki" / "apiserver-kubelet-client",
                                      "kube-apiserver-kubelet-client", "system:masters")
        replaced = ("--endpoint-reconciler-type", "--disable-admission-plugins", "--authorization-mode")
        return [arg for arg in super().apiserver_args() if not arg.startswith(replaced)] + [
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={cert}", f"--kubelet-client-key={key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]


@dataclass
class Cluster:
    workdir: Path
    subnets: network.Subnets
    before: network.HostState
    plane: ClusterControlPlane | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    lock: object = None
    started_in_s: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode} during startup; log tail:\n"
                                   + log_tail(self.workdir / f"{name}.log"))

    def _wait(self, condition, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if condition():
                return
            time.sleep(0.5)
        raise ClusterError(f"{what} did not happen within {timeout:.0f} s; logs are in {self.workdir}")

    def component_kubeconfig(self, name: str, common_name: str, organization: str | None = None) -> Path:
        cert, key = certs.client_cert(self.plane.files, self.workdir / "pki" / name, common_name, organization)
        return write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.plane.host, self.plane.files.ca_cert,
                                user={"client-certificate": str(cert), "client-key": str(key)})

    def import_images(self, images: list[ImageArchive]) -> None:
        for image in images:
            containerd.ctr(self.workdir).import_archive(image)

    def stop(self) -> None:
        """Stop it and leave the machine as it was; safe to call after a failed or partial start."""
        for name in ("kube-scheduler", "kube-controller-manager"):
            terminate(self.procs.pop(name, None))
        if self.procs.get("kubelet") and self.plane and self.plane.apiserver:
            self._delete_all_pods()
        for name in ("kubelet", "kube-proxy"):
            terminate(self.procs.pop(name, None))
        proxy = kube_binary_path("kube-proxy")  # no build lock: another session may hold it for minutes
        if proxy.exists():
            subprocess.run([str(proxy), "--cleanup"], capture_output=True)
        if self.procs.get("containerd"):
            containerd.ctr(self.workdir).remove_containers()
        terminate(self.procs.pop("containerd", None))
        kill_processes_mentioning(self.workdir)  # containerd-shim-runc-v2 of a pod the kubelet left behind
        network.unmount_all_under(self.workdir)
        network.remove_netns(self.before)
        network.restore_iptables(self.before)
        network.delete_bridge(self.subnets)
        if self.plane:
            self.plane.stop()
        if self.lock:
            self.lock.close()
            self.lock = None

    def _delete_all_pods(self, timeout: float = 180.0) -> None:
        """The kubelet removes a deleted pod's object only after its containers, sandbox, network namespace
        and volumes are gone: an empty pod list means a clean teardown."""
        try:
            with self.api() as api:
                core = client.CoreV1Api(api)
                for pod in core.list_pod_for_all_namespaces().items:
                    core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
                deadline = time.monotonic() + timeout
                while core.list_pod_for_all_namespaces().items and time.monotonic() < deadline:
                    time.sleep(0.5)
        except Exception as exc:  # stop() goes on to remove what it can
            say(TERMINAL, f"cluster: deleting the pods failed ({exc}); removing their containers directly")


def _node_ready(api: client.ApiClient) -> bool:
    try:
        found = client.CoreV1Api(api).read_node(NODE_NAME)
    except client.ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in (found.status.conditions or []))


def _has_default_service_account(api: client.ApiClient, namespace: str) -> bool:
    """Pods are refused until the controller-manager made their namespace's `default` ServiceAccount."""
    try:
        client.CoreV1Api(api).read_namespaced_service_account("default", namespace)
        return True
    except client.ApiException:
        return False


def prepare(log=TERMINAL) -> None:
    """Everything that takes long and is done once per machine: Debian packages, Go builds, the pause image."""
    if os.geteuid() != 0:
        raise ClusterError("the cluster needs root (a kubelet, containerd, a bridge and iptables rules); "
                           "run the tests as root, as CI does")
    ensure_packages(*PACKAGES)
    ensure_binaries(log)
    ensure_kube_binaries(*COMPONENTS, log=log)
    pause_image()


def start(workdir: Path | None = None, images: list[ImageArchive] = (), log=TERMINAL,
          timeout: float = 300.0) -> Cluster:
    """Start a cluster whose node is Ready, with `images` imported. Raises ClusterError saying why not."""
    prepare(log)
    began = time.monotonic()
    lock = machine_lock("cluster", log)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kvmemo-cluster-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(workdir, network.choose_subnets(), network.snapshot(), lock=lock)
    try:
        _start(cluster, list(images), timeout)
    except BaseException:
        cluster.stop()
        raise
    cluster.started_in_s = time.monotonic() - began
    return cluster


def _start(cluster: Cluster, images: list[ImageArchive], timeout: float) -> None:
    workdir, subnets = cluster.workdir, cluster.subnets
    shutil.rmtree(workdir / "etcd", ignore_errors=True)  # a kept workdir's old objects name old addresses
    network.create_bridge(subnets)
    plane = ClusterControlPlane(ensure_binaries(), workdir, address=subnets.gateway,
                                service_cidr=str(subnets.service_cidr), subnets=subnets)
    cluster.plane = plane
    plane.start()
    files = plane.files
    manager, scheduler, kubelet, proxy = ensure_kube_binaries(*COMPONENTS)

    pause = pause_image()
    cluster._spawn("containerd", ["containerd", "--config", str(containerd.write_config(workdir, subnets, pause.ref))])
    cluster._wait(containerd.ctr(workdir).answers, "containerd answering", 60)
    cluster.import_images([pause, *images])

    kubeconfig = cluster.component_kubeconfig("kube-controller-manager", "system:kube-controller-manager")
    cluster._spawn("kube-controller-manager", [
        str(manager), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
        "--use-service-account-credentials=true", f"--service-account-private-key-file={files.sa_key}",
        f"--root-ca-file={files.ca_cert}", "--cluster-name=kvmemo-cluster", "-v=1",
    ])
    kubeconfig = cluster.component_kubeconfig("kube-scheduler", "system:kube-scheduler")
    cluster._spawn("kube-scheduler", [
        str(scheduler), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false", "-v=1",
    ])
    kubeconfig = cluster.component_kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
    kubelet_config = node.kubelet_config(
        workdir / "kubelet-config.json", subnets=subnets, ca_cert=files.ca_cert,
        runtime_socket=containerd.socket(workdir), port=free_port(), healthz_port=free_port(),
        pod_logs=workdir / "pod-logs")
    cluster._spawn("kubelet", [
        str(kubelet), f"--config={kubelet_config}", f"--kubeconfig={kubeconfig}",
        f"--root-dir={workdir / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={subnets.gateway}",
        # When a restarted container's successor is created but not yet running, the kubelet counts both as
        # dead and, keeping one (the default), removes the one that died: `kubectl logs --previous` then
        # finds no previous container (seen in test_production's test 3). Two keeps both.
        "--maximum-dead-containers-per-container=2", "-v=1",
    ])
    kubeconfig = cluster.component_kubeconfig("kube-proxy", "system:kube-proxy")
    proxy_config = node.kube_proxy_config(
        workdir / "kube-proxy-config.json", subnets=subnets, kubeconfig=kubeconfig, node_name=NODE_NAME,
        healthz_port=free_port(), metrics_port=free_port())
    cluster._spawn("kube-proxy", [str(proxy), f"--config={proxy_config}", "-v=1"])

    with cluster.api() as api:
        cluster._wait(lambda: _node_ready(api), f"node {NODE_NAME} Ready", timeout)
        cluster._wait(lambda: _has_default_service_account(api, "default"),
                      "the controller-manager creating default/default ServiceAccount", timeout)


def remove(cluster: Cluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.workdir, ignore_errors=True)
