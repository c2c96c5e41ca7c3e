"""LayerNorm and RMSNorm over the last dim, optionally fused with the residual add before them.

`layernorm(x, w, b, eps)` is `F.layer_norm` (biased variance, statistics in fp32); `rmsnorm(x, w, eps)` is
nnspec's torch lowering, `w * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)`. With `residual`
both return `(s, norm(s))` for `s = x + residual`: the add and the norm in one pass over the row.

Forward: one program per row, the whole row in registers (rows up to MAX_COLS elements; longer ones take the
torch path). Backward: G programs each walk a stride of rows, write dx, and keep the row sums of the weight
and bias gradients in registers; a second kernel adds the G partial sums.
"""

import torch
import torch.nn.functional as F

from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import (
    as_rows,
    check_float,
    check_same,
    num_warps,
    partial_programs,
    tl,
    triton,
)

MAX_COLS = 65536   # longest row one program holds; beyond it the launchers run the torch reference


@triton.jit
def _row(X, R, S, row, cols, mask, stride_x, stride_r, stride_s, HAS_RES: tl.constexpr):
    """A norm's input row in fp32; with a residual, x + r, stored to S first and rounded to its dtype, so the
    norm reads the sum exactly as an unfused add would store it."""
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s = (x + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + row * stride_s + cols, s, mask=mask)
        x = s.to(tl.float32)
    return x


@triton.jit
def _layernorm_fwd(X, R, S, Y, W, B, Mean, Rstd, stride_x, stride_r, stride_s, stride_y, N, eps,
                   HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = _row(X, R, S, row, cols, mask, stride_x, stride_r, stride_s, HAS_RES)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _layernorm_bwd(X, W, DY, DS, DX, Mean, Rstd, DW, DB, stride_x, stride_dy, stride_ds, stride_dx, M, N,
                   HAS_W: tl.constexpr, HAS_DS: tl.constexpr, WANT_DW: tl.constexpr, WANT_DB: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w; partial dw, db for this program."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r in range(pid, M, tl.num_programs(0)):
        row = tl.cast(r, tl.int64)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row)
        xhat = tl.where(mask, (x - tl.load(Mean + row)) * rstd, 0.0)
        g = dy
        if HAS_W:
            g = dy * w
        dx = (g - xhat * (tl.sum(g * xhat, axis=0) / N) - tl.sum(g, axis=0) / N) * rstd
        if HAS_DS:  # the gradient reaching the residual sum directly, from its other users
            dx += tl.load(DS + row * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if WANT_DW:
            dw += dy * xhat
        if WANT_DB:
            db += dy
    if WANT_DW:
        tl.store(DW + pid * N + cols, dw, mask=mask)
    if WANT_DB:
        tl.store(DB + pid * N + cols, db, mask=mask)


@triton.jit
def _rmsnorm_fwd(X, R, S, Y, W, Rstd, stride_x, stride_r, stride_s, stride_y, N, eps,
                 HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = _row(X, R, S, row, cols, mask, stride_x, stride_r, stride_s, HAS_RES)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    # the lowering rounds the normalised row to the input dtype before scaling by the weight
    h = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
    y = h * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + row, rstd)


@triton.jit
def _rmsnorm_bwd(X, W, DY, DS, DX, Rstd, DW, stride_x, stride_dy, stride_ds, stride_dx, M, N,
                 HAS_DS: tl.constexpr, WANT_DW: tl.constexpr, BLOCK_N: tl.constexpr):
    """dx = rstd * (g - h * mean(g * h)) with h = x * rstd, g = dy * w; partial dw = sum(dy * h)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r in range(pid, M, tl.num_programs(0)):
        row = tl.cast(r, tl.int64)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row)
        h = x * rstd
        g = dy * w
        dx = (g - h * (tl.sum(g * h, axis=0) / N)) * rstd
        if HAS_DS:
            dx += tl.load(DS + row * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if WANT_DW:
            dw += dy * h.to(X.dtype.element_ty).to(tl.float32)   # the forward's rounded h
    if WANT_DW:
        tl.store(DW + pid * N + cols, dw, mask=mask)


@triton.jit
def _sum_partials(P, Out, G, N, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """Out[n] = sum over g of P[g, n]: the weight gradient from the backward programs' partial sums."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        block = tl.load(P + g[:, None] * N + cols[None, :], mask=(g < G)[:, None] & (cols < N)[None, :], other=0.0)
        acc += tl.sum(block, axis=0)
    tl.store(Out + cols, acc.to(Out.dtype.element_ty), mask=cols < N)


# ---- references: what the kernels compute, and what the launchers run without Triton ----
def layernorm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                        residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    s = x if residual is None else x + residual
    y = F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
    return y if residual is None else (s, y)


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                      residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    s = x if residual is None else x + residual
    h = s.float()
    y = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)
    return y if residual is None else (s, y)


# ---- launchers ----
def _check(name: str, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
           residual: torch.Tensor | None) -> None:
    check_float(f"{name}: x", x)
    if x.dim() == 0:
        raise ValueError(f"{name}: x must have at least one dim (the normalised one)")
    if residual is not None:
        check_same(f"{name}: residual", x, residual)
    for what, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        check_float(f"{name}: {what}", p)
        if name == "layernorm" and p.dtype not in (x.dtype, torch.float32):   # what F.layer_norm accepts
            raise ValueError(f"layernorm: {what} must be {x.dtype} (x's dtype) or float32, got {p.dtype}")
        if p.shape != x.shape[-1:]:
            raise ValueError(f"{name}: {what} must have shape ({x.shape[-1]},) (x's last dim), got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name}: {what} is on {p.device} but x is on {x.device}")


def _kernel_fits(x: torch.Tensor) -> bool:
    return 0 < x.shape[-1] <= MAX_COLS and x.numel() > 0


def _fwd_buffers(x: torch.Tensor, residual: torch.Tensor | None, y_dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x rows, residual rows, s rows, y rows): s is x itself without a residual; unused pointers alias x."""
    x2 = as_rows(x)
    r2 = as_rows(residual) if residual is not None else x2
    s2 = torch.empty(x2.shape, dtype=x.dtype, device=x.device) if residual is not None else x2
    return x2, r2, s2, torch.empty(x2.shape, dtype=y_dtype, device=x.device)


def _grad_rows(gy: torch.Tensor, gs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    gy2 = as_rows(gy)
    return gy2, (as_rows(gs) if gs is not None else gy2)


def _sum_rows(name: str, part: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The weight gradient: the sum of the backward programs' partial sums [G, N], in the weight's dtype."""
    if part is None:
        return None
    g, n = part.shape
    out = torch.empty(n, dtype=dtype, device=part.device)
    _sum_partials[(triton.cdiv(n, 256),)](part, out, g, n, BLOCK_G=8, BLOCK_N=256)
    runtime.launched(name, 0)
    return out


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps):  # type: ignore[no-untyped-def, override]
        x2, r2, s2, y2 = _fwd_buffers(x, residual, x.dtype)
        m, n = x2.shape
        mean, rstd = (torch.empty(m, dtype=torch.float32, device=x.device) for _ in range(2))
        block = runtime.next_power_of_2(n)
        _layernorm_fwd[(m,)](
            x2, r2, s2, y2, weight if weight is not None else x2, bias if bias is not None else x2, mean, rstd,
            x2.stride(0), r2.stride(0), s2.stride(0), y2.stride(0), n, eps,
            HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
            BLOCK_N=block, num_warps=num_warps(block))
        runtime.launched("layernorm", 2 if residual is not None else 1)
        ctx.save_for_backward(s2, weight, mean, rstd)
        ctx.has_res, ctx.shape = residual is not None, x.shape
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.set_materialize_grads(False)
        y = y2.view(x.shape)
        return (s2.view(x.shape), y) if residual is not None else y

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[no-untyped-def, override]
        s2, weight, mean, rstd = ctx.saved_tensors
        gs, gy = grads if ctx.has_res else (None, grads[0])
        if gy is None:  # only s was used: its gradient passes straight through the add
            return gs, gs, None, None, None
        m, n = s2.shape
        want_w = weight is not None and ctx.needs_input_grad[2]
        want_b = ctx.bias_dtype is not None and ctx.needs_input_grad[3]
        gy2, gs2 = _grad_rows(gy, gs)
        dx = torch.empty(s2.shape, dtype=s2.dtype, device=s2.device)
        g = partial_programs(m, s2.device)
        dw = torch.empty((g, n), dtype=torch.float32, device=s2.device) if want_w else None
        db = torch.empty((g, n), dtype=torch.float32, device=s2.device) if want_b else None
        block = runtime.next_power_of_2(n)
        _layernorm_bwd[(g,)](
            s2, weight if weight is not None else s2, gy2, gs2, dx, mean, rstd,
            dw if dw is not None else dx, db if db is not None else dx,
            s2.stride(0), gy2.stride(0), gs2.stride(0), dx.stride(0), m, n,
            HAS_W=weight is not None, HAS_DS=gs is not None, WANT_DW=want_w, WANT_DB=want_b,
            BLOCK_N=block, num_warps=num_warps(block))
        runtime.launched("layernorm_bwd", 0)
        dx = dx.view(ctx.shape)
        return (dx, dx if ctx.has_res else None, _sum_rows("layernorm_bwd_sum", dw, weight.dtype) if want_w else None,
                _sum_rows("layernorm_bwd_sum", db, ctx.bias_dtype) if want_b else None, None)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps):  # type: ignore[no-untyped-def, override]
        # the output dtype is what `weight * h.to(x.dtype)` promotes to
        x2, r2, s2, y2 = _fwd_buffers(x, residual, torch.promote_types(x.dtype, weight.dtype))
        m, n = x2.shape
        rstd = torch.empty(m, dtype=torch.float32, device=x.device)
        block = runtime.next_power_of_2(n)
        _rmsnorm_fwd[(m,)](x2, r2, s2, y2, weight, rstd, x2.stride(0), r2.stride(0), s2.stride(0), y2.stride(0),
                           n, eps, HAS_RES=residual is not None, BLOCK_N=block, num_warps=num_warps(block))
        runtime.launched("rmsnorm", 2 if residual is not None else 1)
        ctx.save_for_backward(s2, weight, rstd)
        ctx.has_res, ctx.shape = residual is not None, x.shape
        ctx.set_materialize_grads(False)
        y = y2.view(x.shape)
        return (s2.view(x.shape), y) if residual is not None else y

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[no-untyped-def, override]
        s2, weight, rstd = ctx.saved_tensors
        gs, gy = grads if ctx.has_res else (None, grads[0])
        if gy is None:
            return gs, gs, None, None
        m, n = s2.shape
        want_w = ctx.needs_input_grad[2]
        gy2, gs2 = _grad_rows(gy, gs)
        dx = torch.empty(s2.shape, dtype=s2.dtype, device=s2.device)
        g = partial_programs(m, s2.device)
        dw = torch.empty((g, n), dtype=torch.float32, device=s2.device) if want_w else None
        block = runtime.next_power_of_2(n)
        _rmsnorm_bwd[(g,)](s2, weight, gy2, gs2, dx, rstd, dw if dw is not None else dx,
                           s2.stride(0), gy2.stride(0), gs2.stride(0), dx.stride(0), m, n,
                           HAS_DS=gs is not None, WANT_DW=want_w, BLOCK_N=block, num_warps=num_warps(block))
        runtime.launched("rmsnorm_bwd", 0)
        dx = dx.view(ctx.shape)
        return dx, (dx if ctx.has_res else None), _sum_rows("rmsnorm_bwd_sum", dw, weight.dtype), None


def layernorm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
              residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm of x over its last dim; with `residual`, `(s, layernorm(s))` for s = x + residual."""
    _check("layernorm", x, weight, bias, residual)
    if not runtime.use_triton(x, weight, bias, residual) or not _kernel_fits(x):
        runtime.fell_back("layernorm")
        return layernorm_reference(x, weight, bias, eps, residual)
    return _LayerNorm.apply(x, residual, weight, bias, float(eps))


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
            residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x over its last dim (nnspec's lowering); with `residual`, `(s, rmsnorm(s))` for s = x + residual."""
    _check("rmsnorm", x, weight, None, residual)
    if not runtime.use_triton(x, weight, residual) or not _kernel_fits(x):
        runtime.fell_back("rmsnorm")
        return rmsnorm_reference(x, weight, eps, residual)
    return _RMSNorm.apply(x, residual, weight, float(eps))
