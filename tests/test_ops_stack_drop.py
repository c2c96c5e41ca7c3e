"""`stack(a, b, ..., into=K)`, `drop_path(x, p, over=B)` (stochastic depth) and `attention(..., dropout=p)`:
against hand-written torch (`torch.stack`, timm's drop_path, softmax-dropout-product and
`F.scaled_dot_product_attention(dropout_p=)`, drawing from the same seed), in the reference interpreter, the
generated torch module (-O0, -O2) and the Triton target; their mistakes are located errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _backend_matrix import modules

import nnspec
from nnspec.compiler.ops import OPS
from nnspec.generated import compile_spec


def run(how: str, module: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    out = module(**inputs)
    return next(iter(out.values())) if how == "interpreter" else out


# ---- stack ----
STACK = """nnspec: 1
name: st
dims: {D: 3, K: 3}
inputs:
  a: float32[B, T, D]
  b: float32[T, B, D]
  c: float32[T, D]
outputs:
  s: float32[K, B, T, D]
body: |
  s = stack(a, b, c, into=K)
"""


def test_stack_aligns_by_name_and_broadcasts() -> None:
    torch.manual_seed(0)
    a, b, c = torch.randn(2, 4, 3), torch.randn(4, 2, 3), torch.randn(4, 3)
    want = torch.stack([a, b.permute(1, 0, 2), c.expand(2, 4, 3)])   # entry i is operand i, laid out as a
    for how, module in modules(STACK).items():
        with torch.no_grad():
            torch.testing.assert_close(run(how, module, a=a, b=b, c=c), want, rtol=0, atol=0, msg=how)


def test_stack_gradients_reach_each_operand() -> None:
    text = STACK.replace("  s = stack(a, b, c, into=K)", "  s = stack(a, a * 2, c, into=K)")
    torch.manual_seed(0)
    a, b, c = (torch.randn(2, 4, 3, requires_grad=True), torch.randn(4, 2, 3),
               torch.randn(4, 3, requires_grad=True))
    g = torch.randn(3, 2, 4, 3)
    for how, module in modules(text).items():
        a.grad = c.grad = None
        (run(how, module, a=a, b=b, c=c) * g).sum().backward()
        torch.testing.assert_close(a.grad, g[0] + 2 * g[1], msg=how)
        torch.testing.assert_close(c.grad, g[2].sum(0), msg=how)   # broadcast over B: summed back


def test_stack_costs_no_flops_and_new_memory() -> None:
    result = nnspec.check(STACK)
    assert result.flops == 0
    assert not OPS["stack"].has("view")   # a copy, not a view: the activation-memory model counts it


@pytest.mark.parametrize(("body", "code", "where", "message"), [
    ("s = stack(a, c, c, into=T)", "E017", (11, 7), "the new axis 'T' is already an axis"),
    ("s = stack(a, cast(a, \"float16\"), c, into=K)", "E013", (11, 7), "stack: dtypes differ"),
    ("s = stack(a, a[B, T, F], c, into=K)", "E017", (11, 7), "has axis F, which"),
    ("s = stack(a, b, into=K)", "E012", (11, 24), "'K' is K=3, but this axis has size 2"),
    ("s = stack(a, b, c)", "E019", (11, 7), "into=NAME"),
    ("s = stack(a, b, c, over=D, into=K)", "E016", (11, 22), "stack has no argument 'over'"),
])
def test_stack_mistakes_are_located(body: str, code: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(STACK.replace("s = stack(a, b, c, into=K)", body))
    assert err.value.code == code and message in err.value.message, err.value
    assert (err.value.span.line, err.value.span.col) == where


def test_stack_of_an_operand_with_an_axis_the_first_lacks() -> None:
    text = STACK.replace("s = stack(a, b, c, into=K)", "s = stack(c, a, c, into=K)")
    torch.manual_seed(0)
    a, c = torch.randn(2, 4, 3), torch.randn(4, 3)
    b = torch.zeros(4, 2, 3)
    want = torch.stack([c.expand(2, 4, 3), a, c.expand(2, 4, 3)])   # the first of highest rank (a) sets the layout
    for how, module in modules(text).items():
        with torch.no_grad():
            torch.testing.assert_close(run(how, module, a=a, b=b, c=c), want, msg=how)


# ---- drop_path ----
DROP = """nnspec: 1
name: dp
dims: {D: 5}
inputs:
  x: float32[T, B, D]
outputs:
  y: float32[T, B, D]
body: |
  y = drop_path(x, 0.4, over=B) + 1
"""


def timm_drop_path(x: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    """timm's drop_path, written out, for a sample axis at `dim`."""
    shape = [n if i == dim else 1 for i, n in enumerate(x.shape)]
    keep = x.new_empty(shape).bernoulli_(1 - p)
    return x * keep / (1 - p)


def test_drop_path_is_the_identity_in_eval_mode() -> None:
    x = torch.randn(3, 6, 5)
    for how, module in modules(DROP).items():
        with torch.no_grad():
            torch.testing.assert_close(run(how, module.eval(), x=x), x + 1, rtol=0, atol=0, msg=how)


def test_drop_path_while_training_draws_as_timm() -> None:
    x = torch.randn(3, 64, 5)
    torch.manual_seed(7)
    want = timm_drop_path(x, 0.4, 1) + 1
    for how, module in modules(DROP).items():
        torch.manual_seed(7)
        with torch.no_grad():
            got = run(how, module.train(), x=x)
        torch.testing.assert_close(got, want, msg=how)
    # each sample whole: all of it dropped (0 + 1) or all kept (x / 0.6 + 1), and both happen
    per_sample = (want - 1).permute(1, 0, 2).reshape(64, -1)
    dropped = (per_sample == 0).all(1)
    kept = torch.isclose(per_sample, x.permute(1, 0, 2).reshape(64, -1) / 0.6).all(1)
    assert bool((dropped | kept).all()) and 0 < int(dropped.sum()) < 64


def test_two_drop_paths_draw_separately() -> None:
    """RANDOM, not pure: two equal calls are two draws (CSE keeps both), so their difference is not zero."""
    text = DROP.replace("y = drop_path(x, 0.4, over=B) + 1",
                        "y = drop_path(x, 0.5, over=B) - drop_path(x, 0.5, over=B)")
    x = torch.ones(1, 200, 5)
    for how, module in modules(text).items():
        torch.manual_seed(0)
        with torch.no_grad():
            got = run(how, module.train(), x=x)
        assert bool((got != 0).any()), how
    assert OPS["drop_path"].is_impure and OPS["drop_path"].removable


def test_drop_path_generated_code_and_fallback() -> None:
    assert "drop_path(x, 0.4, 1, self.training) + 1.0" in compile_spec(DROP, opt=2).source
    flops = nnspec.check(DROP).flops
    assert flops.subs({s: 2 for s in flops.free_symbols}) == 2 * (2 * 2 * 5)   # drop_path 1 + add 1 per element


@pytest.mark.parametrize(("body", "code", "where", "message"), [
    ("y = drop_path(x, 1.0, over=B)", "E015", (9, 7), "drop_path probability must be in [0, 1)"),
    ("y = drop_path(x, 0.1, over=Q)", "E017", (9, 30), "drop_path: no axis 'Q'"),
    ("y = drop_path(x, 0.1)", "E019", (9, 7), "drop_path needs argument 'over'"),
])
def test_drop_path_mistakes_are_located(body: str, code: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(DROP.replace("y = drop_path(x, 0.4, over=B) + 1", body))
    assert err.value.code == code and message in err.value.message, err.value
    assert (err.value.span.line, err.value.span.col) == where


# ---- dropout inside attention ----
ATTN = """nnspec: 1
name: att
dims: {H: 2, E: 4}
inputs:
  q: float32[B, H, T, E]
  k: float32[B, H, S, E]
  v: float32[B, H, S, E]
outputs:
  o: float32[B, H, T, E]
body: |
  o = attention(q, k, v, key=S, query=T, causal=true, dropout=0.25)
"""


def qkv() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {"q": torch.randn(2, 2, 6, 4), "k": torch.randn(2, 2, 6, 4), "v": torch.randn(2, 2, 6, 4)}


def spelled_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) * 0.5
    s = s.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    return F.dropout(torch.softmax(s, -1), p, training=training) @ v


def test_attention_dropout_is_the_identity_in_eval_mode() -> None:
    t = qkv()
    want = spelled_out(**t, p=0.25, training=False)
    for how, module in modules(ATTN).items():
        with torch.no_grad():
            torch.testing.assert_close(run(how, module.eval(), **t), want, msg=how)


def test_attention_dropout_while_training_spelled_out() -> None:
    """The interpreter and -O0 drop the softmax's probabilities as F.dropout does, drawing the same numbers."""
    t = qkv()
    torch.manual_seed(11)
    want = spelled_out(**t, p=0.25, training=True)
    assert not torch.allclose(want, spelled_out(**t, p=0.25, training=False))
    for how, module in modules(ATTN).items():
        if how not in ("interpreter", "torch -O0"):
            continue
        torch.manual_seed(11)
        with torch.no_grad():
            torch.testing.assert_close(run(how, module.train(), **t), want, msg=how)


def test_attention_dropout_at_o2_is_sdpas_dropout_p() -> None:
    t = qkv()
    source = compile_spec(ATTN, opt=2).source
    assert "dropout_p=0.25 if self.training else 0.0" in source
    torch.manual_seed(11)
    want = F.scaled_dot_product_attention(t["q"], t["k"], t["v"], dropout_p=0.25, is_causal=True, scale=0.5)
    for how, module in modules(ATTN).items():
        if how in ("torch -O2", "triton -O2"):   # the Triton target runs SDPA while training with dropout
            torch.manual_seed(11)
            with torch.no_grad():
                torch.testing.assert_close(run(how, module.train(), **t), want, msg=how)


def test_attention_without_dropout_is_the_node_it_always_was() -> None:
    for body in ("dropout=0", "dropout=0.0"):
        text = ATTN.replace("dropout=0.25", body)
        node = next(n for n in nnspec.check(text).model.graph if n.op == "attention")
        assert "dropout" not in node.attrs
    node = next(n for n in nnspec.check(ATTN).model.graph if n.op == "attention")
    assert node.attrs["dropout"] == 0.25


@pytest.mark.parametrize(("value", "col"), [("1.0", 63), ("-0.1", 63)])
def test_attention_dropout_out_of_range_is_located(value: str, col: int) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(ATTN.replace("dropout=0.25", f"dropout={value}"))
    assert err.value.code == "E015" and "attention dropout must be in [0, 1)" in err.value.message
    assert (err.value.span.line, err.value.span.col) == (11, col)
