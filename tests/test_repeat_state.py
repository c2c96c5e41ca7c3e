"""`repeat` over a tuple state (`h, e = repeat(n, layer, (h, e))`) and repeats whose iterations differ by their
number (`repeat(n, layer, x, index=i)`), issue 15 section 2: interpreter and generated code (-O0, -O2) against
plain PyTorch written here from the same weights, parameter and FLOP counts by formula, the transforms, and the
errors. Also the example examples/small/graph_transformer_edges.yaml against a hand-written graph transformer."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sympy
import torch
import torch.nn.functional as F

import nnspec
from nnspec.backends import base
from nnspec.backends.torch import Interpreter
from nnspec.compiler.transforms import apply
from nnspec.errors import SpecError
from nnspec.generated import compile_spec

ROOT = Path(__file__).parent.parent
B_, T_ = sympy.symbols("B T", positive=True, integer=True)


def spec(body: str, blocks: str, *, dims: str = "{d: 8, n_layer: 3}", inputs: str = "x: float32[B, T, d]",
         outputs: str = "y: float32[B, T, d]") -> str:
    return (f"nnspec: 1\nname: rep\ndims: {dims}\ninputs:\n{textwrap.indent(inputs, '  ')}\n"
            f"outputs:\n{textwrap.indent(outputs, '  ')}\nblocks:\n"
            + textwrap.indent(textwrap.dedent(blocks), "  ") + "body: |\n" + textwrap.indent(body, "  "))


def randomized(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return {k.removeprefix("root."): v for k, v in model.state_dict().items()}


def all_agree(text: str, ref: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
              **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The interpreter and the generated module at -O0 and -O2 each compute `ref(weights)`; returns the weights."""
    result = nnspec.check(text)
    interp = Interpreter(result.model).eval()
    w = randomized(interp)
    want = ref(w)
    with torch.no_grad():
        got = interp(**inputs)
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-4)
        for opt in (0, 2):
            module = nnspec.build(text, opt=opt).eval()
            module.load_state_dict(w)
            out = module(**inputs)
            out = out if isinstance(out, dict) else {next(iter(want)): out}
            for name, value in want.items():
                torch.testing.assert_close(out[name], value, atol=1e-5, rtol=1e-4)
    return w


def lin(w: dict[str, torch.Tensor], x: torch.Tensor, name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


# ---- a tuple state ----
TUPLE = spec("a, b = repeat(n_layer, layer, (x, e), name=layers)\n", """\
    layer(h, e): |
      h2 = h + linear(e, d, name=p)
      return h2, e * 2.0 + h2
    """, inputs="x: float32[B, T, d]\ne: float32[B, T, d]", outputs="a: float32[B, T, d]\nb: float32[B, T, d]")


def test_a_tuple_state_is_carried_through_every_iteration() -> None:
    x, e = torch.randn(2, 5, 8), torch.randn(2, 5, 8)

    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h, f = x, e
        for i in range(3):   # h' = h + p_i(e), e' = 2e + h'
            h = h + lin(w, f, f"layers.{i}.p")
            f = f * 2.0 + h
        return {"a": h, "b": f}

    all_agree(TUPLE, ref, x=x, e=e)


def test_a_tuple_repeat_counts_its_block_once_times_the_count() -> None:
    result = nnspec.check(TUPLE)
    d = 8
    assert result.params == 3 * (d * d + d)
    # per layer and token: the linear 2·d·d + d (bias), the add, the scale, the second add: d each
    assert sympy.simplify(result.flops - 3 * (2 * d * d + d + 3 * d) * B_ * T_) == 0


def test_a_tuple_repeat_generates_one_loop_unpacking_the_state() -> None:
    source = compile_spec(TUPLE, opt=2).source
    assert "for layer in self.layers:\n            a, b = layer(a, b)" in source, source
    assert source.count("class Layer(") == 1


def test_a_tuple_state_takes_further_arguments_after_it() -> None:
    text = spec("a, b = repeat(n_layer, layer, (x, e), x, name=layers)\n", """\
        layer(h, e, skip): |
          return h + linear(e, d, name=p) + skip, e - h
        """, inputs="x: float32[B, T, d]\ne: float32[B, T, d]", outputs="a: float32[B, T, d]\nb: float32[B, T, d]")
    x, e = torch.randn(1, 3, 8), torch.randn(1, 3, 8)

    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h, f = x, e
        for i in range(3):
            h, f = h + lin(w, f, f"layers.{i}.p") + x, f - h
        return {"a": h, "b": f}

    all_agree(text, ref, x=x, e=e)


def test_a_tuple_state_in_bf16_keeps_each_member_one_type() -> None:
    result = nnspec.check(TUPLE)
    low, _ = apply(result.model, dtype="bf16")
    reason = base.get("torch").refuses(low)
    assert reason is None
    interp = Interpreter(low).eval()
    x, e = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        out = interp(x=x, e=e)
    assert out["a"].dtype == torch.float32 and out["b"].dtype == torch.float32


def test_a_tuple_state_whose_type_changes_is_a_located_error() -> None:
    text = spec("a, b = repeat(n_layer, layer, (x, e), name=layers)\n", """\
        layer(h, e): |
          return h, sum(e, over=d)
        """, inputs="x: float32[B, T, d]\ne: float32[B, T, d]", outputs="a: float32[B, T, d]\nb: float32[B, T]")
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E025" and "returns (float32[B, T, d], float32[B, T])" in err.value.message


# ---- iterations that differ by their number ----
ALTERNATING = spec("y = repeat(n_layer, layer, x, name=layers, index=i)\n", """\
    layer(h, i): |
      h = h + linear(h, d, name=p) * (i % 2 + 1)
      return h + linear(h, d, name=q) if i % 2 == 1 else h
    """, dims="{d: 8, n_layer: 4}")


def test_an_index_parameter_gives_each_iteration_its_number() -> None:
    x = torch.randn(2, 5, 8)

    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = x
        for i in range(4):   # even layers: h + p(h); odd layers: h + 2 p(h), then + q(.)
            h = h + lin(w, h, f"layers.{i}.p") * (i % 2 + 1)
            if i % 2 == 1:
                h = h + lin(w, h, f"layers.{i}.q")
        return {"y": h}

    w = all_agree(ALTERNATING, ref, x=x)
    assert sorted(k for k in w if ".q." in k) == ["layers.1.q.bias", "layers.1.q.weight", "layers.3.q.bias",
                                                  "layers.3.q.weight"]


def test_iterations_building_the_same_graph_share_one_class() -> None:
    source = compile_spec(ALTERNATING, opt=0).source
    assert "nn.ModuleList([Layer(), Layer2(), Layer(), Layer2()])" in source, source
    assert source.count("class Layer") == 2


def test_an_indexed_repeat_counts_each_iteration_as_it_runs() -> None:
    result = nnspec.check(ALTERNATING)
    d = 8
    assert result.params == 4 * (d * d + d) + 2 * (d * d + d)
    # every layer: p (2d² + d), its scale and add (2d); odd layers also q (2d² + d) and its add (d)
    per_even, per_odd = 2 * d * d + d + 2 * d, 2 * d * d + d + 2 * d + 2 * d * d + d + d
    assert sympy.simplify(result.flops - 2 * (per_even + per_odd) * B_ * T_) == 0


SHIFTED = spec("y = repeat(n_layer, layer, x, name=layers, index=i)\n", """\
    roll(x, by): |
      # torch.roll(x, -by, dims=T)
      return concat(slice(x, over=T, start=by, into=Tt), slice(x, over=T, stop=by, into=Th), over=(Tt, Th), into=T)
    layer(x, i): |
      shift = (i % 2) * (window // 2)
      h = roll(x, shift) if shift > 0 else x
      return x + linear(h, d, name=p)
    """, dims="{d: 8, n_layer: 4, window: 4, T: 6}")


def test_swin_style_alternating_shifts_from_the_index() -> None:
    x = torch.randn(2, 6, 8)

    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = x
        for i in range(4):   # odd layers read the sequence shifted by window // 2 = 2
            h = h + lin(w, torch.roll(h, -2, dims=1) if i % 2 else h, f"layers.{i}.p")
        return {"y": h}

    all_agree(SHIFTED, ref, x=x)


def test_moe_every_second_layer_from_the_index() -> None:
    text = spec("y = repeat(n_layer, layer, x, name=layers, index=i)\n", """\
        layer(h, i): |
          f = moe(h, 4, 16, 2, name=moe) if i % 2 == 1 else linear(gelu(linear(h, 16, name=fc)), d, name=proj)
          return h + f
        """, dims="{d: 8, n_layer: 4}")
    result = nnspec.check(text)
    d, hidden, experts = 8, 16, 4
    dense = (d * hidden + hidden) + (hidden * d + d)
    sparse = experts * d + 3 * experts * hidden * d   # router, gate/up/down experts, no biases
    assert result.params == 2 * dense + 2 * sparse
    x = torch.randn(2, 3, 8)
    interp = Interpreter(result.model).eval()
    w = randomized(interp)
    with torch.no_grad():
        want = interp(x=x)["y"]
        for opt in (0, 2):
            module = nnspec.build(text, opt=opt).eval()
            module.load_state_dict(w)
            torch.testing.assert_close(module(x=x), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("body", "blocks", "code", "message"), [
    ("y = repeat(n_layer, layer, x, name=layers, index=i, shared=true)\n",
     "layer(h, i): |\n  return h + linear(h, d, name=p) * i\n", "E015", "need their own weights"),
    ("y = repeat(n_layer, layer, x, 2, name=layers, index=i)\n",
     "layer(h, i): |\n  return h + linear(h, d, name=p) * i\n", "E019", "do not pass it too"),
    ("y = repeat(n_layer, layer, x, name=layers, index=h)\n",
     "layer(h, i): |\n  return h + linear(h, d, name=p) * i\n", "E026", "must be a value parameter"),
    ("y = repeat(n_layer, layer, x, name=layers, index=i)\n",
     "layer(h, i): |\n  return h if i == 0 else sum(h, over=d)\n", "E025", "(iteration 1)"),
])
def test_index_mistakes_are_located_errors(body: str, blocks: str, code: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        nnspec.check(spec(body, blocks))
    assert err.value.code == code and message in err.value.message, err.value.message
    assert err.value.span is not None and err.value.span.line == 12   # the body's repeat line (line 12 of the spec)


def test_transforms_on_an_indexed_repeat() -> None:
    """--drop and --lora on an indexed repeat are generated as per-iteration classes matching the interpreter;
    --share over iterations that run different templates is refused."""
    text = spec("y = repeat(n_layer, layer, x, name=layers, index=i)\n", """\
        layer(h, i): |
          h = h + linear(layernorm(h, name=ln1), d, name=attn)
          return h + linear(layernorm(h, name=ln2), d, name=mlp) * (1.0 + i)
        """, dims="{d: 8, n_layer: 4}")
    model = nnspec.check(text).model
    for kwargs in ({"drop": ["layers.1.attn"]}, {"lora": ["layers.*.mlp:2"]}):
        changed, _ = apply(model, **kwargs)   # type: ignore[arg-type]
        backend = base.get("torch")
        assert backend.refuses(changed) is None
        generated = backend.generate(changed, spec_text=text, doc=None, label="-O0",
                                     options=base.resolve_options(backend, {}))
        module: Any = getattr(backend.load(generated, "rep_t"), generated.class_name)().eval()
        interp = Interpreter(changed).eval()
        module.load_state_dict(randomized(interp))
        x = torch.randn(2, 3, 8)
        with torch.no_grad():
            torch.testing.assert_close(module(x=x), interp(x=x)["y"])
    with pytest.raises(Exception, match="run different blocks"):
        apply(model, share=[("layers", 2)])


# ---- the example: a graph transformer carrying node and edge features ----
EXAMPLE = ROOT / "examples" / "small" / "graph_transformer_edges.yaml"


def graph_transformer(w: dict[str, torch.Tensor], x: torch.Tensor, adj: torch.Tensor, edges: torch.Tensor,
                      lap_pe: torch.Tensor, n_layer: int = 3, heads: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Dwivedi & Bresson's graph transformer layer with edge features, post-norm with layernorm, in plain torch."""
    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, (t.shape[-1],), w[f"{name}.weight"], w[f"{name}.bias"])

    def ffn(t: torch.Tensor, name: str) -> torch.Tensor:
        return lin(w, F.relu(lin(w, t, f"{name}.fc1")), f"{name}.fc2")

    h = lin(w, x, "embed_h") + lin(w, lap_pe, "pe")
    e = lin(w, edges, "embed_e")
    b, n, hidden = h.shape
    hd = hidden // heads
    for i in range(n_layer):
        p = f"layers.{i}"
        q, k, v = (lin(w, h, f"{p}.{m}").view(b, n, heads, hd) for m in ("q", "k", "v"))
        pe = lin(w, e, f"{p}.edge").view(b, n, n, heads, hd)
        score = q[:, :, None] * k[:, None] * pe / math.sqrt(hd)          # [b, i, j, heads, hd]
        att = score.sum(-1).masked_fill(~adj[..., None], float("-inf")).softmax(dim=2)
        o = torch.einsum("bijh,bjhd->bihd", att, v).reshape(b, n, hidden)
        h = ln(h + lin(w, o, f"{p}.o_h"), f"{p}.ln_h1")
        e = ln(e + lin(w, score.reshape(b, n, n, hidden), f"{p}.o_e"), f"{p}.ln_e1")
        h = ln(h + ffn(h, f"{p}.ffn_h"), f"{p}.ln_h2")
        e = ln(e + ffn(e, f"{p}.ffn_e"), f"{p}.ln_e2")
    return h, e


def test_graph_transformer_with_edges_matches_plain_pytorch() -> None:
    g = torch.Generator().manual_seed(1)
    b, n = 2, 5
    x, edges, lap_pe = torch.randn(b, n, 16, generator=g), torch.randn(b, n, n, 4, generator=g), \
        torch.randn(b, n, 6, generator=g)
    adj = (torch.rand(b, n, n, generator=g) < 0.5) | torch.eye(n, dtype=torch.bool)   # self-loops included

    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y, e_out = graph_transformer(w, x, adj, edges, lap_pe)
        return {"y": y, "e_out": e_out}

    all_agree(EXAMPLE.read_text(), ref, x=x, adj=adj, edges=edges, lap_pe=lap_pe)


def test_graph_transformer_with_edges_parameters_by_formula() -> None:
    result = nnspec.check(EXAMPLE.read_text())
    node_dim, edge_dim, k_eig, hidden, ffn, n_layer = 16, 4, 6, 32, 64, 3
    embed = (node_dim + 1) * hidden + (k_eig + 1) * hidden + (edge_dim + 1) * hidden
    # q, k, v, edge, o_h, o_e; four layernorms; a two-layer ffn for nodes and one for edges
    layer = 6 * (hidden + 1) * hidden + 4 * 2 * hidden + 2 * ((hidden + 1) * ffn + (ffn + 1) * hidden)
    assert result.params == embed + n_layer * layer
