"""Regression tests for bugs found while writing architectures from the literature (issue 15, section 5).

Each expectation is written from the semantics: a hand-written reference computation, or the text a reader
of the spec expects to see.
"""

from __future__ import annotations

from typing import Any

import pytest

import nnspec

ROTARY_4D = """\
nnspec: 1
name: rot4
dims: {h: 2, d: 8}
inputs:
  x: float32[B, T, h, d]
outputs:
  y: float32[B, T, h, d]
body: |
  y = rotary(x, pos=T, dim=d, base=100, style="interleaved")
"""


def _gptj_rotary(x: Any, base: float) -> Any:
    """GPT-J's rotation, written out: feature pair (2i, 2i+1) at position t turns by t * base^(-2i/d)."""
    torch = pytest.importorskip("torch")
    _, n, _, d = x.shape
    angle = torch.arange(n, dtype=torch.float64)[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]   # [1, T, 1, d/2]
    even, odd = x[..., 0::2].double(), x[..., 1::2].double()
    out = torch.empty_like(x, dtype=torch.float64)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out.float()


@pytest.mark.parametrize("opt", [0, 1, 2])
def test_interleaved_rotary_on_a_four_axis_input(opt: int) -> None:
    """The generated code left the table's leading size-1 axis out and then indexed it from the left."""
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch import Interpreter

    x = torch.randn(2, 5, 2, 8)
    want = _gptj_rotary(x, 100.0)
    model = nnspec.build(ROTARY_4D, opt=opt)
    torch.testing.assert_close(model(x), want)
    interp = Interpreter(nnspec.check(ROTARY_4D).model, seed=0)
    torch.testing.assert_close(interp(x=x)["y"], want)


def _fusion_spec(block: str) -> str:
    return f"""\
nnspec: 1
name: fuse_past_block
dims: {{d: 4}}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  between(z): |
    {block}
body: |
  q = linear(x, d, name=q)
  g = between(x)
  k = linear(x, d, name=k)
  y = q + k + g
"""


def test_linear_fusion_passes_over_a_block_without_parameters() -> None:
    """Moving k's weights above a block call that defines none leaves the state dict's order as it was, so
    nothing forbids the fusion; it used to be refused as 'a block with parameters'."""
    pytest.importorskip("torch")
    from test_passes_support import assert_same_outputs, count, optimized, state

    model, opt, lines = optimized(_fusion_spec("return gelu(z)"), passes="fuse-linear,dce")
    assert not any("not fused" in line for line in lines), lines
    assert count(model, "linear") == 2 and count(opt, "linear") == 1
    assert state(opt) == state(model) == [("root.q.weight", (4, 4)), ("root.q.bias", (4,)),
                                          ("root.k.weight", (4, 4)), ("root.k.bias", (4,))]
    assert_same_outputs(model, opt, T=3)


def test_linear_fusion_refusal_names_a_block_that_has_parameters() -> None:
    pytest.importorskip("torch")
    from test_passes_support import count, optimized

    model, opt, lines = optimized(_fusion_spec("return linear(z, d, name=inner)"), passes="fuse-linear,dce")
    assert count(opt, "linear") == count(model, "linear") == 3
    refusals = [line for line in lines if "not fused" in line]
    assert len(refusals) == 1 and "defined after between, a block with parameters or buffers" in refusals[0], lines


DEAD_TAIL = """\
nnspec: 1
name: dead_tail
dims: {d: 4}
inputs:
  x: float32[B, T, d]
outputs:
  echo: float32[B, T, d]
body: |
  h = linear(x, d, name=in_proj)
  z = h
  z += linear(gelu(h), d, name=res)
  unused = linear(gelu(z), d, name=proj)
  echo = x
"""


def test_drop_removes_the_branch_and_not_code_unused_before() -> None:
    """`--drop res` removes the add, res's linear and the gelu only res read: per token 2·4·4 + 4 (the linear),
    8·4 (gelu, 8 per element) and 4 (the add) = 72 FLOPs, and res's 4·4 + 4 parameters. The unused tail and
    in_proj are no part of the branch: they used to be erased too (FLOPs removed exceeded the branch's)."""
    import sympy

    from nnspec.compiler.analysis import Analysis
    from nnspec.compiler.transforms.drop import drop

    model = nnspec.check(DEAD_TAIL).model
    out = drop(model, ["res"])
    before, after = Analysis(model), Analysis(out)
    diff = sympy.expand(before.total_flops() - after.total_flops())
    B, T = sorted(diff.free_symbols, key=str)
    assert (str(B), str(T)) == ("B", "T") and diff == 72 * B * T
    assert [p.path for p in after.parameters()] == ["in_proj.weight", "in_proj.bias", "proj.weight", "proj.bias"]
    assert before.total_params() - after.total_params() == 4 * 4 + 4


MERGED = """\
nnspec: 1
name: merged
dims: {n_head: 2, head_dim: 3, width: 6}
inputs:
  p: float32[B, n_head, T, S]
  v: float32[B, S, n_head, head_dim]
outputs:
  o: float32[B, T, width]
  r: float32[B, S, width]
body: |
  o[B, T, (n_head head_dim)] = p * v
  r = v[B, S, (head_dim n_head)]
"""


def test_merged_axes_print_their_factors_in_the_order_written() -> None:
    """`(n_head head_dim)` is laid out n_head-major: it prints as `n_head*head_dim`, not sympy's sorted
    `head_dim*n_head` (which is how `(head_dim n_head)`, the other layout, prints), in types, the check table's
    shapes and the generated code's comments."""
    torch = pytest.importorskip("torch")
    model = nnspec.check(MERGED).model
    o, r = (model.graph[model.outputs[n]].type for n in ("o", "r"))
    assert (str(o), str(r)) == ("float32[B, T, n_head*head_dim]", "float32[B, S, head_dim*n_head]")
    assert (o.shape_str(), r.shape_str()) == ("B x T x n_head*head_dim", "B x S x head_dim*n_head")
    from nnspec.generated import compile_spec

    source = compile_spec(MERGED).source
    assert "# (B, T, n_head*head_dim)" in source and "# (B, S, head_dim*n_head)" in source
    p, v = torch.randn(2, 2, 4, 5), torch.randn(2, 5, 2, 3)
    out = nnspec.build(MERGED)(p, v)
    o_want = torch.einsum("bhts,bshd->bthd", p, v).reshape(2, 4, 6)           # index h * head_dim + d
    r_want = v.permute(0, 1, 3, 2).reshape(2, 5, 6)                           # index d * n_head + h
    torch.testing.assert_close(out["o"], o_want)
    torch.testing.assert_close(out["r"], r_want)


def _check_output(tmp_path: Any, text: str) -> str:
    from typer.testing import CliRunner

    from nnspec.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = CliRunner().invoke(app, ["check", str(spec)], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_check_summary_prints_lowercase_axis_names(tmp_path: Any) -> None:
    """`[nodes, M]` begins with a lowercase name, which rich's markup took for a style tag and dropped."""
    out = _check_output(tmp_path, """\
nnspec: 1
name: graph
dims: {M: 4, d: 8}
inputs:
  x: float32[nodes, d]
  adj: float32[nodes, M]
outputs:
  y: float32[nodes, d]
body: |
  y = x + sum(adj, over=M)
""")
    assert "inputs   x: float32[nodes, d], adj: float32[nodes, M]\n" in out
    assert "outputs  y: float32[nodes, d]\n" in out


def test_a_constant_flop_term_prints_as_a_number(tmp_path: Any) -> None:
    """z = linear(c, d) over a fixed [300, 32] input: 2·300·32·32 + 300·32 (bias) = 624000 FLOPs, a constant;
    y = x * 2.0 is 32·B. The constant used to print as `6.24e+05·1`."""
    out = _check_output(tmp_path, """\
nnspec: 1
name: const_flops
dims: {n: 300, d: 32}
inputs:
  x: float32[B, d]
  c: float32[n, d]
outputs:
  y: float32[B, d]
  z: float32[n, d]
body: |
  y = x * 2.0
  z = linear(c, d)
""")
    total = next(line for line in out.splitlines() if "total" in line)
    assert "6.24e+05 + 32·B" in total and "·1" not in total


def test_an_undefined_size_says_to_declare_it_before_suggesting_a_similar_dim() -> None:
    text = ROTARY_4D.replace("style=\"interleaved\")", "style=\"interleaved\") + linear(x, hidden)")
    text = text.replace("dims: {h: 2, d: 8}", "dims: {h: 2, d: 8, hidden_size: 8}")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text)
    err = info.value
    assert err.code == "E011" and err.message.startswith("undefined dim 'hidden': declare it under `dims:`")
    assert [n.message for n in err.notes] == ["if 'hidden' is a typo: did you mean 'hidden_size'?"]
    line = text.splitlines()[err.span.line - 1] if err.span is not None else ""
    assert line[err.span.col - 1:err.span.end_col - 1] == "hidden"  # type: ignore[union-attr]
