"""Rotary position embedding (RoPE) of x, whose feature axis is last, by the positions along `pos_axis`.

Pairs (x_a, x_b) turn by angle pos * base^(-2k/d): x_a' = x_a cos - x_b sin, x_b' = x_b cos + x_a sin. In the
`half` style (GPT-NeoX, Llama) pair k is (k, k + d/2); `interleaved` (GPT-J) pairs neighbours (2k, 2k + 1).
The cos/sin tables come from the torch lowering's `rotary_tables` (in x's dtype, as the lowering rounds them),
so both backends turn by the same numbers; the kernel does the rotation in fp32 and rounds once. Tables made once
per forward (-O2's `rotary-tables` node, float32) are passed in as `cos`, `sin` and read as they are (cast to x's
dtype, as the torch lowering casts them): then nothing is recomputed per call.

x is viewed as [outer, n_pos, inner, d] (a copy only when its strides do not allow that view); program
(p, j) rotates BLOCK_R of the outer x inner rows at position p, loading that position's table row once (with
per-row positions `[outer..., n_pos]`, as a left-padded batch has, each outer row reads its own table row).
The backward is the same kernel turning by -angle.
"""

import math

import torch

from nnspec.backends.torch.runtime import rotary_tables
from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import check_float, tl, triton


@triton.jit
def _rotary(X, Y, COS, SIN, inner, rows, n_pos, sxo, sxp, sxi, sxd, syo, syp, syi, half,
            INTERLEAVED: tl.constexpr, INVERSE: tl.constexpr, PER_ROW: tl.constexpr, BLOCK_R: tl.constexpr,
            BLOCK_H: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_H)
    o, i = (r // inner).to(tl.int64), (r % inner).to(tl.int64)
    mask = (r < rows)[:, None] & (k < half)[None, :]
    if INTERLEAVED:
        a, b = 2 * k, 2 * k + 1
    else:
        a, b = k, k + half
    if PER_ROW:   # each outer row (a sequence of the batch) has its own positions: its own table rows
        t = (o * n_pos + p)[:, None] * 2 * half + k[None, :]
        cos = tl.load(COS + t, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(SIN + t, mask=mask, other=0.0).to(tl.float32)
    else:
        cos = tl.load(COS + p * 2 * half + k, mask=k < half, other=0.0).to(tl.float32)[None, :]
        sin = tl.load(SIN + p * 2 * half + k, mask=k < half, other=0.0).to(tl.float32)[None, :]
    if INVERSE:
        sin = -sin
    x_row = X + (o * sxo + p * sxp + i * sxi)[:, None]
    xa = tl.load(x_row + a[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    xb = tl.load(x_row + b[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    y_row = Y + (o * syo + p * syp + i * syi)[:, None]
    tl.store(y_row + a[None, :], (xa * cos - xb * sin).to(Y.dtype.element_ty), mask=mask)
    tl.store(y_row + b[None, :], (xb * cos + xa * sin).to(Y.dtype.element_ty), mask=mask)


def rotary_reference(x: torch.Tensor, pos_axis: int, base: float, positions: torch.Tensor | None = None,
                     interleaved: bool = False, tables: tuple[torch.Tensor, torch.Tensor] | None = None) \
        -> torch.Tensor:
    """The torch lowering's rotation (`_rotary`), for x with its feature axis last."""
    p = pos_axis % x.dim()
    n, d = x.shape[p], x.shape[-1]
    cos, sin = rotary_tables(n, d, base, positions, x.device, x.dtype) if tables is None else tables
    if interleaved:  # the table holds each frequency twice in a row
        cos, sin = cos[..., : d // 2].repeat_interleave(2, -1), sin[..., : d // 2].repeat_interleave(2, -1)
        pairs = x.unflatten(-1, (d // 2, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    else:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    shape = [1] * x.dim()
    shape[p], shape[-1] = n, d
    if cos.dim() > 2:   # per-row positions: tables [..., n, d] over x's axes up to the position axis
        shape[:p] = x.shape[:p]
    return x * cos.reshape(shape) + rotated * sin.reshape(shape)


def _view4(x: torch.Tensor, p: int) -> torch.Tensor:
    """x as [outer, n_pos, inner, d], a view when the strides allow one."""
    shape = (math.prod(x.shape[:p]), x.shape[p], math.prod(x.shape[p + 1:-1]), x.shape[-1])
    try:
        return x.view(shape)
    except RuntimeError:
        return x.contiguous().view(shape)


def _launch(x: torch.Tensor, p: int, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
            inverse: bool) -> torch.Tensor:
    x4 = _view4(x, p)
    outer, n, inner, d = x4.shape
    y4 = torch.empty(x4.shape, dtype=x.dtype, device=x.device)
    block_h = runtime.next_power_of_2(d // 2)
    rows = outer * inner
    block_r = min(runtime.next_power_of_2(rows), max(1, 2048 // block_h))
    _rotary[(n, triton.cdiv(rows, block_r))](
        x4, y4, cos, sin, inner, rows, n, *x4.stride(), *y4.stride()[:3], d // 2,
        INTERLEAVED=interleaved, INVERSE=inverse, PER_ROW=cos.dim() > 2, BLOCK_R=block_r, BLOCK_H=block_h)
    return y4.view(x.shape)


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, cos, sin, interleaved):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(cos, sin)
        ctx.p, ctx.interleaved = p, interleaved
        y = _launch(x, p, cos, sin, interleaved, inverse=False)
        runtime.launched("rotary", 1)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def, override]
        cos, sin = ctx.saved_tensors
        dx = _launch(dy, ctx.p, cos, sin, ctx.interleaved, inverse=True)  # a rotation's adjoint: turn back
        runtime.launched("rotary_bwd", 0)
        return dx, None, None, None, None


def rotary(x: torch.Tensor, pos_axis: int, base: float, positions: torch.Tensor | None = None,
           interleaved: bool = False, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate x's last axis (even size d) by the positions along axis `pos_axis` (0..n-1 or `positions`), or by
    the tables `cos`, `sin` made for them (`rotary_tables`: [n, d], or x's axes up to `pos_axis` then d)."""
    check_float("rotary: x", x)
    if x.dim() < 2:
        raise ValueError(f"rotary: x needs a position axis and a feature axis, got shape {tuple(x.shape)}")
    if not -x.dim() <= pos_axis < x.dim() or pos_axis % x.dim() == x.dim() - 1:
        raise ValueError(f"rotary: pos_axis {pos_axis} must name an axis of x {tuple(x.shape)} other than "
                         "the last (the features)")
    p = pos_axis % x.dim()
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary: the feature axis must have an even size, got {d}")
    if positions is not None:
        if positions.shape not in ((x.shape[p],), x.shape[:p + 1]) or positions.dtype.is_floating_point or \
                positions.dtype == torch.bool:
            raise ValueError(f"rotary: positions must be an integer tensor of shape ({x.shape[p]},) (the length "
                             f"of axis {pos_axis}) or {tuple(x.shape[:p + 1])} (one row per sequence), got "
                             f"{tuple(positions.shape)} {positions.dtype}")
        if positions.device != x.device:
            raise ValueError(f"rotary: positions are on {positions.device} but x is on {x.device}")
    tables = None
    if cos is not None or sin is not None:
        tables = _given_tables(x, p, cos, sin)
    if not runtime.use_triton(x, positions) or x.numel() == 0:
        runtime.fell_back("rotary")
        return rotary_reference(x, p, base, positions, interleaved, tables)
    if tables is None:
        tables = rotary_tables(x.shape[p], d, base, positions, x.device, x.dtype)
    return _Rotary.apply(x, p, tables[0].contiguous(), tables[1].contiguous(), bool(interleaved))


def _given_tables(x: torch.Tensor, p: int, cos: torch.Tensor | None, sin: torch.Tensor | None) \
        -> tuple[torch.Tensor, torch.Tensor]:
    """The tables made once per forward, checked and cast to x's dtype (free when they agree)."""
    if cos is None or sin is None:
        raise ValueError("rotary: give both tables, cos and sin, or neither")
    shapes = ((x.shape[p], x.shape[-1]), (*x.shape[:p + 1], x.shape[-1]))
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) not in shapes or not t.dtype.is_floating_point or t.device != x.device:
            raise ValueError(f"rotary: the {name} table must be a float tensor of shape {shapes[0]} or {shapes[1]} "
                             f"on {x.device}, got {tuple(t.shape)} {t.dtype} on {t.device}")
    return cos.to(x.dtype), sin.to(x.dtype)
