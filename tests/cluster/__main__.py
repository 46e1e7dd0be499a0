"""Start a single-node cluster by hand: python -m tests.cluster --kubeconfig FILE [--image REF=ARCHIVE ...]"""

import argparse
import json
import shutil
import signal
import sys
import threading
from pathlib import Path

from tests.cluster import Cluster, ImageArchive, start


def _image(text: str) -> ImageArchive:
    ref, sep, path = text.partition("=")
    if not sep or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--image wants REF=ARCHIVE with an existing archive file, got {text[:80]!r}")
    return ImageArchive(ref, Path(path))


def _write_info(path: Path, cluster: Cluster) -> None:
    partial = path.with_name(path.name + ".partial")  # whoever waits for the file sees all of it or nothing
    partial.write_text(json.dumps({
        "bridge": cluster.subnets.bridge, "pod_cidr": str(cluster.subnets.pod_cidr),
        "service_cidr": str(cluster.subnets.service_cidr), "node_ip": cluster.subnets.gateway,
        "workdir": str(cluster.workdir), "started_in_s": round(cluster.started_in_s, 1)}))
    partial.rename(path)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, type=Path, help="where to write the admin kubeconfig")
    parser.add_argument("--workdir", type=Path, help="keep certificates, data and logs here after the stop")
    parser.add_argument("--info", type=Path, help="write the cluster's addresses here as JSON once it is ready")
    parser.add_argument("--image", type=_image, action="append", default=[],
                        help="REF=ARCHIVE: an image archive to import into containerd (repeatable)")
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = start(args.workdir, images=args.image, log=sys.stderr)
    try:
        shutil.copyfile(cluster.kubeconfig, args.kubeconfig)
        args.kubeconfig.chmod(0o600)
        if args.info:
            _write_info(args.info, cluster)
        print(f"cluster ready in {cluster.started_in_s:.0f} s: node on bridge {cluster.subnets.bridge} "
              f"({cluster.subnets.pod_cidr}); KUBECONFIG={args.kubeconfig}; logs in {cluster.workdir}", flush=True)
        stop.wait()
    finally:
        cluster.stop()
        if not args.workdir:
            shutil.rmtree(cluster.workdir, ignore_errors=True)
    print("cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
