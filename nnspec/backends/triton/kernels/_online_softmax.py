"""The online softmax both attention kernels run (`attention._attention_fwd` over a sequence's keys,
`decode_attention._decode_partial` over a split of the KV cache), as @triton.jit helpers they call.

Per query row it keeps the running maximum `m` of the scores seen (base-2 units: the scores are scaled by
log2(e) before), the running sum `l` of exp2(score - m) and the accumulator `acc` of exp2(score - m) v (all
fp32). A new key block rescales both by exp2(m_old - m_new) before adding its own terms, so after the last block
`acc / l` is softmax(scores) v without the scores ever being held. A row with no visible key yet has m = -inf:
its terms are taken against 0 (exp2(-inf) = 0), not -inf (which would give exp2(-inf + inf) = NaN), so a fully
masked block never poisons a row that has visible keys elsewhere; a row with none at all ends with l = 0 and
comes out NaN, as torch's softmax of an all -inf row (nnspec's semantics).
"""

from nnspec.backends.triton.kernels._common import tl, triton


@triton.jit
def online_softmax_start(BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """(m, l, acc) before any key: -inf, 0 and 0, in fp32."""
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    return m_i, l_i, acc


@triton.jit
def online_softmax_update(s, visible, v, m_i, l_i, acc,
                          UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(m, l, acc) after one key block: `s` [BLOCK_M, BLOCK_N] the block's scaled scores in base-2 units,
    `visible` which of them each row sees, `v` [BLOCK_N, BLOCK_DV] the block's values. `UPCAST`: multiply in
    fp32 (Triton's interpreter mis-multiplies bf16 in tl.dot)."""
    s = tl.where(visible, s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)   # no visible key yet: exp(-inf - 0) = 0, not NaN
    p = tl.math.exp2(s - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if UPCAST:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def online_softmax_finish(acc, l_i):
    """acc / l per row; NaN where l == 0 (no visible key, as torch's softmax of an all -inf row)."""
    return tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], float("nan"))
