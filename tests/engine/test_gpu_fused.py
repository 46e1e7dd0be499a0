"""--fused-kernels on a CUDA device: greedy tokens with the fused elementwise kernels, in CUDA graphs and eager,
equal the PyTorch path's for the same weights, for the tiny preset and for layers of Llama-3.1-8B's shapes
(llama3 rope scaling included). float32, so that the comparison is of the kernels, not of bf16 ties; the
kernels' bf16 rounding is checked in tests/test_fused_kernels.py. CI has no GPU: run with `pytest -m gpu`."""

import pytest
import torch

from service.boot import build_engine
from service.config import EngineConfig
from service.engine.model_runner import ModelRunner
from service.model.presets import PRESETS
from tests.engine.conftest import engine_over
from tests.engine.test_gpu_engine import PROMPTS, greedy_tokens

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def fused_and_reference_tokens(**settings):
    """(fused in CUDA graphs, fused eager, the PyTorch path eager) greedy tokens over one set of weights."""
    engine, _ = build_engine(EngineConfig(device="cuda", fused_kernels=True, **settings))
    assert engine.runner.use_fused_kernels and engine.runner.graphs is not None
    blocks = engine.block_manager.num_blocks
    fused_graphs = greedy_tokens(engine)
    fused_eager = ModelRunner(EngineConfig(device="cuda", fused_kernels=True, enforce_eager=True, **settings),
                              loaded=engine.runner.loaded)
    reference = ModelRunner(EngineConfig(device="cuda", fused_kernels=False, enforce_eager=True, **settings),
                            loaded=engine.runner.loaded)
    assert not reference.use_fused_kernels
    del engine
    return (fused_graphs, greedy_tokens(engine_over(fused_eager, blocks)),
            greedy_tokens(engine_over(reference, blocks)))


@pytest.mark.parametrize("model", ["tiny", "tiny-qwen3"])
def test_fused_greedy_tokens_equal_the_torch_path_for_tiny_presets(model):
    fused_graphs, fused_eager, reference = fused_and_reference_tokens(
        model=model, dtype="float32", max_num_seqs=16, max_model_len=256, kv_cache_memory_bytes=64 << 20,
        plan_store="none")
    assert fused_eager == reference
    assert fused_graphs == reference


def test_fused_greedy_tokens_equal_the_torch_path_for_llama_3_8b_layers(monkeypatch):
    # Two layers of Llama-3.1-8B (hidden 4096, 32 q / 8 KV heads of 128, intermediate 14336, vocabulary
    # 128256): the kernels see the real shapes, the test stays a few GB.
    monkeypatch.setitem(PRESETS, "llama-3.1-8b-2-layers", dict(PRESETS["llama-3.1-8b"], num_hidden_layers=2))
    fused_graphs, fused_eager, reference = fused_and_reference_tokens(
        model="llama-3.1-8b-2-layers", dtype="float32", max_num_seqs=16, max_model_len=512,
        kv_cache_memory_bytes=256 << 20, plan_store="none")
    assert len(reference) == len(PROMPTS)
    assert fused_eager == reference
    assert fused_graphs == reference
