"""Softmax over the last dim: one row per program, statistics in fp32, output in the input dtype.

A row that fits in one block (up to ONE_BLOCK elements) is read once and kept in registers; a longer row
(an LM head's vocabulary) is read twice: one pass for its running max and sum, one to write. A row that is
all -inf gives NaN, as torch.softmax does. The backward kernel computes dx = y * (g - sum(g * y)) the same way.
"""

import torch

from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import as_rows, check_float, num_warps, tl, triton

ONE_BLOCK = 16384   # longest row kept in registers; longer rows stream in blocks of LOOP_BLOCK
LOOP_BLOCK = 4096


@triton.jit
def _softmax_fwd(X, Y, stride_x, stride_y, N, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, y_row = X + row * stride_x, Y + row * stride_y
    cols = tl.arange(0, BLOCK_N)
    if SINGLE:
        x = tl.load(x_row + cols, mask=cols < N, other=-float("inf")).to(tl.float32)
        row_max = tl.max(x, axis=0)
        # an all -inf row is NaN, as in torch, made explicitly (no inf - inf or 0 / 0 along the way)
        e = tl.exp(x - tl.where(row_max == -float("inf"), 0.0, row_max))
        total = tl.sum(e, axis=0)
        y = tl.where(total > 0, e / tl.where(total > 0, total, 1.0), float("nan"))
        tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=cols < N)
    else:
        # per-lane running max and sum; a lane that has seen only -inf keeps sum 0 (not exp(-inf + inf) = NaN)
        m = tl.full([BLOCK_N], -float("inf"), tl.float32)
        s = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            x = tl.load(x_row + start + cols, mask=start + cols < N, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
            m = m_new
        row_max = tl.max(m, axis=0)
        row_max = tl.where(row_max == -float("inf"), 0.0, row_max)
        total = tl.sum(s * tl.exp(m - row_max), axis=0)
        for start in range(0, N, BLOCK_N):
            x = tl.load(x_row + start + cols, mask=start + cols < N, other=-float("inf")).to(tl.float32)
            y = tl.where(total > 0, tl.exp(x - row_max) / tl.where(total > 0, total, 1.0), float("nan"))
            tl.store(y_row + start + cols, y.to(Y.dtype.element_ty), mask=start + cols < N)


@triton.jit
def _softmax_bwd(Y, DY, DX, stride_y, stride_dy, stride_dx, N, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y_row, dy_row, dx_row = Y + row * stride_y, DY + row * stride_dy, DX + row * stride_dx
    cols = tl.arange(0, BLOCK_N)
    if SINGLE:
        y = tl.load(y_row + cols, mask=cols < N, other=0.0).to(tl.float32)
        g = tl.load(dy_row + cols, mask=cols < N, other=0.0).to(tl.float32)
        dx = y * (g - tl.sum(g * y, axis=0))
        tl.store(dx_row + cols, dx.to(DX.dtype.element_ty), mask=cols < N)
    else:
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            mask = start + cols < N
            acc += tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32) * \
                tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        dot = tl.sum(acc, axis=0)
        for start in range(0, N, BLOCK_N):
            mask = start + cols < N
            y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_row + start + cols, (y * (g - dot)).to(DX.dtype.element_ty), mask=mask)


def softmax_reference(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def _blocks(n: int) -> tuple[int, bool]:
    """(BLOCK_N, SINGLE) for a row of n elements."""
    block = runtime.next_power_of_2(n)
    return (block, True) if block <= ONE_BLOCK else (LOOP_BLOCK, False)


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        x2 = as_rows(x)
        m, n = x2.shape
        y2 = torch.empty((m, n), dtype=x.dtype, device=x.device)
        block, single = _blocks(n)
        _softmax_fwd[(m,)](x2, y2, x2.stride(0), y2.stride(0), n, BLOCK_N=block, SINGLE=single,
                           num_warps=num_warps(block))
        runtime.launched("softmax", 1)
        ctx.save_for_backward(y2)
        ctx.shape = x.shape
        return y2.view(x.shape)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def, override]
        (y2,) = ctx.saved_tensors
        m, n = y2.shape
        dy2 = as_rows(dy)
        dx = torch.empty((m, n), dtype=y2.dtype, device=y2.device)
        block, single = _blocks(n)
        _softmax_bwd[(m,)](y2, dy2, dx, y2.stride(0), dy2.stride(0), dx.stride(0), n, BLOCK_N=block,
                           SINGLE=single, num_warps=num_warps(block))
        runtime.launched("softmax_bwd", 0)
        return dx.view(ctx.shape)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax of x over its last dim."""
    check_float("softmax: x", x)
    if x.dim() == 0:
        raise ValueError("softmax: x must have at least one dim (the one normalised over)")
    if not runtime.use_triton(x) or x.numel() == 0:
        runtime.fell_back("softmax")
        return softmax_reference(x)
    return _Softmax.apply(x)

