"""Blocks are generic (issue 15, section 2): a block's signature names and parameters are local to each call, its
results come back in the caller's names, it may read the model's inputs, and the smaller language pieces that
generic blocks need (tuple members, scalar and square parameters, size expressions in annotations, `int(...)`).

Expected values are written from the semantics: parameter counts by formula, outputs against plain PyTorch computed
from the same weights."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nnspec
from nnspec.backends.torch import Interpreter
from nnspec.errors import SpecError


def spec(body: str, *, blocks: str = "", dims: str = "{a: 16, b: 32}", inputs: str = "x: float32[B, T, a]",
         outputs: str = "y: float32[B, T, a]", options: str = "{}", include: str = "[]") -> str:
    text = f"""\
nnspec: 1
name: generic
include: {include}
dims: {dims}
options: {options}
inputs:
{textwrap.indent(inputs, "  ")}
outputs:
{textwrap.indent(outputs, "  ")}
"""
    if blocks:
        text += "blocks:\n" + textwrap.indent(textwrap.dedent(blocks), "  ")
    return text + "body: |\n" + textwrap.indent(textwrap.dedent(body), "  ")


def run(text: str, **inputs: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """The reference interpreter's outputs and weights, after checking that the generated module agrees."""
    result = nnspec.check(text)
    model = Interpreter(result.model).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        out = model(**inputs)
        generated = nnspec.build(text, opt=0)
        generated.load_state_dict({k.removeprefix("root."): v for k, v in model.state_dict().items()})
        again = generated(**inputs)
    again = again if isinstance(again, dict) else {next(iter(result.model.outputs)): again}
    for name, value in out.items():
        torch.testing.assert_close(again[name], value)
    weights = {k.removeprefix("root."): v for k, v in model.state_dict().items()}
    return out, weights, result


def mlp_ref(x: torch.Tensor, w: dict[str, torch.Tensor], scope: str) -> torch.Tensor:
    h = F.gelu(F.linear(x, w[f"{scope}.fc.weight"], w[f"{scope}.fc.bias"]))
    return F.linear(h, w[f"{scope}.proj.weight"], w[f"{scope}.proj.bias"])


# ---- the standard library's blocks at two sizes in one scope ----
def test_stdlib_mlp_at_widths_16_and_32_in_one_body() -> None:
    text = spec("""\
        h = mlp(x, 64, name=m1)
        y = linear(mlp(linear(h, b, name=up), 48, name=m2), a, name=down)
        """, include="[std/transformer.yaml]")
    x = torch.randn(2, 3, 16)
    out, w, result = run(text, x=x)
    # mlp(d, hidden) holds d*hidden + hidden + hidden*d + d parameters
    assert result.params == (16 * 64 + 64 + 64 * 16 + 16) + (16 * 32 + 32) + (32 * 48 + 48 + 48 * 32 + 32) \
        + (32 * 16 + 16)
    h = mlp_ref(x, w, "m1")
    u = F.linear(h, w["up.weight"], w["up.bias"])
    want = F.linear(mlp_ref(u, w, "m2"), w["down.weight"], w["down.bias"])
    torch.testing.assert_close(out["y"], want)


def test_every_stdlib_block_at_two_widths_in_one_scope() -> None:
    text = spec("""\
        h = mha(x, 2, true, name=attn_a) + swiglu(x, 24, name=glu_a)
        h = repeat(2, prenorm_layer, h, 4, 32, true, name=layers_a)
        g = linear(h, b, name=up)
        g = mha(g, 4, name=attn_b) + swiglu(g, 40, name=glu_b)
        g = repeat(2, prenorm_layer, g, 8, 64, name=layers_b)
        y = linear(g, a, name=down)
        """, include="[std/transformer.yaml]")
    result = nnspec.check(text)

    def mha(d: int) -> int:
        return 3 * d * d + 3 * d + d * d + d

    def layer(d: int, hidden: int) -> int:
        return 4 * d + mha(d) + d * hidden + hidden + hidden * d + d

    assert result.params == (mha(16) + 3 * 16 * 24 + 2 * layer(16, 32) + 16 * 32 + 32
                             + mha(32) + 3 * 32 * 40 + 2 * layer(32, 64) + 32 * 16 + 16)
    out = Interpreter(result.model).eval()(x=torch.randn(1, 5, 16))["y"]
    assert out.shape == (1, 5, 16)


def test_results_carry_the_callers_axis_names() -> None:
    """The stdlib's `d` never reaches the caller: each result is named as the caller's argument was."""
    text = spec("""\
        h = mlp(x, 64, name=m1)
        g = mlp(linear(x, b, name=up), 64, name=m2)
        y = h
        """, include="[std/transformer.yaml]")
    graph = nnspec.check(text).model.graph
    # a call's own type, and its arguments' views, are in the block's names; the caller never sees them
    seen = {n.name: n.type.names for n in graph
            if n.op != "call" and not all(u.op == "call" for u in graph.users(n.name))}
    assert [u.type.names for u in graph.users("m1")] == [("B", "T", "a")]
    assert [u.type.names for u in graph.users("m2")] == [("B", "T", "b")]
    assert not [name for name, axes in seen.items() if "d" in axes]


def test_a_size_parameter_names_the_axis_as_the_caller_wrote_it() -> None:
    text = spec("""\
        p = widen(x, b, name=w1)
        q = widen(x, 3 * a, name=w2)
        y = linear(p, a, name=back_p) + linear(q, a, name=back_q)
        """, blocks="""\
        widen(h[B, T, d], n): |
          return linear(h, n, name=fc)
        """, outputs="y: float32[B, T, a]")
    graph = nnspec.check(text).model.graph
    assert [u.type.names for u in graph.users("w1")] == [("B", "T", "b")]
    assert [u.type.names for u in graph.users("w2")] == [("B", "T", "3*a")]


def test_a_block_that_relabels_inside_is_called_at_two_sizes() -> None:
    """`x = x[B, T, C]` inside: C is the block's own name; each result is renamed at the call site."""
    blocks = """\
        scale(x): |
          x = x[B, T, C]
          return x * 2
        """
    text = spec("""\
        p = scale(x)[B, T, P]
        q = scale(linear(x, b, name=up))[B, T, Q]
        y = p[B, T, a] + linear(q, a, name=down)
        """, blocks=blocks)
    x = torch.randn(2, 3, 16)
    out, w, _ = run(text, x=x)
    q = 2 * F.linear(x, w["up.weight"], w["up.bias"])
    torch.testing.assert_close(out["y"], 2 * x + F.linear(q, w["down.weight"], w["down.bias"]))


def test_a_block_at_two_resolutions() -> None:
    """A signature's `T` is the block's own: called on a sequence of length S it means S, with no guard T == S."""
    text = spec("""\
        y = last(x) + last(z)[B, a]
        """, blocks="""\
        last(h[B, T, d]): |
          w = softmax(sum(h, over=d), over=T)
          return sum(w * h, over=T)
        """, inputs="x: float32[B, T, a]\nz: float32[B, S, a]", outputs="y: float32[B, a]")
    result = nnspec.check(text)
    assert result.model.guards == []
    x, z = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    out, _, _ = run(text, x=x, z=z)

    def ref(h: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(h.sum(-1), dim=1)[..., None] * h).sum(1)
    torch.testing.assert_close(out["y"], ref(x) + ref(z))


def test_a_dim_in_a_spec_block_signature_is_still_checked() -> None:
    text = spec("y = proj(linear(x, b, name=up))", blocks="""\
        proj(h[B, T, a]): |
          return h
        """)
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E012"


def test_one_signature_name_binds_one_size_per_call() -> None:
    text = spec("y = pair(x, linear(x, b, name=up))", blocks="""\
        pair(p[B, T, d], q[B, T, d]): |
          return p + q
        """)
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E012" and err.value.span is not None


# ---- model inputs inside blocks ----
def test_blocks_read_model_inputs_through_calls_and_repeats() -> None:
    blocks = """\
        masked(h): |
          return h * mask
        layer(h): |
          return linear(masked(h), a, name=fc)
        """
    text = spec("y = masked(repeat(2, layer, x, name=layers))", blocks=blocks,
                inputs="x: float32[B, T, a]\nmask: float32[B, T, a]")
    x, mask = torch.randn(2, 3, 16), (torch.rand(2, 3, 16) > 0.5).float()
    out, w, _ = run(text, x=x, mask=mask)
    h = x
    for i in range(2):
        h = F.linear(h * mask, w[f"layers.{i}.fc.weight"], w[f"layers.{i}.fc.bias"])
    torch.testing.assert_close(out["y"], h * mask)


def test_a_block_parameter_shadows_a_model_input() -> None:
    text = spec("y = f(x, x * 2)", blocks="""\
        f(h, mask): |
          return h + mask
        """, inputs="x: float32[B, T, a]\nmask: float32[B, T, a]")
    x = torch.randn(1, 2, 16)
    out, _, _ = run(text, x=x, mask=torch.zeros(1, 2, 16))
    torch.testing.assert_close(out["y"], 3 * x)


# ---- tuple members, scalar and square parameters ----
def test_indexing_a_tuple_member() -> None:
    text = spec("y = sort(x)[0]\ni = sort(x, descending=true)[1]",
                outputs="y: float32[B, T, a]\ni: int64[B, T, a]")
    x = torch.randn(2, 3, 16)
    out, _, _ = run(text, x=x)
    torch.testing.assert_close(out["y"], torch.sort(x, dim=-1).values)
    torch.testing.assert_close(out["i"], torch.sort(x, dim=-1, descending=True).indices)


def test_a_tuple_member_out_of_range_is_located() -> None:
    text = spec("y = sort(x)[2]")
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E019" and "0 to 1" in err.value.message
    assert err.value.span is not None and (err.value.span.line, err.value.span.col) == (11, 15)


def test_scalar_and_square_parameters() -> None:
    text = spec("""\
        w = param(a, a, name=w)
        y = (x @ w)[B, T, a] * param(init="ones", name=alpha) + x * param(name=beta)
        """)
    result = nnspec.check(text)
    assert result.params == 16 * 16 + 1 + 1
    assert result.model.graph["w"].type.names == ("a", "a_1")
    x = torch.randn(2, 3, 16)
    out, w, _ = run(text, x=x)
    assert w["alpha"].shape == () and w["beta"].shape == ()
    torch.testing.assert_close(out["y"], (x @ w["w"]) * w["alpha"] + x * w["beta"])


# ---- size expressions in annotations and float options ----
GLU = """\
    glu(h[B, T, (2 * c)]): |
      u, g = split(h[B, T, (2 c)], over=2)
      return u * sigmoid(g)
    """


def test_a_size_expression_in_a_signature_infers_the_half() -> None:
    text = spec("y = glu(linear(x, 2 * a, name=up)) + linear(glu(linear(x, b, name=w)), a, name=down)",
                blocks=GLU)
    x = torch.randn(2, 3, 16)
    out, w, result = run(text, x=x)

    def glu(h: torch.Tensor) -> torch.Tensor:
        u, g = h.chunk(2, dim=-1)
        return u * torch.sigmoid(g)
    want = glu(F.linear(x, w["up.weight"], w["up.bias"])) + F.linear(
        glu(F.linear(x, w["w.weight"], w["w.bias"])), w["down.weight"], w["down.bias"])
    torch.testing.assert_close(out["y"], want)
    assert result.params == (16 * 32 + 32) + (16 * 32 + 32) + (16 * 16 + 16)


def test_a_size_expression_checks_a_known_size() -> None:
    ok = spec("y = linear(x, 2 * a, name=up)[B, T, (2 * a)][B, T, (a 2)][B, T, a, 2] * 0 + 1\ny = sum(y, over=2)")
    assert nnspec.check(ok).params == 16 * 32 + 32
    bad = spec("y = linear(x, b + 1, name=up)[B, T, (2 * a)]")
    with pytest.raises(SpecError) as err:
        nnspec.check(bad)
    assert err.value.code == "E012"


def test_an_odd_width_for_a_doubled_axis_is_located() -> None:
    text = spec("y = glu(linear(x, 15, name=up))", blocks=GLU)
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E014" and "c = 15/2" in err.value.message


def test_int_turns_a_float_option_into_a_size() -> None:
    text = spec("y = linear(gelu(linear(x, int(mlp_ratio * a), name=fc)), a, name=proj)",
                options="{mlp_ratio: 2.5}", dims="{a: 16, hidden: int(mlp_ratio * a) + 1}")
    assert nnspec.check(text).params == 16 * 40 + 40 + 40 * 16 + 16
    assert nnspec.check(text, mlp_ratio=2.6).params == 16 * 41 + 41 + 41 * 16 + 16   # int() truncates 41.6


def test_a_float_size_without_int_is_refused() -> None:
    text = spec("y = linear(x, mlp_ratio * a, name=fc)", options="{mlp_ratio: 2.5}")
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E026" and "int(" in err.value.message
    with pytest.raises(SpecError) as err:
        nnspec.check(spec("y = int(x)"))
    assert err.value.code == "E026" and "cast" in err.value.message


FLOOR_BLOCK = """\
    attend(h[B, P, Q, C]): |
      kv = h[B, (P Q), C][B, S, C]
      s[B, P, Q, S] = h * kv
      o[B, P, Q, C] = softmax(s, over=S) * kv
      return o
    """


def attend_ref(h: torch.Tensor) -> torch.Tensor:
    """Every position of an image attends to all of them, the features both keys and values."""
    kv = h.flatten(1, 2)
    return torch.einsum("bpqs,bsc->bpqc", torch.softmax(torch.einsum("bpqc,bsc->bpqs", h, kv), dim=-1), kv)


def test_a_block_merges_axes_sized_by_a_floor_of_free_dims() -> None:
    """The block's axes are floor(H/2), floor(W/2) of the caller's free dims (after a stride-2 conv): H cannot be
    recovered from them, so the generated block reads P and Q from its input's shape; the module built once runs
    at two resolutions, odd sizes included (floor), and agrees with the interpreter and with plain PyTorch."""
    text = spec("""\
        y = attend(conv(x, c, kernel=2, stride=2, channel=c, over=(H, W), into=(Ho, Wo))[B, Ho, Wo, c])
        """, blocks=FLOOR_BLOCK, dims="{c: 4}", inputs="x: float32[B, c, H, W]", outputs="y: float32[B, Ho, Wo, c]")
    model = Interpreter(nnspec.check(text).model).eval()
    generated = nnspec.build(text, opt=0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        generated.load_state_dict({k.removeprefix("root."): v for k, v in model.state_dict().items()})
        w = {k.removeprefix("root."): v for k, v in model.state_dict().items()}
        for h, wd, half in ((8, 6, (4, 3)), (7, 5, (3, 2))):
            x = torch.randn(2, 4, h, wd)
            want = attend_ref(F.conv2d(x, w["conv.weight"], w["conv.bias"], stride=2).permute(0, 2, 3, 1))
            assert want.shape == (2, *half, 4)
            torch.testing.assert_close(model(x=x)["y"], want)
            torch.testing.assert_close(generated(x=x), want)


def test_a_block_on_floors_of_floors_at_two_depths() -> None:
    """The same block after one and after two stride-2 convs (sizes floor(H/2), then floor(floor(H/2)/2)):
    both calls build and run, at two resolutions, against the interpreter and plain PyTorch."""
    text = spec("""\
        h = attend(conv(x, c, kernel=2, stride=2, channel=c, over=(H, W), into=(Ho, Wo))[B, Ho, Wo, c])
        y = attend(conv(h[B, c, Ho, Wo], c, kernel=2, stride=2, channel=c, over=(Ho, Wo), into=(Hq, Wq))[B, Hq, Wq, c])
        """, blocks=FLOOR_BLOCK, dims="{c: 4}", inputs="x: float32[B, c, H, W]", outputs="y: float32[B, Hq, Wq, c]")
    for h, wd, quarter in ((8, 12, (2, 3)), (11, 9, (2, 2))):
        x = torch.randn(1, 4, h, wd)
        out, w, _ = run(text, x=x)
        first = attend_ref(F.conv2d(x, w["conv.weight"], w["conv.bias"], stride=2).permute(0, 2, 3, 1))
        second = F.conv2d(first.permute(0, 3, 1, 2), w["conv_1.weight"], w["conv_1.bias"], stride=2)
        want = attend_ref(second.permute(0, 2, 3, 1))
        assert want.shape == (1, *quarter, 4)
        torch.testing.assert_close(out["y"], want)
