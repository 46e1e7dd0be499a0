"""The Triton paged attention kernels (decode and prefill) against their PyTorch references.

On CPU the kernel runs under Triton's interpreter. TRITON_INTERPRET is read when a kernel is
decorated, so the interpreter cases run in child processes (this file run as a script) and never
change how the rest of the suite sees Triton. The interpreter multiplies bfloat16 bit patterns in
tl.dot (triton-lang/triton#11584), so bf16 is checked on the GPU only.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from service.kernels.paged_attention import paged_decode_attention, paged_decode_attention_reference
from service.kernels.paged_prefill import paged_prefill_attention, paged_prefill_attention_reference

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 2  # one child per core on the CI machines


def make_case(num_kv_heads, group, head_dim, block_size, context_lens, dtype, device, max_blocks=None, seed=0):
    """Random q and caches, block tables drawn without replacement, garbage past each length."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    num_seqs = len(context_lens)
    need = (lens + block_size - 1) // block_size
    max_blocks = max_blocks or max(1, int(need.max()))
    num_blocks = int(need.sum()) + 3
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    tables = torch.randint(-(2**30), 2**30, (num_seqs, max_blocks), generator=g, dtype=torch.int32)
    used = 0
    for i, n in enumerate(need.tolist()):
        tables[i, :n] = perm[used:used + n]
        used += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    q = torch.randn(num_seqs, num_kv_heads * group, head_dim, generator=g).to(dtype)
    return [t.to(device) for t in (q, k_cache, v_cache, tables, lens)]


def check(case, num_splits=None, atol=1e-5, rtol=1e-5, strided_q=False):
    q, k_cache, v_cache, tables, lens = case
    if strided_q:  # q as a slice of a wider projection output, the way a fused qkv hands it over
        wide = torch.randn(q.shape[0], q.shape[1] + 3, q.shape[2], dtype=q.dtype, device=q.device)
        wide[:, 1:q.shape[1] + 1] = q
        q = wide[:, 1:q.shape[1] + 1]
    scale = q.shape[-1] ** -0.5
    got = paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, num_splits=num_splits)
    want = paged_decode_attention_reference(q, k_cache, v_cache, tables, lens, scale)
    assert got.dtype == q.dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


def make_prefill_case(num_kv_heads, group, head_dim, block_size, context_lens, q_lens, dtype, device, seed=0):
    """make_case's caches and tables; q holds q_lens[i] new tokens at the end of sequence i's context."""
    q, k_cache, v_cache, tables, lens = make_case(num_kv_heads, group, head_dim, block_size, context_lens, dtype,
                                                  device, max_blocks=None, seed=seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    q = torch.randn(sum(q_lens), num_kv_heads * group, head_dim, generator=g).to(dtype).to(device)
    starts = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
    return q, k_cache, v_cache, tables, starts, lens, max(q_lens)


def check_prefill(case, atol=1e-5, rtol=1e-5, strided_q=False, **launch):
    q, k_cache, v_cache, tables, starts, lens, max_q_len = case
    if strided_q:
        wide = torch.randn(q.shape[0], q.shape[1] + 5, q.shape[2], dtype=q.dtype, device=q.device)
        wide[:, 2:q.shape[1] + 2] = q
        q = wide[:, 2:q.shape[1] + 2]
    scale = q.shape[-1] ** -0.5
    got = paged_prefill_attention(q, k_cache, v_cache, tables, starts, lens, max_q_len, scale, **launch)
    want = paged_prefill_attention_reference(q, k_cache, v_cache, tables, starts, lens, scale)
    assert got.dtype == q.dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


def prefill_interpreter_cases():
    """Whole prompts, chunks after cached context, one-token rows and tiles that end mid-block."""
    cases = []
    for group in (1, 4, 8):
        for head_dim, block_size in ((32, 16), (64, 32), (128, 16)):
            lens, q_lens = [1, 40, 130, 77], [1, 40, 65, 13]
            name = f"prefill-g{group}-d{head_dim}-b{block_size}"
            case = (2, group, head_dim, block_size, lens, q_lens, torch.float32, "cpu", len(cases))
            cases.append((name, lambda c=case: check_prefill(make_prefill_case(*c))))
    cases += [
        ("prefill-fp16", lambda: check_prefill(make_prefill_case(2, 4, 64, 16, [70, 129], [70, 33], torch.float16,
                                                                  "cpu"), atol=2e-3, rtol=2e-3)),
        ("prefill-strided-q", lambda: check_prefill(make_prefill_case(2, 2, 64, 16, [50, 90], [50, 20], torch.float32,
                                                                       "cpu"), strided_q=True)),
        ("prefill-small-tiles", lambda: check_prefill(make_prefill_case(1, 4, 64, 16, [100, 37], [100, 37],
                                                                         torch.float32, "cpu"), block_m=16, block_n=16)),
        ("prefill-head-dim-256", lambda: check_prefill(make_prefill_case(1, 2, 256, 64, [90], [60], torch.float32,
                                                                          "cpu"))),
    ]
    return cases


def interpreter_cases():
    """(name, thunk) pairs: GQA 1/4/8 x head_dim 64/128 x block 16/32, lengths 1..300."""
    cases = []
    for group in (1, 4, 8):
        for head_dim in (64, 128):
            for block_size in (16, 32):
                lens = [1, block_size, 3 * block_size, 7 * block_size - 1, 300]
                # Rotate the split mode so each GQA ratio sees all three: the heuristic (many splits,
                # most of them empty), one split (the direct path) and three uneven ones.
                splits = (None, 1, 3)[len(cases) % 3]
                name = f"g{group}-d{head_dim}-b{block_size}-splits{splits}"
                case = (2, group, head_dim, block_size, lens, torch.float32, "cpu")
                cases.append((name, lambda c=case, s=splits, seed=len(cases): check(make_case(*c, seed=seed), s)))
    fp16 = dict(atol=2e-3, rtol=2e-3)
    cases += [
        ("fp16-g4-b16", lambda: check(make_case(2, 4, 64, 16, [5, 64, 200], torch.float16, "cpu"), **fp16)),
        ("fp16-g8-b32-direct", lambda: check(make_case(1, 8, 128, 32, [33, 96, 250], torch.float16, "cpu"),
                                             num_splits=1, **fp16)),
        ("tiny-preset-head-dim-32", lambda: check(make_case(2, 2, 32, 16, [3, 16, 77], torch.float32, "cpu"))),
        ("block64", lambda: check(make_case(2, 2, 64, 64, [1, 64, 130], torch.float32, "cpu"))),
        ("strided-q", lambda: check(make_case(2, 4, 64, 16, [7, 48, 100], torch.float32, "cpu"), strided_q=True)),
        # head_dim 256 steps 32 tokens at a time: half a 64-token block per iteration.
        ("head-dim-256-block64", lambda: check(make_case(1, 4, 256, 64, [17, 64, 150], torch.float32, "cpu"))),
        # Block tables wider than any length (a CUDA-graph batch) and a padding row of length 0.
        ("wide-table-and-empty", lambda: check(make_case(2, 4, 64, 16, [0, 40, 9], torch.float32, "cpu",
                                                         max_blocks=40))),
    ]
    return cases + prefill_interpreter_cases() + [("engine-kernels-equal-reference", check_engine_kernels)]


def check_engine_kernels():
    """The engine's metadata for both kernels: chunked prefills after cached context, decodes, preemption-free
    mixed batches; greedy tokens equal the padded-SDPA reference path's."""
    from service.config import EngineConfig
    from service.engine.model_runner import ModelRunner
    from service.engine.sampling_params import SamplingParams
    from tests.engine.conftest import engine_over, run_to_completion

    def greedy(use_triton):
        config = EngineConfig(model="tiny", device="cpu", dtype="float32", max_num_seqs=3, max_model_len=256,
                              max_num_batched_tokens=40, kv_cache_memory_bytes=8 << 20, plan_store="none")
        runner = ModelRunner(config)
        runner.use_triton = use_triton
        engine = engine_over(runner, runner.layout.num_blocks_for(config.kv_cache_memory_bytes))
        for i, n in enumerate((3, 70, 17, 101, 1)):
            engine.add_request(str(i), [256] + list(range(10, 10 + n)),
                               SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        return run_to_completion(engine)[0]

    assert greedy(True) == greedy(False)


def run_interpreter_shard(shard: int, shards: int) -> int:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    failures = 0
    for i, (name, thunk) in enumerate(interpreter_cases()):
        if i % shards != shard:
            continue
        start = time.perf_counter()
        try:
            thunk()
            print(f"ok   {name} ({time.perf_counter() - start:.1f}s)", flush=True)
        except Exception as e:  # report every failing case, not just the first
            failures += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    return failures


def test_kernel_matches_reference_under_interpreter():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    children = [subprocess.Popen([sys.executable, __file__, str(shard), str(SHARDS)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for shard in range(SHARDS)]
    outputs = [child.communicate(timeout=600)[0] for child in children]
    report = "\n".join(outputs)
    assert all(child.returncode == 0 for child in children), report
    assert report.count("ok   ") == len(interpreter_cases()), report


def test_reference_ignores_garbage_past_length():
    q, k_cache, v_cache, tables, lens = make_case(2, 4, 64, 16, [20, 33], torch.float32, "cpu", max_blocks=6)
    out = paged_decode_attention_reference(q, k_cache, v_cache, tables, lens, 0.125)
    # Attention over contiguous K/V gathered by hand for sequence 1.
    slots = [int(tables[1, t // 16]) * 16 + t % 16 for t in range(33)]
    k = k_cache.flatten(0, 1)[slots].repeat_interleave(4, dim=1)  # [33, 8, 64]
    v = v_cache.flatten(0, 1)[slots].repeat_interleave(4, dim=1)
    probs = torch.softmax(torch.einsum("hd,thd->ht", q[1], k) * 0.125, dim=-1)
    torch.testing.assert_close(out[1], torch.einsum("ht,thd->hd", probs, v), atol=1e-5, rtol=1e-5)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (128, 16), (128, 32), (256, 16)])
def test_kernel_matches_reference_on_gpu_bf16(group, head_dim, block_size):
    g = torch.Generator().manual_seed(group * 1000 + head_dim + block_size)
    lens = [1, 8192, block_size, 4 * block_size, 100 * block_size - 1, 100 * block_size + 1]
    lens += torch.randint(1, 8193, (10,), generator=g).tolist()
    case = make_case(8 if group < 8 else 4, group, head_dim, block_size, lens, torch.bfloat16,
                     "cuda", max_blocks=8192 // block_size, seed=group)
    check(case, atol=1e-2, rtol=1e-2)
    check(case, num_splits=1, atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.float32, 1e-4)])
def test_kernel_matches_reference_on_gpu_other_dtypes(group, dtype, tol):
    # bf16's tolerance would hide a dropped tile at 8192 tokens (outputs there are ~0.05); fp32's won't.
    case = make_case(4, group, 128, 16, [1, 17, 512, 2048, 4095, 8192, 8191], dtype, "cuda", max_blocks=520)
    check(case, atol=tol, rtol=tol)
    check(case, num_splits=1, atol=tol, rtol=tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_kernel_replays_in_cuda_graph(batch):
    num_kv_heads, num_heads, head_dim, block_size, max_len = 8, 32, 128, 16, 4096
    max_blocks = max_len // block_size
    g = torch.Generator().manual_seed(batch)
    cache_shape = (batch * max_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=g).to("cuda", torch.bfloat16)
    v_cache = torch.randn(cache_shape, generator=g).to("cuda", torch.bfloat16)
    q = torch.randn(batch, num_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    tables = torch.zeros(batch, max_blocks, device="cuda", dtype=torch.int32)
    lens = torch.ones(batch, device="cuda", dtype=torch.int32)
    out = torch.empty_like(q)
    scale = head_dim ** -0.5

    def step():
        paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, out=out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compiles outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for replay in range(3):  # new lengths, block tables and queries each time; one length at the maximum
        context_lens = torch.randint(1, max_len + 1, (batch,), generator=g)
        context_lens[replay % batch] = max_len if replay else 1
        tables.copy_(torch.randperm(len(k_cache), generator=g).view(batch, max_blocks))
        lens.copy_(context_lens)
        q.copy_(torch.randn(q.shape, generator=g))
        out.zero_()
        graph.replay()
        want = paged_decode_attention_reference(q, k_cache, v_cache, tables, lens, scale)
        torch.testing.assert_close(out.float(), want.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (128, 16), (128, 32), (256, 16)])
def test_prefill_kernel_matches_reference_on_gpu_bf16(group, head_dim, block_size):
    g = torch.Generator().manual_seed(group * 1000 + head_dim + block_size)
    lens = [1, 8192, 4096, block_size, 3 * block_size + 1] + torch.randint(1, 2049, (6,), generator=g).tolist()
    q_lens = [1, 8192, 1000, block_size, 5] + [int(torch.randint(1, n + 1, (1,), generator=g)) for n in lens[5:]]
    case = make_prefill_case(8 if group < 8 else 4, group, head_dim, block_size, lens, q_lens, torch.bfloat16,
                             "cuda", seed=group)
    check_prefill(case, atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.float32, 1e-4)])
def test_prefill_kernel_matches_reference_on_gpu_other_dtypes(dtype, tol):
    case = make_prefill_case(4, 4, 128, 16, [1, 17, 512, 4095, 8192], [1, 17, 100, 4095, 63], dtype, "cuda")
    check_prefill(case, atol=tol, rtol=tol)


ONE_VARIANT = """
import json, os, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
from service.kernels.cache import entries
from tests.test_paged_attention_kernel import check, check_prefill, make_case, make_prefill_case
counts = []
for width in (1, 16, 17, 40):  # block tables 1, 16, 17 and 40 blocks wide: Triton's 1, 16k and other cases
    check(make_case(8, 4, 128, 16, [5, 9], torch.bfloat16, "cuda", max_blocks=width), num_splits=1, atol=1e-2,
          rtol=1e-2)
    check_prefill(make_prefill_case(8, 4, 128, 16, [16 * width], [8], torch.bfloat16, "cuda"), atol=1e-2, rtol=1e-2)
    counts.append(entries(Path(os.environ["TRITON_CACHE_DIR"])))
print(json.dumps(counts))
"""


@pytest.mark.gpu
@gpu
def test_one_compiled_variant_whatever_the_block_table_width(tmp_path):
    """A fresh process with an empty kernel cache: the first width compiles the decode and prefill kernels, the
    other widths compile nothing (each would otherwise be a compile in the middle of serving)."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", ONE_VARIANT, str(ROOT)], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts[0] > 0 and counts == [counts[0]] * len(counts), counts


if __name__ == "__main__":
    sys.exit(1 if run_interpreter_shard(int(sys.argv[1]), int(sys.argv[2])) else 0)
