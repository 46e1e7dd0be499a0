#!/usr/bin/env python3
"""TEST INFRASTRUCTURE ONLY, never for a real node: containerd's runc BinaryName in tests/cluster.

The sandboxes this project's tests run in lack CAP_SYS_RESOURCE, so runc cannot apply a negative
`process.oomScoreAdj` (the kubelet gives pod sandboxes -998) or raise `process.rlimits`; every sandbox then
fails with "runc create failed: unable to start container process: can't get final child's PID from
pipe: EOF". This drops those two fields from the OCI spec (config.json of `create`/`run --bundle`, the
process file of `exec --process`) and then runs the real runc with the same arguments.
"""

import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


def _real_runc() -> str:
    for directory in os.environ.get("PATH", "/usr/sbin:/usr/bin").split(os.pathsep) + ["/usr/sbin", "/usr/bin"]:
        candidate = shutil.which("runc", path=directory)
        if candidate and Path(candidate).resolve() != HERE:
            return candidate
    sys.exit("runc_wrapper: no runc on PATH")


def _strip(process: dict) -> None:
    if process.get("oomScoreAdj", 0) < 0:
        del process["oomScoreAdj"]
    process.pop("rlimits", None)


def _rewrite(path: Path, is_bundle_config: bool) -> None:
    spec = json.loads(path.read_text())
    _strip(spec.setdefault("process", {}) if is_bundle_config else spec)
    path.write_text(json.dumps(spec))


def _value(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def main(args: list[str]) -> None:
    command = next((a for a in args if a in ("create", "run", "exec")), None)
    if command in ("create", "run"):
        bundle = _value(args, "--bundle", "-b") or "."
        _rewrite(Path(bundle) / "config.json", is_bundle_config=True)
    elif command == "exec":
        process = _value(args, "--process", "-p")
        if process:
            _rewrite(Path(process), is_bundle_config=False)
    runc = _real_runc()
    os.execv(runc, [runc, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
