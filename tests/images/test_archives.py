"""The archives: named so that containerd and podman find them by ref, configured as the chart expects."""

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.containerd import archive_digest, remove_mounted_tree
from tests.debian import ensure_packages
from tests.images import CACHE
from tests.progress import run_with_progress

LOAD_TIMEOUT_S = 780  # within pytest-timeout's 900 s
# The last `podman load` of the service archive that listed the archive's ref and digest: {ref, digest, podman}.
PODMAN_LOADED = CACHE / "podman-loaded.json"


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


def podman_version() -> str:
    return subprocess.run(["podman", "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def podman_load(archive) -> list[dict]:
    """`podman load` of the archive into a storage of its own, removed afterwards: what podman then lists."""
    storage = tempfile.mkdtemp(prefix="kvmemo-podman-", dir="/var/tmp")
    podman = ["podman", "--root", f"{storage}/root", "--runroot", f"{storage}/run", "--tmpdir", f"{storage}/tmp",
              "--events-backend=none"]
    try:
        code, output = run_with_progress([*podman, "load", "--input", str(archive.path)],
                                         f"tests: podman load {archive.path.name}", timeout=LOAD_TIMEOUT_S)
        assert code == 0, output
        listed = subprocess.run([*podman, "images", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}"],
                                capture_output=True, text=True, timeout=60)
        return [dict(zip(("ref", "digest"), line.split())) for line in listed.stdout.splitlines()]
    finally:
        subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True, timeout=300)
        remove_mounted_tree(Path(storage))


def recorded_load() -> dict | None:
    try:
        return json.loads(PODMAN_LOADED.read_text())
    except (OSError, ValueError):
        return None


def record_load(load: dict) -> None:
    partial = PODMAN_LOADED.with_name(PODMAN_LOADED.name + ".partial")
    partial.write_text(json.dumps(load))
    partial.replace(PODMAN_LOADED)


@pytest.mark.parametrize("name", ["controller", "service"])
def test_podman_loads_the_archive(built_images, name):
    """The archive `podman load` reads is the one `ctr images import` reads in the other tests; podman then
    lists it by the archive's ref and manifest digest. The controller's archive (90 MB, seconds) is loaded
    every run. The service's (3.4 GB of gzip layers) takes minutes, most of it unpacking, so it is loaded
    only when its digest or podman's version differs from the last load that passed, recorded in
    ~/.cache/kvmemo/images/podman-loaded.json: an archive podman loaded whole once loads the same way again,
    and a changed archive (any input of its build) or podman is loaded for real."""
    ensure_packages("podman")
    archive = getattr(built_images, name)
    expected = {"ref": archive.ref, "digest": archive_digest(archive), "podman": podman_version()}
    if name == "service" and recorded_load() == expected:
        return  # this podman loaded this archive and listed it by its ref and digest in an earlier run
    listed = podman_load(archive)
    assert len(listed) == 1, f"podman lists {listed} after loading {archive.path}"
    load = {**listed[0], "podman": expected["podman"]}
    assert load == expected
    if name == "service":
        record_load(load)
