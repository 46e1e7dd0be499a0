"""A real etcd + kube-apiserver for tests, built from the Go module in this directory.

    plane = tests.envtest.start()        # builds once, then starts on free loopback ports
    api = tests.envtest.admin_client(plane)
    tests.envtest.remove(plane)

`python -m tests.envtest --kubeconfig FILE` starts one by hand and runs until SIGTERM or Ctrl-C.
"""

from tests.envtest.build import BuildError, ensure_binaries
from tests.envtest.controlplane import ControlPlane, ControlPlaneError, remove, start

__all__ = ["BuildError", "ControlPlane", "ControlPlaneError", "ensure_binaries", "remove", "start"]
