"""The two images tests/cluster builds itself from Go sources in images/: the pod sandbox's pause image
and the smoke test's echo server. Each is built once per source hash into the tools cache."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.cluster.oci import ImageArchive, write_archive
from tests.envtest.build import BuildError, tools_dir

SOURCES = Path(__file__).resolve().parent / "images"
PAUSE = "kvmemo.test/pause"
ECHO = "kvmemo.test/echo"


def _build(name: str) -> tuple[Path, str]:
    source = SOURCES / name / "main.go"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = tools_dir() / "cluster-images" / f"{name}-{digest}" / name
    if not binary.exists():
        go = shutil.which("go")
        if go is None:
            raise BuildError(f"`go` is not on PATH: it builds the cluster's {name} image from {source}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="")
        tmp = binary.with_name(name + ".partial")
        result = subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), str(source)],
                                capture_output=True, text=True, env=env, cwd=binary.parent)
        if result.returncode != 0:
            raise BuildError(f"go build of {source} failed ({result.returncode}):\n{result.stderr[-2000:]}")
        tmp.rename(binary)
    return binary, digest


def _image(name: str, ref: str) -> ImageArchive:
    binary, digest = _build(name)
    archive = binary.with_name(f"{name}.oci.tar")
    tagged = f"{ref}:{digest}"
    if archive.exists():
        return ImageArchive(tagged, archive)
    return write_archive(archive, tagged, {name: binary}, [f"/{name}"])


def pause_image() -> ImageArchive:
    return _image("pause", PAUSE)


def echo_image() -> ImageArchive:
    return _image("echo", ECHO)
