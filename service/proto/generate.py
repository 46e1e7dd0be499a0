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
# The inference package goes into a descriptor pool of its own (service/proto/_pool.py says why).
POOL = ("_descriptor_pool.Default().AddSerializedFile(", "_pool.INFERENCE.AddSerializedFile(")
POOL_IMPORT = ("from google.protobuf.internal import builder as _builder\n",
               "from google.protobuf.internal import builder as _builder\nfrom .. import _pool\n")


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
           f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    for package in PACKAGES:
        (out / package / "__init__.py").touch()
    files = sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi") and p.name not in ("generate.py", "_pool.py"))
    for path in files:
        text = IMPORT.sub(r"from . import \2", path.read_text())
        if path.parent.name == "inference" and path.name.endswith("_pb2.py"):
            text = text.replace(*POOL).replace(*POOL_IMPORT)
        path.write_text(text)
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
