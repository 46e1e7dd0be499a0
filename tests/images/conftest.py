"""The images are built once per machine (deploy/build-images.sh, cached by their inputs) and imported into
the containerd root the cluster keeps (once per digest, by whichever meets it first); every test runs a
container from them with `ctr run`.

The containerd lives for this package's tests only (scope="package"): it holds the machine lock on that
root, and the cluster in tests/cluster (also package-scoped) needs it after or before."""

import pytest

from tests.debian import ensure_packages
from tests.images import ImageError, build_images
from tests.images.containerd import Containerd, Tmpfs

BUILD: dict = {}

# As the chart mounts them: the root filesystem read-only, emptyDirs at ~/.cache, ~/.cache/kernels and /tmp.
CHART_MOUNTS = (Tmpfs("/home/kvmemo/.cache"), Tmpfs("/home/kvmemo/.cache/kernels"), Tmpfs("/tmp"))


def pytest_collection_modifyitems(session, config, items):
    """A first build takes far longer than pytest-timeout lets one test run, so it happens here, after
    collection and before any test starts."""
    if any("built_images" in getattr(item, "fixturenames", ()) for item in items):
        try:
            BUILD["images"] = build_images()
        except ImageError as exc:
            BUILD["error"] = exc


@pytest.fixture(scope="session")
def built_images():
    if "error" in BUILD:
        pytest.fail(f"the image tests need deploy/build-images.sh's images, and {BUILD['error']}", pytrace=False)
    return BUILD["images"]


@pytest.fixture(scope="package")
def containerd(built_images):
    ensure_packages("containerd", "runc")
    with Containerd() as running:
        yield running


@pytest.fixture(scope="package")
def service_ref(built_images, containerd) -> str:
    containerd.import_archive(built_images.service)
    return built_images.service.ref


@pytest.fixture(scope="package")
def controller_ref(built_images, containerd) -> str:
    containerd.import_archive(built_images.controller)
    return built_images.controller.ref
