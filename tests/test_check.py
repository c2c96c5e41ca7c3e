"""Checking: shapes, parameter counts, FLOPs, guards and the IR, on GPT-2 and small hand-made specs.

Expected numbers are computed by hand from the architectures' definitions, not recorded from nnspec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy

import nnspec
from nnspec.compiler.ir import TensorType
from nnspec.compiler.printer import print_model

ROOT = Path(__file__).parent.parent
GPT2 = ROOT / "examples" / "gpt2.yaml"


def gpt2_params(vocab: int = 50257, positions: int = 1024, d: int = 768, layers: int = 12) -> int:
    layer = (2 * 2 * d                    # ln_1, ln_2
             + d * 3 * d + 3 * d          # c_attn
             + d * d + d                  # attn c_proj
             + d * 4 * d + 4 * d          # c_fc
             + 4 * d * d + d)             # mlp c_proj
    return vocab * d + positions * d + layers * layer + 2 * d  # tied head adds nothing


def test_gpt2_small_parameter_count() -> None:
    result = nnspec.check(GPT2)
    assert result.params == 124_439_808 == gpt2_params()


def test_gpt2_overrides_and_free_dims() -> None:
    result = nnspec.check(GPT2, n_layer=3, n_embd=128, n_head=4)
    assert result.params == gpt2_params(d=128, layers=3)
    assert result.free_dims == ["B", "T"]
    assert [g.text for g in result.model.guards] == ["T <= n_positions"]
    logits = result.model.graph[result.model.outputs["logits"]].type
    assert isinstance(logits, TensorType) and logits.names == ("B", "T", "vocab_size")


def test_gpt2_flops_closed_form() -> None:
    """2 FLOPs per multiply-add; per layer per token: 24 d² (projections) + 4 d T (scores and mixing)."""
    d, v = 768, 50257
    result = nnspec.check(GPT2)
    B, T = sympy.symbols("B T", integer=True, positive=True)
    flops = result.flops
    matmul = 12 * (24 * d * d * B * T + 4 * d * B * T * T) + 2 * d * v * B * T
    # the rest is elementwise/normalisation work: linear in tokens, quadratic only for softmax/mask/scale
    rest = sympy.expand(flops - matmul)
    assert sympy.Poly(rest, B, T).total_degree() == 3
    assert 0 < rest.subs({B: 1, T: 1024}) < 0.05 * matmul.subs({B: 1, T: 1024})


def test_repeat_is_checked_once_not_unrolled() -> None:
    shallow = nnspec.check(GPT2, n_layer=2)
    deep = nnspec.check(GPT2, n_layer=96)
    assert sum(len(g.nodes) for g in deep.model.graphs()) == sum(len(g.nodes) for g in shallow.model.graphs())
    assert deep.params - shallow.params == 94 * (gpt2_params(layers=1) - gpt2_params(layers=0))


def test_bound_free_dims_give_concrete_shapes() -> None:
    result = nnspec.check(GPT2, B=2, T=16)
    logits = result.model.graph[result.model.outputs["logits"]].type
    assert isinstance(logits, TensorType)
    assert [int(result.model.dims.concrete(s)) for s in logits.sizes] == [2, 16, 50257]
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(GPT2, T=2048)
    assert err.value.code == "E015" and "T <= n_positions" in err.value.message


def test_ir_printer_golden() -> None:
    """tests/golden/ir/tiny.ir was written by hand from the printer's format."""
    spec = ROOT / "tests" / "golden" / "ir" / "tiny.yaml"
    assert print_model(nnspec.check(spec).model) == (spec.with_suffix(".ir")).read_text()


def _spec(body: str, dims: str = "d: 8\n  h: 2\n  hd: d / h", inputs: str = "x: float32[B, T, d]",
          outputs: str = "y: float32[B, T, d]", blocks: str = "") -> str:
    text = f"nnspec: 1\nname: t\ndims:\n  {dims}\ninputs:\n  {inputs}\noutputs:\n  {outputs}\n"
    if blocks:
        text += "blocks:\n" + blocks
    return text + "body: |\n" + "".join(f"  {line}\n" for line in body.strip().splitlines())


def _type(result: nnspec.CheckResult, var: str) -> TensorType:
    t = result.model.graph[result.model.outputs[var]].type
    assert isinstance(t, TensorType)
    return t


def test_head_split_and_merge_round_trip() -> None:
    r = nnspec.check(_spec("s = x[B, T, (h hd)]\nm = s[B, h, T, hd]\ny = m[B, T, (h hd)]"))
    assert r.model.dims.equal(_type(r, "y").sizes[2], 8)


def test_named_contraction_is_one_einsum() -> None:
    body = """
    q = x[B, T, (h hd)]
    s[B, h, T, S] = q * q[B, S, h, hd] / sqrt(hd)
    o[B, T, (h hd)] = softmax(s, over=S) * q[B, S, h, hd]
    y = o[B, T, d]
    """
    r = nnspec.check(_spec(body))
    ops = [n.op for n in r.model.graph]
    assert ops.count("einsum") == 2 and "mul" not in ops  # no materialised outer product
    assert _type(r, "y").names == ("B", "T", "d")


def test_broadcast_by_name_and_where_keeps_value_order() -> None:
    body = """
    s[B, T, T2] = x * x[B, T2, d]
    m = causal_mask(T, T2)
    z = where(m, s, -inf)
    y = x
    """
    r = nnspec.check(_spec(body))
    z = next(n for n in r.model.graph if n.op == "where")
    assert z.tensor_type.names == ("B", "T", "T2")


def test_block_template_shared_across_equal_bindings() -> None:
    blocks = "  mlp(x): |\n    return linear(relu(linear(x, 4 * d, name=fc)), d, name=proj)\n"
    r = nnspec.check(_spec("a = mlp(x, name=m1)\ny = mlp(a, name=m2)", blocks=blocks))
    assert list(r.model.templates) == ["mlp"]
    assert r.params == 2 * (8 * 32 + 32 + 32 * 8 + 8)


def test_shared_repeat_counts_weights_once() -> None:
    blocks = "  layer(x): |\n    return x + linear(x, d, name=fc)\n"
    sep = nnspec.check(_spec("y = repeat(4, layer, x, name=h)", blocks=blocks))
    shared = nnspec.check(_spec("y = repeat(4, layer, x, name=h, shared=true)", blocks=blocks))
    assert sep.params == 4 * shared.params == 4 * (8 * 8 + 8)


def test_undecidable_split_becomes_a_guard() -> None:
    r = nnspec.check(_spec("y = x[B, (n w), d]", dims="d: 8\n  w: 4", outputs="y: float32[B, n, w, d]"))
    assert [str(g.expr) for g in r.model.guards] == ["Eq(Mod(T, w), 0)"]
