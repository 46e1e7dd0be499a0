"""Debian's containerd with its CRI plugin, in the cluster's own directories (tests/containerd.py has what
it shares with tests/images: the config's common part, image import and cleanup with ctr).

Its state, socket, CNI config and IP allocations live under the cluster's workdir; the network
namespaces go where containerd 1.6 always puts them (/var/run/netns). Its root (image content and
unpacked layers, no mounts) is tests/containerd.py's kept_root(), shared with tests/images' containerd, so
an image imported once (the service image takes minutes to unpack) is there for the next cluster; stop()
deletes every container from it, and one containerd per machine uses it at a time.
"""

import json
from pathlib import Path

from tests.cluster.network import Subnets
from tests.containerd import ContainerdError, Ctr, config_toml, kept_root

__all__ = ["ContainerdError", "ctr", "socket", "write_config"]

RUNC_WRAPPER = Path(__file__).resolve().parent / "runc_wrapper.py"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins


def socket(workdir: Path) -> Path:
    return workdir / "containerd" / "containerd.sock"


def ctr(workdir: Path) -> Ctr:
    """ctr on the cluster's containerd (its k8s.io namespace, where the kubelet looks)."""
    return Ctr(socket(workdir))


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
    text = config_toml(kept_root(), base / "state", socket(workdir), base / "opt", cri=True) + f"""[{cri}]
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

