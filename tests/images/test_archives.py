"""The archives: named so that containerd and podman find them by ref, configured as the chart expects."""

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.containerd import remove_mounted_tree
from tests.debian import ensure_packages
from tests.progress import run_with_progress

LOAD_TIMEOUT_S = 780  # within pytest-timeout's 900 s


def image_config(archive) -> dict:
    with tarfile.open(archive.path) as tar:
        def blob(digest: str) -> dict:
            return json.load(tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}"))
        index = json.load(tar.extractfile("index.json"))
        [manifest] = index["manifests"]
        assert manifest["annotations"]["org.opencontainers.image.ref.name"] == archive.ref
        return blob(blob(manifest["digest"])["config"]["digest"])["config"]


@pytest.mark.parametrize("name, command", [("service", ["serve"]), ("controller", ["controller"])])
def test_image_runs_kvmemo_as_the_charts_user(built_images, name, command):
    config = image_config(getattr(built_images, name))
    assert config["Entrypoint"] == ["kvmemo"]
    assert config["Cmd"] == command
    assert config["User"] == "10001:10001"
    assert "HOME=/home/kvmemo" in config["Env"]


def test_service_image_keeps_its_caches_where_the_chart_mounts_emptydirs(built_images):
    env = image_config(built_images.service)["Env"]
    for variable in ("XDG_CACHE_HOME=/home/kvmemo/.cache", "TRITON_CACHE_DIR=/home/kvmemo/.cache/kernels/triton",
                     "TORCHINDUCTOR_CACHE_DIR=/home/kvmemo/.cache/kernels/inductor",
                     "CUDA_CACHE_PATH=/home/kvmemo/.cache/kernels/nv"):
        assert variable in env


@pytest.mark.parametrize("name", ["controller", "service"])
def test_podman_loads_the_archive(built_images, name):
    """The archive `podman load` reads is the one `ctr images import` reads in the other tests; the service's
    (3.4 GB of gzip layers) takes minutes, most of it unpacking. The loaded image is removed afterwards."""
    ensure_packages("podman")
    archive = getattr(built_images, name)
    storage = tempfile.mkdtemp(prefix="kvmemo-podman-", dir="/var/tmp")
    podman = ["podman", "--root", f"{storage}/root", "--runroot", f"{storage}/run", "--tmpdir", f"{storage}/tmp",
              "--events-backend=none"]
    try:
        code, output = run_with_progress([*podman, "load", "--input", str(archive.path)],
                                         f"tests: podman load {archive.path.name}", timeout=LOAD_TIMEOUT_S)
        assert code == 0, output
        listed = subprocess.run([*podman, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                                capture_output=True, text=True, timeout=60)
        assert listed.stdout.split() == [archive.ref]
    finally:
        subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True, timeout=300)
        remove_mounted_tree(Path(storage))
