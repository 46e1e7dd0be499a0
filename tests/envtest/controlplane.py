"""etcd + kube-apiserver on free loopback ports, like controller-runtime's envtest, driven from Python."""

import base64
import json
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.envtest import certs
from tests.envtest.build import Binaries, ensure_binaries
from tests.ports import free_port

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class ControlPlane:
    binaries: Binaries
    workdir: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    address: str = "127.0.0.1"  # where kube-apiserver listens and what it advertises
    service_cidr: str = "10.0.0.0/24"
    files: certs.CertFiles | None = None
    etcd: subprocess.Popen | None = None
    apiserver: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    def start(self, timeout: float = 120.0) -> "ControlPlane":
        self.files = certs.generate(self.workdir / "pki", **self.serving_sans())
        self._start_etcd()
        self.start_apiserver(timeout)
        write_kubeconfig(self.kubeconfig, self.host, self.files.ca_cert, user={
            "client-certificate-data": _b64(self.files.admin_cert),
            "client-key-data": _b64(self.files.admin_key),
        })
        return self

    def serving_sans(self) -> dict:
        return {"serving_ips": (self.address,)}

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = self._spawn("etcd", [
            str(self.binaries.etcd),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # throwaway data: fsync would only make tests slower
            "--log-level=warn",
        ])

    def apiserver_args(self) -> list[str]:
        f = self.files
        return [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={f.serving_cert}", f"--tls-private-key-file={f.serving_key}",
            f"--client-ca-file={f.ca_cert}",
            f"--service-account-key-file={f.sa_pub}",
            f"--service-account-signing-key-file={f.sa_key}",
            f"--service-account-issuer={SA_ISSUER}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--endpoint-reconciler-type=none",  # it refuses a loopback advertise address
            "--disable-admission-plugins=ServiceAccount",  # no controller-manager creates `default` SAs
            "--allow-privileged=true",
            "-v=0",
        ]

    def start_apiserver(self, timeout: float = 120.0) -> None:
        self.apiserver = self._spawn("kube-apiserver", [str(self.binaries.kube_apiserver), *self.apiserver_args()])
        self._wait_ready(timeout)

    def stop_apiserver(self) -> None:
        terminate(self.apiserver)
        self.apiserver = None

    def stop(self) -> None:
        terminate(self.apiserver)
        terminate(self.etcd)
        self.apiserver = self.etcd = None

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.files.ca_cert))
        ctx.load_cert_chain(str(self.files.admin_cert), str(self.files.admin_key))
        return ctx

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ctx = self.ssl_context()
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self.etcd), ("kube-apiserver", self.apiserver)):
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {proc.returncode} during startup; log tail:\n"
                        + log_tail(self.workdir / f"{name}.log"))
            try:
                with urllib.request.urlopen(f"{self.host}/readyz", context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f} s (last: {last}); log tail:\n"
                                + log_tail(self.workdir / "kube-apiserver.log"))


def terminate(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, host: str, ca_cert: Path, user: dict) -> Path:
    """JSON is valid YAML, so no YAML library is needed to write a kubeconfig."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
        "clusters": [{"name": "envtest", "cluster": {"server": host, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": "envtest", "user": user}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "envtest"}}],
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def start(workdir: Path | None = None, log=None) -> ControlPlane:
    """Build if missing, then start. Raises BuildError or ControlPlaneError saying why."""
    binaries = ensure_binaries() if log is None else ensure_binaries(log)
    chosen = workdir is not None
    plane = ControlPlane(binaries, Path(workdir or tempfile.mkdtemp(prefix="kvmemo-envtest-")))
    try:
        return plane.start()
    except BaseException:
        # The error carries the log tails; a directory the caller chose is kept for a closer look.
        if chosen:
            plane.stop()
        else:
            remove(plane)
        raise


def remove(plane: ControlPlane) -> None:
    plane.stop()
    shutil.rmtree(plane.workdir, ignore_errors=True)
