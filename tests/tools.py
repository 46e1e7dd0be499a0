"""Command-line tools the tests need, installed on first use and cached outside the clone, keyed by
version. Each function returns the tool's path or raises ToolError saying why it could not be had."""

import os
import shutil
from pathlib import Path

from tests.progress import run_with_progress

HELM_VERSION = "v3.22.0"
HELM_KUBE_MINOR = "37"  # the k8s.io modules helm v3.22 is built with; its default for `helm template`
GRPCURL_VERSION = "v1.9.3"
CACHE = Path(os.environ.get("KVMEMO_TOOLS_CACHE", Path.home() / ".cache" / "kvmemo" / "tools"))


class ToolError(RuntimeError):
    pass


def _run(cmd: list[str], what: str, env: dict | None = None, timeout: int = 1200) -> None:
    """Says what it runs and, every 30 s while it runs, for how long (tests/progress.py)."""
    try:
        code, output = run_with_progress(cmd, what, env=env, timeout=timeout)
    except OSError as e:
        raise ToolError(f"{what}: {' '.join(cmd)} failed: {e}") from e
    if code is None:
        raise ToolError(f"{what}: {' '.join(cmd)} ran past {timeout} s:\n{output[-3000:]}")
    if code != 0:
        raise ToolError(f"{what}: {' '.join(cmd)} exited {code}:\n{output[-3000:]}")


def go_install(name: str, version: str, package: str, ldflags: str = "") -> Path:
    """`go install package@version` with CGO off into CACHE/<name>-<version>/<name>, built once."""
    binary = CACHE / f"{name}-{version}" / name
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToolError(f"cannot build {name} {version}: no `go` on PATH (Go 1.24+ is needed)")
    tmp = binary.parent.with_name(binary.parent.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(tmp), "GOFLAGS": "-mod=mod"}
    _run([go, "install", *(["-ldflags", ldflags] if ldflags else []), f"{package}@{version}"],
         f"tests: building {name} {version} ({package}@{version}) with go install", env=env)
    # Rename the finished folder into place, so an interrupted build never leaves a half binary.
    shutil.rmtree(binary.parent, ignore_errors=True)
    tmp.rename(binary.parent)
    return binary


def helm() -> Path:
    """helm built from the Go module proxy (the first build takes a few minutes)."""
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    # As helm's Makefile does; without these `helm template` assumes Kubernetes 1.20.
    for pkg in ("pkg/chartutil", "pkg/lint/rules"):
        ldflags += f" -X helm.sh/helm/v3/{pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/{pkg}.k8sVersionMinor={HELM_KUBE_MINOR}"
    return go_install("helm", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", ldflags)


def grpcurl() -> Path:
    return go_install("grpcurl", GRPCURL_VERSION, "github.com/fullstorydev/grpcurl/cmd/grpcurl")


def _debian_prometheus(name: str) -> Path:
    """promtool and prometheus come from Debian's `prometheus` package, installed when missing."""
    found = shutil.which(name)
    if found:
        return Path(found)
    if os.geteuid() != 0:
        raise ToolError(f"`{name}` is missing and installing Debian's `prometheus` package needs root: "
                        "run `apt-get install prometheus` once")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], "apt-get update", env=env)
    _run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
         "installing Debian's prometheus package", env=env)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"Debian's prometheus package installed but `{name}` is still not on PATH")
    return Path(found)


def promtool() -> Path:
    return _debian_prometheus("promtool")


def prometheus() -> Path:
    return _debian_prometheus("prometheus")


def kubectl() -> Path:
    """kubectl is not installed by the tests: it is part of the machine image (it brings kustomize)."""
    found = shutil.which("kubectl")
    if found is None:
        raise ToolError("`kubectl` is not on PATH; the deploy tests need it (v1.27+, with built-in kustomize)")
    return Path(found)
