"""One real etcd + kube-apiserver for the whole test session (tests/envtest), shared by tests/k8s."""

import signal
import subprocess
import sys

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import tests.envtest as envtest
from tests.envtest.clients import admin_client, impersonating_client, service_account_user, token_kubeconfig
from tests.k8s.kube import CLUSTER_MANIFESTS, PART_OF, apply, load_manifest, new_namespace, ready, start_controller, wait_for
from tests.ports import free_port


BUILD_ERRORS: list[Exception] = []


class _TerminalLog:
    def __init__(self, config):
        self.reporter = config.pluginmanager.get_plugin("terminalreporter")

    def write(self, text: str) -> None:
        if self.reporter:
            self.reporter.write(text)

    def flush(self) -> None:
        pass


def pytest_collection_modifyitems(session, config, items):
    """The first build of etcd and kube-apiserver takes far longer than pytest-timeout lets one test run,
    so it happens here, after collection and before any test starts."""
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in items):
        try:
            envtest.ensure_binaries(log=_TerminalLog(config))
        except envtest.BuildError as exc:
            BUILD_ERRORS.append(exc)


@pytest.fixture(scope="session")
def control_plane():
    if BUILD_ERRORS:
        pytest.fail(f"the Kubernetes tests need etcd and kube-apiserver from tests/envtest, and {BUILD_ERRORS[0]}",
                    pytrace=False)
    try:
        plane = envtest.start(log=sys.stderr)
    except (envtest.BuildError, envtest.ControlPlaneError) as exc:
        pytest.fail(f"the Kubernetes tests need etcd and kube-apiserver from tests/envtest, and {exc}",
                    pytrace=False)
    yield plane
    envtest.remove(plane)


@pytest.fixture(scope="session")
def admin(control_plane):
    with admin_client(control_plane) as api:
        yield api


@pytest.fixture(scope="session")
def admission_policy(control_plane, admin):
    """Installed once per session (it is cluster-scoped), and waited for until it enforces."""
    apply(admin, load_manifest("admission-policy.yaml", CLUSTER_MANIFESTS))
    probe = new_namespace(admin, "probe")
    as_pod = impersonating_client(control_plane, service_account_user(probe, "kvmemo"))

    def denied() -> bool:
        try:
            client.CoreV1Api(as_pod).patch_namespaced_config_map(
                "kvmemo", probe, {"metadata": {"labels": {**PART_OF, "probe": "1"}}},
                _content_type="application/merge-patch+json")
            client.CoreV1Api(admin).patch_namespaced_config_map(
                "kvmemo", probe, {"metadata": {"labels": {"probe": None}}},
                _content_type="application/merge-patch+json")
            return False
        except ApiException as exc:
            return exc.status in (403, 422) and "kvmemo" in (exc.body or "")

    wait_for(denied, interval=0.2, what="the ValidatingAdmissionPolicy enforcing")
    as_pod.close()


@pytest.fixture
def namespace(admin, admission_policy):
    return new_namespace(admin)


@pytest.fixture
def pod_env(control_plane, namespace, tmp_path, monkeypatch):
    """The environment a pod gets: downward API names and its service account's credentials."""
    kubeconfig = token_kubeconfig(control_plane, tmp_path / "pod.kubeconfig", namespace, "kvmemo")
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    monkeypatch.setenv("POD_NAME", "pod-a")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return kubeconfig


class Controllers:
    """Starts controller processes for one test and stops whatever is left at the end."""

    def __init__(self, plane, namespace, tmp_path):
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.kubeconfig = token_kubeconfig(plane, tmp_path / "controller.kubeconfig", namespace, "kvmemo-controller")
        self.procs: list[tuple[subprocess.Popen, int]] = []

    def start(self, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
        port = free_port()
        log = self.tmp_path / f"controller-{len(self.procs)}.log"
        proc = start_controller(self.kubeconfig, self.namespace, port, log, *extra, env=env)
        self.procs.append((proc, port))
        wait_for(lambda: ready(port) or proc.poll() is not None, what=f"controller on :{port} ready")
        return proc, port

    def log(self, index: int = 0) -> str:
        return (self.tmp_path / f"controller-{index}.log").read_text()

    def stop_all(self):
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def controllers(control_plane, namespace, tmp_path):
    c = Controllers(control_plane, namespace, tmp_path)
    yield c
    c.stop_all()
    for i in range(len(c.procs)):
        print(f"--- controller {i} log ---\n{c.log(i)[-4000:]}")  # pytest shows it when the test failed
