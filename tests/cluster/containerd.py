"""Debian's containerd with its CRI plugin, in the cluster's own directories, and image import with ctr.

Its state, socket, CNI config and IP allocations live under the cluster's workdir; the network
namespaces go where containerd 1.6 always puts them (/var/run/netns). Its root (image content and
unpacked layers, no mounts) is kept between clusters in ~/.cache/kvmemo/cluster/containerd, so an image
imported once (the service image takes minutes to unpack) is there for the next cluster; stop() deletes
every container from it, and one cluster per machine uses it at a time.
"""

import json
import subprocess
import tarfile
from pathlib import Path

from tests.cluster.network import Subnets
from tests.cluster.oci import ImageArchive
from tests.envtest.build import tools_dir

RUNC_WRAPPER = Path(__file__).resolve().parent / "runc_wrapper.py"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins


class ContainerdError(RuntimeError):
    pass


def root() -> Path:
    return tools_dir().parent / "cluster" / "containerd"


def _ctr(workdir: Path) -> list[str]:
    return ["ctr", "--address", str(socket(workdir)), "-n", "k8s.io"]


def socket(workdir: Path) -> Path:
    return workdir / "containerd" / "containerd.sock"


def write_cni_config(workdir: Path, subnets: Subnets) -> Path:
    """The bridge plugin attaches pods to the bridge the harness made; isGateway stays off so that the
    plugin neither re-addresses the bridge nor turns on the host's IP forwarding."""
    conf_dir = workdir / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "0.4.0", "name": "kvmemo-cluster",
        "plugins": [{
            "type": "bridge", "bridge": subnets.bridge, "isGateway": False, "ipMasq": False, "hairpinMode": True,
            "ipam": {
                "type": "host-local", "dataDir": str(workdir / "cni" / "ipam"),
                "ranges": [[{"subnet": str(subnets.pod_cidr), "gateway": subnets.gateway}]],
                "routes": [{"dst": "0.0.0.0/0", "gw": subnets.gateway}],
            },
        }],
    }
    path = conf_dir / "10-kvmemo.conflist"
    path.write_text(json.dumps(conflist, indent=2))
    return conf_dir


def write_config(workdir: Path, subnets: Subnets, pause_ref: str) -> Path:
    base = workdir / "containerd"
    base.mkdir(parents=True, exist_ok=True)
    cni_conf_dir = write_cni_config(workdir, subnets)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{root()}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket(workdir)}"
[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[{cri}]
  sandbox_image = "{pause_ref}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC_WRAPPER}"
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf_dir}"
"""
    path = base / "config.toml"
    path.write_text(text)
    return path


def _archive_digest(archive: ImageArchive) -> str | None:
    """The manifest digest an OCI archive's index.json names (None for other formats)."""
    try:
        with tarfile.open(archive.path) as tar:
            index = json.load(tar.extractfile("index.json"))
    except (KeyError, OSError, tarfile.TarError, ValueError):
        return None
    manifests = index.get("manifests") or []
    return manifests[0].get("digest") if len(manifests) == 1 else None


def _image_digests(workdir: Path) -> dict[str, str]:
    listed = subprocess.run([*_ctr(workdir), "images", "ls"], capture_output=True, text=True).stdout.splitlines()
    return {fields[0]: fields[2] for fields in (line.split() for line in listed[1:]) if len(fields) > 2}


def import_image(workdir: Path, archive: ImageArchive) -> None:
    """Into the k8s.io namespace, where the kubelet's CRI looks; unpacked for the overlayfs snapshotter.
    An image that containerd's kept root already holds under that name and digest is not imported again."""
    digest = _archive_digest(archive)
    if digest and _image_digests(workdir).get(archive.ref) == digest:
        return
    cmd = [*_ctr(workdir), "images", "import", str(archive.path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerdError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    listed = _image_digests(workdir)
    if archive.ref not in listed:
        raise ContainerdError(f"{archive.path} imported, but containerd lists no image {archive.ref!r} "
                              f"(it has: {', '.join(listed)[:500]})")


def remove_containers(workdir: Path) -> None:
    """Kill and delete every task, then delete every container (and its writable layer) from the kept root.
    After a clean teardown only stopped containers the kubelet had not collected yet are left."""
    ctr = _ctr(workdir)
    tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
    for task in tasks:
        subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
    for task in tasks:
        subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True)
    containers = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout.split()
    if containers:
        subprocess.run([*ctr, "containers", "delete", *containers], capture_output=True)


def tag_image(workdir: Path, source: str, name: str) -> None:
    """Give an imported image a second name, e.g. the one a manifest names (docker.io/library/kvmemo:0.1.0-cpu)."""
    ctr = [*_ctr(workdir), "images"]
    subprocess.run([*ctr, "rm", name], capture_output=True)
    result = subprocess.run([*ctr, "tag", source, name], capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerdError(f"ctr images tag {source} {name} failed ({result.returncode}): {result.stderr.strip()}")
