"""The cost model: closed forms checked against hand counts, the FLOP convention (multiply-add = 2, causal
attention half, the output head apart), activation peaks by liveness, KV-cache bytes, napkin IO, and the
`nnspec check --cost` output."""

from __future__ import annotations

import json

import pytest
import sympy
from typer.testing import CliRunner

import nnspec
from nnspec.cli import app
from nnspec.compiler.cost import ON_CHIP, estimate, flops

B, T = sympy.symbols("B T", integer=True, positive=True)


def attention_spec(causal: bool, spelled: bool) -> str:
    if spelled:
        mask = "s = where(causal_mask(T, S), s, -inf)\n    " if causal else ""
        att = (f"s[B, h, T, S] = q * k[B, S, h, hd] / sqrt(hd)\n    {mask}p = softmax(s, over=S)\n    "
               "o[B, T, (h hd)] = p * v[B, S, h, hd]")
    else:
        att = (f"o = attention(q, k[B, S, h, hd], v[B, S, h, hd], key=S, dim=hd, causal={str(causal).lower()})"
               "[B, T, (h hd)]")
    return f"""nnspec: 1
name: tiny
dims:
  d: 16
  h: 2
  hd: d / h
  vocab: 10
inputs:
  ids: int64[B, T]
outputs:
  logits: float32[B, T, vocab]
blocks:
  layer(x): |
    q = linear(x, d, bias=false, name=q)[B, T, (h hd)]
    k = linear(x, d, bias=false, name=k)[B, T, (h hd)]
    v = linear(x, d, bias=false, name=v)[B, T, (h hd)]
    {att}
    return x + o[B, T, d]
body: |
  x = embedding(ids, vocab, d, name=emb)
  x = repeat(3, layer, x, name=layers)
  logits = linear(x, vocab, bias=false, name=head)
"""


def test_flop_convention_by_hand() -> None:
    full = estimate(nnspec.check(attention_spec(False, False)).model)
    causal = estimate(nnspec.check(attention_spec(True, False)).model)
    proj = 3 * 2 * 16 * 16 * B * T          # q, k, v: one multiply-add per weight per token
    scores = 2 * B * T * T                   # |S|: (batch, head, query, key)
    att = sympy.expand(2 * scores * 8 + 2 * scores * 8 + 5 * scores)   # 2·|S|·hd + 2·|S|·hd + 5·|S|
    residual = 16 * B * T
    head = 2 * 16 * 10 * B * T
    assert full.head_flops == head
    assert sympy.expand(full.flops - (3 * (proj + att + residual) + head)) == 0
    assert sympy.expand(causal.flops - (3 * (proj + att / 2 + residual) + head)) == 0
    assert full.body_flops == sympy.expand(full.flops - head)
    assert full.head == ["head = linear(layers, head_weight) with head.weight"]


def test_spelled_out_and_fused_attention_cost_the_same() -> None:
    for causal in (False, True):
        spelled = estimate(nnspec.check(attention_spec(causal, True)).model)
        fused = estimate(nnspec.check(attention_spec(causal, False)).model)
        assert spelled.flops == fused.flops and spelled.kv_bytes == fused.kv_bytes
        assert [a.causal for a in spelled.attention] == [causal]


def test_kv_cache_counts_causal_attention_only() -> None:
    causal = estimate(nnspec.check(attention_spec(True, True)).model)
    assert causal.kv_layers == 3
    assert causal.kv_bytes_per_token_per_layer == 2 * 16 * 4     # keys and values, 16 floats each
    assert causal.kv_bytes_per_token == 3 * 128
    assert causal.kv_bytes == 3 * 128 * B * T
    assert estimate(nnspec.check(attention_spec(False, True)).model).kv_layers == 0
    gpt2 = estimate(nnspec.check("examples/gpt2.yaml").model)
    assert (gpt2.kv_bytes_per_token_per_layer, gpt2.kv_layers) == (2 * 768 * 4, 12)
    llama = estimate(nnspec.check("examples/llama.yaml").model)
    assert llama.kv_bytes_per_token_per_layer == 2 * 4 * 64 * 4   # 4 key/value heads of 64 (GQA)


def test_examples_match_published_sizes_and_standard_flops() -> None:
    gpt2 = estimate(nnspec.check("examples/gpt2.yaml").model)
    assert gpt2.params == 124_439_808
    assert gpt2.head_flops == 2 * 768 * 50257 * B * T          # the tied LM head, shown on its own
    # 2 FLOPs per weight per token in the layers; attention: 12 layers x 12 heads x (4 T² hd + 5 T²) / 2
    layer_weights = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072)
    t2 = sympy.Poly(gpt2.flops, B, T).coeff_monomial(B * T ** 2)
    # plus the padding mask, made once: `visible[B, T, S] = keep[B, S] or not keep`, one op per element, and the
    # causal triangle and-ed into it once (`causal-into-mask`, hoisted out of the layers): one more
    assert t2 == 12 * 12 * (4 * 64 + 5) // 2 + 1 + 1
    assert sympy.Poly(gpt2.body_flops, B, T).coeff_monomial(B * T) > 2 * layer_weights
    vit = estimate(nnspec.check("examples/vit.yaml").model)
    assert vit.params == 86_567_656 and vit.kv_layers == 0
    assert vit.head_flops == (2 * 768 * 1000 + 1000) * B


def test_bound_dims_give_numbers() -> None:
    symbolic = estimate(nnspec.check("examples/gpt2.yaml").model)
    bound = estimate(nnspec.check("examples/gpt2.yaml", B=2, T=128).model)
    for attr in ("flops", "head_flops", "activation_bytes", "kv_bytes"):
        value = getattr(bound, attr)
        assert value.is_Integer, attr
        assert value == getattr(symbolic, attr).subs({B: 2, T: 128}), attr
    assert flops(nnspec.check("examples/gpt2.yaml").model, B=2, T=128) == bound.flops


def test_activation_peak_by_liveness() -> None:
    text = """nnspec: 1
name: chain
dims:
  d: 4
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T]
body: |
  a = relu(x)
  b = a * 2.0
  c = b[B, T, (2 two)]
  y = sum(sum(c, over=two), over=2)
"""
    cost = estimate(nnspec.check(text).model, optimized=nnspec.check(text).model)
    # x and a (16 B per token each) are alive together; then a, b; the view c holds b; sums are smaller
    assert cost.activation_bytes == 32 * B * T
    model = nnspec.check("examples/gpt2.yaml", n_layer=2).model
    peak = estimate(model).activation_bytes
    # attention fused: no [B, heads, T, S] float scores alive (4 bytes x 12 heads a pair); only masks bool[B, T, S]
    # (1 byte a pair): the padding mask and, while the causal triangle is and-ed into it once (`causal-into-mask`),
    # the combined mask beside it; the combined one alone lives across the layers
    terms = peak.args if isinstance(peak, sympy.Max) else (peak,)
    assert peak.free_symbols <= {B, T}
    per_pair = [sympy.Poly(t, B, T).coeff_monomial(B * T ** 2) for t in terms]
    assert max(per_pair) == 2


def test_group_and_attention_traffic() -> None:
    cost = estimate(nnspec.check("examples/gpt2.yaml").model)
    for g in cost.groups:
        saved = sympy.expand(g.unfused - g.fused)
        assert all(c > 0 for c in sympy.Poly(saved, B, T).coeffs()), g
    mlp = next(g for g in cost.groups if g.block == "mlp" and g.kind == "epilogue" and "c_fc" in g.nodes)
    assert sympy.expand(mlp.unfused - mlp.fused) == 2 * 3072 * 4 * B * T     # the pre-activation, written + read
    (att,) = cost.attention
    q = x = T
    d = 64
    per_head = (2 * q * d + 2 * x * d + 4 * q * x) * 4
    mask = B * q * x                   # the padding mask, bool[B, T, S], read by each attention
    assert sympy.expand(att.unfused - 12 * B * per_head) == mask          # napkin: 2qd + 2xd + 4qx per head
    fused = 12 * B * (2 * q * d + 2 * x * d * sympy.Max(1, q * 2 * d / ON_CHIP)) * 4
    assert sympy.simplify(att.fused - fused - mask) == 0
    bound = estimate(nnspec.check("examples/gpt2.yaml", B=1, T=1024).model).attention[0]
    assert bound.fused == 12 * (2 * 1024 * 64 + 2 * 1024 * 64 * 2) * 4 + 1024 * 1024   # 2qd + 4qxd²/M, M = 2^16


def test_check_cost_cli() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["check", "examples/gpt2.yaml", "--cost", "--set", "B=1", "--set", "T=128"])
    assert out.exit_code == 0, out.output
    for text in ["cost model", "FLOPs, output head", "KV cache, bytes per token per layer", "6,144 (6 KiB)",
                 "activation peak", "attention (causal)", "epilogue_0", "FlashAttention on a Napkin"]:
        assert text in out.output, text
    out = runner.invoke(app, ["check", "examples/llama.yaml", "--cost", "--json"])
    assert out.exit_code == 0
    cost = json.loads(out.stdout)["cost"]
    assert cost["kv_cache"]["bytes_per_token_per_layer"] == "2048" and cost["kv_cache"]["layers"] == 22
    assert cost["head"] and cost["fusion_groups"] and cost["attention"][0]["causal"]


@pytest.mark.parametrize("path", ["examples/bert.yaml", "examples/small/moe.yaml", "examples/small/retention.yaml",
                                  "examples/small/window_attention.yaml", "examples/small/recursive.yaml"])
def test_every_example_has_a_cost(path: str) -> None:
    cost = estimate(nnspec.check(path).model)
    assert cost.flops.free_symbols and cost.activation_bytes != 0
