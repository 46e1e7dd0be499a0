"""The archives: named so that containerd and podman find them by ref, configured as the chart expects."""

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.debian import ensure_packages
from tests.images.containerd import remove_mounted_tree


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
    for variable in ("XDG_CACHE_HOME=/home/kvmemo/.cache", "TRITON_CACHE_DIR=/home/kvmemo/.cache/triton",
                     "CUDA_CACHE_PATH=/home/kvmemo/.cache/nv"):
        assert variable in env


def test_podman_loads_the_controller_archive(built_images):
    """The same `buildah push` writes both archives; the controller's is the one small enough to load
    here in seconds (the service's is about 3 GB compressed, and ctr imports it in the other tests)."""
    ensure_packages("podman")
    storage = tempfile.mkdtemp(prefix="kvmemo-podman-", dir="/var/tmp")
    podman = ["podman", "--root", f"{storage}/root", "--runroot", f"{storage}/run", "--tmpdir", f"{storage}/tmp",
              "--events-backend=none"]
    try:
        loaded = subprocess.run([*podman, "load", "--input", str(built_images.controller.path)],
                                capture_output=True, text=True, timeout=600)
        assert loaded.returncode == 0, loaded.stderr
        listed = subprocess.run([*podman, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                                capture_output=True, text=True, timeout=60)
        assert listed.stdout.split() == [built_images.controller.ref]
    finally:
        subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True, timeout=120)
        remove_mounted_tree(Path(storage))
