"""One real single-node cluster for this package's tests, started as a person would start it
(`python -m tests.cluster`) and stopped with SIGTERM after the last of them; its teardown fails if the stop
left anything behind. Package scope, not session: the cluster holds the machine lock on containerd's kept
root, which tests/images' containerd takes next."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import config

import tests.cluster as cluster_harness
from tests.cluster import containerd, network
from tests.cluster.local_images import echo_image
from tests.images import ImageError, build_images
from tests.progress import TERMINAL, say

REPO = Path(__file__).resolve().parents[2]
PREPARE_ERRORS: list[Exception] = []
IMAGES: dict = {}
START_TIMEOUT_S = 600.0


def pytest_collection_modifyitems(session, config, items):
    """Packages and the first Go builds take longer than one test may run, so they happen before any test."""
    if any("kube_cluster" in getattr(item, "fixturenames", ()) for item in items):
        try:
            cluster_harness.prepare(TERMINAL)
        except Exception as exc:  # reported by the fixture, as the test's failure
            PREPARE_ERRORS.append(exc)
    if any("kvmemo_images" in getattr(item, "fixturenames", ()) for item in items):
        try:
            IMAGES["built"] = build_images()
        except ImageError as exc:
            IMAGES["error"] = exc


@dataclass(frozen=True)
class RunningCluster:
    kubeconfig: Path
    workdir: Path
    bridge: str
    pod_cidr: str
    service_cidr: str
    node_ip: str
    started_in_s: float

    def kubectl(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def api(self):
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def log(self, component: str) -> str:
        return (self.workdir / f"{component}.log").read_text(errors="replace")


def _wait_for_info(proc: subprocess.Popen, info: Path, log: Path) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not info.exists():
        if proc.poll() is not None:
            pytest.fail(f"`python -m tests.cluster` exited {proc.returncode} before the node was Ready:\n"
                        + log.read_text(errors="replace")[-4000:], pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"no Ready node within {START_TIMEOUT_S:.0f} s:\n" + log.read_text()[-4000:], pytrace=False)
        time.sleep(0.5)
    return json.loads(info.read_text())


@pytest.fixture(scope="package")
def kube_cluster(tmp_path_factory):
    if PREPARE_ERRORS:
        pytest.fail(f"the cluster tests need containerd, runc, the CNI plugins and the Kubernetes binaries, and "
                    f"{PREPARE_ERRORS[0]}", pytrace=False)
    base = tmp_path_factory.mktemp("cluster")
    workdir, kubeconfig, info, log = base / "w", base / "admin.kubeconfig", base / "info.json", base / "cli.log"
    before = network.snapshot()
    details = None
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster", f"--kubeconfig={kubeconfig}", f"--workdir={workdir}",
             f"--info={info}", f"--image={echo_image().ref}={echo_image().path}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        details = _wait_for_info(proc, info, log)
        say(TERMINAL, f"cluster: node Ready {details['started_in_s']} s after the start "
                      f"(bridge {details['bridge']}, pods {details['pod_cidr']})")
        yield RunningCluster(kubeconfig, workdir, details["bridge"], details["pod_cidr"], details["service_cidr"],
                             details["node_ip"], details["started_in_s"])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(300)
    if details is None:
        return
    assert code == 0, f"`python -m tests.cluster` exited {code} on SIGTERM:\n{log.read_text()[-4000:]}"
    left = cluster_harness.leftovers(workdir, details["bridge"], before)
    assert not left, "the stopped cluster left these behind:\n" + "\n".join(left)


@pytest.fixture(scope="package")
def kvmemo_images(kube_cluster):
    """The service and controller images from deploy/build-images.sh, imported into the cluster's containerd."""
    if "error" in IMAGES:
        pytest.fail(f"the kvmemo cluster tests need deploy/build-images.sh's images, and {IMAGES['error']}",
                    pytrace=False)
    images = IMAGES["built"]
    for archive in (images.service, images.controller):
        containerd.ctr(kube_cluster.workdir).import_archive(archive)
    return images


@pytest.fixture
def cluster_namespace(kube_cluster, request):
    """A fresh namespace that enforces the restricted Pod Security Standard, ready for pods."""
    name = f"t-{request.node.name.lower().replace('_', '-')[:40].strip('-')}-{os.urandom(2).hex()}"
    kube_cluster.kubectl("create", "namespace", name)
    kube_cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    kube_cluster.kubectl("wait", "--for=create", "serviceaccount/default",
                         "-n", name, "--timeout=120s")
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
