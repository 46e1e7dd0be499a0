"""Start a control plane by hand for debugging: python -m tests.envtest --kubeconfig FILE"""

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from tests.envtest import remove, start


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.envtest", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, type=Path, help="where to write the admin kubeconfig")
    parser.add_argument("--workdir", type=Path, help="keep certificates, etcd data and logs here")
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    plane = start(args.workdir, log=sys.stderr)
    try:
        shutil.copyfile(plane.kubeconfig, args.kubeconfig)
        args.kubeconfig.chmod(0o600)
        print(f"kube-apiserver {plane.binaries.kubernetes_version} ready at {plane.host}; "
              f"KUBECONFIG={args.kubeconfig}; logs in {plane.workdir}", flush=True)
        stop.wait()
    finally:
        if args.workdir:
            plane.stop()
        else:
            remove(plane)
    return 0


if __name__ == "__main__":
    sys.exit(main())
