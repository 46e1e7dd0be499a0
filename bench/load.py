"""How fast weights reach the device. A preset's random weights generated on the GPU (one Triton kernel, and
the torch path it replaced), and a Llama-3-8B-shaped safetensors checkpoint on local disk, read by kvmemo's
streaming loader and by safetensors.torch.load_file(device="cuda"), with the file's pages dropped from the
page cache (cold: a new node) and kept (warm: a restarted container), against a raw sequential read of the
same file. Writes the checkpoint first when --checkpoint-dir holds none.

    PYTHONPATH=. python3 bench/load.py --out bench/results/load.json --checkpoint-dir /tmp/llama-3-8b-st
"""

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import environment, write_json  # noqa: E402
from service.model import loader, safetensors_stream  # noqa: E402
from service.model.presets import PRESETS  # noqa: E402

PRESET = "llama-3-8b"
CUDA = torch.device("cuda")


def free_device() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def timed(fn) -> tuple[object, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, time.perf_counter() - start


def torch_path_seconds(model) -> float:
    """The random weights as the torch version makes them on the device (about twenty passes per weight)."""
    def make():
        for stream, (name, param) in enumerate(model.named_parameters()):
            if not name.endswith("norm.weight"):
                (loader.seeded_uniform(param.shape, 0, stream, CUDA) * loader.RANDOM_SCALE).to(torch.bfloat16)
    return timed(make)[1]


def preset_rows() -> dict:
    first = loader.load_model(PRESET, torch.bfloat16, CUDA)
    nbytes, first_seconds = sum(p.nbytes for p in first.model.parameters()), first.seconds
    del first
    free_device()
    second = loader.load_model(PRESET, torch.bfloat16, CUDA)
    row = {"weights_bytes": nbytes, "first_seconds": first_seconds, "seconds": second.seconds}
    meta = loader._build(second.config)
    del second
    free_device()
    row["torch_path_generate_seconds"] = torch_path_seconds(meta)
    free_device()
    return row


def hf_tensors(model) -> dict[str, torch.Tensor]:
    """Our fused parameters split back into the Hugging Face names a checkpoint holds."""
    cfg, out = model.config, {}
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    for name, p in model.state_dict().items():
        if ".qkv_proj." in name:
            for part, t in zip(("q_proj", "k_proj", "v_proj"), p.split([q, kv, kv])):
                out[name.replace("qkv_proj", part)] = t
        elif ".gate_up_proj." in name:
            for part, t in zip(("gate_proj", "up_proj"), p.chunk(2)):
                out[name.replace("gate_up_proj", part)] = t
        else:
            out[name] = p
    return out


def write_checkpoint(directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    loaded = loader.load_model(PRESET, torch.bfloat16, CUDA)
    tensors = {k: v.contiguous().cpu() for k, v in hf_tensors(loaded.model).items()}
    del loaded
    free_device()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({**PRESETS[PRESET], "torch_dtype": "bfloat16"}))
    os.sync()


def drop_from_page_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read_gb_s(files: list[Path], block: int = 16 << 20) -> float:
    buffer = bytearray(block)
    view, total, start = memoryview(buffer), 0, time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total / 1e9 / (time.perf_counter() - start)


def load_ours(directory: Path) -> dict:
    loaded, seconds = timed(lambda: loader.load_model(str(directory), torch.bfloat16, CUDA))
    row = {"seconds": seconds, "parts": loaded.seconds, "bytes": loaded.bytes_read,
           "read_gb_s": loaded.bytes_read / 1e9 / loaded.seconds["read"], "gb_s": loaded.bytes_read / 1e9 / seconds}
    del loaded
    free_device()
    return row


def load_library(files: list[Path]) -> dict:
    from safetensors.torch import load_file

    tensors, seconds = timed(lambda: [load_file(str(f), device="cuda") for f in files])
    nbytes = sum(f.stat().st_size for f in files)
    del tensors
    free_device()
    return {"seconds": seconds, "gb_s": nbytes / 1e9 / seconds}


def checkpoint_rows(directory: Path, sweep: list[tuple[int, int]]) -> dict:
    if not (directory / "model.safetensors").is_file():
        write_checkpoint(directory)
    files = sorted(directory.glob("*.safetensors"))
    rows = {"file_bytes": sum(f.stat().st_size for f in files)}
    drop_from_page_cache(files)
    rows["raw_read_cold_gb_s"] = raw_read_gb_s(files)
    rows["raw_read_warm_gb_s"] = raw_read_gb_s(files)
    drop_from_page_cache(files)
    rows["ours_cold"] = load_ours(directory)
    rows["ours_warm"] = load_ours(directory)
    rows["library_warm"] = load_library(files)
    rows["sweep_warm"] = []
    defaults = safetensors_stream.READERS, safetensors_stream.CHUNK_BYTES
    for readers, chunk_mib in sweep:
        safetensors_stream.READERS, safetensors_stream.CHUNK_BYTES = readers, chunk_mib << 20
        rows["sweep_warm"].append({"readers": readers, "chunk_mib": chunk_mib, **load_ours(directory)})
    safetensors_stream.READERS, safetensors_stream.CHUNK_BYTES = defaults
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint-dir", default=None, help="a Llama-3-8B-shaped safetensors directory (written "
                    "when it holds none); without it only the preset is measured")
    ap.add_argument("--sweep", default="4:32,16:32,8:64,16:16", help="readers:chunk_MiB for warm reads")
    args = ap.parse_args()
    torch.cuda.init()
    torch.empty(1, device=CUDA)
    result = {"benchmark": "load", **environment(), "preset": PRESET, "random_preset": preset_rows()}
    if args.checkpoint_dir:
        sweep = [tuple(int(x) for x in item.split(":")) for item in args.sweep.split(",") if item]
        result["checkpoint"] = checkpoint_rows(Path(args.checkpoint_dir), sweep)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
