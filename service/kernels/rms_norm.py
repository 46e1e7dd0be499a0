"""RMSNorm with the residual add fused in (vLLM's fused_add_rms_norm): one kernel instead of the seven that
PyTorch's float, pow, mean, add, rsqrt, mul, cast and weight mul launch, plus the residual add's.

Rounding follows the PyTorch code in service/model/llama.py step by step (the sum rounded to the activation
dtype, the normalised row rounded before the weight multiplies it), so the two differ only in the order of the
float32 sum of squares."""

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, stride_x, stride_r, stride_o, dim, eps,
                         BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < dim
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + res.to(tl.float32)).to(dtype)
        tl.store(res_ptr + row * stride_r + cols, x, mask=ok)
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, 0) / dim + eps)
    normed = (x32 * rstd).to(dtype)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, (w.to(tl.float32) * normed.to(tl.float32)).to(dtype), mask=ok)


def _check(x, weight, residual):
    if x.dim() != 2 or weight.shape != (x.shape[1],) or x.stride(1) != 1:
        raise ValueError(f"expected x [tokens, dim] with a contiguous last dimension and weight [dim]; got x "
                         f"{tuple(x.shape)} (strides {x.stride()}), weight {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.stride(1) != 1 or residual.dtype != x.dtype):
        raise ValueError(f"residual must match x ({tuple(x.shape)}, {x.dtype}); got {tuple(residual.shape)}, "
                         f"{residual.dtype}")


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rmsnorm(residual + x) * weight, residual + x), with residual updated in place. With residual None
    (the first layer) the sum is x itself, which comes back as the residual. x [tokens, dim]; float32 math,
    outputs in x's dtype."""
    _check(x, weight, residual)
    out = torch.empty_like(x)
    tokens, dim = x.shape
    if tokens:
        block = triton.next_power_of_2(dim)
        res = x if residual is None else residual
        _add_rms_norm_kernel[(tokens,)](
            x, res, weight, out, x.stride(0), res.stride(0), out.stride(0), dim, eps,
            BLOCK=block, HAS_RESIDUAL=residual is not None, num_warps=min(16, max(1, block // 256)),
        )
    return out, x if residual is None else residual
