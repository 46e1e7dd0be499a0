"""Seeded random weights written straight into device memory in one pass. The numbers are those of
service/model/loader.py's seeded_uniform (an integer hash of seed, stream and element index, scaled), so
a CUDA boot and a CPU boot of one preset hold the same weights; the torch version there takes about twenty
elementwise passes over int64 temporaries, this one writes each element once in its final dtype."""

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _seeded_uniform_kernel(out_ptr, numel, start, salt, scale, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    # The same int64 arithmetic, masked to 32 bits, as seeded_uniform: every constant is below 2**31 and every
    # value below 2**32, so no product reaches 2**63.
    x = ((offsets + start) * 0x5851F42D + salt) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    x = ((x ^ (x >> 12)) * 0x297A2D39) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    uniform = (x >> 8).to(tl.float32) * (2.0 / (1 << 24)) - 1.0
    tl.store(out_ptr + offsets, (uniform * scale).to(out_ptr.dtype.element_ty), mask=mask)


def fill_seeded_uniform_(out: torch.Tensor, salt: int, scale: float, start: int = 0) -> torch.Tensor:
    """Fills the contiguous CUDA tensor `out` with scale * uniform[-1, 1) of element indices start, start + 1, ...
    (salt: seeded_uniform's mix of seed and stream, below 2**31)."""
    if not out.is_cuda or not out.is_contiguous():
        raise ValueError("fill_seeded_uniform_ needs a contiguous CUDA tensor")
    numel = out.numel()
    if numel:
        _seeded_uniform_kernel[(triton.cdiv(numel, BLOCK),)](out, numel, start, salt, float(scale), BLOCK=BLOCK)
    return out
