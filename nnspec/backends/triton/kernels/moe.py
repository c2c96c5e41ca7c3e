"""Mixture of SwiGLU experts with a grouped-GEMM kernel: the routed tokens, sorted by expert, go through each
projection in one launch whose row tiles each belong to one expert.

Routing (softmax in fp32, top-k, renormalising), the sort, the gather, silu(gate)·up and the weighted index_add
back are torch, as in the torch backend's sparse dispatch (`nnspec.backends.torch.runtime.moe_swiglu`, also the
fallback). Program (t, j) of `_grouped_fwd` computes rows `TileStart[t]..` (at most BLOCK_M, all of expert
`TileExpert[t]`) times columns j·BLOCK_N.. of that expert's weight [N, K], accumulating in fp32 (for fp32 inputs
IEEE products, not TF32, so results match torch's). The schedule of tiles is made on the host from the per-expert counts
(one host sync, as the torch path's). The backward is torch: per expert, dA = dC·W and dW = dCᵀ·A.
"""

import torch
import torch.nn.functional as F

from nnspec.backends.torch.runtime import moe_route
from nnspec.backends.torch.runtime import moe_swiglu as moe_reference
from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import check_float, tl, triton


@triton.jit
def _grouped_fwd(A, W, C, TileExpert, TileStart, TileEnd, N, K, stride_we, stride_wn, stride_wk,
                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    e = tl.load(TileExpert + t).to(tl.int64)
    start = tl.load(TileStart + t)
    end = tl.load(TileEnd + t)
    rows = start + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(A + rows.to(tl.int64)[:, None] * K + ks[None, :], mask=(rows < end)[:, None] & (ks < K)[None, :],
                    other=0.0)
        w = tl.load(W + e * stride_we + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=(cols < N)[None, :] & (ks < K)[:, None], other=0.0)
        acc += tl.dot(a, w, input_precision=PRECISION)
    tl.store(C + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(C.dtype.element_ty),
             mask=(rows < end)[:, None] & (cols < N)[None, :])


def _schedule(counts: list[int], block_m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(expert, first row, end row of its run) of each row tile: each expert's run cut into BLOCK_M-row tiles."""
    experts, starts, ends, at = [], [], [], 0
    for e, n in enumerate(counts):
        for row in range(at, at + n, block_m):
            experts.append(e)
            starts.append(row)
            ends.append(at + n)
        at += n
    return tuple(torch.tensor(v, dtype=torch.int32, device=device) for v in (experts, starts, ends))


class _GroupedLinear(torch.autograd.Function):
    """C[rows of expert e] = A[rows of e] · W[e]ᵀ, the rows of A sorted by expert (`counts` rows each)."""

    @staticmethod
    def forward(ctx, a, w, counts):  # type: ignore[no-untyped-def, override]
        m, k = a.shape
        n = w.shape[1]
        out = torch.empty((m, n), dtype=a.dtype, device=a.device)
        block_m = 16 if runtime.interpreting() else 64
        block_n = min(max(runtime.next_power_of_2(n), 16), 16 if runtime.interpreting() else 128)
        block_k = min(max(runtime.next_power_of_2(k), 16), 16 if runtime.interpreting() else 64)
        experts, starts, ends = _schedule(counts, block_m, a.device)
        if len(experts):
            _grouped_fwd[(len(experts), triton.cdiv(n, block_n))](
                a, w, out, experts, starts, ends, n, k, w.stride(0), w.stride(1), w.stride(2),
                PRECISION="ieee" if a.dtype == torch.float32 else "tf32", BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=block_k)
            runtime.launched("moe_grouped_gemm", 1)
        ctx.save_for_backward(a, w)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[no-untyped-def, override]
        a, w = ctx.saved_tensors
        da, dw = torch.zeros_like(a), torch.zeros_like(w)
        at = 0
        for e, n in enumerate(ctx.counts):
            if n:
                d = dout[at:at + n]
                da[at:at + n] = d @ w[e]
                dw[e] = d.t() @ a[at:at + n]
                at += n
        return da, dw, None


def moe(x: torch.Tensor, router: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
        down_proj: torch.Tensor, k: int, norm_topk_prob: bool) -> torch.Tensor:
    """Top-k mixture of SwiGLU experts over the last dim of x (router [E, H], gate_proj and up_proj [E, I, H],
    down_proj [E, H, I]): the moe op, its three projections as grouped GEMMs over the routed tokens."""
    for name, t in (("x", x), ("router", router), ("gate_proj", gate_proj), ("up_proj", up_proj),
                    ("down_proj", down_proj)):
        check_float(f"moe: {name}", t)
    if not runtime.use_triton(x, router, gate_proj, up_proj, down_proj) or x.numel() == 0:
        runtime.fell_back("moe")
        return moe_reference(x, router, gate_proj, up_proj, down_proj, k, norm_topk_prob)
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    token, weight, counts = moe_route(x, router, k, norm_topk_prob)
    routed = x[token].contiguous()
    h = F.silu(_GroupedLinear.apply(routed, gate_proj, counts)) * _GroupedLinear.apply(routed, up_proj, counts)
    y = _GroupedLinear.apply(h.contiguous(), down_proj, counts)
    out = torch.zeros_like(x).index_add(0, token, y * weight.unsqueeze(-1))
    return out.reshape(shape)
