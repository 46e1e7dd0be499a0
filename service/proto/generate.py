"""Regenerates the Python code under service/proto/ from the .proto files under proto/.

    python -m service.proto.generate            # rewrite service/proto/{kvmemo,inference}/
    python -m service.proto.generate --out DIR  # write into DIR instead (the sync test compares)

grpc_tools writes absolute imports (`from kvmemo.v1 import kvmemo_pb2`); they are rewritten to
package-relative ones so that the code imports as `service.proto.kvmemo.v1`."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
PROTOS = ["kvmemo/v1/kvmemo.proto", "inference/model_config.proto", "inference/grpc_service.proto"]
PACKAGES = ["kvmemo", "kvmemo/v1", "inference"]
# `from kvmemo.v1 import kvmemo_pb2 as x` -> `from . import kvmemo_pb2 as x` (every import is within its folder)
IMPORT = re.compile(r"^from (kvmemo\.v1|inference) import (\w+_pb2)", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
           f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    for package in PACKAGES:
        (out / package / "__init__.py").touch()
    files = sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi") and p.name != "generate.py")
    for path in files:
        path.write_text(IMPORT.sub(r"from . import \2", path.read_text()))
    return [p.relative_to(out) for p in files if p.name != "__init__.py" or p.parent != out]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    for path in generate(args.out):
        print(args.out / path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
