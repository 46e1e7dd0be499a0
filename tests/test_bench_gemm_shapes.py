"""bench/gemm_shapes.py: the decode step's projections, with the shapes and counts the model runs."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gemm_shapes import measure, projections  # noqa: E402
from service.model.loader import load_model, read_model_config  # noqa: E402


def test_the_projections_are_the_models_own_weights():
    loaded = load_model("tiny", torch.float32, torch.device("cpu"))
    layers = loaded.config.num_hidden_layers
    shapes = {name.split(".")[-2]: tuple(p.shape) for name, p in loaded.model.named_parameters()
              if name.endswith("proj.weight") or name == "lm_head.weight"}
    for p in projections(loaded.config):
        assert shapes[p.name] == (p.out_features, p.in_features)
        assert p.per_step == (1 if p.name == "lm_head" else layers)


def test_llama_3_8b_shapes():
    by_name = {p.name: (p.in_features, p.out_features) for p in projections(read_model_config("llama-3-8b"))}
    assert by_name == {"qkv_proj": (4096, 6144), "o_proj": (4096, 4096), "gate_up_proj": (4096, 28672),
                       "down_proj": (14336, 4096), "lm_head": (4096, 128256)}


def test_a_step_sums_every_projection_times_its_count():
    result = measure("tiny", [1, 4], ["linear", "kn"], torch.float32, torch.device("cpu"), repeats=2)
    assert len(result["rows"]) == 2 * 2 * len(projections(read_model_config("tiny")))
    for r in result["rows"]:
        assert r["ms"] > 0 and r["tflops"] == pytest.approx(
            2 * r["tokens"] * r["in_features"] * r["out_features"] / (r["ms"] / 1e3) / 1e12)
    for s in result["per_step"]:
        key = (s["tokens"], s["layout"], s["blas"])
        rows = [r for r in result["rows"] if (r["tokens"], r["layout"], r["blas"]) == key]
        assert s["gemm_ms_per_step"] == pytest.approx(sum(r["ms"] * r["per_step"] for r in rows))
