"""Debian's containerd as the tests run it, and `ctr` against it: one config for both of its users, image
import and container cleanup. tests/images starts one without the CRI plugin and runs containers with
`ctr run` (tests/images/containerd.py); tests/cluster starts one with the CRI plugin for its kubelet, with
the CNI config and runc wrapper that takes (tests/cluster/containerd.py).

Both keep their root (image content and unpacked layers) in one folder, kept_root(), so that the 3.4 GB
service archive is imported once per digest, whichever of them meets it first. Only one containerd may use
that root at a time: each holds machine_lock() while it runs.
"""

import fcntl
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO

from deploy.build_images import ImageArchive
from tests.envtest.build import tools_dir
from tests.progress import TERMINAL, run_with_progress, say

NAMESPACE = "k8s.io"  # where the kubelet's CRI looks
IMPORT_TIMEOUT_S = 1800.0  # the service image: 3.4 GB of gzip layers, unpacked for overlayfs on 2 loaded cores
# Snapshotters this machine cannot serve; disabled so that containerd does not log their failures.
UNUSED_SNAPSHOTTERS = ("btrfs", "zfs", "devmapper", "aufs")


# Also guards kube-proxy's KUBE-* iptables chains: one cluster per machine.
MACHINE_LOCK = Path("/var/lock/kvmemo-cluster.lock")


class ContainerdError(RuntimeError):
    pass


def kept_root() -> Path:
    """containerd's root, kept between runs in ~/.cache/kvmemo/cluster/containerd (the name predates
    tests/images using it too)."""
    return tools_dir().parent / "cluster" / "containerd"


def machine_lock(who: str, log=TERMINAL) -> IO:
    """The lock a containerd on kept_root() (and a cluster) holds while it runs; waits while another holds it.
    Closing the returned file releases it."""
    lock = open(MACHINE_LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(log, f"{who}: a cluster or another containerd uses {kept_root()} on this machine; "
                 f"waiting for {MACHINE_LOCK}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def config_toml(root: Path, state: Path, socket: Path, opt: Path, *, cri: bool) -> str:
    """containerd's config in folders of the caller's, with its gRPC socket at `socket`; without `cri`, the CRI
    plugin is off. The caller appends its plugins' sections."""
    disabled = [f"io.containerd.snapshotter.v1.{name}" for name in UNUSED_SNAPSHOTTERS]
    if not cri:
        disabled.insert(0, "io.containerd.grpc.v1.cri")
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = {json.dumps(disabled)}
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


class Ctr:
    """`ctr` against the containerd listening on `socket`, in the k8s.io namespace."""

    def __init__(self, socket: Path):
        self.socket = socket

    def command(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "-n", NAMESPACE, *args]

    def __call__(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerdError(f"`ctr {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def answers(self) -> bool:
        return self("version", check=False, timeout=30).returncode == 0

    def image_digests(self) -> dict[str, str]:
        listed = self("images", "ls", check=False).stdout.splitlines()
        return {fields[0]: fields[2] for fields in (line.split() for line in listed[1:]) if len(fields) > 2}

    def import_archive(self, archive: ImageArchive, log=TERMINAL) -> None:
        """Imports and unpacks it, unless containerd already holds an image of that name and digest (a root
        kept between runs); then checks that containerd lists it by its ref."""
        digest = archive_digest(archive)
        if digest and self.image_digests().get(archive.ref) == digest:
            return
        code, output = run_with_progress(self.command("images", "import", str(archive.path)),
                                         f"tests: ctr images import {archive.path.name}", log=log,
                                         timeout=IMPORT_TIMEOUT_S)
        if code != 0:
            raise ContainerdError(f"ctr images import {archive.path} failed "
                                  f"({'timed out' if code is None else code}):\n{output[-2000:]}")
        listed = self.image_digests()
        if archive.ref not in listed:
            raise ContainerdError(f"{archive.path} imported, but containerd lists no image {archive.ref!r} "
                                  f"(it has: {', '.join(listed)[:500]})")

    def tag(self, source: str, name: str) -> None:
        """A second name for an imported image (replacing what had that name)."""
        self("images", "rm", name, check=False)
        self("images", "tag", source, name)

    def remove_containers(self) -> None:
        """Kills and deletes every task, then deletes every container (and its writable layer)."""
        tasks = self("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self("tasks", "kill", "-s", "SIGKILL", task, check=False)
        for task in tasks:
            self("tasks", "delete", "-f", task, check=False)
        containers = self("containers", "ls", "-q", check=False).stdout.split()
        if containers:
            self("containers", "delete", *containers, check=False)


def archive_digest(archive: ImageArchive) -> str | None:
    """The manifest digest an OCI archive's index.json names (None for other formats)."""
    try:
        with tarfile.open(archive.path) as tar:
            index = json.load(tar.extractfile("index.json"))
    except (KeyError, OSError, tarfile.TarError, ValueError):
        return None
    manifests = index.get("manifests") or []
    return manifests[0].get("digest") if len(manifests) == 1 else None


def unmount_under(folder: Path) -> None:
    """Unmounts what is mounted under `folder` (snapshots, overlay storage made private), deepest first."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p == str(folder) or p.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


def remove_mounted_tree(folder: Path) -> None:
    """Unmounts what is mounted under `folder`, then removes it."""
    unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)
