"""A real single-node Kubernetes cluster for tests (see README.md beside this file).

    cluster = tests.cluster.start(images=[...])   # node Ready, images imported into containerd
    tests.cluster.remove(cluster)                 # stopped, and the machine as it was

`python -m tests.cluster --kubeconfig FILE` starts one by hand and stops it on SIGTERM or Ctrl-C.
"""

from tests.cluster.cluster import Cluster, ClusterError, prepare, remove, start
from tests.cluster.leftovers import leftovers
from tests.cluster.oci import ImageArchive

__all__ = ["Cluster", "ClusterError", "ImageArchive", "leftovers", "prepare", "remove", "start"]
