#!/bin/sh
# Build kvmemo's service and controller images without a Docker daemon (mmdebstrap + buildah, as root) and
# print "REF ARCHIVE" for each: load one with `ctr -n k8s.io images import ARCHIVE` or `podman load -i ARCHIVE`.
# Needs Python 3.11+ with pip (PYTHON=...), `apt-get install mmdebstrap buildah`. See deploy/build_images.py.
exec "${PYTHON:-python3}" "$(dirname "$0")/build_images.py" "$@"
