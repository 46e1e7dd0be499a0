"""The fused elementwise kernels: under Triton's interpreter on the CPU (tests/fused_kernel_cases.py, in a child
pytest), on CUDA in bfloat16 at Llama-3-8B's shapes, and the engine option that turns them on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from service.commands.engine_args import add_engine_arguments, engine_config_from_args

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_match_torch_under_interpreter():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "fused_kernel_cases.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_fused_kernels_flag_and_env(monkeypatch):
    """On by default; `--no-fused-kernels` or KVMEMO_FUSED_KERNELS=0 turns them off, and the flag wins."""
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    monkeypatch.delenv("KVMEMO_FUSED_KERNELS", raising=False)
    assert engine_config_from_args(parser.parse_args([])).fused_kernels
    assert not engine_config_from_args(parser.parse_args(["--no-fused-kernels"])).fused_kernels
    monkeypatch.setenv("KVMEMO_FUSED_KERNELS", "0")
    assert not engine_config_from_args(parser.parse_args([])).fused_kernels
    assert engine_config_from_args(parser.parse_args(["--fused-kernels"])).fused_kernels


def test_the_cpu_runs_the_torch_code_whatever_the_option_says():
    from service.config import EngineConfig
    from service.engine.model_runner import ModelRunner

    runner = ModelRunner(EngineConfig(model="tiny", device="cpu", fused_kernels=True, plan_store="none"))
    assert not runner.use_fused_kernels


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# The GPU rounds to nearest as PyTorch does; a float32 sum in another order may move a rounded value one bf16
# step, and a product of it one more.
TWO_STEPS = dict(atol=2**-6, rtol=2**-6)


def cuda_randn(*shape, seed, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to("cuda", dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tokens", [1, 7, 256, 8192])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernels_at_llama_3_8b_shapes_on_gpu(tokens, dtype):
    from service.kernels.activation import silu_and_mul
    from service.kernels.rms_norm import fused_add_rms_norm
    from service.kernels.rotary import CacheWrite, HeadNorm, rotary_
    from service.model.llama import apply_rotary, rms_norm

    tol = TWO_STEPS if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    x, residual = cuda_randn(tokens, 4096, seed=1, dtype=dtype), cuda_randn(tokens, 4096, seed=2, dtype=dtype)
    weight = cuda_randn(4096, seed=3, dtype=dtype)
    stream = x + residual
    out, new_residual = fused_add_rms_norm(x, residual, weight, 1e-5)
    torch.testing.assert_close(new_residual, stream, atol=0, rtol=0)  # one rounding of the same sum
    torch.testing.assert_close(out, rms_norm(stream, weight, 1e-5), **tol)

    gate_up = cuda_randn(tokens, 2 * 14336, seed=4, dtype=dtype) * 3
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_and_mul(gate_up), F.silu(gate) * up, **tol)

    qkv = cuda_randn(tokens, (32 + 2 * 8) * 128, seed=5, dtype=dtype)
    positions = torch.randint(0, 131072, (tokens,), generator=torch.Generator().manual_seed(6)).cuda()
    angles = positions[:, None, None].float() * torch.rand(1, 1, 64, device="cuda")
    cos, sin = torch.cat((angles, angles), -1).cos().to(dtype), torch.cat((angles, angles), -1).sin().to(dtype)
    for norm in (None, HeadNorm(cuda_randn(128, seed=7, dtype=dtype), cuda_randn(128, seed=8, dtype=dtype), 1e-6)):
        data = qkv.clone()
        q, k = data[:, :4096].view(tokens, 32, 128), data[:, 4096:5120].view(tokens, 8, 128)
        want_q, want_k = (q, k) if norm is None else (rms_norm(q, norm.q_weight, 1e-6), rms_norm(k, norm.k_weight, 1e-6))
        want_q, want_k = apply_rotary(want_q, cos, sin), apply_rotary(want_k, cos, sin)
        rotary_(q, k, cos, sin, norm)
        scale = 1.0 if norm is None else 4.0  # the norm's weights scale the rotated values
        torch.testing.assert_close(q, want_q, atol=tol["atol"] * scale, rtol=tol["rtol"])
        torch.testing.assert_close(k, want_k, atol=tol["atol"] * scale, rtol=tol["rtol"])
        torch.testing.assert_close(data[:, 5120:], qkv[:, 5120:], atol=0, rtol=0)  # v untouched

        # K rotated into the cache instead, V copied beside it, at scattered slots of 16-token blocks.
        data = qkv.clone()
        q, k = data[:, :4096].view(tokens, 32, 128), data[:, 4096:5120].view(tokens, 8, 128)
        v = data[:, 5120:].view(tokens, 8, 128)
        k_cache = torch.zeros(tokens // 16 + 8, 16, 8, 128, device="cuda", dtype=dtype)
        v_cache = torch.zeros_like(k_cache)
        slots = torch.randperm(k_cache.shape[0] * 16, device="cuda")[:tokens]
        rotary_(q, k, cos, sin, norm, CacheWrite(v, k_cache, v_cache, slots))
        torch.testing.assert_close(q, want_q, atol=tol["atol"] * scale, rtol=tol["rtol"])
        torch.testing.assert_close(k_cache.flatten(0, 1)[slots], want_k, atol=tol["atol"] * scale, rtol=tol["rtol"])
        torch.testing.assert_close(v_cache.flatten(0, 1)[slots], v, atol=0, rtol=0)
        assert int((k_cache != 0).any(-1).any(-1).sum()) == tokens  # nothing written elsewhere


def fingerprints(device: str) -> tuple[str, str]:
    """The fingerprints of one config with the option off and on."""
    from service.config import EngineConfig
    from service.memory.fingerprint import fingerprint, fingerprint_fields

    return tuple(fingerprint(fingerprint_fields(EngineConfig(model="tiny", fused_kernels=on), {"preset": "tiny"},
                                                torch.bfloat16, 256, torch.device(device), 1 << 30))
                 for on in (False, True))


def test_the_option_leaves_the_cpu_fingerprint_alone():
    off, on = fingerprints("cpu")
    assert off == on


@pytest.mark.gpu
@gpu
def test_the_option_changes_the_fingerprint_on_cuda():
    # Its activations differ, and so may the memory a plan recorded for the other setting.
    off, on = fingerprints("cuda")
    assert off != on
