"""grpcurl, built with `go install` from the Go module proxy on first use and cached outside the clone,
keyed by version (~/.cache/kvmemo/tools/grpcurl-<version>/grpcurl)."""

import os
import shutil
import subprocess
from pathlib import Path

GRPCURL_VERSION = "v1.9.3"
CACHE = Path(os.environ.get("KVMEMO_TOOLS_CACHE", Path.home() / ".cache" / "kvmemo" / "tools"))


class ToolError(RuntimeError):
    pass


def grpcurl() -> Path:
    binary = CACHE / f"grpcurl-{GRPCURL_VERSION}" / "grpcurl"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToolError(f"cannot build grpcurl {GRPCURL_VERSION}: no `go` on PATH")
    partial = binary.parent.with_name(binary.parent.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(partial), "GOFLAGS": "-mod=mod"}
    cmd = [go, "install", f"github.com/fullstorydev/grpcurl/cmd/grpcurl@{GRPCURL_VERSION}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise ToolError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    # Moved into place whole, so an interrupted build never leaves a half binary behind.
    shutil.rmtree(binary.parent, ignore_errors=True)
    partial.rename(binary.parent)
    return binary
