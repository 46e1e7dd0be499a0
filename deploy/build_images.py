"""Build kvmemo's two images without a Docker daemon and export them as archives, cached by their inputs.

deploy/build-images.sh runs this (standard library only); tests/images.py calls `build()`. Per image:
  1. a Debian root filesystem made by mmdebstrap from the packages the Containerfile's stage names
     (cached by the package list; its dpkg manifest goes into the image's key);
  2. a wheelhouse of every Python package both images install, downloaded once on the host for the
     image's Python (bookworm's 3.11, x86-64) and installed offline in the build (cached by the
     requirements; its list of wheel files goes into the image's key);
  3. `buildah bud --isolation chroot` of deploy/Containerfile's stage on that base, with the wheelhouse
     mounted at /wheels, exported with `buildah push` as an OCI archive (gzip layers) that
     `ctr -n k8s.io images import`, `podman load` and `docker load` (Docker 25 and later) accept.
The archive's name holds a hash of everything that goes into it (the Containerfile, the files its COPY
lines name, this script, the version, the Debian manifest, the wheel list), so an unchanged input reuses
it; the last archive of each image is kept and older ones are deleted. Needs root (or rootless buildah
and mmdebstrap's unshare mode), mmdebstrap, buildah and the Debian and PyPI mirrors on first use.
"""

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTAINERFILE = REPO / "deploy" / "Containerfile"
DEFAULT_CACHE = Path.home() / ".cache" / "kvmemo" / "images"
SUITE = "bookworm"
MIRRORS = (f"deb http://deb.debian.org/debian {SUITE} main",
           f"deb http://deb.debian.org/debian {SUITE}-updates main",
           f"deb http://deb.debian.org/debian-security {SUITE}-security main")
# Documentation and translations stay out of the root filesystem; the copyright files stay in.
DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*",
                "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright")
# The wheels are chosen for the image's interpreter (bookworm's python3, glibc 2.36), not the host's; pip
# takes a wheel for an older glibc only where its tag is listed.
WHEEL_TARGET = ("--only-binary=:all:", "--implementation=cp", "--python-version=3.11", "--abi=cp311",
                *[f"--platform=manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)],
                "--platform=manylinux2014_x86_64", "--platform=manylinux2010_x86_64", "--platform=manylinux1_x86_64")
IMAGES = {"service": "localhost/kvmemo", "controller": "localhost/kvmemo-controller"}
ARCHIVE_SUFFIX = ".oci.tar"


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Stage:
    """One `FROM ... AS name` stage of the Containerfile: its ARG defaults and the paths its COPY lines read."""
    name: str
    args: dict[str, str]
    sources: tuple[str, ...]

    @property
    def debian_packages(self) -> tuple[str, ...]:
        return tuple(self.args["DEBIAN_PACKAGES"].split())


@dataclass(frozen=True)
class ImageArchive:
    ref: str
    path: Path


def read_stages(text: str) -> dict[str, Stage]:
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: dict[str, Stage] = {}
    name, args, sources = None, {}, []
    for line in [*lines, "FROM end"]:
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            if name:
                stages[name] = Stage(name, args, tuple(sources))
            name, args, sources = rest.split()[-1] if " AS " in rest else None, {}, []
        elif word == "ARG" and name and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
        elif word == "COPY" and name:
            sources += rest.split()[:-1]
    return stages


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def sha256(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def source_files(sources: tuple[str, ...]) -> list[Path]:
    """What the build context gives the COPY lines: .dockerignore leaves out __pycache__ and *.pyc."""
    files = []
    for source in sources:
        path = REPO / source
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                files.append(file)
    return files


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise BuildError(f"{' '.join(command[:3])} ... failed with exit status {result.returncode}:\n{output}")
    return result


def say(message: str) -> None:
    print(f"build-images: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(message: str):
    say(message)
    started = time.monotonic()
    yield
    say(f"{message}: done in {time.monotonic() - started:.0f} s")


def keep_only(folder: Path, current: set[Path]) -> None:
    """Deletes what older keys left in `folder` beside the `current` entries (a wheelhouse holds GBs)."""
    for other in folder.iterdir():
        if other not in current:
            shutil.rmtree(other) if other.is_dir() else other.unlink()


def base_rootfs(stage: Stage, cache: Path) -> Path:
    """The stage's Debian root filesystem as a tarball, with `manifest.txt` (package=version) beside it."""
    key = sha256(SUITE, *MIRRORS, *DPKG_OPTIONS, *stage.debian_packages)[:16]
    folder = cache / "rootfs" / f"{stage.name}-{key}"
    if (folder / "manifest.txt").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest = folder / "manifest.partial"
    with step(f"mmdebstrap {SUITE} with {' '.join(stage.debian_packages)}"):
        run(["mmdebstrap", "--variant=apt", f"--include={','.join(stage.debian_packages)}",
             *[f"--dpkgopt={option}" for option in DPKG_OPTIONS],
             f"--customize-hook=dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f='${{Package}}=${{Version}}\\n' > {manifest}",
             SUITE, str(folder / "rootfs.tar"), *MIRRORS])
    manifest.rename(folder / "manifest.txt")
    return folder


def wheel_requirements(stages: dict[str, Stage]) -> tuple[list[str], list[str]]:
    """(requirements with their dependencies, packages without): everything both images pip install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    controller = (REPO / "deploy" / "controller-requirements.txt").read_text().splitlines()
    with_deps = [*project["build-system"]["requires"], *project["project"]["dependencies"],
                 *[line.strip() for line in controller if line.strip() and not line.startswith("#")]]
    return list(dict.fromkeys(with_deps)), [stages["service"].args["MODEL_PACKAGE"]]


def wheelhouse(stages: dict[str, Stage], cache: Path) -> Path:
    """A folder of wheels with `lock.txt` (their file names) written last; pip resolves once, on the host."""
    with_deps, no_deps = wheel_requirements(stages)
    folder = cache / "wheels" / sha256(*WHEEL_TARGET, *with_deps, "--no-deps", *no_deps)[:16]
    if (folder / "lock.txt").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)  # files already there (an interrupted download) are reused
    pip = [sys.executable, "-m", "pip", "download", "--no-cache-dir", "--progress-bar=off", "--dest", str(folder),
           *WHEEL_TARGET]
    with step(f"pip download {len(with_deps) + len(no_deps)} requirements and their dependencies into {folder}"):
        run([*pip, *with_deps])
        run([*pip, "--no-deps", *no_deps])
    wheels = sorted(p.name for p in folder.iterdir() if p.suffix == ".whl")
    (folder / "lock.partial").write_text("".join(f"{name}\n" for name in wheels))
    (folder / "lock.partial").rename(folder / "lock.txt")
    return folder


def image_key(stage: Stage, rootfs: Path, wheels: Path) -> str:
    inputs = [CONTAINERFILE, Path(__file__), REPO / "deploy" / "build-images.sh", REPO / ".dockerignore",
              *source_files(stage.sources)]
    return sha256(stage.name, project_version(),
                  *[f"{p.relative_to(REPO)}\0".encode() + p.read_bytes() for p in inputs],
                  (rootfs / "manifest.txt").read_bytes(), (wheels / "lock.txt").read_bytes())[:16]


class Buildah:
    """buildah with a storage of its own under the cache, emptied when the build ends."""

    def __init__(self, cache: Path):
        self.root = Path(tempfile.mkdtemp(prefix="buildah-", dir=cache))

    def __call__(self, *args: str) -> str:
        return run(["buildah", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                    *args], cwd=REPO).stdout.strip()

    def close(self) -> None:
        try:
            self("rmi", "--all", "--force")
        except BuildError as error:
            say(f"buildah rmi --all: {error}")
        storage = self.root / "storage" / "overlay"
        if storage.is_dir() and os.path.ismount(storage):  # the overlay driver mounts its folder privately
            subprocess.run(["umount", str(storage)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def build_image(buildah: Buildah, stages: dict[str, Stage], name: str, rootfs: dict[str, Path], wheels: Path,
                archive: Path, ref: str) -> None:
    bases = {}
    for stage_name, folder in rootfs.items():  # every FROM needs its base, even a skipped stage's
        base = f"localhost/kvmemo-base-{stage_name}:{folder.name.rpartition('-')[2]}"
        if not buildah("images", "--quiet", "--filter", f"reference={base}"):
            container = buildah("from", "scratch")
            buildah("add", container, str(folder / "rootfs.tar"), "/")
            buildah("commit", "--quiet", container, base)
            buildah("rm", container)
        bases[f"{stage_name.upper()}_BASE"] = base
    with step(f"buildah bud --target {name} -t {ref}"):
        buildah("bud", "--isolation", "chroot", "--pull=never", "--target", name, "--volume", f"{wheels}:/wheels:ro",
                *[f"--build-arg={key}={value}" for key, value in bases.items()],
                "--file", str(CONTAINERFILE), "--tag", ref, str(REPO))
    partial = archive.with_name(archive.name + ".partial")
    with step(f"buildah push {ref} to {archive}"):
        buildah("push", "--quiet", "--compression-format", "gzip", ref, f"oci-archive:{partial}:{ref}")
    partial.rename(archive)


def build(cache: Path = DEFAULT_CACHE) -> dict[str, ImageArchive]:
    """Each image's archive, built where its inputs changed (under an exclusive lock on the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    stages = read_stages(CONTAINERFILE.read_text())
    version = project_version()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rootfs = {name: base_rootfs(stages[name], cache) for name in IMAGES}
        wheels = wheelhouse(stages, cache)
        keep_only(cache / "wheels", {wheels})
        keep_only(cache / "rootfs", set(rootfs.values()))
        archives, missing = {}, []
        for name, repository in IMAGES.items():
            stem = repository.rpartition("/")[2]
            path = cache / f"{stem}-{version}-{image_key(stages[name], rootfs[name], wheels)}{ARCHIVE_SUFFIX}"
            archives[name] = ImageArchive(f"{repository}:{version}", path)
            if not path.exists():
                missing.append(name)
        if missing:
            buildah = Buildah(cache)
            try:
                for name in missing:
                    build_image(buildah, stages, name, rootfs, wheels, archives[name].path, archives[name].ref)
            finally:
                buildah.close()
        for name, archive in archives.items():
            for old in cache.glob(f"{IMAGES[name].rpartition('/')[2]}-[0-9]*{ARCHIVE_SUFFIX}"):
                if old != archive.path:
                    old.unlink()
        return archives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/build-images.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the archives, root filesystems and wheels are kept (default: %(default)s)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("mmdebstrap", "buildah") if shutil.which(tool) is None]
    if missing:
        print(f"build-images: {' and '.join(missing)} not found: apt-get install {' '.join(missing)}",
              file=sys.stderr)
        return 2
    try:
        archives = build(args.cache)
    except BuildError as error:
        print(f"build-images: {error}", file=sys.stderr)
        return 1
    for archive in archives.values():
        print(archive.ref, archive.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
