"""Debian's containerd with its CRI plugin, in the cluster's own directories, and image import with ctr.

Everything it keeps (root, state, socket, CNI config and IP allocations) lives under the cluster's
workdir; only the network namespaces go where containerd 1.6 always puts them (/var/run/netns).
"""

import json
import subprocess
from pathlib import Path

from tests.cluster.network import Subnets
from tests.cluster.oci import ImageArchive

RUNC_WRAPPER = Path(__file__).resolve().parent / "runc_wrapper.py"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins


class ContainerdError(RuntimeError):
    pass


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
root = "{base / 'root'}"
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


def import_image(workdir: Path, archive: ImageArchive) -> None:
    """Into the k8s.io namespace, where the kubelet's CRI looks; unpacked for the overlayfs snapshotter."""
    cmd = ["ctr", "--address", str(socket(workdir)), "-n", "k8s.io", "images", "import", str(archive.path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerdError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    listed = subprocess.run(["ctr", "--address", str(socket(workdir)), "-n", "k8s.io", "images", "ls", "-q"],
                            capture_output=True, text=True).stdout.split()
    if not any(name == archive.ref or name.endswith("/" + archive.ref) for name in listed):
        raise ContainerdError(f"{archive.path} imported, but containerd lists no image {archive.ref!r} "
                              f"(it has: {', '.join(listed)[:500]})")


def remove_tasks(workdir: Path) -> None:
    """What the kubelet left running (only after a failed teardown): kill and delete every task."""
    ctr = ["ctr", "--address", str(socket(workdir)), "-n", "k8s.io"]
    tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
    for task in tasks:
        subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
    for task in tasks:
        subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True)


def tag_image(workdir: Path, source: str, name: str) -> None:
    """Give an imported image a second name, e.g. the one a manifest names (docker.io/library/kvmemo:0.1.0-cpu)."""
    ctr = ["ctr", "--address", str(socket(workdir)), "-n", "k8s.io", "images"]
    subprocess.run([*ctr, "rm", name], capture_output=True)
    result = subprocess.run([*ctr, "tag", source, name], capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerdError(f"ctr images tag {source} {name} failed ({result.returncode}): {result.stderr.strip()}")
