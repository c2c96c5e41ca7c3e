"""What a module generated for the Triton target imports as `K`: the runtime (kernel or fallback, launch
counting, launch geometry) and the template kernels' launchers, under one name.

Importing this defines the template kernels: set `TRITON_INTERPRET=1` first to run them on CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from nnspec.backends.triton.kernels.attention import attention
from nnspec.backends.triton.kernels.decode_attention import decode_attention
from nnspec.backends.triton.kernels.embedding import embedding
from nnspec.backends.triton.kernels.moe import moe
from nnspec.backends.triton.kernels.norms import layernorm, rmsnorm
from nnspec.backends.triton.kernels.rotary import rotary
from nnspec.backends.triton.kernels.softmax import softmax
from nnspec.backends.triton.runtime import (
    FALLBACKS,
    LAUNCHES,
    OPS,
    fell_back,
    interpreting,
    launched,
    next_power_of_2,
    reset,
    use_triton,
)

__all__ = ["FALLBACKS", "LAUNCHES", "OPS", "attention", "decode_attention", "embedding", "fell_back", "grad_needed",
           "interpreting", "launched", "layernorm", "matmul_configs", "moe", "next_power_of_2", "pointwise_block",
           "reset", "rmsnorm", "rotary", "rows", "runs_kernel", "softmax", "strides", "use_triton"]


def grad_needed(*tensors: Any) -> bool:
    """Would autograd record this call? Generated kernels have no backward: such calls run the torch code."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def runs_kernel(*tensors: Any) -> bool:
    """Should a generated kernel (forward only) run for these tensors: a GPU or the interpreter, no autograd."""
    return use_triton(*tensors) and not grad_needed(*tensors)


def strides(t: torch.Tensor, dims: tuple[int | None, ...]) -> tuple[int, ...]:
    """`t`'s stride along each axis of a kernel's domain: the stride of dim `d`, or 0 where `t` lacks the
    axis (broadcast), so kernels read broadcast operands in place."""
    return tuple(0 if d is None else t.stride(d) for d in dims)


def rows(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`t` broadcast to `shape` (..., n) and seen as [rows, n]: a view where strides allow, else a copy."""
    return t.expand(shape).reshape(-1, shape[-1])


def pointwise_block(n: int) -> int:
    """Elements per program of a pointwise kernel. The interpreter pays per program, not per element, so it
    gets few large blocks."""
    if interpreting():
        return max(1024, min(next_power_of_2(-(-n // 8)), 1 << 16))
    return 1024


def matmul_configs() -> list[Any]:
    """Autotuning configs for the matmul-with-epilogue kernels, keyed on (M, N, K); one under the interpreter."""
    import triton
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(128, 128, 64, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                                     (64, 64, 32, 4, 4), (128, 256, 64, 8, 3), (32, 64, 32, 4, 5)]]
