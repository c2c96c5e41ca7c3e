"""What the template kernels share: the (optional) Triton import, input checks and launch sizes.

Triton is optional: without it `triton` and `tl` below are stand-ins whose decorators return the function
unchanged, so the kernel modules still import and every launcher takes its torch path (runtime.use_triton is
False then, so no kernel is ever called).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnspec.backends.triton import runtime


class _NoTriton:
    """Stands in for `triton` and `triton.language` where Triton is not installed."""

    constexpr = Any   # kernel signatures annotate with tl.constexpr

    @staticmethod
    def jit(fn: Callable[..., Any] | None = None, **_: Any) -> Any:
        return fn if fn is not None else (lambda f: f)

    @staticmethod
    def autotune(*_: Any, **__: Any) -> Callable[[Any], Any]:
        return lambda f: f

    @staticmethod
    def Config(*_: Any, **__: Any) -> None:
        return None


if runtime.HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - triton is installed wherever the tests run
    triton = tl = _NoTriton()  # type: ignore[assignment]

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_float(what: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOATS:
        raise ValueError(f"{what}: expected a float32, float16 or bfloat16 tensor, got {t.dtype}")


def check_same(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """`b` must have `a`'s shape, dtype and device (a residual, a gradient)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{what}: expected {tuple(a.shape)} {a.dtype} on {a.device}, "
                         f"got {tuple(b.shape)} {b.dtype} on {b.device}")


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as a 2-D [rows, last dim] tensor with unit column stride; copies only when no such view exists."""
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return x2 if x2.stride(-1) == 1 or x2.shape[-1] == 1 else x2.contiguous()


def num_warps(block: int) -> int:
    """Warps for a program that streams `block` elements of one row (more warps for longer rows)."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def partial_programs(rows: int, device: torch.device) -> int:
    """Programs that each sum a weight gradient over a stride of rows: enough to fill the GPU, few on CPU."""
    if device.type == "cuda":
        return max(1, min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(rows, 4))  # the interpreter runs programs one after another: fewer is faster
