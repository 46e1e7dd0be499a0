"""The fingerprint: sha256 over everything that changes non-KV memory, and nothing that does not (not the
KV size, not the utilization). Plans apply only to their own fingerprint."""

import hashlib
import json

import torch

import service
from service.config import EngineConfig

SHORT = 12


def device_identity(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"name": props.name, "total_memory": props.total_memory,
                "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    return {"name": "cpu", "cuda": None}


def fingerprint_fields(config: EngineConfig, model_identity: dict, dtype: torch.dtype, max_model_len: int,
                       device: torch.device, total_bytes: int) -> dict:
    return {
        "engine_version": service.__version__,
        "model": model_identity,
        "dtype": str(dtype),
        "max_model_len": max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "block_size": config.block_size,
        "cuda_graphs": None if (config.enforce_eager or device.type != "cuda") else config.cuda_graph_sizes,
        # Fewer intermediate tensors: a smaller activation peak and graph pool.
        "fused_kernels": config.fused_kernels and device.type == "cuda",
        "device": device_identity(device),
        "total_bytes": total_bytes,
        "torch": torch.__version__,
        "world_size": 1,
        "rank": 0,
    }


def fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
