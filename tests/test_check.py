"""Checking: shapes, parameter counts, FLOPs, guards and the IR, on GPT-2 and small hand-made specs.

Expected numbers are computed by hand from the architectures' definitions, not recorded from nnspec.
"""

from __future__ import annotations

from collections import Counter
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
    # exactly, by the per-element costs docs/ops.md lists (layernorm 8, gelu_tanh 8, softmax 5, the rest 1; a
    # linear 2·in·out plus out for its bias), per token: ln_1 8d, c_attn 6d²+3d, c_proj 2d²+d, dropout d,
    # residual d, ln_2 8d, c_fc 8d²+4d, gelu_tanh 32d, c_proj 8d²+d, dropout d, residual d
    h = 12
    layer_tokens = 24 * d * d + 61 * d
    # per token pair: the two contractions 2d each; per head: / sqrt 1, the causal where 1, the padding where 1,
    # softmax 5, dropout 1
    layer_pairs = 4 * d + 9 * h
    head = 2 * d + 8 * d + 2 * d * v          # tok + pos and its dropout, ln_f, the tied LM head
    # the padding mask, built once: per token `attention_mask == 1`, `not keep`, `position_ids < 0` and its
    # `where` (4); per token pair `keep[B, S] or not keep` (1)
    mask = 4 * B * T + B * T * T
    assert sympy.expand(flops - (12 * layer_tokens * B * T + 12 * layer_pairs * B * T * T + head * B * T
                                 + mask)) == 0


def test_repeat_is_checked_once_not_unrolled() -> None:
    shallow = nnspec.check(GPT2, n_layer=2)
    deep = nnspec.check(GPT2, n_layer=96)
    assert sum(len(g.nodes) for g in deep.model.graphs()) == sum(len(g.nodes) for g in shallow.model.graphs())
    assert deep.params - shallow.params == 94 * (gpt2_params(layers=1) - gpt2_params(layers=0))


def block_checks(monkeypatch: pytest.MonkeyPatch, spec: Path | str, **dims: int) -> Counter[str]:
    """How often each block's statements were checked (elaborated), and the body's, during one check."""
    from nnspec.compiler.elaborate import Builder

    counts: Counter[str] = Counter()
    run = Builder.run

    def counting(self: Builder, stmts: list[object]) -> object:
        counts[self.graph.meta.get("block", "<body>")] += 1
        return run(self, stmts)  # type: ignore[arg-type]

    monkeypatch.setattr(Builder, "run", counting)
    nnspec.check(spec, **dims)
    monkeypatch.undo()
    return counts


@pytest.mark.parametrize("layers", [1, 2, 96, 10_000])
def test_each_block_is_checked_once_whatever_the_depth(monkeypatch: pytest.MonkeyPatch, layers: int) -> None:
    """GPT-2 calls attention and mlp from layer, and repeats layer n_layer times: each body is checked once."""
    assert block_checks(monkeypatch, GPT2, n_layer=layers) == {"<body>": 1, "layer": 1, "attention": 1, "mlp": 1}


def test_a_block_is_checked_once_per_distinct_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = "  mlp(x, width): |\n    return linear(relu(linear(x, width, name=fc)), d, name=proj)\n"
    same = _spec("a = mlp(x, 4 * d, name=m1)\nb = mlp(a, 4 * d, name=m2)\ny = mlp(b, d * 4, name=m3)",
                 blocks=blocks)
    assert block_checks(monkeypatch, same)["mlp"] == 1
    # sizes are compared as written (symbolically): an axis of size 4*d is named `4*d`, one of size 32 `32`,
    # so `mlp(x, 32)` is another binding even where d is 8
    assert block_checks(monkeypatch, same.replace("d * 4, name=m3", "32, name=m3"))["mlp"] == 2
    other = _spec("a = mlp(x, 32, name=m1)\nb = mlp(a, 16, name=m2)\ny = mlp(b, 32, name=m3)", blocks=blocks)
    assert block_checks(monkeypatch, other)["mlp"] == 2         # widths 32 and 16
    r = nnspec.check(other)
    assert sorted(r.model.templates) == ["mlp", "mlp_2"]
    assert r.params == 2 * (8 * 32 + 32 + 32 * 8 + 8) + (8 * 16 + 16 + 16 * 8 + 8)


def test_bound_free_dims_give_concrete_shapes() -> None:
    result = nnspec.check(GPT2, B=2, T=16)
    logits = result.model.graph[result.model.outputs["logits"]].type
    assert isinstance(logits, TensorType)
    assert [int(result.model.dims.concrete(s)) for s in logits.sizes] == [2, 16, 50257]
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(GPT2, T=2048)
    assert err.value.code == "E015" and "T <= n_positions" in err.value.message


IR_GOLDENS = sorted((ROOT / "tests" / "golden" / "ir").glob("*.yaml"))


@pytest.mark.parametrize("spec", IR_GOLDENS, ids=[p.stem for p in IR_GOLDENS])
def test_ir_printer_golden(spec: Path) -> None:
    """Each tests/golden/ir/NAME.ir was written by hand from the printer's format (stack.ir: a block template,
    printed once, and a repeat of it)."""
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


# ---- dtype promotion, as docs/language.md states it ------------------------------------------------------
ORDER = ["bool", "int32", "int64", "bfloat16", "float16", "float32"]   # the documented promotion order


def _promoted(a: str, b: str) -> str:
    return "float32" if {a, b} == {"bfloat16", "float16"} else max(a, b, key=ORDER.index)


def _binary(a: str, b: str, expr: str = "x + y") -> str:
    return (f"nnspec: 1\nname: t\ndims: {{d: 4}}\ninputs:\n  x: {a}[B, d]\n  y: {b}[B, d]\n"
            f"outputs:\n  z: float32[B, d]\nbody: |\n  w = {expr}\n  z = cast(w, \"float32\")\n")


@pytest.mark.parametrize("a", ORDER[1:])
@pytest.mark.parametrize("b", ORDER[1:])
def test_binary_ops_promote_as_documented_and_as_torch_does(a: str, b: str) -> None:
    torch = pytest.importorskip("torch")
    result = nnspec.check(_binary(a, b))
    w = next(n for n in result.model.graph if n.op == "add")
    assert w.tensor_type.dtype.value == _promoted(a, b)
    assert getattr(torch, _promoted(a, b)) == torch.promote_types(getattr(torch, a), getattr(torch, b))


@pytest.mark.parametrize(("dtype", "literal", "want"), [
    ("int32", "2", "int32"), ("int64", "2", "int64"), ("int32", "1.5", "float32"),   # a literal is weakly typed
    ("bfloat16", "1.5", "bfloat16"), ("float16", "2", "float16"),
])
def test_literals_take_the_tensors_dtype(dtype: str, literal: str, want: str) -> None:
    result = nnspec.check(_binary(dtype, dtype, f"x * {literal}"))
    assert next(n for n in result.model.graph if n.op == "mul").tensor_type.dtype.value == want


@pytest.mark.parametrize("expr", ["x + y", "x * 2", "-x"])
def test_arithmetic_on_bool_is_refused(expr: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(_binary("bool", "bool", expr))
    assert err.value.code == "E013"


def test_comparisons_give_bool() -> None:
    result = nnspec.check(_binary("float32", "int64", "x < y"))
    assert next(n for n in result.model.graph if n.op == "lt").tensor_type.dtype.value == "bool"


def test_topk_along_a_free_axis_is_a_guard() -> None:
    """torch.topk fails for k beyond the axis; along a free axis that is a run-time guard, checked by the interpreter
    with the spec's words rather than torch's."""
    text = _spec("v, i = topk(x, 3, over=T, into=K)\ny = x", outputs="y: float32[B, T, d]")
    result = nnspec.check(text)
    assert [g.text for g in result.model.guards] == ["T >= 3"]
    with pytest.raises(nnspec.SpecError) as err:   # T bound when checking: known to be too short, as for slice
        nnspec.check(text, T=2)
    assert err.value.code == "E012" and "k=3" in err.value.message
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch import Interpreter

    interp = Interpreter(result.model)
    assert interp(x=torch.randn(1, 3, 8))["y"].shape == (1, 3, 8)
    with pytest.raises(ValueError, match="T >= 3"):
        interp(x=torch.randn(1, 2, 8))


def test_config_warnings_are_kept_when_checking_then_fails(tmp_path: Path) -> None:
    """`--json` promises the config's warnings first, then the error: also when the error comes after the mapping."""
    import json

    from typer.testing import CliRunner

    from nnspec.cli import app

    config = tmp_path / "config.json"
    config.write_text('{\n  "n_layer": 2,\n  "my_note": 1,\n  "n_head": 7\n}\n')
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(GPT2, config=config)
    assert err.value.code == "E014" and [w.message for w in err.value.warnings] == [  # type: ignore[attr-defined]
        "config key 'my_note' is not used by this spec"]
    result = CliRunner().invoke(app, ["check", str(GPT2), "--config", str(config), "--json"])
    assert result.exit_code == 1
    diags = json.loads(result.stdout)["diagnostics"]
    assert [(d["severity"], d["span"]["line"]) for d in diags] == [("warning", 3), ("error", 11)]
    result = CliRunner().invoke(app, ["check", str(GPT2), "--config", str(config)])
    assert result.stderr.index("warning: config key 'my_note'") < result.stderr.index("error[E014]")
