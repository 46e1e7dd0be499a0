"""The fused elementwise kernels (service/kernels/: rms_norm.py, activation.py, rotary.py) against the PyTorch
code of service/model/llama.py, under Triton's interpreter. Not collected by the suite: tests/test_fused_kernels.py
runs this file in a child pytest with TRITON_INTERPRET=1 (Triton reads it when a kernel is decorated, so the
suite's own process must never see it).

The interpreter truncates float32 -> bfloat16 casts (triton/runtime/interpreter.py, _convert_float) where the
GPU, like PyTorch, rounds to nearest even; this file gives the interpreter PyTorch's rounding for that one cast,
so that bfloat16 is held to the GPU tests' tolerance (two bf16 steps, and the residual add exact)."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton.language as tl
from hypothesis import given, settings, strategies as st
from triton.runtime import interpreter

from service.kernels.activation import silu_and_mul
from service.kernels.rms_norm import fused_add_rms_norm
from service.kernels.rotary import CacheWrite, HeadNorm, rotary_
from service.model.llama import apply_rotary, rms_norm

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs under Triton's interpreter, through tests/test_fused_kernels.py")

SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])
_truncating_convert = interpreter._convert_float


def _convert_rounding_to_nearest(data, input_dtype, output_dtype, rounding_mode):
    if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
        rounded = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(torch.bfloat16)
        return rounded.view(torch.int16).numpy().view(np.uint16).reshape(data.shape)
    return _truncating_convert(data, input_dtype, output_dtype, rounding_mode)


interpreter._convert_float = _convert_rounding_to_nearest


def assert_close(got, want, dtype, scale):
    """float32: the kernels' math differs only in summation order. bfloat16: two bf16 steps at the operands'
    scale, for a float32 sum in another order that moves one rounding a step, and a product of it another."""
    assert got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-5)
    else:
        torch.testing.assert_close(got.float(), want.float(), atol=2**-6 * scale, rtol=2**-6)


def randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@SETTINGS
@given(tokens=st.integers(1, 5), dim=st.integers(1, 300), dtype=DTYPES, with_residual=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fused_add_rms_norm_equals_the_residual_add_then_rms_norm(tokens, dim, dtype, with_residual, seed):
    x, residual = randn(tokens, dim, dtype=dtype, seed=seed), randn(tokens, dim, dtype=dtype, seed=seed + 1)
    weight = torch.rand(dim, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    stream = x + residual if with_residual else x
    want = rms_norm(stream, weight, 1e-5)
    given_residual = residual.clone() if with_residual else None
    out, new_residual = fused_add_rms_norm(x, given_residual, weight, 1e-5)
    assert_close(out, want, dtype, 4.0)
    if with_residual:
        assert new_residual is given_residual  # updated in place
        assert torch.equal(new_residual, stream)  # one rounding of the same sum
    else:
        assert new_residual is x


def test_fused_add_rms_norm_reads_strided_rows():
    wide = randn(3, 200, dtype=torch.float32, seed=0)
    x, weight = wide[:, :128], torch.rand(128)
    out, _ = fused_add_rms_norm(x, None, weight, 1e-6)
    torch.testing.assert_close(out, rms_norm(x, weight, 1e-6))


@SETTINGS
@given(tokens=st.integers(1, 5), width=st.integers(1, 2100), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_silu_and_mul_equals_silu_of_gate_times_up(tokens, width, dtype, seed):
    gate_up = randn(tokens, 2 * width, dtype=dtype, seed=seed) * 3
    gate, up = gate_up.chunk(2, dim=-1)
    out = silu_and_mul(gate_up)
    assert out.shape == (tokens, width)
    assert_close(out, F.silu(gate) * up, dtype, 10.0)


def rope_tables(tokens, head_dim, dtype, seed):
    """Random angles, both halves the same as in the model's tables."""
    angles = torch.rand(tokens, 1, head_dim // 2, generator=torch.Generator().manual_seed(seed)) * 50
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


@SETTINGS
@given(tokens=st.integers(1, 4), kv_heads=st.integers(1, 3), group=st.sampled_from([1, 3, 4]),
       head_dim=st.sampled_from([16, 32, 64, 80, 128]), dtype=DTYPES, qk_norm=st.booleans(),
       write_cache=st.booleans(), block_size=st.sampled_from([1, 4, 16]), seed=st.integers(0, 2**16))
def test_rotary_equals_the_torch_rotation_in_the_projection_output(tokens, kv_heads, group, head_dim, dtype,
                                                                    qk_norm, write_cache, block_size, seed):
    heads = kv_heads * group
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    qkv = randn(tokens, q_size + 2 * kv_size, dtype=dtype, seed=seed)  # q and k are strided views of it
    q = qkv[:, :q_size].view(tokens, heads, head_dim)
    k = qkv[:, q_size:q_size + kv_size].view(tokens, kv_heads, head_dim)
    cos, sin = rope_tables(tokens, head_dim, dtype, seed)
    norm = None
    want_q, want_k = q, k
    if qk_norm:
        g = torch.Generator().manual_seed(seed + 1)
        norm = HeadNorm(torch.rand(head_dim, generator=g).to(dtype), torch.rand(head_dim, generator=g).to(dtype), 1e-6)
        want_q, want_k = rms_norm(q, norm.q_weight, norm.eps), rms_norm(k, norm.k_weight, norm.eps)
    want_q, want_k = apply_rotary(want_q, cos, sin), apply_rotary(want_k, cos, sin)
    before = qkv.clone()
    v = qkv[:, q_size + kv_size:].view(tokens, kv_heads, head_dim)
    cache = None
    if write_cache:  # the tokens land in distinct slots of a cache with room to spare
        num_blocks = -(-3 * tokens // block_size)
        shape = (num_blocks, block_size, kv_heads, head_dim)
        slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(seed))[:tokens]
        cache = CacheWrite(v, randn(*shape, dtype=dtype, seed=seed + 2), randn(*shape, dtype=dtype, seed=seed + 3),
                           slots)
        caches_before = cache.k_cache.clone(), cache.v_cache.clone()
    rotary_(q, k, cos, sin, norm, cache)
    assert_close(q, want_q, dtype, 4.0)
    untouched_from = q_size if write_cache else q_size + kv_size  # with a cache, k is rotated only there
    assert torch.equal(qkv[:, untouched_from:], before[:, untouched_from:])
    if not write_cache:
        assert_close(k, want_k, dtype, 4.0)
        return
    k_rows, v_rows = cache.k_cache.flatten(0, 1), cache.v_cache.flatten(0, 1)
    assert_close(k_rows[slots], want_k, dtype, 4.0)
    assert torch.equal(v_rows[slots], v)
    untouched = torch.ones(len(k_rows), dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(k_rows[untouched], caches_before[0].flatten(0, 1)[untouched])
    assert torch.equal(v_rows[untouched], caches_before[1].flatten(0, 1)[untouched])


def test_kernels_refuse_shapes_they_cannot_handle():
    with pytest.raises(ValueError, match="residual must match x"):
        fused_add_rms_norm(torch.zeros(2, 8), torch.zeros(2, 9), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="gate_up"):
        silu_and_mul(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="cos must be"):
        rotary_(torch.zeros(2, 4, 8), torch.zeros(2, 2, 8), torch.zeros(3, 8), torch.zeros(2, 8))


@pytest.mark.parametrize("model,triton_attention", [("tiny", False), ("tiny-qwen3", False), ("tiny", True)])
def test_greedy_tokens_with_fused_kernels_equal_the_torch_path(model, triton_attention):
    """The whole model through the engine (prefill chunks, decodes, mixed batches): the fused path's greedy
    tokens equal the PyTorch path's. tiny-qwen3 covers qk_norm fused into the rotary kernel; triton_attention,
    the GPU's combination: the paged-attention kernels read the K/V that the rotary kernel wrote."""
    from service.config import EngineConfig
    from service.engine.model_runner import ModelRunner
    from service.engine.sampling_params import SamplingParams
    from tests.engine.conftest import engine_over, run_to_completion

    config = EngineConfig(model=model, device="cpu", dtype="float32", max_num_seqs=3, max_model_len=256,
                          max_num_batched_tokens=40, kv_cache_memory_bytes=8 << 20, plan_store="none",
                          fused_kernels=True)
    reference = ModelRunner(config)
    assert not reference.use_fused_kernels  # the option does nothing on the CPU by itself

    def greedy(use_fused_kernels):
        runner = ModelRunner(config, loaded=reference.loaded)
        runner.use_fused_kernels = use_fused_kernels
        runner.use_triton = use_fused_kernels and triton_attention
        engine = engine_over(runner, runner.layout.num_blocks_for(config.kv_cache_memory_bytes))
        for i, n in enumerate((3, 70, 17, 1)):
            engine.add_request(str(i), [256] + list(range(10, 10 + n)),
                               SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        return run_to_completion(engine)[0]

    assert greedy(True) == greedy(False)
