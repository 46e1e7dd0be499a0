"""kvmemo's two images for the tests and the cluster harness, built by deploy/build-images.sh:

    images = tests.images.build_images()    # minutes on first use, then the cached archives
    images.service.ref, images.service.path  # localhost/kvmemo:0.1.0, ~/.cache/kvmemo/images/kvmemo-0.1.0-<hash>.oci.tar

The archives are OCI archives that `ctr -n k8s.io images import` names by their ref (and `podman load`
accepts); they are rebuilt only when an input changes (deploy/build_images.py says which).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy import build_images as builder
from deploy.build_images import ImageArchive  # (ref: str, path: Path)
from tests.debian import ensure_packages
from tests.progress import TERMINAL, run_with_progress

SCRIPT = builder.REPO / "deploy" / "build-images.sh"
CACHE = Path(os.environ.get("KVMEMO_IMAGES_CACHE", builder.DEFAULT_CACHE))
BUILD_TIMEOUT_S = 3600


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuiltImages:
    service: ImageArchive  # localhost/kvmemo:<version>
    controller: ImageArchive  # localhost/kvmemo-controller:<version>


def build_images(log=TERMINAL) -> BuiltImages:
    """Both images' archives, built where missing. Refs are `localhost/kvmemo:<version>` and
    `localhost/kvmemo-controller:<version>`, the version being pyproject.toml's. Installs mmdebstrap and
    buildah from Debian when they are missing; raises ImageError saying why a build failed."""
    ensure_packages("mmdebstrap", "buildah")
    code, output = run_with_progress([str(SCRIPT), "--cache", str(CACHE)], "tests: deploy/build-images.sh",
                                     log=log, timeout=BUILD_TIMEOUT_S, env={**os.environ, "PYTHON": sys.executable})
    if code != 0:
        raise ImageError(f"deploy/build-images.sh failed ({'timed out' if code is None else code}):\n{output}")
    printed = dict(line.split(" ", 1) for line in output.splitlines() if line.startswith("localhost/"))
    version = builder.project_version()
    archives = {}
    for name, repository in builder.IMAGES.items():
        ref = f"{repository}:{version}"
        if ref not in printed:
            raise ImageError(f"deploy/build-images.sh printed no archive for {ref}:\n{output}")
        archives[name] = ImageArchive(ref, Path(printed[ref]))
    return BuiltImages(**archives)
