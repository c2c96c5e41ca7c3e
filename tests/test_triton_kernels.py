"""The hand-written Triton kernels (nnspec/backends/triton/kernels/) against their torch references.

They run in Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before any kernel module is
imported), on irregular sizes so every mask is exercised: rows that are not powers of two, T != S, odd head
counts and head dims, grouped-query ratios 1/2/3/4. Tolerances: fp32 1e-5, fp16 2e-3, bf16 2e-2. Each test
also checks that the kernel really ran (runtime.LAUNCHES), so a silent fallback to torch cannot pass.
The references are checked against nnspec's own torch lowering through the reference interpreter.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

import torch
import torch.nn.functional as F

from nnspec.backends.triton import runtime

if not runtime.interpreting():
    pytest.skip("the kernels are tested in Triton's interpreter: TRITON_INTERPRET=1 (tests/conftest.py sets it)",
                allow_module_level=True)

from nnspec.backends.triton.kernels import attention as attn
from nnspec.backends.triton.kernels import embedding as emb
from nnspec.backends.triton.kernels import norms, rotary, softmax

# the interpreter evaluates masked-out lanes too (0/0, -inf - -inf): numpy warns, the lanes are discarded
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    runtime.reset()
    torch.manual_seed(0)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    tol = TOL[dtype or want.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=tol, rtol=tol, equal_nan=True)


def close_grads(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    """Low-precision gradients against fp32 ones: within the dtype's tolerance relative to the largest entry
    (a weight gradient sums over rows, so its entries carry that many roundings)."""
    tol = TOL[dtype]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, atol=tol * max(1.0, w.abs().max().item()), rtol=tol)


def ragged(*shape: int, dtype: torch.dtype = torch.float32, pad: int = 23) -> torch.Tensor:
    """A random tensor whose rows are strided views (last dim padded by `pad`), not a contiguous block."""
    return torch.randn(*shape[:-1], shape[-1] + pad)[..., : shape[-1]].to(dtype)


# ---- norms ----
def norm_call(kind: str, x: torch.Tensor, p: dict, residual: torch.Tensor | None, reference: bool = False):
    fn = getattr(norms, f"{kind}_reference" if reference else kind)
    if kind == "layernorm":
        return fn(x, p["weight"], p["bias"], 1e-5, residual=residual)
    return fn(x, p["weight"], 1e-6, residual=residual)


def norm_params(kind: str, n: int, dtype: torch.dtype) -> dict:
    p = {"weight": (1 + 0.5 * torch.randn(n)).to(dtype)}
    if kind == "layernorm":
        p["bias"] = torch.randn(n).to(dtype)
    return p


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_forward(kind: str, residual: bool, dtype: torch.dtype) -> None:
    x = ragged(2, 5, 97, dtype=dtype) * 3 + 1
    r = torch.randn(2, 5, 97).to(dtype) if residual else None
    p = norm_params(kind, 97, dtype)
    got = norm_call(kind, x, p, r)
    want = norm_call(kind, x, p, r, reference=True)
    if residual:
        close(got[0], want[0])   # s = x + residual, as the unfused add stores it
        close(got[1], want[1])
    else:
        close(got, want)
    assert runtime.LAUNCHES[kind] == 1 and runtime.OPS[kind] == (2 if residual else 1)
    assert not runtime.FALLBACKS


def test_rmsnorm_output_dtype_follows_the_lowering() -> None:
    # fp32 weight times the bf16-rounded normalised row promotes to fp32, as `weight * h.to(x.dtype)` does
    x, w = torch.randn(3, 40).bfloat16(), 1 + torch.randn(40)
    got = norms.rmsnorm(x, w, 1e-6)
    assert got.dtype == torch.float32
    close(got, norms.rmsnorm_reference(x, w, 1e-6), torch.bfloat16)   # h is rounded to bf16 on both sides


def test_layernorm_low_precision_input_with_fp32_parameters() -> None:
    x, w, b = torch.randn(5, 50).bfloat16(), 1 + torch.randn(50), torch.randn(50)
    close(norms.layernorm(x, w, b, 1e-5), F.layer_norm(x, (50,), w, b, 1e-5))   # bf16 out, as torch


@pytest.mark.parametrize("affine", ["none", "weight", "bias"])
def test_layernorm_without_weight_or_bias(affine: str) -> None:
    x = torch.randn(6, 33, requires_grad=True)
    w = (1 + torch.randn(33)).requires_grad_() if affine == "weight" else None
    b = torch.randn(33, requires_grad=True) if affine == "bias" else None
    got, want = norms.layernorm(x, w, b, 1e-5), F.layer_norm(x, (33,), w, b, 1e-5)
    close(got, want)
    g = torch.randn_like(want)
    leaves = [t for t in (x, w, b) if t is not None]
    for a, e in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g), strict=True):
        close(a, e)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_backward(kind: str, residual: bool) -> None:
    x = ragged(3, 7, 70).requires_grad_()
    r = torch.randn(3, 7, 70, requires_grad=True) if residual else None
    p = {k: v.requires_grad_() for k, v in norm_params(kind, 70, torch.float32).items()}
    leaves = [x, *p.values(), *([r] if residual else [])]
    got = norm_call(kind, x, p, r)
    want = norm_call(kind, x, p, r, reference=True)
    got, want = (got, want) if residual else ((got,), (want,))
    grads = [torch.randn_like(w) for w in want]   # with a residual: s feeds the next block, y this one
    for a, e in zip(torch.autograd.grad(got, leaves, grads), torch.autograd.grad(want, leaves, grads), strict=True):
        close(a, e)
    assert runtime.LAUNCHES[f"{kind}_bwd"] == 1 and runtime.LAUNCHES[f"{kind}_bwd_sum"] == len(p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_backward_low_precision(kind: str, dtype: torch.dtype) -> None:
    x = torch.randn(4, 9, 48).to(dtype).requires_grad_()
    r = torch.randn(4, 9, 48).to(dtype).requires_grad_()
    p = {k: v.requires_grad_() for k, v in norm_params(kind, 48, dtype).items()}
    s, y = norm_call(kind, x, p, r)
    gs, gy = torch.randn_like(s), torch.randn_like(y)
    got = torch.autograd.grad((s, y), [x, r, *p.values()], (gs, gy))
    # the truth: the same inputs in fp32
    x32, r32 = x.detach().float().requires_grad_(), r.detach().float().requires_grad_()
    p32 = {k: v.detach().float().requires_grad_() for k, v in p.items()}
    s32, y32 = norm_call(kind, x32, p32, r32, reference=True)
    want = torch.autograd.grad((s32, y32), [x32, r32, *p32.values()], (gs.float(), gy.float()))
    close_grads(got, want, dtype)


def test_norm_only_the_sum_used_passes_its_gradient_through() -> None:
    x, r = torch.randn(4, 20, requires_grad=True), torch.randn(4, 20, requires_grad=True)
    s, _ = norms.rmsnorm(x, torch.ones(20), 1e-6, residual=r)
    g = torch.randn(4, 20)
    dx, dr = torch.autograd.grad(s, [x, r], g)
    close(dx, g)
    close(dr, g)


def test_norm_rows_longer_than_a_block_run_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norms, "MAX_COLS", 64)
    x, w = torch.randn(3, 65), torch.randn(65)
    close(norms.rmsnorm(x, w, 1e-6), norms.rmsnorm_reference(x, w, 1e-6))
    assert runtime.FALLBACKS["rmsnorm"] == 1 and not runtime.LAUNCHES


def test_norm_input_errors() -> None:
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        norms.layernorm(x, torch.ones(7), None, 1e-5)
    with pytest.raises(ValueError, match="residual: expected"):
        norms.rmsnorm(x, torch.ones(8), 1e-5, residual=torch.randn(4, 8).half())
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        norms.rmsnorm(torch.ones(4, 8, dtype=torch.int64), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match=r"bias must be torch\.float32 \(x's dtype\) or float32, got torch\.bfloat16"):
        norms.layernorm(x, None, torch.ones(8, dtype=torch.bfloat16), 1e-5)


# ---- softmax ----
def softmax_input(dtype: torch.dtype) -> torch.Tensor:
    x = ragged(3, 5, 77) * 3
    x[0, 0, :40] = float("-inf")    # a row whose first blocks are all -inf
    x[0, 1] = float("-inf")         # a row that is all -inf: NaN, as torch.softmax gives
    return x.to(dtype)


@pytest.fixture(params=["one_block", "looped"])
def softmax_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "looped":   # rows longer than ONE_BLOCK stream in LOOP_BLOCK pieces
        monkeypatch.setattr(softmax, "ONE_BLOCK", 32)
        monkeypatch.setattr(softmax, "LOOP_BLOCK", 16)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_forward(softmax_path: str, dtype: torch.dtype) -> None:
    x = softmax_input(dtype)
    got = softmax.softmax(x)
    close(got, torch.softmax(x, dim=-1))
    assert got[0, 1].isnan().all() and not got[0, 0].isnan().any()
    assert runtime.LAUNCHES["softmax"] == 1


def test_softmax_backward(softmax_path: str) -> None:
    x = ragged(4, 77).requires_grad_()
    g = torch.randn(4, 77)
    got, want = softmax.softmax(x), torch.softmax(x, dim=-1)
    close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
    assert runtime.LAUNCHES["softmax_bwd"] == 1


# ---- rotary ----
ROTARY_LAYOUTS = {   # (shape, pos_axis): x[B, T, H, D] with an odd half (20), x[B, H, T, D], x[T, D]
    "bthd": ((2, 11, 3, 40), 1), "bhtd": ((2, 3, 11, 64), -2), "td": ((13, 24), 0)}


@pytest.mark.parametrize("layout", list(ROTARY_LAYOUTS))
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_forward(dtype: torch.dtype, interleaved: bool, layout: str) -> None:
    shape, pos_axis = ROTARY_LAYOUTS[layout]
    x = ragged(*shape, dtype=dtype)
    positions = torch.randint(0, 100, (shape[pos_axis],)) if layout == "bhtd" else None
    got = rotary.rotary(x, pos_axis, 500.0, positions, interleaved)
    close(got, rotary.rotary_reference(x, pos_axis, 500.0, positions, interleaved))
    assert runtime.LAUNCHES["rotary"] == 1


def test_rotary_of_a_fused_projection_slice() -> None:
    qkv = torch.randn(2, 9, 3 * 4 * 16)              # q: a non-contiguous slice, viewed [B, T, H, D]
    q = qkv[..., :64].unflatten(-1, (4, 16))
    close(rotary.rotary(q, 1, 10000.0), rotary.rotary_reference(q, 1, 10000.0))


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_rotary_backward(interleaved: bool) -> None:
    x = torch.randn(2, 11, 3, 40, requires_grad=True)
    pos = torch.tensor([5, 3, 0, 1, 9, 2, 7, 7, 4, 6, 8])
    g = torch.randn(2, 11, 3, 40)
    got = torch.autograd.grad(rotary.rotary(x, 1, 500.0, pos, interleaved), x, g)[0]
    close(got, torch.autograd.grad(rotary.rotary_reference(x, 1, 500.0, pos, interleaved), x, g)[0])
    assert runtime.LAUNCHES["rotary_bwd"] == 1


def test_rotary_input_errors() -> None:
    with pytest.raises(ValueError, match="even size"):
        rotary.rotary(torch.randn(4, 5), 0, 1e4)
    with pytest.raises(ValueError, match="other than the last"):
        rotary.rotary(torch.randn(4, 6), -1, 1e4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        rotary.rotary(torch.randn(4, 6), 0, 1e4, positions=torch.arange(5))


# ---- attention ----
#          B  H Hkv  T   S    D  dtype           causal mask                bias
ATTENTION = [
    (1, 2, 2, 37, 53, 64, torch.float32, False, None, None),
    (1, 4, 2, 37, 53, 64, torch.float32, True, None, None),               # GQA 2, causal, T < S
    (2, 4, 1, 21, 17, 40, torch.float32, True, None, None),               # MQA (ratio 4), odd D, T > S
    (2, 4, 1, 21, 17, 40, torch.float32, False, (2, 1, 21, 17), None),    # with fully masked rows
    (1, 6, 2, 19, 29, 128, torch.float32, True, (19, 29), (1, 6, 1, 29)),  # GQA 3
    (1, 5, 5, 18, 18, 40, torch.float32, False, None, (18, 18)),          # odd head count
    (1, 4, 2, 33, 40, 64, torch.float16, True, (1, 4, 33, 40), (33, 40)),
    (1, 3, 3, 25, 33, 128, torch.bfloat16, False, None, (1, 3, 25, 33)),
    (2, 4, 1, 17, 23, 40, torch.float16, False, None, None),
    (1, 4, 1, 20, 20, 64, torch.bfloat16, True, (20, 20), None),
    (2, 4, 2, 1, 45, 64, torch.float32, False, None, (2, 1, 1, 45)),   # one query (decoding)
]


def attention_inputs(b: int, h: int, hkv: int, t: int, s: int, d: int, dtype: torch.dtype,
                     mask_shape: tuple | None, bias_shape: tuple | None) -> tuple[torch.Tensor, ...]:
    # q as a linear layer leaves it: [B, T, H, D] memory viewed [B, H, T, D] (strided, not contiguous)
    q = torch.randn(b, t, h, d).transpose(1, 2).to(dtype)
    k, v = torch.randn(b, hkv, s, d).to(dtype), torch.randn(b, hkv, s, d).to(dtype)
    mask = None
    if mask_shape is not None:
        mask = torch.rand(mask_shape) > 0.3
        mask[..., 0, :] = False   # query 0 sees no key: a NaN row, as torch's softmax of all -inf
    bias = torch.randn(bias_shape).to(dtype) if bias_shape is not None else None
    return q, k, v, mask, bias


@pytest.mark.parametrize("case", ATTENTION, ids=lambda c: "B{}H{}kv{}T{}S{}D{}-{}-{}-{}-{}".format(
    *c[:6], str(c[6]).split(".")[-1], "causal" if c[7] else "full", "mask" if c[8] else "", "bias" if c[9] else ""))
def test_attention_forward(case: tuple) -> None:
    b, h, hkv, t, s, d, dtype, causal, mask_shape, bias_shape = case
    q, k, v, mask, bias = attention_inputs(b, h, hkv, t, s, d, dtype, mask_shape, bias_shape)
    scale = 1 / math.sqrt(d)
    got = attn.attention(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias)
    want = attn.attention_reference(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias)
    close(got, want)
    if mask is not None:
        assert got[..., 0, :].isnan().all() and not got[..., 1:, :].isnan().all()
    assert runtime.LAUNCHES["attention"] == 1


def test_attention_keys_masked_until_a_late_block() -> None:
    # row i sees only keys >= 16 + i: the first key blocks (16 keys each here) are all masked for every row,
    # which must not turn the running sum into NaN (exp(-inf - -inf)) before the visible keys arrive
    q, k, v = torch.randn(1, 2, 6, 32), torch.randn(1, 2, 40, 32), torch.randn(1, 2, 40, 32)
    mask = torch.arange(40)[None, :] >= 16 + torch.arange(6)[:, None]
    got = attn.attention(q, k, v, scale=0.2, causal=False, mask=mask)
    assert not got.isnan().any()
    close(got, attn.attention_reference(q, k, v, scale=0.2, causal=False, mask=mask))


def test_attention_value_dim_differs_from_head_dim() -> None:
    q, k, v = torch.randn(1, 2, 9, 24), torch.randn(1, 1, 20, 24), torch.randn(1, 1, 20, 40)
    got = attn.attention(q, k, v, scale=0.3, causal=False)
    close(got, attn.attention_reference(q, k, v, scale=0.3, causal=False))


def test_attention_reference_is_sdpa() -> None:
    # the reference itself, against torch's own attention (same masking conventions, GQA by repeat)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 11, 16), torch.randn(2, 2, 11, 16)
    mask = torch.rand(9, 11) > 0.2
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                          attn_mask=mask, scale=0.25)
    close(attn.attention_reference(q, k, v, scale=0.25, causal=False, mask=mask), want)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                          attn_mask=torch.ones(9, 11, dtype=torch.bool).tril(), scale=0.25)
    close(attn.attention_reference(q, k, v, scale=0.25, causal=True), want)


def test_attention_backward() -> None:
    q, k, v, mask, bias = attention_inputs(1, 4, 2, 13, 19, 40, torch.float32, (13, 19), (1, 4, 1, 19))
    mask[..., 0, :] = True   # finite gradients everywhere
    leaves = [t.requires_grad_() for t in (q, k, v, bias)]
    got = attn.attention(q, k, v, scale=0.2, causal=True, mask=mask, bias=bias)
    want = attn.attention_reference(q, k, v, scale=0.2, causal=True, mask=mask, bias=bias)
    g = torch.randn_like(want)
    ga, gw = torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g)
    for a, e, leaf in zip(ga, gw, leaves, strict=True):
        assert a.shape == leaf.shape   # k, v: the kv heads; bias: its broadcast shape
        close(a, e)
    assert runtime.LAUNCHES["attention"] == 1


def test_attention_input_errors() -> None:
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="3 heads are not a multiple of k's 2"):
        attn.attention(q, k, k, scale=1.0, causal=False)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="mask must be a bool"):
        attn.attention(q, k, k, scale=1.0, causal=False, mask=torch.ones(4, 5))
    with pytest.raises(ValueError, match=r"does not broadcast to \[B, H, T, S\]"):
        attn.attention(q, k, k, scale=1.0, causal=False, bias=torch.ones(4, 4))
    with pytest.raises(ValueError, match="must be 4-D"):
        attn.attention(q[0], k, k, scale=1.0, causal=False)


# ---- embedding ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding_forward(dtype: torch.dtype) -> None:
    weight = torch.randn(72, 50).to(dtype).t()          # a transposed (tied) table: strided rows
    ids = torch.randint(0, 50, (3, 7), dtype=torch.int32)
    got = emb.embedding(ids, weight)
    assert torch.equal(got, F.embedding(ids, weight))   # a gather is exact
    assert runtime.LAUNCHES["embedding"] == 1


@pytest.mark.parametrize("padding_idx", [None, 4, -46])
def test_embedding_backward(padding_idx: int | None) -> None:
    weight = torch.randn(50, 72, requires_grad=True)
    ids = torch.randint(0, 50, (3, 7))
    ids[0, :3] = 4                                        # a repeated id; the padding row when padding_idx = 4
    got = emb.embedding(ids, weight, padding_idx)
    want = F.embedding(ids, weight, padding_idx=padding_idx)
    assert torch.equal(got, want)
    g = torch.randn_like(want)
    close(torch.autograd.grad(got, weight, g)[0], torch.autograd.grad(want, weight, g)[0])


def test_embedding_input_errors() -> None:
    weight = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 10\), got values from 0 to 10"):
        emb.embedding(torch.tensor([0, 10]), weight)
    with pytest.raises(ValueError, match="padding_idx 10 is outside"):
        emb.embedding(torch.tensor([0]), weight, padding_idx=10)
    with pytest.raises(ValueError, match="int64 or int32"):
        emb.embedding(torch.tensor([0.0]), weight)


# ---- the references are nnspec's torch lowering ----
SPEC = """\
nnspec: 1
name: kernels
dims: {kv: 2, g: 2, d: 40, e: 24}
inputs:
  x: float32[B, T, e]
  q: float32[B, T, kv, g, d]
  k: float32[B, S, kv, d]
  v: float32[B, S, kv, d]
  m: bool[T, S]
  bias: float32[kv, g, T, S]
  pos: int64[T]
outputs:
  rms: float32[B, T, e]
  half: float32[B, T, kv, g, d]
  pairs: float32[B, T, kv, g, d]
  att: float32[B, T, kv, g, d]
body: |
  rms = rmsnorm(x, eps=1e-5, name=norm)
  half = rotary(q, pos=T, dim=d, base=500.0, positions=pos)
  pairs = rotary(q, pos=T, dim=d, base=500.0, style="interleaved", positions=pos)
  att = attention(q, k, v, key=S, dim=d, query=T, causal=true, mask=m, bias=bias, scale=0.3)
"""


def test_kernels_match_the_nnspec_interpreter() -> None:
    import nnspec
    from nnspec.backends.torch import Interpreter

    model = Interpreter(nnspec.check(SPEC).model).eval()
    weight = 1 + torch.randn(24)
    model.root.load_state_dict({"norm.weight": weight})
    b, t, s = 2, 7, 9
    ins = dict(x=torch.randn(b, t, 24), q=torch.randn(b, t, 2, 2, 40), k=torch.randn(b, s, 2, 40),
               v=torch.randn(b, s, 2, 40), m=torch.rand(t, s) > 0.3, bias=torch.randn(2, 2, t, s),
               pos=torch.tensor([3, 1, 4, 1, 5, 9, 2]))
    with torch.no_grad():
        want = model(**ins)
    close(norms.rmsnorm(ins["x"], weight, 1e-5), want["rms"])
    close(rotary.rotary(ins["q"], 1, 500.0, ins["pos"]), want["half"])
    close(rotary.rotary(ins["q"], 1, 500.0, ins["pos"], interleaved=True), want["pairs"])
    # kernel layout: query heads (kv, g) flattened kv-major, so head h reads kv head h // g
    q = ins["q"].flatten(2, 3).transpose(1, 2)                      # [B, H, T, D]
    k, v = ins["k"].transpose(1, 2), ins["v"].transpose(1, 2)       # [B, Hkv, S, D]
    o = attn.attention(q, k, v, scale=0.3, causal=True, mask=ins["m"], bias=ins["bias"].flatten(0, 1))
    close(o.transpose(1, 2).unflatten(2, (2, 2)), want["att"])
    assert runtime.LAUNCHES["attention"] == 1 and runtime.LAUNCHES["rotary"] == 2 and not runtime.FALLBACKS


# ---- the torch path ----
def test_launchers_fall_back_without_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "interpreting", lambda: False)   # CPU tensors, no interpreter: torch code
    x, w = torch.randn(3, 16), torch.randn(16)
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 6, 8)
    ids = torch.tensor([[1, 2, 0]])
    close(norms.layernorm(x, w, w, 1e-5), F.layer_norm(x, (16,), w, w, 1e-5))
    close(norms.rmsnorm(x, w, 1e-5, residual=x)[1], norms.rmsnorm_reference(x + x, w, 1e-5))
    close(softmax.softmax(x), torch.softmax(x, -1))
    close(rotary.rotary(x, 0, 1e4), rotary.rotary_reference(x, 0, 1e4))
    close(attn.attention(q, k, k, scale=0.5, causal=True), attn.attention_reference(q, k, k, scale=0.5, causal=True))
    assert torch.equal(emb.embedding(ids, x), F.embedding(ids, x))
    assert not runtime.LAUNCHES
    assert runtime.FALLBACKS == {"layernorm": 1, "rmsnorm": 1, "softmax": 1, "rotary": 1, "attention": 1,
                                 "embedding": 1}


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=environ, text=True,
                          capture_output=True, timeout=600)


def test_kernel_modules_import_without_triton() -> None:
    # Triton is an optional dependency: without it the launchers exist and run their torch references
    done = _python("""
        import sys
        sys.modules["triton"] = None   # import triton raises ImportError
        import torch
        from nnspec.backends.triton import runtime
        from nnspec.backends.triton.kernels import attention, embedding, norms, rotary, softmax
        x = torch.randn(2, 3, 8)
        assert not runtime.HAVE_TRITON
        assert torch.allclose(norms.rmsnorm(x, torch.ones(8), 1e-6), norms.rmsnorm_reference(x, torch.ones(8), 1e-6))
        softmax.softmax(x); rotary.rotary(x, 1, 1e4); embedding.embedding(torch.tensor([1]), x[0])
        attention.attention(x[None], x[None], x[None], scale=1.0, causal=True)
        print(dict(runtime.FALLBACKS))
    """)
    assert done.returncode == 0, done.stderr
    assert "'attention': 1" in done.stdout and not runtime.LAUNCHES


@pytest.mark.slow
def test_kernels_compile_for_a_gpu() -> None:
    """Every kernel specialisation the launchers use compiles to sm_90 machine code (no GPU needed): catches
    what the interpreter accepts and the compiler does not."""
    done = _python("""
        import warnings
        warnings.filterwarnings("ignore")
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from nnspec.backends.triton.kernels import attention, embedding, moe, norms, rotary, softmax

        def build(fn, ptrs, consts, floats=("eps", "scale")):
            fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn
            sig = {a: "constexpr" if a in consts else "*" + ptrs[a] if a in ptrs else "fp32" if a in floats
                   else "i32" for a in fn.arg_names}
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))

        for dt in ("fp16", "bf16", "fp32"):
            P = lambda *names, t=dt: {n: t for n in names}
            build(norms._layernorm_fwd, P("X", "R", "S", "Y", "W", "B") | P("Mean", "Rstd", t="fp32"),
                  dict(HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_N=1024))
            build(norms._layernorm_bwd, P("X", "W", "DY", "DS", "DX") | P("Mean", "Rstd", "DW", "DB", t="fp32"),
                  dict(HAS_W=True, HAS_DS=True, WANT_DW=True, WANT_DB=True, BLOCK_N=1024))
            build(norms._rmsnorm_fwd, P("X", "R", "S", "Y", "W") | P("Rstd", t="fp32"),
                  dict(HAS_RES=True, BLOCK_N=4096))
            build(norms._rmsnorm_bwd, P("X", "W", "DY", "DS", "DX") | P("Rstd", "DW", t="fp32"),
                  dict(HAS_DS=False, WANT_DW=True, BLOCK_N=4096))
            build(norms._sum_partials, {"P": "fp32", "Out": dt}, dict(BLOCK_G=8, BLOCK_N=256))
            for single in (True, False):
                build(softmax._softmax_fwd, P("X", "Y"), dict(BLOCK_N=4096, SINGLE=single))
                build(softmax._softmax_bwd, P("Y", "DY", "DX"), dict(BLOCK_N=4096, SINGLE=single))
                build(rotary._rotary, P("X", "Y", "COS", "SIN"),
                      dict(INTERLEAVED=single, INVERSE=not single, BLOCK_R=32, BLOCK_H=64))
            build(embedding._embedding_fwd, {"Ids": "i64", "W": dt, "Out": dt}, dict(BLOCK_R=4, BLOCK_D=1024))
            for causal in (True, False):
                build(attention._attention_fwd, P("Q", "K", "V", "O", "Bias") | {"Mask": "i1"},
                      dict(CAUSAL=causal, HAS_MASK=not causal, HAS_BIAS=not causal, UPCAST=False,
                           PRECISION="ieee" if dt == "fp32" else "tf32", BLOCK_D=64, BLOCK_DV=64, BLOCK_M=64,
                           BLOCK_N=32))
            build(moe._grouped_fwd, P("A", "W", "C") | P("TileExpert", "TileStart", "TileEnd", t="i32"),
                  dict(PRECISION="ieee" if dt == "fp32" else "tf32", BLOCK_M=64, BLOCK_N=128, BLOCK_K=64))
        print("compiled")
    """)
    assert done.returncode == 0, done.stderr
    assert "compiled" in done.stdout
