"""Flash attention forward: softmax(q k^T * scale + bias, masked) v without materialising the scores.

q is [B, H, T, D]; k and v are [B, Hkv, S, D] (v's last dim may differ) with H % Hkv == 0: query head h reads
key/value head h // (H // Hkv) (grouped-query and multi-query attention). Program (m, b*H + h) holds BLOCK_M
query rows and streams the keys in blocks of BLOCK_N with the online softmax (running max and sum in fp32, the
scores in base 2; `_online_softmax`, shared with `decode_attention`), accumulating p v in fp32.

- `causal`: key j is visible to query i iff j <= i (top-left aligned, torch.ones(T, S).tril()); a query block
  stops at its last visible key.
- `mask` (bool, True = attend) and `bias` (float, added to the scaled scores) broadcast to [B, H, T, S]; the
  kernel reads them through expanded views with stride 0 on broadcast dims, never a [B, H, T, S] copy.
- A row whose keys are all masked has softmax(all -inf) = NaN in torch, and nnspec's semantics are
  `softmax(where(mask, s, -inf))`: such rows come out NaN here too (l = 0 at the end), and a fully masked key
  block never poisons a row that has visible keys elsewhere (exp is taken against max 0 while the max is -inf).

The backward is not a kernel: it recomputes the attention with torch math (`attention_reference`, fp32) and
differentiates that, O(T*S) memory per head.
"""

import torch

from nnspec.backends.triton import runtime
from nnspec.backends.triton.kernels._common import check_float, tl, triton
from nnspec.backends.triton.kernels._online_softmax import (
    online_softmax_finish,
    online_softmax_start,
    online_softmax_update,
)


def _configs() -> list:
    if runtime.interpreting():  # one small config: the interpreter cannot tune, and small blocks exercise masks
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm in (64, 128) for bn in (32, 64) for w in (4, 8) for s in (2, 3)]


@triton.autotune(configs=_configs(), key=["T_BUCKET", "S_BUCKET", "BLOCK_D", "BLOCK_DV", "CAUSAL", "HAS_MASK",
                                         "HAS_BIAS", "PRECISION"])
@triton.jit
def _attention_fwd(Q, K, V, O, Mask, Bias,
                   sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd, sob, soh, sot, sod,
                   smb, smh, smt, sms, sbb, sbh, sbt, sbs,
                   H, GROUP, T, S, D, DV, scale, T_BUCKET, S_BUCKET,
                   CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    LOG2E: tl.constexpr = 1.4426950408889634
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    keys = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)

    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + d[None, :] * sqd,
                mask=(rows < T)[:, None] & (d < D)[None, :], other=0.0)
    if UPCAST:  # Triton's interpreter mis-multiplies bf16 in tl.dot
        q = q.to(tl.float32)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_i, l_i, acc = online_softmax_start(BLOCK_M, BLOCK_DV)
    qk_scale = scale * LOG2E
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)   # keys after the block's last query are invisible to it
    for start in range(0, hi, BLOCK_N):
        cols = start + keys
        kt = tl.load(k_base + cols[None, :] * sks + d[:, None] * skd,
                     mask=(cols < S)[None, :] & (d < D)[:, None], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale    # scaled scores, in base-2 units
        visible = (rows < T)[:, None] & (cols < S)[None, :]
        if HAS_BIAS:
            s += tl.load(Bias + b * sbb + h * sbh + rows[:, None] * sbt + cols[None, :] * sbs,
                         mask=visible, other=0.0).to(tl.float32) * LOG2E
        if HAS_MASK:
            visible &= tl.load(Mask + b * smb + h * smh + rows[:, None] * smt + cols[None, :] * sms,
                               mask=visible, other=0) != 0
        if CAUSAL:
            visible &= cols[None, :] <= rows[:, None]
        v = tl.load(v_base + cols[:, None] * svs + dv[None, :] * svd,
                    mask=(cols < S)[:, None] & (dv < DV)[None, :], other=0.0)
        m_i, l_i, acc = online_softmax_update(s, visible, v, m_i, l_i, acc, UPCAST, PRECISION)
    # l_i == 0: every key masked; torch's softmax of an all -inf row is NaN, so is this row
    o = online_softmax_finish(acc, l_i)
    tl.store(O + b * sob + h * soh + rows[:, None] * sot + dv[None, :] * sod, o.to(O.dtype.element_ty),
             mask=(rows < T)[:, None] & (dv < DV)[None, :])


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                        mask: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """nnspec's attention semantics in fp32 math: softmax(where(mask, q k^T * scale, -inf) + bias, causal) v."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if bias is not None:
        s = s + bias.float()
    if causal:
        t, n = s.shape[-2:]
        s = s.masked_fill(~torch.ones(t, n, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           bias: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(f"attention: {name}", t)
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D ([B, heads, length, head_dim]), got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"attention: {name} is {t.dtype} on {t.device} but q is {q.dtype} on {q.device}")
    (b, h, t, d), (bk, hk, s, dk) = q.shape, k.shape
    if bk != b or dk != d:
        raise ValueError(f"attention: k {tuple(k.shape)} must be [B={b}, Hkv, S, D={d}] for q {tuple(q.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"attention: v {tuple(v.shape)} must match k {tuple(k.shape)} in [B, Hkv, S]")
    if hk == 0 or h % hk:
        raise ValueError(f"attention: q's {h} heads are not a multiple of k's {hk} heads")
    for name, m in (("mask", mask), ("bias", bias)):
        if m is None:
            continue
        if name == "mask" and m.dtype != torch.bool:
            raise ValueError(f"attention: mask must be a bool tensor (True = attend), got {m.dtype}")
        if name == "bias":
            check_float("attention: bias", m)
        try:
            ok = m.dim() <= 4 and torch.broadcast_shapes(m.shape, (b, h, t, s)) == (b, h, t, s)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"attention: {name} {tuple(m.shape)} does not broadcast to [B, H, T, S] = "
                             f"{(b, h, t, s)}")
        if m.device != q.device:
            raise ValueError(f"attention: {name} is on {m.device} but q is on {q.device}")


def _bucket(n: int) -> int:
    """Lengths that share tuned block sizes: powers of two (so varying lengths do not retune every call)."""
    return min(runtime.next_power_of_2(n), 1 << 16)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
            mask: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    (b, h, t, d), (hk, s, dv) = q.shape, (k.shape[1], k.shape[2], v.shape[3])
    o = torch.empty((b, h, t, dv), dtype=q.dtype, device=q.device)
    full = (b, h, t, s)
    m4 = mask.expand(full) if mask is not None else None   # views: stride 0 on broadcast dims
    b4 = bias.expand(full) if bias is not None else None
    m_strides = m4.stride() if m4 is not None else (0, 0, 0, 0)
    b_strides = b4.stride() if b4 is not None else (0, 0, 0, 0)

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(t, meta["BLOCK_M"]), b * h

    _attention_fwd[grid](
        q, k, v, o, m4 if m4 is not None else q, b4 if b4 is not None else q,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *m_strides, *b_strides,
        h, h // hk, t, s, d, dv, scale, _bucket(t), _bucket(s),
        CAUSAL=causal, HAS_MASK=mask is not None, HAS_BIAS=bias is not None, UPCAST=runtime.interpreting(),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",   # fp32 scores exact, not TF32-rounded
        BLOCK_D=max(16, runtime.next_power_of_2(d)), BLOCK_DV=max(16, runtime.next_power_of_2(dv)))
    runtime.launched("attention", 1)
    return o


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, bias, scale, causal):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(q, k, v, mask, bias)
        ctx.scale, ctx.causal = scale, causal
        return _launch(q, k, v, scale, causal, mask, bias)

    @staticmethod
    def backward(ctx, do):  # type: ignore[no-untyped-def, override]
        q, k, v, mask, bias = ctx.saved_tensors
        wants = ctx.needs_input_grad
        with torch.enable_grad():
            ins = [x.detach().requires_grad_(want) if x is not None else None
                   for x, want in zip((q, k, v, bias), (wants[0], wants[1], wants[2], wants[4]), strict=True)]
            out = attention_reference(ins[0], ins[1], ins[2], scale=ctx.scale, causal=ctx.causal, mask=mask,
                                      bias=ins[3])
            leaves = [x for x in ins if x is not None and x.requires_grad]
            got = iter(torch.autograd.grad(out, leaves, do) if leaves else ())
        dq, dk, dv, dbias = (next(got) if x is not None and x.requires_grad else None for x in ins)
        return dq, dk, dv, None, dbias, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
              mask: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(where(mask, q k^T * scale, -inf) + bias, causal) v for q [B, H, T, D], k, v [B, Hkv, S, D]."""
    _check(q, k, v, mask, bias)
    if not runtime.use_triton(q, k, v, mask, bias) or q.numel() == 0 or k.shape[2] == 0:
        runtime.fell_back("attention")
        return attention_reference(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias)
    return _Attention.apply(q, k, v, mask, bias, float(scale), bool(causal))
