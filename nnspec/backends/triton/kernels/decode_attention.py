"""Attention over a static KV cache, for a decoding step (flash-decoding): the new tokens' queries against the
cache's keys and values up to the last written position.

q is [B, H, T, D] (T new tokens, at cache positions `positions` [T]); the cache's k and v are [B, Hkv, S, D]
(v's last dim may differ; S the cache's length) with H % Hkv == 0: query head h reads key/value head
h // (H // Hkv). Key j is visible to new token i when j <= positions[i] (the cache is causal by position) and,
with `mask` (bool, broadcast to [B, T, S]: the padding mask over the cache, the same for every head), where the
mask is True.

Two kernels:
- `_decode_partial`, program (b * Hkv + hk, split, m): the query rows of every head of key/value head `hk` (the
  GQA group's heads times the new tokens: one block of `GROUP * T` rows reads each key block once) against the
  keys of one split of the cache - `CHUNK` slots, and none past the largest position in its rows (the cache
  after it is not written yet, so a short sequence in a long cache costs its length, not the cache's). Online
  softmax (running max and sum in fp32, base 2; `_online_softmax`, shared with `attention`); it writes the
  unnormalised accumulator, the max and the sum.
- `_decode_combine`: the splits' partial results merged by their maxima (the log-sum-exp rescaling) and
  normalised. With one split the partial kernel normalises and writes the output itself.

A row with no visible key is NaN, as torch's softmax of an all -inf row (nnspec's semantics); `decode_mask`
never makes one (a token sees its own slot). Forward only: a decoding step does not train.
"""

from __future__ import annotations

import functools

import torch

from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import check_float, tl, triton
from nnspec.backends.triton.kernels._online_softmax import (
    online_softmax_finish,
    online_softmax_start,
    online_softmax_update,
)


@triton.jit
def _decode_partial(Q, K, V, Pos, Mask, Acc, Max, Sum, O,
                    sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd, smb, smt, sms,
                    sob, soh, sot, sod,
                    HKV, GROUP, T, S, D, DV, CHUNK, SPLITS, scale,
                    HAS_MASK: tl.constexpr, SINGLE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    LOG2E: tl.constexpr = 1.4426950408889634
    bh = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    b, hk = (bh // HKV).to(tl.int64), (bh % HKV).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # row r: head hk * GROUP + r // T, new token r % T
    live = rows < GROUP * T
    h = hk * GROUP + rows // T
    i = rows % T
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    keys = tl.arange(0, BLOCK_N)

    q = tl.load(Q + b * sqb + h[:, None] * sqh + i[:, None] * sqt + d[None, :] * sqd,
                mask=live[:, None] & (d < D)[None, :], other=0.0)
    if UPCAST:  # Triton's interpreter mis-multiplies bf16 in tl.dot
        q = q.to(tl.float32)
    pos = tl.load(Pos + i, mask=live, other=0)
    lo = split * CHUNK
    # slots after the block's largest position are not visible to any of its rows (nor written yet)
    hi = tl.minimum(tl.minimum(S, lo + CHUNK), tl.max(tl.where(live, pos, -1)) + 1)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_i, l_i, acc = online_softmax_start(BLOCK_M, BLOCK_DV)
    qk_scale = scale * LOG2E
    for start in range(lo, hi, BLOCK_N):
        cols = start + keys
        inside = cols < hi
        kt = tl.load(k_base + cols[None, :] * sks + d[:, None] * skd, mask=inside[None, :] & (d < D)[:, None],
                     other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale    # scaled scores, in base-2 units
        visible = live[:, None] & inside[None, :] & (cols[None, :] <= pos[:, None])
        if HAS_MASK:
            visible &= tl.load(Mask + b * smb + i[:, None] * smt + cols[None, :] * sms, mask=visible, other=0) != 0
        v = tl.load(v_base + cols[:, None] * svs + dv[None, :] * svd, mask=inside[:, None] & (dv < DV)[None, :],
                    other=0.0)
        m_i, l_i, acc = online_softmax_update(s, visible, v, m_i, l_i, acc, UPCAST, PRECISION)
    if SINGLE:   # the only split: normalise and write the output (l_i == 0: no visible key, NaN as torch)
        o = online_softmax_finish(acc, l_i)
        tl.store(O + b * sob + h[:, None] * soh + i[:, None] * sot + dv[None, :] * sod, o.to(O.dtype.element_ty),
                 mask=live[:, None] & (dv < DV)[None, :])
    else:        # partial results, [B * Hkv, SPLITS, GROUP * T] (and DV), merged by _decode_combine
        at = (bh * SPLITS + split) * GROUP * T + rows
        tl.store(Max + at, m_i, mask=live)
        tl.store(Sum + at, l_i, mask=live)
        tl.store(Acc + at[:, None] * DV + dv[None, :], acc, mask=live[:, None] & (dv < DV)[None, :])


@triton.jit
def _decode_combine(Acc, Max, Sum, O, sob, soh, sot, sod, HKV, GROUP, T, DV, SPLITS,
                    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b, hk = (bh // HKV).to(tl.int64), (bh % HKV).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < GROUP * T
    dv = tl.arange(0, BLOCK_DV)
    m = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for split in range(0, SPLITS):
        at = (bh * SPLITS + split) * GROUP * T + rows
        m_s = tl.load(Max + at, mask=live, other=-float("inf"))
        l_s = tl.load(Sum + at, mask=live, other=0.0)
        a_s = tl.load(Acc + at[:, None] * DV + dv[None, :], mask=live[:, None] & (dv < DV)[None, :], other=0.0)
        m_new = tl.maximum(m, m_s)
        m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_ref)
        beta = tl.math.exp2(m_s - m_ref)
        l = l * alpha + l_s * beta
        acc = acc * alpha[:, None] + a_s * beta[:, None]
        m = m_new
    o = online_softmax_finish(acc, l)
    h = hk * GROUP + rows // T
    i = rows % T
    tl.store(O + b * sob + h[:, None] * soh + i[:, None] * sot + dv[None, :] * sod, o.to(O.dtype.element_ty),
             mask=live[:, None] & (dv < DV)[None, :])


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, *,
                               scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The same numbers in fp32 torch math: softmax over the slots j <= positions[i] where `mask` holds."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    visible = torch.arange(k.shape[2], device=q.device) <= positions[:, None]      # [T, S]
    if mask is not None:
        visible = visible & mask.expand(q.shape[0], q.shape[2], k.shape[2])[:, None]
    s = s.masked_fill(~visible, float("-inf"))
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
           mask: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(f"decode_attention: {name}", t)
        if t.dim() != 4 or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"decode_attention: {name} must be 4-D ([B, heads, length, head_dim]) in q's dtype on "
                             f"q's device, got {t.dtype} {tuple(t.shape)} on {t.device}")
    (b, h, t, d), (bk, hk, s, dk) = q.shape, k.shape
    if bk != b or dk != d or v.shape[:3] != k.shape[:3] or hk == 0 or h % hk:
        raise ValueError(f"decode_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must be [B={b}, Hkv, S, "
                         f"D={d}] with Hkv dividing q's {h} heads")
    if positions.shape != (t,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"decode_attention: positions must be an integer [T={t}] tensor, got {positions.dtype} "
                         f"{tuple(positions.shape)}")
    if mask is not None:
        try:
            ok = mask.dtype == torch.bool and torch.broadcast_shapes(mask.shape, (b, t, s)) == (b, t, s)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"decode_attention: mask must be bool and broadcast to [B, T, S] = {(b, t, s)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")


def _splits(programs: int, s: int, block_n: int, device: torch.device) -> int:
    """How many parts the cache's length is split into: enough programs to fill the GPU when batch x kv heads
    alone would not. The interpreter pays per program (~0.1 s): it splits only when batch x kv heads is under 4."""
    blocks = triton.cdiv(s, block_n)
    if runtime.interpreting() or device.type != "cuda":
        return min(blocks, 4) if programs < 4 else 1
    return max(1, min(blocks, triton.cdiv(2 * _multiprocessors(device.index), programs), 64))


@functools.cache
def _multiprocessors(index: int | None) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()) \
        .multi_processor_count


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float,
            mask: torch.Tensor | None) -> torch.Tensor:
    (b, h, t, d), (hk, s, dv) = q.shape, (k.shape[1], k.shape[2], v.shape[3])
    group = h // hk
    o = torch.empty((b, h, t, dv), dtype=q.dtype, device=q.device)
    m3 = mask.expand(b, t, s) if mask is not None else None   # a view: stride 0 on broadcast dims
    block_n = 16 if runtime.interpreting() else 64
    rows = group * t
    block_m = max(16, min(runtime.next_power_of_2(rows), 64))
    splits = _splits(b * hk, s, block_n, q.device)
    chunk = triton.cdiv(triton.cdiv(s, splits), block_n) * block_n
    splits = triton.cdiv(s, chunk)
    single = splits == 1
    part = (b * hk, splits, rows)
    acc = o if single else torch.empty((*part, dv), dtype=torch.float32, device=q.device)
    mx = o if single else torch.empty(part, dtype=torch.float32, device=q.device)
    sm = o if single else torch.empty(part, dtype=torch.float32, device=q.device)
    pos = positions.to(torch.int32)
    block_d, block_dv = max(16, runtime.next_power_of_2(d)), max(16, runtime.next_power_of_2(dv))
    m_rows = triton.cdiv(rows, block_m)
    _decode_partial[(b * hk, splits, m_rows)](
        q, k, v, pos, m3 if m3 is not None else pos, acc, mx, sm, o,
        *q.stride(), *k.stride(), *v.stride(), *(m3.stride() if m3 is not None else (0, 0, 0)), *o.stride(),
        hk, group, t, s, d, dv, chunk, splits, scale,
        HAS_MASK=mask is not None, SINGLE=single, UPCAST=runtime.interpreting(),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_D=block_d, BLOCK_DV=block_dv,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
    if not single:
        _decode_combine[(b * hk, m_rows)](acc, mx, sm, o, *o.stride(), hk, group, t, dv, splits,
                                          BLOCK_DV=block_dv, BLOCK_M=block_m, num_warps=4)
    runtime.launched("decode_attention", 1)
    return o


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, *, scale: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax over the cache slots j <= positions[i] (and `mask` [B, T, S], broadcast) of q k^T * scale, times v:
    q [B, H, T, D] the new tokens', k and v [B, Hkv, S, D] the whole static cache."""
    _check(q, k, v, positions, mask)
    if not runtime.use_triton(q, k, v, positions, mask) or q.numel() == 0 or k.shape[2] == 0 or \
            (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))):
        runtime.fell_back("decode_attention")
        return decode_attention_reference(q, k, v, positions, scale=scale, mask=mask)
    return _launch(q, k, v, positions, scale, mask)
