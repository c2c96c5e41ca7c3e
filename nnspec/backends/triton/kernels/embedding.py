"""Embedding lookup: out[..., :] = weight[ids[...], :], a row gather (as F.embedding).

Program (i, j) copies BLOCK_R looked-up rows, columns j*BLOCK_D onwards. Ids are checked against the table
before the launch (an out-of-range id is a ValueError, not an out-of-bounds read; one host sync). The backward
scatters the output gradient into the table's rows with index_add (accumulated in fp32); the `padding_idx`
row gets no gradient, as in F.embedding.
"""

import torch
import torch.nn.functional as F

from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import check_float, tl, triton


@triton.jit
def _embedding_fwd(Ids, W, Out, n, D, stride_wv, stride_wd, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ids = tl.load(Ids + r, mask=r < n, other=0).to(tl.int64)
    mask = (r < n)[:, None] & (c < D)[None, :]
    rows = tl.load(W + ids[:, None] * stride_wv + c[None, :] * stride_wd, mask=mask, other=0.0)
    tl.store(Out + r.to(tl.int64)[:, None] * D + c[None, :], rows, mask=mask)


def embedding_reference(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    return F.embedding(ids, weight, padding_idx=padding_idx)


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx):  # type: ignore[no-untyped-def, override]
        flat = ids.reshape(-1)
        n, d = flat.numel(), weight.shape[1]
        out = torch.empty((n, d), dtype=weight.dtype, device=weight.device)
        block_d = min(runtime.next_power_of_2(d), 1024)
        block_r = max(1, min(runtime.next_power_of_2(n), 4096 // block_d))
        _embedding_fwd[(triton.cdiv(n, block_r), triton.cdiv(d, block_d))](
            flat, weight, out, n, d, weight.stride(0), weight.stride(1), BLOCK_R=block_r, BLOCK_D=block_d)
        runtime.launched("embedding", 1)
        ctx.save_for_backward(flat)
        ctx.weight_meta, ctx.padding_idx = (weight.shape, weight.dtype), padding_idx
        return out.view(*ids.shape, d)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[no-untyped-def, override]
        (flat,) = ctx.saved_tensors
        (v, d), dtype = ctx.weight_meta
        dw = torch.zeros((v, d), dtype=torch.float32, device=dout.device)
        dw.index_add_(0, flat, dout.reshape(-1, d).float())
        if ctx.padding_idx is not None:
            dw[ctx.padding_idx] = 0
        return None, dw.to(dtype), None


def embedding(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    """Rows of weight [V, D] picked by the integer ids (any shape): [*ids.shape, D]."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"embedding: ids must be an int64 or int32 tensor, got {ids.dtype}")
    check_float("embedding: weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"embedding: weight must be 2-D [num_embeddings, dim], got {tuple(weight.shape)}")
    if ids.device != weight.device:
        raise ValueError(f"embedding: ids are on {ids.device} but weight is on {weight.device}")
    v = weight.shape[0]
    if padding_idx is not None:
        if not -v <= padding_idx < v:
            raise ValueError(f"embedding: padding_idx {padding_idx} is outside the table's {v} rows")
        padding_idx %= v
    if ids.numel():
        lo, hi = torch.aminmax(ids)
        if lo < 0 or hi >= v:
            raise ValueError(f"embedding: ids must lie in [0, {v}), got values from {int(lo)} to {int(hi)}")
    if not runtime.use_triton(ids, weight) or ids.numel() == 0 or weight.shape[1] == 0:
        runtime.fell_back("embedding")
        return embedding_reference(ids, weight, padding_idx)
    return _Embedding.apply(ids.contiguous(), weight, padding_idx)
