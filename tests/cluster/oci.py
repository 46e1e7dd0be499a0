"""Write an OCI image archive of static binaries (FROM scratch) that `ctr -n k8s.io images import` loads.

No image tool is needed: an OCI image is a layer tar, a config and a manifest named by their sha256, in an
`index.json` whose `io.containerd.image.name` annotation gives containerd the image's name.
"""

import hashlib
import io
import json
import tarfile
from pathlib import Path

from deploy.build_images import ImageArchive  # (ref, path), as tests.images.build_images() returns them

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _layer(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in sorted(files.items()):
            data = source.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}


def write_archive(out: Path, ref: str, files: dict[str, Path], entrypoint: list[str], user: str = "65532") -> ImageArchive:
    """An image whose root holds `files` (path in image → file here), run as `user` with `entrypoint`."""
    layer = _layer(files)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    }, sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        **_descriptor(MANIFEST, manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]},
    }]}).encode()
    entries = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for blob in (layer, config, manifest):
        entries["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)
    return ImageArchive(ref, out)
