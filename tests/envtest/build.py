"""Build etcd and kube-apiserver from the Go module beside this file, once per version.

Binaries are cached outside the clone, keyed by version, e.g.
~/.cache/kvmemo/tools/kube-apiserver-v1.37.2/kube-apiserver, so only the first run pays for the build.
"""

import contextlib
import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.progress import TERMINAL, run_with_progress, say

MODULE_DIR = Path(__file__).resolve().parent
KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kubernetes_version: str
    etcd_version: str


def tools_dir() -> Path:
    override = os.environ.get("KVMEMO_TOOLS_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "kvmemo" / "tools"


def pinned_version(module: str) -> str:
    text = (MODULE_DIR / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", text, re.MULTILINE)
    if not match:
        raise BuildError(f"{module} is not required in {MODULE_DIR / 'go.mod'}")
    return match.group(1)


def _ldflags_kube(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return "-s -w " + " ".join(flags)


def _ldflags_etcd(version: str) -> str:
    return f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-{version}"


def _go_build(package: str, version: str, out: Path, ldflags: str, log) -> None:
    go = shutil.which("go")
    if go is None:
        raise BuildError("`go` is not on PATH: install Go >= 1.26 to build etcd and kube-apiserver for the tests")
    # Every core: the build runs under `nice`, so other work on the machine still comes first. (Leaving one
    # free made a 2-core machine's cold builds take about twice as long.)
    jobs = os.environ.get("KVMEMO_GO_BUILD_P") or str(os.cpu_count() or 2)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
    tmp = out.with_name(out.name + ".partial")
    cmd = ["nice", "-n", "10", go, "build", "-p", jobs, "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package]
    what = f"tests: building {package} {version} (-p {jobs}; the first build takes many minutes)"
    code, output = run_with_progress(cmd, what, log, cwd=MODULE_DIR, env=env)
    if code != 0:
        raise BuildError(f"`{' '.join(cmd)}` failed with exit {code}:\n{output}")
    tmp.rename(out)
    say(log, f"tests: built {out}")


def kube_binary_path(command: str) -> Path:
    """Where the cached build of k8s.io/kubernetes/cmd/<command> at the pinned version lives."""
    return tools_dir() / f"{command}-{pinned_version(KUBERNETES_MODULE)}" / command


def ensure_kube_binaries(*commands: str, log=TERMINAL) -> list[Path]:
    """Build each missing k8s.io/kubernetes/cmd/<command> at the pinned version; return their paths."""
    version = pinned_version(KUBERNETES_MODULE)
    paths = [kube_binary_path(command) for command in commands]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock():
        for command, path in zip(commands, paths):
            if not path.exists():
                _go_build(f"{KUBERNETES_MODULE}/cmd/{command}", version, path, _ldflags_kube(version), log)
    return paths


@contextlib.contextmanager
def _build_lock():
    """Two test sessions must not build into the same place at once."""
    tools_dir().mkdir(parents=True, exist_ok=True)
    with open(tools_dir() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_binaries(log=TERMINAL) -> Binaries:
    """Return cached binaries, building any that are missing. Raises BuildError saying why."""
    etcd_version = pinned_version(ETCD_MODULE)
    etcd = tools_dir() / f"etcd-{etcd_version}" / "etcd"
    etcd.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock():
        if not etcd.exists():
            _go_build("./etcd", etcd_version, etcd, _ldflags_etcd(etcd_version), log)
    (kube,) = ensure_kube_binaries("kube-apiserver", log=log)
    return Binaries(kube, etcd, pinned_version(KUBERNETES_MODULE), etcd_version)


if __name__ == "__main__":
    print(ensure_binaries())
